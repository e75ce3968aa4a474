"""Speed and memory of V-Net decomposition (jaxdrr.models.vnet.predict_fractions) on CT-sized volumes.

A synthetic CT of a clinical size (512 x 512 x slices at 0.703 x 0.703 x 2.5 mm, an elliptic body
with bone-like rods, noise and -2048 padding outside the reconstruction circle) goes through
``predict_fractions`` under ``jax.jit``: the first call (compile + run) and a second call (run) are
timed, and the process's peak resident memory is read at the end. Each case runs in its own process
so the peak memory is the case's own.

Cases:
  shipped        the shipped weights and configuration (64^3 cubic patches, 16 voxels overlap);
  shipped-tiled  the same weights with ``tile_voxels=2_000_000`` (few large patches);
  two-scale      the two-scale architecture of ``jaxdrr.training.train_vnet2`` (random weights:
                 time and memory only).

Run (one case or all; results appended as JSON lines to --out)::

    python benchmarks/bench_vnet_speed.py --slices 133 --cases shipped shipped-tiled two-scale
    python benchmarks/bench_vnet_speed.py --slices 500 --cases two-scale --calls 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPACING = (0.703, 0.703, 2.5)


def synthetic_ct(slices: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (np.arange(512) - 255.5) * SPACING[0]
    X, Y = np.meshgrid(x, x, indexing="ij")
    body = (X / 170.0) ** 2 + (Y / 120.0) ** 2 <= 1.0
    bone = ((X - 0.0) ** 2 + (Y + 60.0) ** 2 <= 20.0**2) | ((np.abs(X) - 90.0) ** 2 + Y**2 <= 15.0**2)
    plane = np.where(body, 40.0, -1000.0) + np.where(bone, 300.0, 0.0)
    plane = np.where(X**2 + Y**2 <= 180.0**2, plane, -2048.0).astype(np.float32)
    hu = np.repeat(plane[:, :, None], slices, axis=2)
    hu += rng.normal(0.0, 15.0, hu.shape).astype(np.float32)
    return hu


def run_case(case: str, slices: int, calls: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxdrr.models import vnet

    if case == "two-scale":
        from jaxdrr.training.train_vnet2 import TrainConfig

        config = TrainConfig().network()
        weights = vnet.init_weights(config)
    else:
        config, weights = vnet.load_pretrained()
        if case == "shipped-tiled":
            config = dataclasses.replace(config, tile_voxels=2_000_000)
    hu = jnp.asarray(synthetic_ct(slices))
    predict = jax.jit(lambda w, h: vnet.predict_fractions(w, h, SPACING, config=config))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        predict(weights, hu).block_until_ready()
        times.append(time.perf_counter() - t)
    grid = vnet.network_grid_shape(hu.shape, SPACING, config)
    box, _, starts = vnet.tiling(grid, config.patch, config.overlap, config.divisor, config.tile_voxels)
    return {
        "case": case,
        "shape": list(hu.shape),
        "grid": list(grid),
        "patch": list(box),
        "patches": len(starts),
        "seconds_per_call": times,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=133)
    parser.add_argument("--cases", nargs="+", default=["shipped", "shipped-tiled", "two-scale"])
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vnet_speed.jsonl"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args.one, args.slices, args.calls)))
        return
    for case in args.cases:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            case,
            "--slices",
            str(args.slices),
            "--calls",
            str(args.calls),
        ]
        result = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        print(json.dumps(result), flush=True)
        with open(args.out, "a") as f:  # a results log, appended line by line
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
