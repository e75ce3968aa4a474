#!/usr/bin/env python
"""The native CPU projector (``backend="native"``) against the XLA path (``backend="xla"``).

The volume and view of ``bench_project.py``: the pelvis phantom on an N^3 grid, an M x M detector,
C-arm LAO 30 CRAN 10, the volume filling the detector. For each sampling (``--step``: half-voxel
steps and/or ``"planes"``) and each CPU count (``--cpus``: 1 and all; the worker process is pinned
with ``sched_setaffinity`` before JAX starts, which sets both XLA's thread pool and the native
kernel's threads), one fresh worker process times, interleaving the two backends round by round
(so that a change in background load hits both):

* ``fwd1``: 1-channel forward projection (total density);
* ``fwd3``: 3-channel forward projection (material densities);
* ``grad_pose``: 1-channel forward + gradient w.r.t. P (``jax.value_and_grad``);
* ``grad_volume``: 1-channel forward + gradient w.r.t. the volume.

Each: jit, warm-up excluded, median of ``--repeats`` per round, median over ``--rounds``,
``block_until_ready``. Speed-up = XLA time / native time of the same round.

    python benchmarks/bench_native.py                         # 256^3, 256^2, both steps, 1 + all CPUs
    python benchmarks/bench_native.py --quick                 # 64^3, 64^2 smoke run
    python benchmarks/bench_native.py --out [--tag jax0.12]   # also write results/native_<date>[_tag].{json,md}

Timings on a shared machine are only indicative: the load average before and after each worker
is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BACKENDS = ("xla", "native")
MEASUREMENTS = ("fwd1", "fwd3", "grad_pose", "grad_volume")


def worker(spec: dict) -> dict:
    cpus = sorted(os.sched_getaffinity(0))[: spec["cpus"]]
    os.sched_setaffinity(0, cpus)  # before JAX starts its thread pools
    import bench_project
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdrr.ops import native_project, project

    if not native_project.available():
        return {"error": native_project.unavailable_reason()}
    vol = bench_project.make_volume(spec["size"])
    M = spec["detector"]
    P = bench_project.projection_matrix(vol, M).astype(jnp.float32)
    d1 = bench_project.densities(vol, 1).astype(jnp.float32)
    d3 = bench_project.densities(vol, 3).astype(jnp.float32)
    affine = vol.affine
    step = "planes" if spec["step"] == "planes" else None
    Wt1 = jnp.asarray(np.random.default_rng(0).random((M, M, 1)), jnp.float32)

    def make(name, backend):
        proj = lambda v, P: project(v, affine, P, M, M, step_mm=step, backend=backend)
        if name == "fwd1":
            f, args = jax.jit(proj), (d1, P)
        elif name == "fwd3":
            f, args = jax.jit(proj), (d3, P)
        elif name == "grad_pose":
            f, args = jax.jit(jax.value_and_grad(lambda v, P: jnp.sum(proj(v, P) * Wt1), argnums=1)), (d1, P)
        else:
            f, args = jax.jit(jax.value_and_grad(lambda v, P: jnp.sum(proj(v, P) * Wt1), argnums=0)), (d1, P)
        return lambda: f(*args)

    results = {}
    for name in spec["measurements"]:
        fns = {b: make(name, b) for b in BACKENDS}
        first = {}
        for b in BACKENDS:  # compile + warm-up
            t0 = time.perf_counter()
            jax.block_until_ready(fns[b]())
            first[b] = time.perf_counter() - t0
            jax.block_until_ready(fns[b]())
        rounds = {b: [] for b in BACKENDS}
        for _ in range(spec["rounds"]):
            for b in BACKENDS:
                times, _ = common.time_repeats(fns[b], spec["repeats"], warmup=0, sync=jax.block_until_ready)
                rounds[b].append(common.median(times))
        ratio = [x / n for x, n in zip(rounds["xla"], rounds["native"])]
        results[name] = {
            "xla_s": common.median(rounds["xla"]),
            "native_s": common.median(rounds["native"]),
            "speedup": common.median(ratio),
            "rounds": rounds,
            "first_call_s": first,
        }
        print(f"  {spec['step']:6s} cpus={len(cpus)} {name:11s} {results[name]['speedup']:.2f}x", flush=True)
    return {
        "spec": spec,
        "cpus_used": len(cpus),
        "native": native_project.info(),
        "jax": jax.__version__,
        "results": results,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--detector", type=int, default=256)
    ap.add_argument("--step", nargs="+", choices=("half", "planes"), default=["half", "planes"])
    ap.add_argument("--cpus", nargs="+", type=int, default=None, help="CPU counts (default: 1 and all)")
    ap.add_argument("--measurements", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="64^3 volume, 64^2 detector, 1 round")
    ap.add_argument("--out", action="store_true", help="write results/native_<date>[_<tag>].{json,md}")
    ap.add_argument("--tag", default="", help="suffix of the results' file names (e.g. the jax version)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        common.emit(worker(json.loads(args.worker)))
        return
    if args.quick:
        args.size, args.detector, args.rounds, args.repeats = 64, 64, 1, 2
    all_cpus = len(os.sched_getaffinity(0))
    cpus = args.cpus or sorted({1, all_cpus})
    info = common.machine_info()
    print(f"machine: {info.get('cpus')} CPUs, load {info['loadavg']}, jax {info.get('jax')}", flush=True)
    runs = []
    for step in args.step:
        for n in cpus:
            spec = dict(
                size=args.size,
                detector=args.detector,
                step=step,
                cpus=n,
                measurements=args.measurements,
                repeats=args.repeats,
                rounds=args.rounds,
            )
            r = common.run_worker(__file__, spec, timeout=3600)
            if "error" in r:
                print(f"worker {spec} failed: {r}", flush=True)
            runs.append(r)
    rows = []
    for r in runs:
        if "error" in r:
            continue
        for name, m in r["results"].items():
            rows.append(
                [
                    r["spec"]["step"],
                    r["cpus_used"],
                    name,
                    m["xla_s"],
                    m["native_s"],
                    m["speedup"],
                    str(r["loadavg_before"]),
                ]
            )
    table = common.md_table(
        ["step", "cpus", "measurement", "xla s", "native s", "speed-up", "load before"], rows
    )
    print(table)
    if args.out:
        payload = {"machine": info, "args": vars(args), "runs": runs}
        md = (
            f"# Native CPU projector vs XLA ({info['date']})\n\n"
            f"Command: `python benchmarks/bench_native.py {' '.join(sys.argv[1:])}`  \n"
            f"Machine: {info.get('cpus')} CPUs, {info.get('platform')}, Python {info.get('python')}, "
            f"jax {info.get('jax')}; load average at start {info['loadavg']}, at end {common.load_average()} "
            "(shared machine: timings are indicative).  \n"
            f"Volume: pelvis phantom {args.size}^3, detector {args.detector}^2, LAO 30 CRAN 10, float32.\n\n"
            f"{table}\n"
        )
        stem = f"native_{common.today()}" + (f"_{args.tag}" if args.tag else "")
        paths = common.write_results(stem, payload, md)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
