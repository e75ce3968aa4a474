"""``jaxdrr render``: a realistic X-ray (DRR) of a CT or the built-in phantom, one or many views.

    jaxdrr render [--ct CT | --phantom pelvis|chest|abdomen|limb|analytic] [--lao A ...] [--cran B ...]
                  [--tool KIND[:KEY=VALUE,...] | --mesh FILE[:KEY=VALUE,...] [--tool-pose [NAME=]RX,RY,RZ,TX,TY,TZ]]
                  --out xray.png [--save-npz xray.npz]

``--tool``/``--mesh`` add surgical tools to the CT (a :class:`jaxdrr.scene.Scene`, rendered with
:func:`jaxdrr.scene.make_scene_renderer`; see docs/tools.md); the bundle then also records their
path lengths, masks, poses and projected landmarks.

Several ``--lao``/``--cran`` values render every combination as one vmapped batch per ``--batch``
views, writing ``<out stem>_lao<A>_cran<B>.<ext>`` (e.g. ``v_lao+30_cran-10.png``) atomically and
skipping views whose files already exist (so an interrupted job resumes where it stopped). The
views of a series written as integers (PNG, 8/16-bit TIFF) share one grey window: ``--window``, or
the one the first batch gives (printed, and recorded in the ``--save-npz`` bundles, whose window a
resumed run reuses). A decomposition other than the thresholds (the V-Net, a label map) runs once,
before the views.

Every option, input and output is checked before the CT is loaded; the bundle records the CT
selection (:meth:`jaxdrr.cli.common.CtSelection.record`), so ``jaxdrr register --xray`` reloads
the same CT.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrr
from jaxdrr.cli.common import (
    CtOptions,
    GeometryOptions,
    HelpFormatter,
    add_ct_options,
    add_geometry_options,
    add_material_options,
    add_spectrum_options,
    add_tool_options,
    build_tools,
    carm_geometry,
    check_angles,
    check_image_output,
    check_material_options,
    check_non_negative,
    check_output,
    check_positive,
    check_window,
    ct_selection,
    long_step,
    make_parent_dir,
    materials_from_args,
    parse_bit_depth,
    posed_tools,
    progress_bar,
    spectrum_from_args,
    tool_specs_from_args,
    view_matrix,
)
from jaxdrr.cli.timings import estimate_seconds, record_seconds
from jaxdrr.geometry import decompose_projection
from jaxdrr.ops import BACKENDS
from jaxdrr.scatter import MonteCarloConfig, check_range, conditioning
from jaxdrr.scatter.estimate import low_res_projection, low_res_shape
from jaxdrr.scatter.monte_carlo import check_geometry
from jaxdrr.scene import Scene, make_scene_renderer, object_path_lengths, project_landmarks, scene_params

CT_OPTIONS = CtOptions()
GEOMETRY_OPTIONS = GeometryOptions(
    several_views=True,
    lao_help="LAO angle(s) in degrees; negative = RAO",
    cran_help="CRAN angle(s) in degrees; negative = CAUD",
)


def parse_step(text: str):
    """``--step``: "planes" (Joseph), "half" (None: half the finest spacing) or a positive step in mm."""
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``render`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "render",
        help="render a realistic X-ray (DRR) from a CT or the built-in phantom",
        description="Render a physically based X-ray image: material decomposition, spectral "
        "Beer-Lambert over a tungsten spectrum, quantum and readout noise.",
        formatter_class=HelpFormatter,
    )
    add_ct_options(p.add_argument_group("input"), CT_OPTIONS)
    add_geometry_options(
        p.add_argument_group("geometry (C-arm, RAS+ world, angles in degrees)"), GEOMETRY_OPTIONS
    )
    phys = p.add_argument_group("physics")
    add_spectrum_options(phys)
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
        type=parse_step,
        default="planes",
        help="ray sampling: 'planes' (one sample per voxel plane, Joseph's method), 'half' "
        "(half the finest voxel spacing), or a step in mm",
    )
    phys.add_argument("--seed", type=int, default=0, help="noise seed; view i uses fold_in(seed, i)")
    add_tool_options(p.add_argument_group("surgical tools (meshes in the CT; see docs/tools.md)"))
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        default="xray.png",
        help="image file: .png (16-bit), .tif/.tiff (float32 or 16-bit), .npy; with several views "
        "<stem>_lao<A>_cran<B><ext> per view. Missing folders are created; an existing file is replaced",
    )
    out.add_argument(
        "--save-npz",
        default=None,
        help="also save image, P, intrinsics and metadata (with the CT selection) to this .npz; "
        "with tools also their path lengths (tool_paths, mm), masks, poses and projected landmarks",
    )
    out.add_argument(
        "--window",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="grey window of integer formats (default: the 0.5..99.5 percentiles of the object; "
        "several views share the window of the first batch)",
    )
    out.add_argument(
        "--bit-depth",
        default=None,
        choices=("8", "16", "float"),
        help="sample format (default: 16-bit PNG, float32 TIFF/NPY)",
    )
    out.add_argument("--batch", type=int, default=4, help="views rendered per vmapped batch")
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="with several views: re-render views whose output exists (default: resume)",
    )
    out.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="projector: auto (native CPU kernel, Pallas on GPU, else XLA), or one explicitly",
    )
    return p


def object_window(image) -> tuple[float, float]:
    """Display window over the object: 0.5..99.5 percentiles of pixels that see attenuation.

    Air around the body would otherwise pin the low end and wash out the anatomy. ``image`` may
    hold several views: their pixels are pooled (one window for a series).
    """
    image = np.asarray(image)
    lo, hi = np.percentile(image, [0.5, 99.5])
    obj = image[image > lo + 0.05 * (hi - lo)]
    if obj.size > 16:
        lo, hi = np.percentile(obj, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def unique_views(laos, crans) -> list[tuple[float, float]]:
    """Every (LAO, CRAN) combination once, in the order given."""
    return list(dict.fromkeys((float(a), float(b)) for a in laos for b in crans))


def view_path(path: str | Path, lao: float, cran: float) -> Path:
    """``<stem>_lao<A>_cran<B><suffix>`` with signed angles, e.g. ``v_lao+30_cran-10.png``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_lao{lao:+g}_cran{cran:+g}{path.suffix}")


def output_paths(path, views) -> list[Path]:
    """``path`` itself for one view, else one :func:`view_path` per view."""
    return [Path(path)] if len(views) == 1 else [view_path(path, a, b) for a, b in views]


def recorded_window(npzs) -> tuple[float, float] | None:
    """The grey window an earlier run recorded in one of the series' bundles, if any."""
    for path in npzs:
        if path is not None and path.exists():
            with contextlib.suppress(Exception):
                window = jaxdrr.load_npz(path).get("window")
                if window is not None and len(window) == 2:
                    return float(window[0]), float(window[1])
    return None


def stores_float(path: Path, bit_depth) -> bool:
    """True where the image is written as raw float32 values (no grey window)."""
    return path.suffix.lower() in (".tif", ".tiff", ".npy") and bit_depth in (None, "float")


def tool_metadata(specs, tools, P, paths) -> dict:
    """What a bundle records about the tools of one view (``paths`` [T, H, W] mm)."""
    landmarks = {}
    for tool in tools:
        points = tool.landmark_points()
        projected = project_landmarks(np.asarray(P, np.float64), tool.pose, points) if points else {}
        landmarks[tool.name] = {
            k: [float(uv[0]), float(uv[1]), float(depth)] for k, (uv, depth) in projected.items()
        }
    return {
        "tools": [s.text for s in specs],
        "tool_options": [s.option for s in specs],
        "tool_names": [t.name for t in tools],
        "tool_materials": [t.material for t in tools],
        "tool_densities": np.asarray([float(t.density) for t in tools]),
        "tool_displaces": np.asarray([bool(t.displaces) for t in tools]),
        "tool_poses": np.stack([np.asarray(t.pose.matrix(), np.float64) for t in tools]),
        "tool_paths": np.asarray(paths, np.float32),
        "tool_masks": (np.asarray(paths) > 0).astype(np.uint8),
        "tool_landmarks": landmarks,
    }


def run(args) -> int:
    """Runs ``jaxdrr render``; returns the process exit code."""
    # Everything that can be wrong with the options is found before the CT is loaded.
    selection = ct_selection(args)
    method, _, labels_path = args.materials.partition(":")
    labels_path = labels_path or None
    check_material_options(args, method, labels_path)
    g = carm_geometry(args)
    window = check_window(args.window)
    bit_depth = parse_bit_depth(args.bit_depth)
    check_positive(args.photons, "--photons")
    check_non_negative(args.read_noise, "--read-noise")
    check_positive(args.batch, "--batch", integer=True)
    check_positive(args.mc_photons, "--mc-photons")
    views = unique_views(args.lao, args.cran)
    inputs = [selection.path, labels_path, args.mapping, args.structures, args.spectrum_csv]
    outs = output_paths(args.out, views)
    npzs = output_paths(args.save_npz, views) if args.save_npz else [None] * len(views)
    check_image_output(outs[0], bit_depth, inputs=inputs)
    if args.save_npz:
        check_output(npzs[0], "--save-npz", (".npz",), inputs=inputs)
        if Path(args.save_npz).absolute() == Path(args.out).absolute():
            raise jaxdrr.JaxdrrError("--save-npz and --out name the same file")
    for path in outs + [n for n in npzs if n is not None]:
        if path.is_dir():
            raise jaxdrr.JaxdrrError(f"output {str(path)!r} is a directory")
    check_angles(args.lao, args.cran)
    if args.isocenter is not None:
        view_matrix(views[0][0], views[0][1], args.isocenter, g)  # finite isocentre and angles
    spectrum = spectrum_from_args(args)  # the kVp range, the CSV
    tool_specs = tool_specs_from_args(args)  # parsed and checked; built below, before the CT
    if tool_specs and args.scatter == "mc":
        raise jaxdrr.JaxdrrError(
            "--scatter mc does not see tools (the Monte Carlo transports through the CT only); "
            "use --scatter net or none with --tool/--mesh"
        )
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

    tools = build_tools(tool_specs)  # instruments built, mesh files read: errors before the CT
    with long_step(f"loading {selection.describe()}"):
        volume = selection.load()
    materials, labels, mapping, mapping_source = materials_from_args(args, volume, method, labels_path)
    iso = np.asarray(args.isocenter if args.isocenter is not None else volume.center, np.float64)
    Ps = np.stack([view_matrix(lao, cran, iso, g) for lao, cran in views])
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
    tools = posed_tools(tool_specs, tools, iso)
    if tools:
        params = scene_params(config, Scene.create(volume, tools), spectrum)
        for tool in tools:
            print(
                f"tool {tool.name}: {tool.material}, {float(tool.density):.4g} g/cm^3"
                + ("" if tool.displaces else ", on top of the tissue")
            )
    else:
        params = jaxdrr.default_params(config, spectrum)
    if scatter is not None and scatter.method == "mc":
        for P in Ps:  # under jit the Monte Carlo cannot check the geometry
            check_geometry(volume, P, MonteCarloConfig(sdd_mm=g.sdd_mm))
    if scatter is not None and scatter.method == "net":
        h, w = low_res_shape(g.height, g.width, scatter.grid_side)
        P_low = low_res_projection(Ps[0], g.height, g.width, h, w)
        check_range(conditioning(params, P_low, volume.center, scatter))
    if materials.method != "thresholds":
        # Decompose once (the V-Net or the label map), then render the density volume per view.
        t_dec = time.perf_counter()
        megavoxels = float(np.prod(volume.shape)) / 1e6
        estimate = estimate_seconds("vnet", megavoxels) if materials.method == "vnet" else None
        with long_step(
            f"decomposing the CT ({materials.method}, {'x'.join(map(str, volume.shape))} voxels)",
            estimate_s=estimate,
        ):
            volume = jax.jit(
                lambda p, v, lab: jaxdrr.decompose(p, v, materials, labels=lab, mapping=mapping)
            )(params, volume, labels)
            volume.data.block_until_ready()
        if materials.method == "vnet":
            record_seconds("vnet", megavoxels, time.perf_counter() - t_dec)
        print(
            f"decomposed the CT into {', '.join(materials.names)} ({materials.method}"
            + (f", {mapping_source}" if mapping_source else "")
            + f") in {time.perf_counter() - t_dec:.2f} s"
        )
    series = len(views) > 1
    shared_window = window
    if series and shared_window is None and not stores_float(outs[0], bit_depth):
        shared_window = recorded_window(npzs)
        if shared_window is None and len(todo) < len(views):
            print(
                "note: resuming without a recorded grey window (no --save-npz bundles): the new "
                "views get the window of this run's first batch; pass --window LOW HIGH to fix it"
            )
    if tools:
        scene = Scene.create(volume, tools)  # the scene is an argument: never an XLA constant
        render_scene = jax.jit(jax.vmap(make_scene_renderer(config), in_axes=(None, None, 0, 0)))

        def render(params, volume, Ps, keys):
            return render_scene(params, scene.replace(ct=volume), Ps, keys)

        tool_paths = jax.jit(
            jax.vmap(
                lambda sc, P: jnp.stack(list(object_path_lengths(config, sc, P).values())), in_axes=(None, 0)
            )
        )
    else:
        render = jax.jit(jax.vmap(jaxdrr.make_renderer(config), in_axes=(None, None, 0, 0)))
    base_key = jax.random.key(args.seed)
    batch = args.batch
    what = f"{len(todo)} view(s) of {g.height}x{g.width}"
    if scatter is not None and scatter.method == "mc":
        what += f" with Monte Carlo scatter ({scatter.mc_photons:.3g} histories per view)"
    bar = progress_bar(len(todo), desc="render", unit="view", disable=len(todo) < 2)
    t0 = time.perf_counter()
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        pad = idx + [idx[-1]] * (batch - len(idx)) if len(todo) > batch else idx  # fixed shape: one compile
        keys = jnp.stack([jax.random.fold_in(base_key, i) for i in pad])
        message = f"rendering {what}" + (" (the first batch compiles)" if start == 0 else "")
        mc_millions = (
            scatter.mc_photons * len(pad) / 1e6 if scatter is not None and scatter.method == "mc" else 0.0
        )
        t_batch = time.perf_counter()
        with long_step(
            message,
            disable=len(todo) > 1,
            estimate_s=estimate_seconds("mc", mc_millions) if mc_millions else None,
        ):
            images = np.asarray(render(params, volume, jnp.asarray(Ps[np.asarray(pad)]), keys))
            paths = None
            if tools and args.save_npz:
                paths = np.asarray(tool_paths(scene.replace(ct=volume), jnp.asarray(Ps[np.asarray(pad)])))
        if mc_millions:
            record_seconds("mc", mc_millions, time.perf_counter() - t_batch)
        if series and shared_window is None and not stores_float(outs[0], bit_depth):
            shared_window = object_window(images[: len(idx)])
            bar.write(
                f"grey window {shared_window[0]:.4g}..{shared_window[1]:.4g} (from the first batch), "
                f"shared by all {len(views)} views; --window LOW HIGH sets it"
            )
        for j, i in enumerate(idx):
            image = images[j]
            view_window = None
            if stores_float(outs[i], bit_depth):
                make_parent_dir(outs[i])
                jaxdrr.save_image(outs[i], image, bit_depth="float")
            else:
                view_window = shared_window or object_window(image)
                make_parent_dir(outs[i])
                jaxdrr.save_image(outs[i], image, bit_depth=bit_depth, window=view_window)
            if npzs[i] is not None:
                P = Ps[i]
                K, R, t = decompose_projection(P)
                extra = {} if not tools else tool_metadata(tool_specs, tools, P, paths[j])
                make_parent_dir(npzs[i])
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
                    image_file=outs[i].name,
                    window=view_window,
                    ct=selection.record(volume),
                    hu_to_density=args.hu_to_density,
                    materials=args.materials,
                    material_names=list(materials.names),
                    scatter=args.scatter,
                    grid=bool(args.grid),
                    **extra,
                )
        bar.update(len(idx))
    bar.close()
    dt = time.perf_counter() - t0
    shown = outs[todo[0]] if len(todo) == 1 else f"{outs[todo[0]]} .. {outs[todo[-1]]}"
    print(f"rendered {len(todo)} view(s) of {g.height}x{g.width} in {dt:.2f} s -> {shown}")
    return 0
