"""``jaxdrr dataset``: generate (or resume) a dataset from a spec; ``jaxdrr dataset init SPEC``.

    jaxdrr dataset --config SPEC --out DIR      (jaxdrr dataset init SPEC: an example spec)

On a CPU machine, ``--workers N`` runs N local worker processes pinned to their share of the
cores (one JAX process keeps about one core busy with the projector), splits the shards between
them and finalises the dataset when all are done.

Multi-process: on SLURM (``srun``), Open MPI (``mpirun``) or Kubernetes, ``jax.distributed`` is
initialised from the environment (``--distributed auto``, the default, does so when the
environment names more than one process); on one machine give ``--coordinator HOST:PORT
--num-processes N --process-id I`` to each process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from jaxdrr.cli.common import HelpFormatter, check_input_file, check_writable_dir
from jaxdrr.errors import JaxdrrError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``dataset`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "dataset",
        help="generate a synthetic X-ray dataset from a spec (resumable, multi-process); "
        "'jaxdrr dataset init SPEC' writes an example spec",
        description="Generate (or resume) a dataset: jaxdrr dataset --config SPEC --out DIR. "
        "Write a runnable example spec with: jaxdrr dataset init SPEC.toml. The CTs (files or "
        "built-in phantoms with their seed and grid) are named in the spec, which the dataset "
        "records (spec.json, manifest.json).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("action", nargs="?", choices=["init"], help="'init': write an example spec to SPEC_PATH")
    p.add_argument("spec_path", nargs="?", help="with 'init': where to write the example spec (.toml)")
    p.add_argument("--config", help="the dataset spec (TOML or YAML)")
    p.add_argument("--out", help="output directory (rerun with the same one to resume)")
    p.add_argument(
        "--distributed",
        choices=["auto", "on", "off"],
        default="auto",
        help="initialise jax.distributed: 'auto' when SLURM/Open MPI/Kubernetes/JAX_COORDINATOR_ADDRESS "
        "name several processes, or when --coordinator is given (default: auto)",
    )
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (single-machine multi-process runs)")
    p.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
    p.add_argument("--process-id", type=int, help="this process's id (with --coordinator)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes, each pinned to its share of the CPU cores (CPU machines: one "
        "JAX process keeps about one core busy, so use the core count); the shards are split between "
        "them and this process writes the manifest when all have finished (default 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # Internal: set by --workers for its children.
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-cpus", help=argparse.SUPPRESS)
    return p


def _cluster_process_count() -> int:
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        return 2  # the user asked for a coordinator: let jax.distributed work out the rest
    return 1


def initialize_distributed(args) -> None:
    """Calls ``jax.distributed.initialize`` as the options ask (before any other JAX call)."""
    import jax

    explicit = args.coordinator is not None
    if explicit and (args.num_processes is None or args.process_id is None):
        raise JaxdrrError("--coordinator needs --num-processes and --process-id")
    if args.distributed == "off" or (
        args.distributed == "auto" and not explicit and _cluster_process_count() < 2
    ):
        return
    if explicit:
        jax.distributed.initialize(
            coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    else:
        jax.distributed.initialize()  # SLURM, Open MPI, Kubernetes: detected from the environment


def run(args) -> int:
    """Runs ``jaxdrr dataset``; returns the process exit code."""
    # The dataset stack is imported here, when the command runs (it is not needed by the others).
    from jaxdrr.datasets import write_example_spec

    if args.action == "init":
        if not args.spec_path:
            raise JaxdrrError("init: give the path of the spec to write, e.g. pelvis.toml")
        check_writable_dir(Path(args.spec_path).parent, f"spec {args.spec_path!r}")
        path = write_example_spec(args.spec_path)
        print(f"wrote {path}; generate it with: jaxdrr dataset --config {path} --out data/")
        return 0
    if not args.config or not args.out:
        raise JaxdrrError("give --config SPEC and --out DIR (or: jaxdrr dataset init SPEC)")
    from jaxdrr.datasets import load_spec

    check_input_file(args.config, "--config", suffixes=(".toml", ".yaml", ".yml"))
    spec = load_spec(args.config)  # validate before starting anything distributed
    # Permissions and a file in the way are found now, not after the first shard was rendered.
    check_writable_dir(args.out, f"--out {args.out!r}")
    if args.workers < 1:
        raise JaxdrrError("--workers must be >= 1")
    if args.workers > 1 and args.worker_index is None:
        if args.coordinator is not None:
            raise JaxdrrError("--workers and --coordinator exclude each other")
        return run_local_workers(args, spec)
    if args.worker_cpus:  # before JAX starts its thread pools, which size themselves from it
        os.sched_setaffinity(0, {int(c) for c in args.worker_cpus.split(",")})
    share = {}
    if args.worker_index is not None:
        share = dict(process_index=args.worker_index, process_count=args.workers, write_final=False)
    else:
        initialize_distributed(args)
    from jaxdrr.datasets import DatasetWriteError, generate

    try:
        report = generate(spec, args.out, progress=not args.no_progress, **share)
    except DatasetWriteError as e:
        print(f"jaxdrr dataset: error: {e.strerror}", file=sys.stderr)
        return 1
    rate = report.images_per_second
    print(
        f"process {report.process_index}/{report.process_count}: wrote {report.shards_written} shards "
        f"({report.samples_written} images, {rate:.2f} images/s); {report.shards_already_done} already done"
    )
    for name, message in report.failed_cts.items():
        print(f"  CT {name} failed: {message}", file=sys.stderr)
    if report.process_index == 0 and args.worker_index is None:
        _print_state(args.out, report.complete)
    return 1 if report.failed_cts else 0


def _print_state(out, complete: bool) -> None:
    state = "complete" if complete else "INCOMPLETE (see failures/ and logs/; rerun to retry)"
    print(f"dataset {out}: {state}")


def _cpu_shares(count: int) -> list[str]:
    """Splits this process's CPUs into ``count`` contiguous, near-equal groups."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < count:
        return [""] * count  # fewer cores than workers: no pinning
    groups = [cpus[i * len(cpus) // count : (i + 1) * len(cpus) // count] for i in range(count)]
    return [",".join(map(str, g)) for g in groups]


def run_local_workers(args, spec) -> int:
    """``--workers N``: N child processes, each with its share of the shards and of the CPU cores.

    No ``jax.distributed``: the children need no communication (each takes shards ``s`` with
    ``s % N == i``); this process waits for them and writes the manifest and COCO file. If a child
    fails, the others are stopped; rerunning resumes.
    """
    from jaxdrr.datasets import finalize

    base = [sys.executable, "-m", "jaxdrr", "dataset", "--config", args.config, "--out", args.out]
    children = []
    for i, cpus in enumerate(_cpu_shares(args.workers)):
        cmd = [*base, "--workers", str(args.workers), "--worker-index", str(i)]
        cmd += ["--worker-cpus", cpus] if cpus else []
        cmd += ["--no-progress"] if (args.no_progress or i > 0) else []
        children.append(subprocess.Popen(cmd))
    codes = []
    try:
        for child in children:
            codes.append(child.wait())
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    if any(c not in (0, 1) for c in codes):  # 1 = a CT failed (reported by the child); others: crashed
        print(f"jaxdrr dataset: worker exit codes {codes}; rerun the same command to resume", file=sys.stderr)
        return 1
    complete = finalize(args.out, spec)
    _print_state(args.out, complete)
    return 0 if complete else 1
