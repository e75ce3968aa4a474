"""DiffDRR's gradient-based registration on the problems of protocol.py (skipped without diffdrr).

    /work/benchvenv/bin/python benchmarks/registration/diffdrr_compare.py --n 10 \
        --out benchmarks/registration/results_diffdrr.json

(/work/benchvenv: a separate venv with ``pip install torch==2.13.0 diffdrr`` and ``pip install -e .``.)

What is the same as run.py: the CT (the built-in phantom, written to NIfTI and read with
``diffdrr.data.read``), the detector (SDD 1020 mm, ``--size`` pixels over 204.8 mm), the
ground-truth angle draws (LAO/RAO +-60, CRAN/CAUD +-30 as DiffDRR's ZXY Euler angles at 700 mm
from the isocentre), the exact initial perturbation of every case (the same rigid motion of the
anatomy, so the initial mTRE is the same), the mTRE points and the success threshold.

What differs, in DiffDRR's favour: its target is its own noise-free DRR at the ground-truth pose
(DiffDRR has no spectrum or noise model), so it registers a model-matched image.

DiffDRR's loop follows its tutorials: ``Registration`` (inlined, same code) with Euler ZXY angles, gradient NCC
(``GradientNormalizedCrossCorrelation2d``, as jaxdrr's default metric), Adam with separate learning
rates for rotation (rad) and translation (mm), full-resolution rendering every iteration, at most
``--iters`` iterations, stopping after ``--patience`` iterations without improvement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--shape", default="64,64,48")
    add_loop_arguments(ap)
    args = ap.parse_args(argv)
    try:
        import torch

        _shim_torchvision_blur()
        from diffdrr.data import read
        from diffdrr.drr import DRR
        from diffdrr.metrics import GradientNormalizedCrossCorrelation2d
        from diffdrr.pose import RigidTransform, convert, make_matrix
    except ImportError as e:
        print(
            f"diffdrr is not importable ({e}); DiffDRR comparison skipped. Install it in a "
            "separate venv: pip install torch==2.13.0 diffdrr && pip install -e ."
        )
        return None
    import nibabel as nib
    import protocol
    from run import markdown, summarize

    import jaxdrr

    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    volume = protocol.make_volume(shape)
    points = protocol.error_points(volume)
    problems = protocol.make_problems(volume, args.n, args.size, args.seed)
    center = np.asarray(volume.center)
    if np.abs(center).max() > 1e-6:
        raise SystemExit("this script assumes the phantom is centred at the world origin")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "phantom.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(volume.data, np.float32), volume.affine), path)
        subject = read(str(path), orientation="AP", center_volume=True)
    drr = DRR(
        subject,
        sdd=protocol.SDD_MM,
        height=args.size,
        delx=protocol.DETECTOR_MM / args.size,
        renderer="siddon",
    )
    pts = torch.as_tensor(points, dtype=torch.float32)[None]
    criterion = GradientNormalizedCrossCorrelation2d(patch_size=None, sigma=1.0)

    def w2c_points(pose):
        return pose.inverse()(pts)[0]

    def mtre(pa, pb):
        return float((w2c_points(pa) - w2c_points(pb)).norm(dim=-1).mean())

    rows = []
    for p in problems:
        rot = torch.tensor([[np.deg2rad(p.lao), np.deg2rad(p.cran), 0.0]], dtype=torch.float32)
        trans = torch.tensor([[0.0, protocol.SID_MM, 0.0]], dtype=torch.float32)
        gt = convert(rot, trans, parameterization="euler_angles", convention="ZXY")
        with torch.no_grad():
            target = drr(gt)
        # The same motion of the anatomy as in protocol.py: camera-frame rotation/translation of
        # jaxdrr's camera, mapped to world axes with jaxdrr's R0; W2C_init = W2C_true o M.
        R0 = np.asarray(jaxdrr.geometry.decompose_projection(p.P_true)[1])
        ang = np.deg2rad(p.rot_deg)
        Rm_cam = np.asarray(jaxdrr.geometry.so3_exp(ang * p.rot_axis))
        Rm = R0.T @ Rm_cam @ R0
        tm = R0.T @ (p.trans_mm * p.trans_dir)
        M = RigidTransform(
            make_matrix(
                torch.as_tensor(Rm, dtype=torch.float32)[None], torch.as_tensor(tm, dtype=torch.float32)[None]
            )
        )
        init = _compose_init(gt, M)
        r0, t0 = init.convert("euler_angles", "ZXY")
        model = _Registration(drr, r0.clone(), t0.clone())
        opt = torch.optim.Adam(
            [
                {"params": [model._rotation], "lr": args.lr_rot},
                {"params": [model._translation], "lr": args.lr_trans},
            ],
            maximize=True,
        )
        init_mtre = mtre(init, gt)
        best, best_pose, since = -np.inf, None, 0
        t_start = time.perf_counter()
        iterations = 0
        for _ in range(args.iters):
            iterations += 1
            opt.zero_grad()
            pred = model()
            loss = criterion(pred, target)
            value = float(loss.mean())
            if value > best + 1e-7:
                best, since = value, 0
                best_pose = (model._rotation.detach().clone(), model._translation.detach().clone())
            else:
                since += 1
                if since >= args.patience:
                    break
            loss.mean().backward()
            opt.step()
        elapsed = time.perf_counter() - t_start
        est = convert(*best_pose, parameterization="euler_angles", convention="ZXY")
        row = {
            "index": p.index,
            "lao": p.lao,
            "cran": p.cran,
            "init_rot_deg": p.rot_deg,
            "init_trans_mm": p.trans_mm,
            "bin": protocol.bin_name(p),
            "init_mtre_mm": init_mtre,
            "mtre_mm": mtre(est, gt),
            "gncc": best,
            "iterations": iterations,
            "time_s": elapsed,
            "cpu_s": float("nan"),
            "load_avg_1min": os.getloadavg()[0],
        }
        rows.append(row)
        print(
            f"[{p.index:3d}] DiffDRR mTRE {init_mtre:6.2f} -> {row['mtre_mm']:6.3f} mm, "
            f"{row['iterations']} it, {elapsed:.1f} s (load {row['load_avg_1min']:.1f})",
            flush=True,
        )
    text = markdown(
        rows,
        f"DiffDRR {__import__('diffdrr').__version__} (gradient NCC, Adam, "
        f"full resolution, torch {torch.__version__}, {args.threads} threads)",
    )
    summary = summarize(rows)
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "summary": summary, "cases": rows, "markdown": text}, indent=1)
        )
    return summary


def add_loop_arguments(ap) -> None:
    """The options of DiffDRR's tutorial loop (shared with bench_wrist_diffdrr.py)."""
    ap.add_argument("--iters", type=int, default=250)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--lr-rot", type=float, default=1e-2, help="Adam lr for Euler angles (rad)")
    ap.add_argument("--lr-trans", type=float, default=1.0, help="Adam lr for translations (mm)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)


def _shim_torchvision_blur():
    """diffdrr.metrics imports ``torchvision.transforms.functional.gaussian_blur``; the torchvision
    wheel that pip pairs with the CPU torch 2.13 build fails to load its C ops here. When
    torchvision cannot be imported, provide that one function (same maths: separable Gaussian,
    reflect padding) so DiffDRR's own metric code runs unchanged."""
    import sys
    import types

    import torch

    try:
        import torchvision.transforms.functional  # noqa: F401

        return
    except Exception:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]

    def gaussian_blur(img, kernel_size, sigma):
        k = int(kernel_size)
        x = torch.arange(k, dtype=img.dtype, device=img.device) - (k - 1) / 2
        g = torch.exp(-0.5 * (x / float(sigma)) ** 2)
        g = g / g.sum()
        c = img.shape[-3]
        pad = k // 2
        out = torch.nn.functional.pad(img, (pad, pad, pad, pad), mode="reflect")
        out = torch.nn.functional.conv2d(out, g.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)
        return torch.nn.functional.conv2d(out, g.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.gaussian_blur = gaussian_blur
    tv.transforms, tr.functional = tr, fn
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}
    )


def _Registration(drr, rotation, translation):
    """diffdrr.registration.Registration (Euler ZXY), inlined: importing that module pulls in timm
    and torchvision, whose wheel here does not load with the CPU torch 2.13 build."""
    import torch
    from diffdrr.pose import convert

    class Registration(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drr = drr
            self._rotation = torch.nn.Parameter(rotation)
            self._translation = torch.nn.Parameter(translation)

        def forward(self):
            return self.drr(
                convert(self._rotation, self._translation, parameterization="euler_angles", convention="ZXY")
            )

    return Registration()


def _compose_init(gt, M):
    """C2W_init = M^-1 o C2W_gt (so that W2C_init = W2C_gt o M)."""
    import torch
    from diffdrr.pose import RigidTransform

    return RigidTransform(torch.linalg.inv(M.matrix) @ gt.matrix)


if __name__ == "__main__":
    main()
