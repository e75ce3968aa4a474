"""``jaxdrr register``: find the pose of an X-ray (.npz from ``jaxdrr render --save-npz``) from a CT.

    jaxdrr register --ct CT --xray IMAGE.npz [--init pose.json] --out pose.json

Wired into ``jaxdrr/cli.py`` through :func:`add_parser` (adds the sub-command) and :func:`run`.

* The X-ray bundle supplies the image and the intrinsics (``K``, else decomposed from ``P``); its
  ``P`` is the nominal pose, used as the initial guess when ``--init`` is not given (for a
  simulated X-ray that *is* the ground truth: use ``--init`` or ``--perturb`` for a real test).
* ``--init pose.json`` accepts a file written by this command (or any JSON with ``"P"`` [3x4], or
  ``"R"`` and ``"t"``, or C-arm ``"lao"``/``"cran"`` with optional ``"isocenter"``/``"sid_mm"``).
* The registration model follows the bundle's metadata where known (output quantity, detector,
  kVp for the shipped 60/90/120 kVp spectra) and is noise-free.
* The output JSON holds the estimated ``P``, ``K``, ``R``, ``t``, C-arm parameters (``lao``,
  ``cran``, ``roll``, ``isocenter``, ``sid_mm``), the pose relative to the initial camera, the loss
  history and timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``register`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "register",
        help="2D/3D registration: find the C-arm pose of an X-ray from its CT",
        description="Optimise the 6-DoF pose so the DRR of the CT matches the X-ray (coarse to "
        "fine, Adam or L-BFGS). Writes the pose as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--ct",
        required=True,
        help="NIfTI file, DICOM series directory, or 'phantom' for the built-in phantom",
    )
    p.add_argument("--series-uid", default=None, help="DICOM SeriesInstanceUID")
    p.add_argument(
        "--phantom-size",
        type=int,
        nargs=3,
        default=(192, 160, 128),
        metavar=("I", "J", "K"),
        help="voxels of the built-in phantom",
    )
    p.add_argument("--xray", required=True, help=".npz bundle written by `jaxdrr render --save-npz`")
    p.add_argument("--init", default=None, help="initial pose JSON (default: the bundle's P)")
    p.add_argument("--out", required=True, help="output pose JSON")
    p.add_argument(
        "--center",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="rotation centre, world mm (default: the volume centre)",
    )
    p.add_argument("--metric", default="gncc", choices=("ncc", "gncc", "patch_ncc", "mncc", "mse"))
    p.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"))
    p.add_argument("--lr", type=float, default=1.0, help="Adam step size (mm-equivalent units)")
    p.add_argument(
        "--levels",
        default="4:60,2:15:lbfgs,1:25:lbfgs",
        help="coarse-to-fine detector factors and iterations, factor:iterations[:optimizer],...",
    )
    p.add_argument("--starts", type=int, default=1, help="starts optimised together at the first level")
    p.add_argument("--parameterization", default="so3", choices=("so3", "6d", "quaternion"))
    p.add_argument(
        "--perturb",
        type=float,
        nargs=2,
        default=None,
        metavar=("DEG", "MM"),
        help="perturb the initial pose randomly by up to DEG degrees and MM mm (demo)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --perturb and of extra starts")
    p.add_argument("--step", type=float, default=None, help="ray-march step, mm")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_levels(text: str) -> tuple[tuple[int, int], ...]:
    from jaxdrr.errors import JaxdrrError

    try:
        levels = []
        for item in text.split(","):
            parts = item.split(":")
            if len(parts) not in (2, 3):
                raise ValueError(item)
            levels.append((int(parts[0]), int(parts[1])) + tuple(parts[2:]))
        return tuple(levels)
    except ValueError as e:
        raise JaxdrrError(f"--levels must look like 4:80,2:50,1:30 or 4:80,1:15:lbfgs, got {text!r}") from e


def _load_ct(args):
    import jaxdrr

    if args.ct == "phantom":
        return jaxdrr.phantom(shape=tuple(args.phantom_size))
    return jaxdrr.load_volume(args.ct, series_uid=args.series_uid)


def _intrinsics(bundle) -> np.ndarray:
    from jaxdrr.geometry import decompose_projection

    if "K" in bundle:
        K = np.asarray(bundle["K"], np.float64)
        return K / K[2, 2]
    return decompose_projection(bundle["P"])[0]


def read_init(path, K, height: int, width: int, center) -> np.ndarray:
    """P of an initial-pose JSON (see the module docstring)."""
    from jaxdrr.errors import JaxdrrError
    from jaxdrr.geometry import carm_extrinsics, check_projection_matrix, projection_matrix

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init file does not exist: {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise JaxdrrError(f"--init {str(path)!r} is not valid JSON: {e}") from e
    if "P" in data:
        return check_projection_matrix(data["P"], "init P")
    if "R" in data and "t" in data:
        return check_projection_matrix(projection_matrix(K, np.asarray(data["R"]), np.asarray(data["t"])))
    carm = data.get("carm", data)
    if "lao" in carm and "cran" in carm:
        iso = np.asarray(carm.get("isocenter", center), np.float64)
        sid = float(carm.get("sid_mm", 700.0))
        R, t = carm_extrinsics(float(carm["lao"]), float(carm["cran"]), iso, sid)
        return np.asarray(projection_matrix(K, R, t), np.float64)
    raise JaxdrrError(f"--init {str(path)!r} needs 'P', or 'R' and 't', or 'lao' and 'cran'")


def _model(bundle, height, width, step):
    import jaxdrr

    kw = {}
    if bundle.get("output") in ("log", "transmission", "intensity", "photons"):
        kw["output"] = bundle["output"]
    if bundle.get("detector") in ("ei", "pc"):
        kw["detector"] = bundle["detector"]
    if "photons_per_pixel" in bundle:
        kw["photons_per_pixel"] = float(np.asarray(bundle["photons_per_pixel"]))
    config = jaxdrr.RenderConfig(height=height, width=width, step_mm=step, **kw)
    kvp = float(np.asarray(bundle["kvp"])) if "kvp" in bundle else 120.0
    spectrum = jaxdrr.default_spectrum(int(kvp) if kvp in (60.0, 90.0, 120.0) else 120)
    return config, jaxdrr.default_params(config, spectrum)


def run(args) -> int:
    """Runs ``jaxdrr register`` for parsed arguments; returns the exit code."""
    import jax

    import jaxdrr
    from jaxdrr import registration as reg
    from jaxdrr.errors import JaxdrrError

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    bundle = jaxdrr.load_npz(args.xray)
    image = np.asarray(bundle["image"], np.float64)
    if image.ndim != 2:
        raise JaxdrrError(f"{args.xray}: expected a single image [H, W], got shape {image.shape}")
    height, width = image.shape
    K = _intrinsics(bundle)
    volume = _load_ct(args)
    center = np.asarray(args.center if args.center is not None else volume.center, np.float64)
    P_nominal = np.asarray(bundle["P"], np.float64)
    P_init = read_init(args.init, K, height, width, center) if args.init else P_nominal
    camera = reg.Camera.from_projection(P_init, height, width, center=center)
    if not np.allclose(np.asarray(camera.K), K, rtol=1e-3, atol=1e-3 * np.abs(K).max()):
        raise JaxdrrError("the initial pose's intrinsics differ from the X-ray's K")
    config = reg.RegistrationConfig(
        metric=args.metric,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        levels=parse_levels(args.levels),
        n_starts=args.starts,
        parameterization=args.parameterization,
        seed=args.seed,
    )
    init = None
    if args.perturb is not None:
        init = reg.random_pose(
            jax.random.key(args.seed),
            args.perturb[0],
            args.perturb[1],
            config.parameterization,
            config.radius_mm,
        )
        P_start = np.asarray(reg.pose_to_projection(init, camera), np.float64)
    else:
        P_start = np.asarray(camera.P, np.float64)
    render_config, params = _model(bundle, height, width, args.step)

    total = sum(lv[1] for lv in config.levels)
    bar = tqdm(total=total, unit="it", disable=args.quiet, desc="register") if tqdm else None

    def progress(rec):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(level=f"1/{rec['factor']}", loss=f"{rec['loss']:.5f}")

    t0 = time.perf_counter()
    result = reg.register(
        volume,
        image,
        camera,
        init=init,
        config=config,
        render_config=render_config,
        params=params,
        callback=progress,
    )
    if bar is not None:
        bar.update(total - bar.n)
        bar.close()
    elapsed = time.perf_counter() - t0
    sid = float(np.asarray(bundle["sid_mm"])) if "sid_mm" in bundle else None
    carm = reg.carm_parameters(result.R, result.t, center=center, sid_mm=sid)
    points = reg.grid_points(volume, n=5, hu_threshold=-500.0 if volume.kind == "hu" else None)
    out = {
        "P": result.P.tolist(),
        "K": np.asarray(camera.K, np.float64).tolist(),
        "R": result.R.tolist(),
        "t": result.t.tolist(),
        "height": height,
        "width": width,
        "carm": carm,
        "center": center.tolist(),
        "pose_relative_to_init": result.pose.to_dict(),
        "P_init": P_start.tolist(),
        "loss": result.loss,
        "metric": args.metric,
        "optimizer": args.optimizer,
        "levels": [list(level) for level in config.levels],
        "iterations": result.n_iterations,
        "time_s": elapsed,
        "loss_history": result.losses.tolist(),
        "change_from_start": reg.registration_errors(result.P, P_start, points, center),
        "difference_to_bundle_P": reg.registration_errors(result.P, P_nominal, points, center),
        "ct": str(args.ct),
        "xray": str(args.xray),
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(out_path)
    d = out["difference_to_bundle_P"]
    print(
        f"registered in {elapsed:.1f} s ({result.n_iterations} iterations), loss {result.loss:.5f}; "
        f"LAO {carm['lao']:.2f} CRAN {carm['cran']:.2f} roll {carm['roll']:.2f} deg; "
        f"vs the bundle's P: mTRE {d['mtre_mm']:.3f} mm -> {out_path}"
    )
    return 0
