"""The ``jaxdrr`` command line: a thin layer over the library.

    jaxdrr render [--ct CT | --phantom pelvis|chest|abdomen|limb|analytic] [--lao A ...] [--cran B ...]
                  --out xray.png [--save-npz xray.npz]
    jaxdrr info CT
    jaxdrr register --ct CT --xray xray.npz --out pose.json
    jaxdrr mc [--ct CT] --photons 1e8 --out mc.npz
    jaxdrr segment CT --out materials.nii.gz [--method vnet|thresholds|labels] [--labels SEG --mapping M]
    jaxdrr dataset --config SPEC --out DIR      (jaxdrr dataset init SPEC: an example spec)

``render`` with several ``--lao``/``--cran`` values renders every combination as one vmapped batch
per ``--batch`` views, writing ``<out stem>_<index>.<ext>`` atomically and skipping views whose
files already exist (so an interrupted job resumes where it stopped).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

GEOMETRY_PRESETS = ("default", "deepdrr", "paper")


def _add_render_parser(sub) -> None:
    p = sub.add_parser(
        "render",
        help="render a realistic X-ray (DRR) from a CT or the built-in phantom",
        description="Render a physically based X-ray image: material decomposition, spectral "
        "Beer-Lambert over a tungsten spectrum, quantum and readout noise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("input")
    src.add_argument(
        "--ct",
        default="phantom",
        help="NIfTI file, DICOM series directory, or 'phantom' for the built-in phantom (see --phantom)",
    )
    _add_phantom_option(src)
    src.add_argument(
        "--series-uid", default=None, help="DICOM SeriesInstanceUID when the directory holds several series"
    )
    src.add_argument(
        "--phantom-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("I", "J", "K"),
        help="voxels of the built-in phantom (default: analytic 192 160 128; the anatomical phantoms: "
        "their field of view at 1.6-1.75 mm, 1 mm for the knee)",
    )
    geo = p.add_argument_group("geometry (C-arm, RAS+ world, angles in degrees)")
    geo.add_argument("--lao", type=float, nargs="+", default=[0.0], help="LAO angle(s); negative = RAO")
    geo.add_argument("--cran", type=float, nargs="+", default=[0.0], help="CRAN angle(s); negative = CAUD")
    geo.add_argument(
        "--isocenter",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="rotation centre in world mm (default: the volume centre)",
    )
    geo.add_argument(
        "--preset",
        choices=GEOMETRY_PRESETS,
        default="default",
        help="default: SDD 1020, SID 700, 512^2 x 0.8 mm; deepdrr: SDD 1020, SID 530, "
        "1536^2 x 0.194 mm; paper: 615x479 x 0.616 mm",
    )
    geo.add_argument("--sdd", type=float, default=None, help="source-detector distance, mm")
    geo.add_argument("--sid", type=float, default=None, help="source-isocentre distance, mm")
    geo.add_argument("--height", type=int, default=None, help="detector rows")
    geo.add_argument("--width", type=int, default=None, help="detector columns")
    geo.add_argument("--pixel-size", type=float, default=None, help="pixel pitch, mm")
    phys = p.add_argument_group("physics")
    phys.add_argument(
        "--kvp",
        type=float,
        default=120.0,
        help="tube voltage: 60, 90 or 120 use the shipped IPEM-78 spectra; other values need SpekPy",
    )
    phys.add_argument(
        "--filtration",
        type=float,
        default=None,
        help="total Al filtration in mm (forces a SpekPy spectrum; default IPEM-78's)",
    )
    phys.add_argument(
        "--spectrum-csv", default=None, help="CSV with columns energy_keV,fluence (overrides --kvp)"
    )
    phys.add_argument("--hu-to-density", choices=("deepdrr", "schneider"), default="deepdrr")
    from jaxdrr.materials.cli import add_material_options

    add_material_options(phys, render=True)
    phys.add_argument(
        "--detector", choices=("ei", "pc"), default="ei", help="energy-integrating or photon-counting"
    )
    phys.add_argument(
        "--output",
        choices=("log", "transmission", "intensity", "photons"),
        default="log",
        help="image quantity (log = -ln transmission, not normalised)",
    )
    phys.add_argument(
        "--scatter",
        choices=("none", "net", "mc"),
        default="none",
        help="add scatter: the scatter ConvNet (net), the Monte Carlo (mc, slow) or none",
    )
    phys.add_argument(
        "--grid", action="store_true", help="anti-scatter grid (15:1, 80 lines/cm) with --scatter"
    )
    phys.add_argument(
        "--mc-photons", type=float, default=1e7, help="Monte Carlo histories per view (--scatter mc)"
    )
    phys.add_argument("--photons", type=float, default=5e5, help="photons emitted per pixel (N0)")
    phys.add_argument("--no-noise", action="store_true", help="render the expected (noise-free) image")
    phys.add_argument("--read-noise", type=float, default=3.0, help="readout noise std, photon equivalents")
    phys.add_argument(
        "--step",
        type=_step,
        default="planes",
        help="ray sampling: 'planes' (one sample per voxel plane, Joseph's method), 'half' "
        "(half the finest voxel spacing), or a step in mm",
    )
    phys.add_argument("--seed", type=int, default=0, help="noise seed; view i uses fold_in(seed, i)")
    out = p.add_argument_group("output")
    out.add_argument(
        "--out", default="xray.png", help="image file: .png (16-bit), .tif/.tiff (float32 or 16-bit), .npy"
    )
    out.add_argument(
        "--save-npz", default=None, help="also save image, P, intrinsics and metadata to this .npz"
    )
    out.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="display window for integer formats (default: 0.5..99.5 percentiles)",
    )
    out.add_argument("--bit-depth", default=None, choices=("8", "16", "float"), help="sample format")
    out.add_argument("--batch", type=int, default=4, help="views rendered per vmapped batch")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="with several views: re-render views whose output exists (default: resume)",
    )
    from jaxdrr.ops.project import BACKENDS

    out.add_argument("--backend", choices=BACKENDS, default="auto")


def _step(text: str):
    if text == "planes":
        return "planes"
    if text == "half":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--step must be 'planes', 'half' or a number of mm, got {text!r}"
        ) from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--step must be positive, got {text}")
    return value


PHANTOMS = ("pelvis", "chest", "abdomen", "limb", "analytic")


def _add_phantom_option(group) -> None:
    group.add_argument(
        "--phantom",
        choices=PHANTOMS,
        default="pelvis",
        help="the built-in CT used with --ct phantom: a detailed procedural adult CT of the pelvis "
        "(lumbar spine to the proximal femurs), chest, abdomen or a knee ('limb'), generated "
        "deterministically in a few seconds (jaxdrr.phantoms.demo_volume); or 'analytic', the smooth "
        "painted pelvis of ellipsoids with exact line integrals (jaxdrr.phantom())",
    )


def _load_ct(args):
    import jaxdrr

    if args.ct == "phantom":
        size = getattr(args, "phantom_size", None)
        kind = getattr(args, "phantom", "analytic")
        if kind == "analytic":
            return jaxdrr.phantom(shape=tuple(size) if size is not None else (192, 160, 128))
        return jaxdrr.phantom(kind=kind, shape=None if size is None else tuple(size))
    return jaxdrr.load_volume(args.ct, series_uid=getattr(args, "series_uid", None))


def _carm_geometry(args):
    from jaxdrr.geometry import CArmGeometry

    g = {"default": CArmGeometry(), "deepdrr": CArmGeometry.deepdrr(), "paper": CArmGeometry.paper()}[
        args.preset
    ]
    changes = {
        k: v
        for k, v in (
            ("sdd_mm", args.sdd),
            ("sid_mm", args.sid),
            ("height", args.height),
            ("width", args.width),
            ("pixel_size_mm", args.pixel_size),
        )
        if v is not None
    }
    import dataclasses

    return dataclasses.replace(g, **changes)


def _spectrum(args):
    from jaxdrr import physics

    if args.spectrum_csv:
        data = np.genfromtxt(args.spectrum_csv, delimiter=",", comments="#", names=True)
        s = physics.from_arrays(
            data[data.dtype.names[0]],
            data[data.dtype.names[1]],
            name=Path(args.spectrum_csv).name,
            provenance=f"user file {args.spectrum_csv}",
        )
    elif args.filtration is None and float(args.kvp) in (60.0, 90.0, 120.0):
        s = physics.ipem78(int(args.kvp))
    else:
        filtration = args.filtration if args.filtration is not None else 4.3
        s = physics.spekpy_spectrum(args.kvp, filtration)
    return physics.rebin(s)


def _object_window(image) -> tuple[float, float]:
    """Display window over the object: 0.5..99.5 percentiles of pixels that see attenuation.

    Air around the body would otherwise pin the low end and wash out the anatomy.
    """
    image = np.asarray(image)
    lo, hi = np.percentile(image, [0.5, 99.5])
    obj = image[image > lo + 0.05 * (hi - lo)]
    if obj.size > 16:
        lo, hi = np.percentile(obj, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _output_paths(out: str, n: int) -> list[Path]:
    path = Path(out)
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:04d}{path.suffix}") for i in range(n)]


def run_render(args) -> int:
    import jax
    import jax.numpy as jnp

    import jaxdrr
    from jaxdrr.geometry import carm
    from jaxdrr.materials.cli import materials_from_args

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    volume = _load_ct(args)
    method, _, labels_path = args.materials.partition(":")
    materials, labels, mapping, mapping_source = materials_from_args(
        args, volume, method, labels_path or None
    )
    g = _carm_geometry(args)
    iso = np.asarray(args.isocenter if args.isocenter is not None else volume.center, np.float64)
    noise = None if args.no_noise else jaxdrr.NoiseConfig(readout_noise_std=args.read_noise)
    scatter = None
    if args.scatter != "none":
        scatter = jaxdrr.ScatterConfig(
            method=args.scatter,
            sdd_mm=g.sdd_mm,
            grid=args.grid,
            mc_photons=int(args.mc_photons),
            warn_outside_range=False,  # checked once below, before the batched render
        )
    config = jaxdrr.RenderConfig(
        height=g.height,
        width=g.width,
        step_mm=args.step,
        materials=materials,
        detector=args.detector,
        output=args.output,
        noise=noise,
        photons_per_pixel=args.photons,
        backend=args.backend,
        scatter=scatter,
    )
    spectrum = _spectrum(args)
    params = jaxdrr.default_params(config, spectrum)
    if scatter is not None and scatter.method == "net":
        from jaxdrr.scatter import estimate

        P0 = carm(args.lao[0], args.cran[0], isocenter=iso, geometry=g)
        h, w = estimate.low_res_shape(g.height, g.width, scatter.grid_side)
        P_low = estimate.low_res_projection(P0, g.height, g.width, h, w)
        estimate.check_range(estimate.conditioning(params, P_low, volume.center, scatter))
    if materials.method != "thresholds":
        # Decompose once (the V-Net or the label map), then render the density volume per view.
        t_dec = time.perf_counter()
        volume = jax.jit(lambda p, v, lab: jaxdrr.decompose(p, v, materials, labels=lab, mapping=mapping))(
            params, volume, labels
        )
        volume.data.block_until_ready()
        print(
            f"decomposed the CT into {', '.join(materials.names)} ({materials.method}"
            + (f", {mapping_source}" if mapping_source else "")
            + f") in {time.perf_counter() - t_dec:.2f} s"
        )
    views = list(itertools.product(args.lao, args.cran))
    outs = _output_paths(args.out, len(views))
    npzs = _output_paths(args.save_npz, len(views)) if args.save_npz else [None] * len(views)
    for path in outs + [n for n in npzs if n is not None]:
        path.parent.mkdir(parents=True, exist_ok=True)
    todo = [
        i
        for i in range(len(views))
        if args.overwrite
        or len(views) == 1
        or not outs[i].exists()
        or (npzs[i] is not None and not npzs[i].exists())
    ]
    if not todo:
        print(f"all {len(views)} view(s) already rendered; use --overwrite to render again")
        return 0
    render = jax.jit(jax.vmap(jaxdrr.make_renderer(config), in_axes=(None, None, 0, 0)))
    base_key = jax.random.key(args.seed)
    bar = tqdm(total=len(todo), unit="view", disable=len(todo) < 2 or tqdm is None) if tqdm else None
    t0 = time.perf_counter()
    batch = max(1, args.batch)
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        pad = idx + [idx[-1]] * (batch - len(idx)) if len(todo) > batch else idx  # fixed shape: one compile
        Ps = jnp.stack([carm(views[i][0], views[i][1], isocenter=iso, geometry=g) for i in pad])
        keys = jnp.stack([jax.random.fold_in(base_key, i) for i in pad])
        images = np.asarray(render(params, volume, Ps, keys))
        for j, i in enumerate(idx):
            image = images[j]
            bit_depth = (
                None
                if args.bit_depth is None
                else (args.bit_depth if args.bit_depth == "float" else int(args.bit_depth))
            )
            window = tuple(args.window) if args.window else _object_window(image)
            if outs[i].suffix.lower() in (".tif", ".tiff", ".npy") and bit_depth in (None, "float"):
                jaxdrr.save_image(outs[i], image, bit_depth="float")
            else:
                jaxdrr.save_image(outs[i], image, bit_depth=bit_depth, window=window)
            if npzs[i] is not None:
                P = np.asarray(Ps[j], np.float64)
                K, R, t = jaxdrr.geometry.decompose_projection(P)
                jaxdrr.save_npz(
                    npzs[i],
                    image,
                    P,
                    K=K,
                    R=R,
                    t=t,
                    lao=views[i][0],
                    cran=views[i][1],
                    isocenter=iso,
                    sdd_mm=g.sdd_mm,
                    sid_mm=g.sid_mm,
                    pixel_size_mm=g.pixel_size_mm,
                    output=config.output,
                    detector=config.detector,
                    photons_per_pixel=config.photons_per_pixel,
                    noise=(None if noise is None else {"readout_noise_std": noise.readout_noise_std}),
                    spectrum=spectrum.name,
                    kvp=args.kvp,
                    seed=args.seed,
                    view_index=i,
                    ct=str(args.ct),
                    hu_to_density=args.hu_to_density,
                    materials=args.materials,
                    material_names=list(materials.names),
                    scatter=args.scatter,
                    grid=bool(args.grid),
                )
        if bar:
            bar.update(len(idx))
    if bar:
        bar.close()
    dt = time.perf_counter() - t0
    shown = outs[todo[0]] if len(todo) == 1 else f"{outs[todo[0]]} .. {outs[todo[-1]]}"
    print(f"rendered {len(todo)} view(s) of {g.height}x{g.width} in {dt:.2f} s -> {shown}")
    return 0


def run_info(args) -> int:
    import jaxdrr

    volume = _load_ct(args)
    print(jaxdrr.format_volume_info(volume, name=str(args.ct)))
    return 0


def _version_string() -> str:
    import jax

    from jaxdrr._version import __version__
    from jaxdrr.ops import project_backend

    name, why = project_backend()
    return (
        f"jaxdrr {__version__} (jax {jax.__version__}, Python {sys.version.split()[0]})\n"
        f"projector: {name} ({why})"
    )


class _VersionAction(argparse.Action):
    """``--version``: computed when asked (it initialises JAX's backend and the native library)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version_string())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxdrr", description="Realistic, differentiable X-ray simulation from CT."
    )
    parser.add_argument("--version", action=_VersionAction, help="show versions and the projector backend")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_render_parser(sub)
    info = sub.add_parser("info", help="print a volume's shape, spacing, HU range and world box")
    info.add_argument("ct", help="NIfTI file, DICOM directory or 'phantom'")
    info.add_argument("--series-uid", default=None)
    _add_phantom_option(info)
    info.add_argument("--phantom-size", type=int, nargs=3, default=None)
    try:
        from jaxdrr.registration import cli as registration_cli
    except ImportError:
        registration_cli = None
    if registration_cli is not None:
        registration_cli.add_parser(sub)
    from jaxdrr.scatter import cli as mc_cli

    mc_cli.add_parser(sub)
    from jaxdrr.materials import cli as materials_cli

    materials_cli.add_parser(sub)
    from jaxdrr.datasets import cli as dataset_cli

    dataset_cli.add_parser(sub)
    return parser


def main(argv=None) -> int:
    from jaxdrr.errors import JaxdrrError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            return run_render(args)
        if args.command == "info":
            return run_info(args)
        if args.command == "register":
            from jaxdrr.registration import cli as registration_cli

            return registration_cli.run(args)
        if args.command == "mc":
            from jaxdrr.scatter import cli as mc_cli

            return mc_cli.run(args)
        if args.command == "dataset":
            from jaxdrr.datasets import cli as dataset_cli

            return dataset_cli.run(args)
        if args.command == "segment":
            from jaxdrr.materials import cli as materials_cli

            return materials_cli.run(args)
    except (JaxdrrError, FileNotFoundError, ImportError) as e:
        print(f"jaxdrr {args.command}: error: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
