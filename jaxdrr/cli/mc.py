"""``jaxdrr mc``: Monte Carlo primary, scatter and dose images of a CT (or the built-in phantom).

    jaxdrr mc --ct CT --photons 1e8 --out mc.npz [--lao A --cran B] [--grid 15 80] [--csi-mm 0.6]

The histories are run in batches of ``--batch`` (one jitted :func:`jaxdrr.scatter.monte_carlo`
call per batch, keys derived from ``--seed``) with a progress bar; the batches' images are
combined in float64, weighted by their photon counts, so the result equals one call with all the
histories (up to the random stream). The .npz holds every image of the result (float32, renderer
``intensity`` units), the deposited energy per voxel (keV, summed over all histories), ``P``, the
spectrum and a JSON ``metadata`` (with the CT selection, so the same CT can be reloaded).
Options and the output are checked before the CT is loaded.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import jaxdrr
from jaxdrr.atomic import write_npz
from jaxdrr.cli.common import (
    CtOptions,
    GeometryOptions,
    HelpFormatter,
    add_ct_options,
    add_geometry_options,
    add_spectrum_options,
    carm_geometry,
    check_angles,
    check_non_negative,
    check_output,
    check_positive,
    ct_selection,
    long_step,
    make_parent_dir,
    progress_bar,
    spectrum_from_args,
    view_matrix,
)
from jaxdrr.errors import JaxdrrError
from jaxdrr.scatter import DetectorAbsorption, GridConfig, MonteCarloConfig, monte_carlo
from jaxdrr.scatter.monte_carlo import check_geometry

CT_OPTIONS = CtOptions()
# The default preset's 409.6 mm field on 128 x 128 pixels of 3.2 mm: more histories per pixel.
GEOMETRY_OPTIONS = GeometryOptions(
    several_views=False,
    lao_help="LAO angle in degrees (negative = RAO)",
    cran_help="CRAN angle in degrees (negative = CAUD)",
    height=128,
    width=128,
    pixel_size_mm=3.2,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``mc`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "mc",
        help="Monte Carlo X-ray transport: primary, scatter (by order) and dose",
        description="Simulate photon histories through the CT (Woodcock tracking, photoelectric, "
        "Compton, Rayleigh) and write primary / scatter images in renderer units and the deposited "
        "energy per voxel.",
        formatter_class=HelpFormatter,
    )
    add_ct_options(p, CT_OPTIONS)
    add_geometry_options(p, GEOMETRY_OPTIONS)
    add_spectrum_options(p)
    p.add_argument("--photons", type=float, default=1e7, help="number of histories")
    p.add_argument("--batch", type=float, default=4e6, help="histories per jitted call")
    p.add_argument("--lanes", type=int, default=1 << 16, help="photons transported in parallel")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the photon histories (batch i: fold_in(seed, i))"
    )
    p.add_argument("--detector", choices=("ei", "pc"), default="ei", help="main readout of the images")
    p.add_argument("--photons-per-pixel", type=float, default=5e5, help="N0 of the flat-field normalisation")
    p.add_argument("--csi-mm", type=float, default=None, help="CsI thickness for detector absorption")
    p.add_argument(
        "--grid",
        type=float,
        nargs=2,
        default=None,
        metavar=("RATIO", "LINES_PER_CM"),
        help="focused linear anti-scatter grid (lead septa 36 um, aluminium interspace)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output .npz (images, deposited energy, P, spectrum, metadata with the CT selection); "
        "missing folders are created, an existing file is replaced",
    )
    return p


def run(args) -> int:
    """Runs ``jaxdrr mc``; returns the process exit code."""
    # Every option and the output are checked before the CT is loaded.
    selection = ct_selection(args)
    check_positive(args.photons, "--photons")
    check_positive(args.batch, "--batch")
    check_positive(args.lanes, "--lanes", integer=True)
    check_positive(args.photons_per_pixel, "--photons-per-pixel")
    check_non_negative(args.csi_mm, "--csi-mm")
    if args.grid is not None:
        check_positive(args.grid[0], "--grid RATIO")
        check_positive(args.grid[1], "--grid LINES_PER_CM")
    total = int(round(args.photons))
    if total < 1:
        raise JaxdrrError(f"--photons must be >= 1, got {args.photons:g}")
    batch = max(1, min(int(round(args.batch)), total))
    geometry = carm_geometry(args)
    check_angles(args.lao, args.cran)
    if args.isocenter is not None:
        view_matrix(args.lao, args.cran, args.isocenter, geometry)
    check_output(args.out, "--out", (".npz",), inputs=[selection.path, args.spectrum_csv])
    spectrum = spectrum_from_args(args)
    params = jaxdrr.default_params(spectrum=spectrum)
    config = MonteCarloConfig(
        sdd_mm=geometry.sdd_mm,
        detector=args.detector,
        photons_per_pixel=args.photons_per_pixel,
        lanes=args.lanes,
        absorption=DetectorAbsorption(thickness_mm=args.csi_mm) if args.csi_mm else None,
        grid=GridConfig(ratio=args.grid[0], lines_per_cm=args.grid[1]) if args.grid else None,
    )
    with long_step(f"loading {selection.describe()}"):
        volume = selection.load()
    iso = np.asarray(args.isocenter if args.isocenter is not None else volume.center, float)
    P = view_matrix(args.lao, args.cran, iso, geometry)
    check_geometry(volume, P, config)  # under jit the Monte Carlo cannot check it
    h, w = geometry.height, geometry.width
    sizes = [batch] * (total // batch) + ([total % batch] if total % batch else [])
    fns = {}
    sums: dict[str, np.ndarray] = {}
    diag = {"majorant_violations": 0, "truncated": 0}
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    # The first batch includes the compilation; the bar's rate settles from the second on.
    bar = progress_bar(total, desc="mc", unit="photon", unit_scale=True)
    for i, n in enumerate(sizes):
        if n not in fns:
            fns[n] = jax.jit(
                lambda v, P, k, p, n=n: monte_carlo(v, P, h, w, photons=n, key=k, params=p, config=config)
            )
        out = jax.tree_util.tree_map(np.asarray, fns[n](volume, P, jax.random.fold_in(key, i), params))
        for k, v in out.items():
            if k in diag:
                diag[k] += int(v)
            elif k == "deposited_energy_keV" or k == "deposited_total_keV":
                sums[k] = sums.get(k, 0.0) + v.astype(np.float64)
            elif np.ndim(v) == 2:  # images are per-history normalised: weight by the batch's histories
                sums[k] = sums.get(k, 0.0) + v.astype(np.float64) * n
        bar.update(n)
    bar.close()
    elapsed = time.perf_counter() - t0
    arrays = {k: (v / total if np.ndim(v) == 2 else v).astype(np.float32) for k, v in sums.items()}
    meta = {
        "ct": selection.record(volume),
        "lao": args.lao,
        "cran": args.cran,
        "photons": total,
        "seed": args.seed,
        "spectrum": spectrum.name,
        "sdd_mm": geometry.sdd_mm,
        "sid_mm": geometry.sid_mm,
        "pixel_size_mm": geometry.pixel_size_mm,
        "detector": args.detector,
        "photons_per_pixel": args.photons_per_pixel,
        "csi_mm": args.csi_mm,
        "grid": args.grid,
        "seconds": elapsed,
        "photons_per_s": total / elapsed,
        **diag,
        "units": "images: renderer 'intensity' units (keV for ei, photons for pc) after flat-field "
        "normalisation to N0; deposited_energy_keV: keV summed over all histories",
    }
    out_path = make_parent_dir(args.out)
    out_path = write_npz(
        out_path,
        P=P,
        energies_keV=np.asarray(params["energies"]),
        spectrum=np.asarray(params["spectrum"]),
        metadata=np.array(json.dumps(meta)),
        **arrays,
    )
    spr = arrays["scatter"].sum() / max(arrays["primary"].sum(), 1e-30)
    print(
        f"wrote {out_path}: {total:.3g} histories in {elapsed:.1f} s ({total / elapsed:.3g}/s), "
        f"mean SPR {spr:.2f}, deposited {float(arrays['deposited_total_keV']) / total:.2f} keV/history"
    )
    if diag["majorant_violations"] or diag["truncated"]:
        print(f"warning: {diag}")
    return 0
