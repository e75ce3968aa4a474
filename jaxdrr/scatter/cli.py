"""``jaxdrr mc``: Monte Carlo primary, scatter and dose images of a CT (or the built-in phantom).

    jaxdrr mc --ct CT --photons 1e8 --out mc.npz [--lao A --cran B] [--grid 15 80] [--csi-mm 0.6]

Wired into ``jaxdrr/cli.py`` through :func:`add_parser` and :func:`run`. The histories are run in
batches of ``--batch`` (one jitted :func:`jaxdrr.scatter.monte_carlo` call per batch, keys derived
from ``--seed``) with a progress bar; the batches' images are combined in float64, weighted by their
photon counts, so the result equals one call with all the histories (up to the random stream).
The .npz holds every image of the result (float32, renderer ``intensity`` units), the deposited
energy per voxel (keV, summed over all histories), ``P``, the spectrum and a JSON ``metadata``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``mc`` sub-command to an ``argparse`` sub-parser collection."""
    from jaxdrr.cli import GEOMETRY_PRESETS

    p = subparsers.add_parser(
        "mc",
        help="Monte Carlo X-ray transport: primary, scatter (by order) and dose",
        description="Simulate photon histories through the CT (Woodcock tracking, photoelectric, "
        "Compton, Rayleigh) and write primary / scatter images in renderer units and the deposited "
        "energy per voxel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--ct", default="phantom", help="NIfTI file, DICOM directory, or 'phantom'")
    p.add_argument("--series-uid", default=None, help="DICOM SeriesInstanceUID")
    p.add_argument("--phantom-size", type=int, nargs=3, default=(192, 160, 128), metavar=("I", "J", "K"))
    p.add_argument("--lao", type=float, default=0.0, help="LAO angle in degrees (negative = RAO)")
    p.add_argument("--cran", type=float, default=0.0, help="CRAN angle in degrees (negative = CAUD)")
    p.add_argument("--isocenter", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"))
    p.add_argument("--preset", choices=GEOMETRY_PRESETS, default="default")
    p.add_argument("--sdd", type=float, default=None, help="source-detector distance, mm")
    p.add_argument("--sid", type=float, default=None, help="source-isocentre distance, mm")
    p.add_argument("--height", type=int, default=128, help="detector rows")
    p.add_argument("--width", type=int, default=128, help="detector columns")
    p.add_argument("--pixel-size", type=float, default=3.2, help="pixel pitch, mm")
    p.add_argument("--kvp", type=float, default=120.0, help="60/90/120: shipped IPEM-78; others need SpekPy")
    p.add_argument("--filtration", type=float, default=None, help="mm Al (SpekPy)")
    p.add_argument("--spectrum-csv", default=None, help="CSV with energy_keV, fluence columns")
    p.add_argument("--photons", type=float, default=1e7, help="number of histories")
    p.add_argument("--batch", type=float, default=4e6, help="histories per jitted call")
    p.add_argument("--lanes", type=int, default=1 << 16, help="photons transported in parallel")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--out", required=True, help="output .npz")
    return p


def run(args) -> int:
    """Runs ``jaxdrr mc``; returns the process exit code."""
    import jax

    import jaxdrr
    from jaxdrr import geometry as G
    from jaxdrr.cli import _carm_geometry, _load_ct, _spectrum
    from jaxdrr.errors import JaxdrrError
    from jaxdrr.scatter import DetectorAbsorption, GridConfig, MonteCarloConfig, monte_carlo

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    total = int(round(args.photons))
    batch = max(1, min(int(round(args.batch)), total))
    if total < 1:
        raise JaxdrrError(f"--photons must be >= 1, got {args.photons:g}")
    volume = _load_ct(args)
    carm = _carm_geometry(args)
    iso = np.asarray(args.isocenter if args.isocenter is not None else volume.center, float)
    P = np.asarray(G.carm(lao=args.lao, cran=args.cran, isocenter=iso, geometry=carm))
    spectrum = _spectrum(args)
    params = jaxdrr.default_params(spectrum=spectrum)
    config = MonteCarloConfig(
        sdd_mm=carm.sdd_mm,
        detector=args.detector,
        photons_per_pixel=args.photons_per_pixel,
        lanes=args.lanes,
        absorption=DetectorAbsorption(thickness_mm=args.csi_mm) if args.csi_mm else None,
        grid=GridConfig(ratio=args.grid[0], lines_per_cm=args.grid[1]) if args.grid else None,
    )
    h, w = carm.height, carm.width
    sizes = [batch] * (total // batch) + ([total % batch] if total % batch else [])
    fns = {}
    sums: dict[str, np.ndarray] = {}
    diag = {"majorant_violations": 0, "truncated": 0}
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="photon", unit_scale=True) if tqdm else None
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
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    arrays = {k: (v / total if np.ndim(v) == 2 else v).astype(np.float32) for k, v in sums.items()}
    meta = {
        "ct": str(args.ct),
        "lao": args.lao,
        "cran": args.cran,
        "photons": total,
        "seed": args.seed,
        "spectrum": spectrum.name,
        "sdd_mm": carm.sdd_mm,
        "sid_mm": carm.sid_mm,
        "pixel_size_mm": carm.pixel_size_mm,
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
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
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
