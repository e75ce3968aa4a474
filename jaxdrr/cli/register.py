"""``jaxdrr register``: find the pose of an X-ray (.npz from ``jaxdrr render --save-npz``) from a CT,
or the poses of several bones in several calibrated real views.

    jaxdrr register [--ct CT] --xray IMAGE.npz [--init pose.json] --out pose.json
    jaxdrr register --view FRAME.tif:CALIB.txt --view ... --volume NAME=STACK.tif[:voxel=sx,sy,sz] ...
                    [--init poses.json] --out poses.json

**Several views, several bones** (``--view``, repeatable; ``--volume``, repeatable): each view is a
fluoroscopy frame (8/16-bit image, :func:`jaxdrr.io.frames.read_fluoro_frame`: intensity in [0, 1]
and its circular field-of-view mask) with its MayaCam calibration
(:func:`jaxdrr.io.mayacam.read_mayacam`); each volume a TIFF stack of one bone
(:func:`jaxdrr.io.tiff_stack.read_tiff_volume`, voxel size in mm, default the Autoscoper wrist's).
All bones are registered jointly in all views (:func:`jaxdrr.registration.multiview.register_multiview`).
``--init`` gives each bone's starting pose (the format of
:func:`jaxdrr.registration.initialize.load_initial_poses`, or a file written by this command);
without it the poses are searched automatically (:func:`jaxdrr.registration.initialize.initialize_bones`:
each bone along every hypothesis of the limb's axis, the one that suits all bones kept; then every
combination of the bones' candidates that keeps them apart as the starts,
:func:`jaxdrr.registration.initialize.joint_seeds`). The output JSON holds ``poses`` (per bone: 4x4
``matrix`` and ``pivot_mm``, loadable by ``--init``), the similarity per view and bone, timings.

* The CT: by default the one the bundle records (``jaxdrr render`` records its ``--ct``/
  ``--phantom``/``--phantom-size``/``--phantom-seed``); with ``--ct phantom`` the phantom options
  not given are the bundle's. A CT that differs from the recorded one is an error (a wrong CT
  gives a wrong pose without any other sign) unless ``--ignore-recorded-ct`` is given.
* The X-ray bundle supplies the image and the intrinsics (``K``, else decomposed from ``P``); its
  ``P`` is the nominal pose, used as the initial guess when ``--init`` is not given (for a
  simulated X-ray that *is* the ground truth: use ``--init`` or ``--perturb`` for a real test).
* ``--init pose.json`` accepts a file written by this command (or any JSON with ``"P"`` [3x4], or
  ``"R"`` and ``"t"``, or C-arm ``"lao"``/``"cran"`` with optional ``"isocenter"``/``"sid_mm"``).
* Speed: the registration works on at most ``--max-size`` pixels per side (default 128, the
  benchmark's detector; the ``--levels`` factors are relative to that), which keeps sub-millimetre
  accuracy on the README example at a fraction of the time of the full 512 x 512 image.
* The registration model follows the bundle's metadata where known (output quantity, detector,
  kVp for the shipped 60/90/120 kVp spectra) and is noise-free.
* The output JSON (written atomically) holds the estimated ``P``, ``K``, ``R``, ``t``, C-arm
  parameters (``lao``, ``cran``, ``roll``, ``isocenter``, ``sid_mm``), the pose relative to the
  initial camera, the loss history, timings and the CT selection.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

import jaxdrr
from jaxdrr.atomic import write_json
from jaxdrr.cli.common import (
    CtOptions,
    CtSelection,
    HelpFormatter,
    add_ct_options,
    check_input_file,
    check_non_negative,
    check_output,
    check_positive,
    ct_selection,
    long_step,
    make_parent_dir,
    progress_bar,
)
from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry import carm_extrinsics, check_projection_matrix, decompose_projection, projection_matrix

CT_OPTIONS = CtOptions(recorded_default=True)
SHIPPED_KVP = (60.0, 90.0, 120.0)  # bundles with another kVp are registered with the 120 kVp spectrum
DEFAULT_SID_MM = 700.0  # --init with C-arm angles but no sid_mm
DEFAULT_MAX_SIZE = 128  # finest registration level, pixels per side (the benchmark's detector)
DEFAULT_CT_MAX_SIZE = 128  # voxels per CT axis during registration (the benchmark's CT: 64)
WRIST_VOXEL_MM = (0.39625, 0.39625, 0.625)  # Autoscoper's wrist sample (AutoscoperMainWindow.cpp)
MULTIVIEW_METRICS = ("gncc", "mncc", "ncc")


def format_levels(levels) -> str:
    """Levels as ``--levels`` writes them: ((4, 60), (2, 15, "lbfgs")) -> "4:60,2:15:lbfgs"."""
    return ",".join(":".join(str(v) for v in level) for level in levels)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``register`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "register",
        help="2D/3D registration: find the C-arm pose of an X-ray from its CT",
        description="Optimise the 6-DoF pose so the DRR of the CT matches the X-ray (coarse to "
        "fine, Adam or L-BFGS). Writes the pose as JSON.",
        formatter_class=HelpFormatter,
    )
    add_ct_options(p, CT_OPTIONS)
    p.add_argument(
        "--ignore-recorded-ct",
        action="store_true",
        help="register against the given CT even where it differs from the one the bundle records",
    )
    p.add_argument(
        "--xray", default=None, help=".npz bundle written by `jaxdrr render --save-npz` (single view)"
    )
    p.add_argument(
        "--view",
        action="append",
        default=None,
        metavar="IMAGE:CALIB",
        help="a real view: fluoroscopy frame and its MayaCam calibration (repeatable; several views "
        "and --volume bones are registered jointly)",
    )
    p.add_argument(
        "--volume",
        action="append",
        default=None,
        metavar="NAME=PATH[:voxel=SX,SY,SZ]",
        help="a bone's TIFF stack for --view registration (repeatable); voxel size in mm "
        f"(default {','.join(str(v) for v in WRIST_VOXEL_MM)}, the Autoscoper wrist's)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="initial pose JSON (single view default: the bundle's P; --view default: automatic search)",
    )
    p.add_argument(
        "--roll-search",
        type=float,
        default=0.0,
        metavar="DEG",
        help="--view: after the last level, turn each bone about its long axis over +-DEG to its best "
        "similarity, then refine (a nearly round bone's turn about its shaft; 180 with --roll-step 10 "
        "searches a full turn; 0: off)",
    )
    p.add_argument(
        "--roll-step",
        type=float,
        default=None,
        metavar="DEG",
        help="--view: grid step of --roll-search (a coarse pass, then one at a fifth of the step; "
        "default: MultiViewConfig's)",
    )
    p.add_argument(
        "--slide-search",
        type=float,
        default=0.0,
        metavar="MM",
        help="--view, with --roll-search: also slide each bone along its long axis over +-MM (a grid "
        "of turn x slide at --slide-step; a cropped shaft's place along itself; 0: off)",
    )
    p.add_argument(
        "--slide-step",
        type=float,
        default=None,
        metavar="MM",
        help="--view: grid step of --slide-search (default: MultiViewConfig's)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output pose JSON; missing folders are created, an existing file is replaced",
    )
    p.add_argument(
        "--center",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="rotation centre, world mm (default: the volume centre)",
    )
    p.add_argument(
        "--metric",
        default="gncc",
        choices=("ncc", "gncc", "patch_ncc", "mncc", "mse"),
        help="similarity: (gradient/patch/multiscale) normalised cross-correlation or mean squared error",
    )
    p.add_argument(
        "--optimizer",
        default="adam",
        choices=("adam", "lbfgs"),
        help="optimiser of the levels that do not name their own in --levels",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam step size (mm-equivalent units; default 1.0, with --view 0.5)",
    )
    p.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        help="register on at most this many pixels per side: the X-ray is block-averaged by the "
        "smallest integer factor that gets there (0: full resolution)",
    )
    p.add_argument(
        "--ct-max-size",
        type=int,
        default=DEFAULT_CT_MAX_SIZE,
        help="register against the CT block-averaged by the smallest integer factor that leaves at "
        "most this many voxels per axis (0: the full CT); the cost of an iteration grows with the "
        "voxel count",
    )
    p.add_argument(
        "--levels",
        default=None,
        help="coarse-to-fine resolution factors (relative to the --max-size image) and iterations, "
        "factor:iterations[:optimizer],... (default: jaxdrr.registration.RegistrationConfig's, "
        "4:60,2:15:lbfgs,1:25:lbfgs)",
    )
    p.add_argument("--starts", type=int, default=1, help="starts optimised together at the first level")
    p.add_argument(
        "--parameterization",
        default="so3",
        choices=("so3", "6d", "quaternion"),
        help="rotation parameters the optimiser sees (axis-angle, two matrix columns, quaternion)",
    )
    p.add_argument(
        "--perturb",
        type=float,
        nargs=2,
        default=None,
        metavar=("DEG", "MM"),
        help="perturb the initial pose randomly by up to DEG degrees and MM mm (demo)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --perturb and of extra starts")
    p.add_argument("--step", type=float, default=None, help="ray-march step, mm (default: the renderer's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_levels(text: str) -> tuple[tuple, ...]:
    """``--levels``: "4:60,2:15:lbfgs" -> ((4, 60), (2, 15, "lbfgs"))."""
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


def bundle_intrinsics(bundle) -> np.ndarray:
    """K of an X-ray bundle (normalised to K[2, 2] = 1), else decomposed from its P."""
    if "K" in bundle:
        K = np.asarray(bundle["K"], np.float64)
        return K / K[2, 2]
    return decompose_projection(bundle["P"])[0]


def read_init(path, K, height: int, width: int, center) -> np.ndarray:
    """P of an initial-pose JSON (see the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise JaxdrrError(f"--init {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise JaxdrrError(f"--init {str(path)!r} must hold a JSON object with 'P', 'R'/'t' or 'lao'/'cran'")
    if "P" in data:
        return check_projection_matrix(data["P"], "init P")
    if "R" in data and "t" in data:
        return check_projection_matrix(projection_matrix(K, np.asarray(data["R"]), np.asarray(data["t"])))
    carm = data.get("carm", data)
    if "lao" in carm and "cran" in carm:
        iso = np.asarray(carm.get("isocenter", center), np.float64)
        sid = float(carm.get("sid_mm", DEFAULT_SID_MM))
        R, t = carm_extrinsics(float(carm["lao"]), float(carm["cran"]), iso, sid)
        return np.asarray(projection_matrix(K, R, t), np.float64)
    raise JaxdrrError(f"--init {str(path)!r} needs 'P', or 'R' and 't', or 'lao' and 'cran'")


def bundle_model(bundle, height: int, width: int, step):
    """(RenderConfig, params) of the noise-free model matching the bundle's metadata."""
    kw = {}
    if bundle.get("output") in ("log", "transmission", "intensity", "photons"):
        kw["output"] = bundle["output"]
    if bundle.get("detector") in ("ei", "pc"):
        kw["detector"] = bundle["detector"]
    if "photons_per_pixel" in bundle:
        kw["photons_per_pixel"] = float(np.asarray(bundle["photons_per_pixel"]))
    config = jaxdrr.RenderConfig(height=height, width=width, step_mm=step, **kw)
    kvp = float(np.asarray(bundle["kvp"])) if "kvp" in bundle else 120.0
    spectrum = jaxdrr.default_spectrum(int(kvp) if kvp in SHIPPED_KVP else 120)
    return config, jaxdrr.default_params(config, spectrum)


def working_factor(height: int, width: int, max_size: int) -> int:
    """The smallest integer block size that brings ``height x width`` to at most ``max_size`` per
    side (1 for ``max_size`` 0: no reduction)."""
    return 1 if max_size == 0 else max(1, math.ceil(max(height, width) / max_size))


def choose_ct(args, bundle) -> CtSelection:
    """The CT to register against: the options, defaulting to (and checked against) the bundle's."""
    recorded = CtSelection.from_record(bundle.get("ct"))
    if recorded is None and args.ct is None:
        raise JaxdrrError(
            f"{args.xray} does not record which CT it shows (a real X-ray, or written by an older "
            "jaxdrr): pass --ct CT, or --ct phantom --phantom KIND"
        )
    selection = ct_selection(args, recorded)
    if recorded is not None and selection != recorded and not args.ignore_recorded_ct:
        raise JaxdrrError(
            f"the given CT, {selection.describe()}, is not the one {args.xray} was rendered from, "
            f"{recorded.describe()}: leave --ct out (or pass {recorded.command_line()}), or add "
            "--ignore-recorded-ct"
        )
    if selection.path is not None and not Path(selection.path).exists():
        raise JaxdrrError(f"the CT {selection.path!r} does not exist here; pass --ct with its location")
    return selection


def parse_view(text: str) -> tuple[Path, Path]:
    """``--view IMAGE:CALIB`` -> (image path, calibration path); the split is at the last ':'."""
    image, sep, calib = text.rpartition(":")
    if not sep or not image or not calib:
        raise JaxdrrError(f"--view must be IMAGE:CALIB (a frame and its MayaCam .txt), got {text!r}")
    return Path(image), Path(calib)


def parse_volume(text: str) -> tuple[str, Path, tuple[float, float, float]]:
    """``--volume NAME=PATH[:voxel=SX,SY,SZ]`` -> (name, path, voxel size in mm)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise JaxdrrError(f"--volume must be NAME=PATH[:voxel=SX,SY,SZ], got {text!r}")
    voxel = WRIST_VOXEL_MM
    path, sep, option = rest.rpartition(":voxel=")
    if sep:
        try:
            voxel = tuple(float(v) for v in option.split(","))
        except ValueError:
            voxel = ()
        if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
            raise JaxdrrError(f"--volume {text!r}: voxel must be three positive numbers SX,SY,SZ (mm)")
    else:
        path = rest
    return name, Path(path), voxel


def read_poses(path) -> dict:
    """Per-bone poses from ``--init``: a file written by ``register --view`` (its ``poses``) or the
    initial-pose format of :func:`jaxdrr.registration.initialize.load_initial_poses`."""
    from jaxdrr.registration.initialize import load_initial_poses

    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise JaxdrrError(f"--init {str(path)!r} is not valid JSON: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("poses"), dict):
        return poses_from_entries(data["poses"], f"--init {str(path)!r}")
    return load_initial_poses(path)


def poses_from_entries(entries: dict, where: str) -> dict:
    """``{bone: RigidTransform}`` from ``{bone: {"matrix": 4x4, "pivot_mm": [x, y, z]}}`` (the
    ``poses`` this command and ``jaxdrr track`` write); ``where`` names the source in errors."""
    from jaxdrr.geometry.rigid import RigidTransform

    poses = {}
    for name, entry in entries.items():
        T = np.asarray(entry.get("matrix") if isinstance(entry, dict) else None, np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise JaxdrrError(f"{where}: pose of {name!r} needs a 4x4 'matrix'")
        poses[name] = RigidTransform.from_matrix(T, tuple(entry.get("pivot_mm", (0.0, 0.0, 0.0))))
    return poses


def pose_entries(poses: dict) -> dict:
    """The JSON form of ``{bone: RigidTransform}`` that :func:`poses_from_entries` reads."""
    return {
        n: {"matrix": np.asarray(p.matrix(), np.float64).tolist(), "pivot_mm": list(p.pivot)}
        for n, p in poses.items()
    }


def init_poses(path, names: list[str]) -> dict:
    """The ``--init`` poses of the bones ``names`` (every one must be there)."""
    poses = read_poses(path)
    missing = sorted(set(names) - set(poses))
    if missing:
        raise JaxdrrError(f"--init {path} has no pose for {missing} (it has {sorted(poses)})")
    return {n: poses[n] for n in names}


def run_multiview(args) -> int:
    """``jaxdrr register --view ... --volume ...``: joint multi-view, multi-bone registration."""
    from jaxdrr.registration import multiview as mv

    if args.xray is not None:
        raise JaxdrrError("give either --xray (one simulated view) or --view (real views), not both")
    if not args.volume:
        raise JaxdrrError("--view needs at least one --volume NAME=PATH (the bones to register)")
    if args.metric not in MULTIVIEW_METRICS:
        raise JaxdrrError(
            f"--metric {args.metric} is not available with --view; choose one of {MULTIVIEW_METRICS}"
        )
    if args.ct is not None:
        raise JaxdrrError("--ct is for --xray registration; with --view give the bones with --volume")
    views_in = [parse_view(v) for v in args.view]
    for image, calib in views_in:
        check_input_file(image, "--view image")
        check_input_file(calib, "--view calibration", suffixes=(".txt",))
    volumes_in = [parse_volume(v) for v in args.volume]
    names = [n for n, _, _ in volumes_in]
    if len(set(names)) != len(names):
        raise JaxdrrError(f"--volume names must be unique, got {names}")
    for _, path, _ in volumes_in:
        check_input_file(path, "--volume", suffixes=(".tif", ".tiff"))
    if args.init is not None:
        check_input_file(args.init, "--init", suffixes=(".json",))
    lr = 0.5 if args.lr is None else args.lr
    check_positive(lr, "--lr")
    check_positive(args.starts, "--starts", integer=True)
    check_positive(args.step, "--step")
    check_non_negative(args.roll_search, "--roll-search")
    check_positive(args.roll_step, "--roll-step")
    check_non_negative(args.slide_search, "--slide-search")
    check_positive(args.slide_step, "--slide-step")
    inputs = [p for pair in views_in for p in pair] + [p for _, p, _ in volumes_in] + [args.init]
    check_output(args.out, "--out", (".json",), inputs=inputs)
    levels = parse_levels(args.levels) if args.levels else mv.MultiViewConfig().levels
    config = mv.MultiViewConfig(
        metric=args.metric,
        levels=levels,
        learning_rate=lr,
        n_starts=args.starts,
        seed=args.seed,
        step_mm=args.step,
        roll_search_deg=args.roll_search,
        slide_search_mm=args.slide_search,
        # Grid steps left out keep MultiViewConfig's defaults (one place for them).
        **{
            name: value
            for name, value in (("roll_step_deg", args.roll_step), ("slide_step_mm", args.slide_step))
            if value is not None
        },
    )

    from jaxdrr.io.frames import read_fluoro_frame
    from jaxdrr.io.mayacam import projection_from_mayacam, read_mayacam
    from jaxdrr.io.tiff_stack import read_tiff_volume

    t0 = time.perf_counter()
    with long_step(f"loading {len(views_in)} views and {len(volumes_in)} volumes", disable=args.quiet):
        views = []
        for i, (image, calib) in enumerate(views_in):
            frame = read_fluoro_frame(image)
            cal = read_mayacam(calib)
            if (cal.height, cal.width) != frame.shape:
                raise JaxdrrError(
                    f"{calib}: calibrated for {cal.width}x{cal.height} images, but {image} is "
                    f"{frame.shape[1]}x{frame.shape[0]}"
                )
            views.append(
                mv.View(projection_from_mayacam(cal), frame.image, frame.mask, f"view{i + 1}:{image.name}")
            )
        volumes = {n: read_tiff_volume(p, voxel) for n, p, voxel in volumes_in}
    if args.init is not None:
        seeds = init_poses(args.init, names)
    else:
        seeds = auto_seeds(views_in, volumes, quiet=args.quiet)
    total = sum(lv[1] for lv in config.levels)
    bar = progress_bar(total, desc="register", unit="it", disable=args.quiet)
    result = mv.register_multiview(volumes, views, seeds, config, callback=lambda rec: bar.update(1))
    bar.close()
    elapsed = time.perf_counter() - t0
    out = result.to_dict()
    out["poses"] = pose_entries(result.poses)
    out["views"] = [
        {"name": v.name, "image": str(i.resolve()), "calibration": str(c.resolve())}
        for v, (i, c) in zip(views, views_in)
    ]
    out["volumes"] = {n: {"path": str(p.resolve()), "voxel_mm": list(vx)} for n, p, vx in volumes_in}
    out["config"] = {
        "metric": config.metric,
        "levels": [list(lv) for lv in config.levels],
        "lr": lr,
        "starts": config.n_starts,
        "roll_search_deg": config.roll_search_deg,
        "roll_step_deg": config.roll_step_deg,
        "slide_search_mm": config.slide_search_mm,
        "slide_step_mm": config.slide_step_mm,
    }
    out["total_time_s"] = elapsed
    out_path = make_parent_dir(args.out)
    write_json(out_path, out, indent=1)
    sims = ", ".join(f"{v}/{b} {s:.3f}" for v, per in result.similarity.items() for b, s in per.items())
    print(
        f"registered {len(names)} bone(s) in {len(views)} view(s) in {elapsed:.1f} s "
        f"({result.n_iterations} iterations); similarity {sims} -> {out_path}"
    )
    return 0


def auto_seeds(views_in, volumes, *, quiet: bool) -> list[dict]:
    """Multi-start seeds from the automatic initial-pose search: every combination of the bones'
    candidates in which no two bones share space (:func:`jaxdrr.registration.initialize.joint_seeds`)."""
    from jaxdrr.io.frames import read_fluoro_frame
    from jaxdrr.io.mayacam import projection_from_mayacam, read_mayacam
    from jaxdrr.registration.initialize import search_seeds

    k = 8  # the search works at ~1/8 of a 1760 px frame
    frames = [read_fluoro_frame(image, downsample=k) for image, _ in views_in]
    Ps = [projection_from_mayacam(read_mayacam(calib), image_scale=1.0 / k) for _, calib in views_in]
    with long_step("searching initial poses", disable=quiet):
        try:
            return search_seeds(volumes, frames, Ps)
        except JaxdrrError as error:
            raise JaxdrrError(f"{error} (pass --init)") from None


def run(args) -> int:
    """Runs ``jaxdrr register`` for parsed arguments; returns the exit code."""
    if args.view:
        return run_multiview(args)
    if args.xray is None:
        raise JaxdrrError("give --xray IMAGE.npz (a simulated view) or --view IMAGE:CALIB (real views)")
    if args.volume:
        raise JaxdrrError("--volume is for --view registration; with --xray give the CT with --ct")
    if args.lr is None:
        args.lr = 1.0
    # Imported here: the registration stack (optax) loads only for this command.
    from jaxdrr import registration as reg
    from jaxdrr.registration.optimize import level_camera_shape

    # Options, inputs and output first: nothing is loaded or computed before they are checked.
    check_input_file(
        args.xray,
        "--xray",
        suffixes=(".npz",),
        hint="pass the .npz bundle that `jaxdrr render --save-npz` writes (image, P and metadata), "
        "not an image file",
    )
    if args.init is not None:
        check_input_file(args.init, "--init", suffixes=(".json",))
    check_positive(args.lr, "--lr")
    check_positive(args.starts, "--starts", integer=True)
    check_non_negative(args.max_size, "--max-size")
    check_non_negative(args.ct_max_size, "--ct-max-size")
    check_positive(args.step, "--step")
    if args.perturb is not None:
        check_non_negative(args.perturb[0], "--perturb DEG")
        check_non_negative(args.perturb[1], "--perturb MM")
    bundle = jaxdrr.load_npz(args.xray)
    image = np.asarray(bundle["image"], np.float64)
    if image.ndim != 2:
        raise JaxdrrError(f"{args.xray}: expected a single image [H, W], got shape {image.shape}")
    height, width = image.shape
    selection = choose_ct(args, bundle)
    check_output(args.out, "--out", (".json",), inputs=[args.xray, args.init, selection.path])
    base = working_factor(height, width, args.max_size)
    levels = parse_levels(args.levels) if args.levels else reg.RegistrationConfig().levels
    levels = tuple((lv[0] * base, *lv[1:]) for lv in levels)
    config = reg.RegistrationConfig(
        metric=args.metric,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        levels=levels,
        n_starts=args.starts,
        parameterization=args.parameterization,
        seed=args.seed,
    )
    for level in config.levels:
        level_camera_shape(height, width, level[0])
    K = bundle_intrinsics(bundle)

    with long_step(f"loading {selection.describe()}"):
        volume = selection.load()
    shape = bundle["ct"].get("shape") if isinstance(bundle.get("ct"), dict) else None
    if shape is not None and list(volume.shape) != list(shape) and not args.ignore_recorded_ct:
        raise JaxdrrError(
            f"{selection.describe()} has shape {list(volume.shape)}, but {args.xray} was rendered "
            f"from shape {list(shape)}: the CT changed (or add --ignore-recorded-ct)"
        )
    center = np.asarray(args.center if args.center is not None else volume.center, np.float64)
    ct_factor = working_factor(max(volume.shape), 1, args.ct_max_size)  # the same rule as --max-size
    model_volume = reg.downsample_volume(volume, ct_factor)
    P_nominal = np.asarray(bundle["P"], np.float64)
    P_init = read_init(args.init, K, height, width, center) if args.init else P_nominal
    camera = reg.Camera.from_projection(P_init, height, width, center=center)
    if not np.allclose(np.asarray(camera.K), K, rtol=1e-3, atol=1e-3 * np.abs(K).max()):
        raise JaxdrrError("the initial pose's intrinsics differ from the X-ray's K")
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
    render_config, params = bundle_model(bundle, height, width, args.step)

    total = sum(lv[1] for lv in config.levels)
    finest = level_camera_shape(height, width, config.levels[-1][0])
    if not args.quiet:
        print(
            f"registering the {height}x{width} X-ray on {finest[0]}x{finest[1]} pixels at the finest "
            f"level (--max-size {args.max_size}) against the CT on "
            f"{'x'.join(map(str, model_volume.shape[-3:]))} voxels (--ct-max-size {args.ct_max_size}); "
            f"levels {format_levels(config.levels)} (resolution factor:iterations)"
        )
    bar = progress_bar(total, desc="register", unit="it", disable=args.quiet)
    n_levels = len(config.levels)

    def progress(rec):
        bar.update(1)
        # "res 1/8": the level renders at 1/8 of the X-ray's resolution per side.
        bar.set_postfix(  # a dict keeps this order (keyword arguments would be sorted by tqdm)
            {
                "level": f"{rec['level'] + 1}/{n_levels}",
                "res": f"1/{rec['factor']}",
                "loss": f"{rec['loss']:.5f}",
            }
        )

    t0 = time.perf_counter()
    result = reg.register(
        model_volume,
        image,
        camera,
        init=init,
        config=config,
        render_config=render_config,
        params=params,
        callback=progress,
    )
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
        "max_size": args.max_size,
        "ct_max_size": args.ct_max_size,
        "ct_factor": ct_factor,
        "levels": [list(level) for level in config.levels],
        "iterations": result.n_iterations,
        "time_s": elapsed,
        "loss_history": result.losses.tolist(),
        "change_from_start": reg.registration_errors(result.P, P_start, points, center),
        "difference_to_bundle_P": reg.registration_errors(result.P, P_nominal, points, center),
        "ct": selection.record(volume),
        "xray": str(Path(args.xray).resolve()),
    }
    out_path = make_parent_dir(args.out)
    write_json(out_path, out, indent=1)
    d = out["difference_to_bundle_P"]
    print(
        f"registered in {elapsed:.1f} s ({result.n_iterations} iterations), loss {result.loss:.5f}; "
        f"LAO {carm['lao']:.2f} CRAN {carm['cran']:.2f} roll {carm['roll']:.2f} deg; "
        f"vs the bundle's P: mTRE {d['mtre_mm']:.3f} mm -> {out_path}"
    )
    return 0
