"""Dataset generation throughput (``jaxdrr.datasets``): images/s with full physics, 1 vs 2 processes.

Usage::

    python benchmarks/bench_dataset.py --out benchmarks/results          # 256x256 and 620x480, 64 images each
    python benchmarks/bench_dataset.py --sizes 620x480 --images 128 --processes 1,2 --pin both
    python benchmarks/bench_dataset.py --quick --out /tmp/bench_dataset_quick   # smoke run, minutes

Results: ``<out>/dataset_<date>.json`` (every raw number, the spec of every run, machine info, load
averages) and ``<out>/dataset_<date>.md`` (tables); ``--quick`` writes ``dataset_quick_<date>.*``.

What is rendered: the built-in analytic pelvis (``phantom = "analytic"``, ``--ct-shape``, default
192 x 160 x 128 voxels over 380 x 300 x 240 mm) with the 13 built-in landmarks and 7 projected
bone masks, FULL physics: kVp drawn from [60, 90, 120] (IPEM-78 spectra), photons per pixel
log-uniform in [1e4, 1e5], quantum + electronic noise on, the scatter ConvNet on every image
(``scatter_probability = 1``); poses LAO/RAO +-45, CRAN/CAUD +-30, isocentre jitter 15 mm, SDD
950-1200 mm, SID 600-750 mm; pixel pitch +-5 % around 400 mm / width (a ~400 mm wide panel).
Detectors are WIDTHxHEIGHT (``--sizes``, default 256x256 and 620x480: the DeepDRR paper's
615 x 479, rounded). Storage: float32 images, ``--shard-size`` images per HDF5 shard,
``--batch-size`` poses per vmapped render call, COCO file at the end.

Measurements (every run is a fresh process, so each includes start-up, CT voxelisation and XLA
compilation):

* **CLI runs** (``--processes``, default 1,2): ``python -m jaxdrr dataset --config SPEC --out DIR
  --no-progress``; with N > 1 processes, N such commands with ``--coordinator 127.0.0.1:PORT
  --num-processes N --process-id I`` (a free port from binding port 0). Reported: the wall time of
  the whole command (``images/s (wall)`` = images / wall), and the **steady-state** rate parsed from
  ``logs/process-XXX.log``: samples in the shards after each process's first one / (time of the
  last "wrote shard" line - time of the first), over the union of the processes' windows (the JSON
  also has the sum of per-process rates and how much the windows overlap). Also: time from
  launch to the first shard (start-up + compile + first batch), CPU seconds / wall (cores actually
  used), peak RSS per process, the writer statistics each process logs.
* **CPU threads**: XLA's CPU thread pool is sized from the process's CPU affinity mask. With jax
  0.12 the classic ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``
  has NO effect (measured on 2 cores: CPU time / wall stayed 1.96 on a jitted matmul with and
  without it), while ``taskset -c 0`` / ``os.sched_setaffinity`` does (ratio 1.00, 7 threads
  instead of 13). So ``--pin auto`` (default) gives each of N processes its own 1/N of the cores
  (``taskset -c``; ``sched_setaffinity`` where taskset is missing) and the 1-process run all of
  them; ``--pin none`` lets N processes oversubscribe; ``--pin both`` runs N > 1 processes both
  ways. ``--xla-flags`` passes extra XLA_FLAGS to the CLI runs for experiments.
* **Cost of writing** (in-process, ``--write-modes``, default ``discard,none,lzf,gzip``): a worker
  process calls ``jaxdrr.datasets.generate(spec, out, progress=False)`` directly with
  ``output.compression`` = none / lzf / gzip; ``discard`` replaces
  ``jaxdrr.datasets.store.write_shard`` by a stub that writes nothing (the no-writing baseline).
  ``store.write_shard`` is wrapped with a timer in every mode (HDF5 write + fsync + SHA-256 of one
  shard). Reported: the returned ``Report``'s ``seconds_writer_busy`` and
  ``seconds_waiting_for_writer`` as fractions of ``Report.seconds``; the write_shard share of the
  steady window (sum of the write times of shards 2..n / (end of the last write - end of the
  first); the writer thread is sequential, so those writes lie inside the window); and the
  steady-state slowdown against ``discard`` (1 - rate / rate without writing): the real cost of
  writing, including the writer thread's competition for the CPU. The issue's goal: writing costs
  < 10 % of wall time. (The writer's busy time starts after ``jax.block_until_ready`` of the
  batch, so it counts only the host's conversion and write.)
* **Expected GPU rate**: ``images/s = samples_per_s / samples_per_image`` with ``samples_per_image
  = projector calls per image x sum over the H x W rays of the projector's samples per ray``
  (``step_mm = "planes"``, counted with :func:`jaxdrr.ops.rays.detector_rays` at the first
  ``--poses`` poses of the spec on the CT's grid; the calls of one sample, and their channel
  counts, are traced from ``pipeline.make_sample_fn`` with ``jax.eval_shape``: one call of the
  material + label channels together, or two where the labels are projected separately). ``samples_per_s`` is the forward projector's measured rate on a GPU, read from
  ``benchmarks/results/*.json`` written by ``gpu_check.py`` on a GPU (``mode.on_gpu``) or from
  ``--gpu-results FILE``; if there is none the JSON says so and no GPU rate is given. The same
  formula with the CPU projector's measured rate (``project_*_planes.json``) gives the CPU
  projector-bound rate, to compare with what the pipeline achieves. It is an upper bound: it
  ignores the scatter network, noise, landmarks, the channel count (3 material channels + 7
  labels; the measured rates are for 1-2 channels) and writing.

On a machine with one GPU, use ``--processes 1``: the N > 1 CLI runs do not split GPUs between
processes (they only set ``XLA_PYTHON_CLIENT_PREALLOCATE=false``).

Working directories (``--work``, default a temporary directory, removed unless ``--keep``) hold
the datasets; their filesystem type is recorded, as a tmpfs would hide the cost of writing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import glob
import importlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import RESULTS_DIR, emit, load_average, machine_info, md_table, run_worker, today  # noqa: E402

DEFAULT_SIZES = "256x256,620x480"
QUICK = {"sizes": "64x64", "ct_shape": "48,40,32", "images": 8, "shard_size": 2, "batch_size": 2}
FOV_MM = 400.0  # panel width the pixel pitch is chosen for
WRITE_MODES = ("discard", "none", "lzf", "gzip")
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"
RE_SHARD = re.compile(r"^(\S+ \S+) INFO p\d+ wrote shard (\d+) \((\d+) samples from (\d+)\)")
RE_START = re.compile(r"^(\S+ \S+) INFO p\d+ process (\d+)/(\d+): ")
RE_DONE = re.compile(
    r"^(\S+ \S+) INFO p\d+ process (\d+): wrote (\d+) shards \((\d+) samples\) in ([\d.]+) s; "
    r"writer busy ([\d.]+) s, waited ([\d.]+) s"
)
TASKSET = shutil.which("taskset")
RE_CLI_RATE = re.compile(r"process (\d+)/(\d+): wrote (\d+) shards \((\d+) images, ([\d.]+) images/s\)")


# ----------------------------------------------------------------------------- spec


def parse_size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT -> (width, height)."""
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def make_spec(args, width: int, height: int, compression: str) -> dict:
    pitch = FOV_MM / width
    shape = [int(v) for v in args.ct_shape.split(",")]
    return {
        "name": f"bench-{width}x{height}",
        "seed": 0,
        "images_per_ct": args.images,
        "ct": [{"phantom": "analytic", "shape": shape, "landmarks": "builtin", "labels": "builtin"}],
        "detector": {
            "height": height,
            "width": width,
            "pixel_mm": [round(0.95 * pitch, 4), round(1.05 * pitch, 4)],
        },
        "pose": {
            "lao_deg": [-45, 45],
            "cran_deg": [-30, 30],
            "isocenter_mm": "center",
            "isocenter_jitter_mm": 15,
            "sdd_mm": [950, 1200],
            "sid_mm": [600, 750],
        },
        "physics": {
            "kvp": [60, 90, 120],
            "spectrum": "ipem78",
            "photons_per_pixel": [1e4, 1e5],
            "scatter_probability": 1.0,
            "noise": True,
            "materials": "thresholds",
        },
        "annotations": {"landmarks": True, "heatmaps": bool(args.heatmaps), "masks": True},
        "output": {
            "shard_size": args.shard_size,
            "batch_size": args.batch_size,
            "image_dtype": "float32",
            "compression": compression,
            "coco": True,
        },
    }


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(spec: dict) -> str:
    """The spec dict as TOML (scalars, one [[ct]] array of tables, plain tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in spec.items() if not isinstance(v, (dict, list))]
    for table in spec.get("ct", []):
        lines += ["", "[[ct]]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for name, table in spec.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == spec, "TOML round trip failed"
    return text


def write_spec(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(spec))
    return path


# ----------------------------------------------------------------------------- logs


def _log_time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, LOG_TIME).timestamp()  # local time, like logging's asctime


def parse_log(path: Path) -> dict:
    """Start time, the 'wrote shard' lines (epoch s, shard, samples) and the final writer summary."""
    out: dict = {"start": None, "shards": [], "summary": None}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        if m := RE_SHARD.match(line):
            out["shards"].append((_log_time(m[1]), int(m[2]), int(m[3])))
        elif (m := RE_START.match(line)) and out["start"] is None:
            out["start"] = _log_time(m[1])
        elif m := RE_DONE.match(line):
            out["summary"] = {
                "seconds": float(m[5]),
                "samples": int(m[4]),
                "writer_busy_s": float(m[6]),
                "waited_s": float(m[7]),
            }
    return out


def steady_rate(times_samples: list[tuple[float, int]]) -> dict:
    """Samples after the first shard / (last shard time - first shard time)."""
    ts = sorted(times_samples)
    if len(ts) < 2 or ts[-1][0] <= ts[0][0]:
        return {"rate": None, "shards": len(ts), "note": "needs >= 2 shards per process"}
    n = sum(s for _, s in ts[1:])
    window = ts[-1][0] - ts[0][0]
    return {
        "rate": n / window,
        "samples": n,
        "window_s": window,
        "shards": len(ts),
        "t0": ts[0][0],
        "t1": ts[-1][0],
    }


# ----------------------------------------------------------------------------- CLI runs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_affinity(cores):
    os.sched_setaffinity(0, cores)


def core_split(n: int, pin: bool) -> tuple[list, str]:
    cores = sorted(os.sched_getaffinity(0))
    if n == 1 or not pin:
        return [None] * n, "none (all cores)" if n == 1 else f"none: {n} processes share {len(cores)} cores"
    if len(cores) < n:
        return [None] * n, f"not possible: {n} processes > {len(cores)} cores (oversubscribed)"
    per = len(cores) // n
    split = [cores[i * per : (i + 1) * per] for i in range(n)]
    return split, "; ".join(f"p{i}: cores {c}" for i, c in enumerate(split))


def run_cli(spec_path: Path, out: Path, n: int, pin: bool, args) -> dict:
    """Runs the dataset CLI in n processes; wall, CPU, RSS, logs and the steady-state rate."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if args.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    if n > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # GPUs: n processes, one device each
    base = [
        sys.executable,
        "-m",
        "jaxdrr",
        "dataset",
        "--config",
        str(spec_path),
        "--out",
        str(out),
        "--no-progress",
    ]
    port = free_port() if n > 1 else None
    split, pin_note = core_split(n, pin)
    rec: dict = {
        "kind": "cli",
        "processes": n,
        "pinned": pin and n > 1 and split[0] is not None,
        "affinity": pin_note,
        "xla_flags": env.get("XLA_FLAGS", ""),
        "loadavg_before": load_average(),
    }
    procs, logs = [], []
    rec["commands"] = []
    t_launch = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        cmd = base + (
            []
            if n == 1
            else ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i)]
        )
        log = open(out.parent / f"{out.name}.p{i}.out", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        pre = None
        if split[i] is not None:
            if TASKSET:  # exec'd, so no fork of this (multithreaded, jax-importing) process runs Python
                cmd = [TASKSET, "-c", ",".join(str(c) for c in split[i]), *cmd]
            else:
                pre = functools.partial(_set_affinity, split[i])
        rec["commands"].append(" ".join(cmd))
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(out.parent), preexec_fn=pre
            )
        )
    usage: dict[int, tuple] = {}
    deadline = t0 + args.timeout
    timed_out = False
    while len(usage) < n:
        for i, p in enumerate(procs):
            if i in usage:
                continue
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                usage[i] = (time.perf_counter() - t0, ru)
        if time.perf_counter() > deadline:
            timed_out = True
            for i, p in enumerate(procs):
                if i not in usage:
                    p.kill()
                    _, status, ru = os.wait4(p.pid, 0)
                    p.returncode = os.waitstatus_to_exitcode(status)
                    usage[i] = (time.perf_counter() - t0, ru)
            break
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    for log in logs:
        log.close()
    rec.update(wall_s=wall, loadavg_after=load_average(), timed_out=timed_out)
    per, rates = [], []
    for i, p in enumerate(procs):
        text = (out.parent / f"{out.name}.p{i}.out").read_text()
        end_s, ru = usage[i]
        parsed = parse_log(out / "logs" / f"process-{i:03d}.log")
        st = steady_rate([(t, s) for t, _, s in parsed["shards"]])
        cli = RE_CLI_RATE.search(text)
        entry = {
            "process": i,
            "returncode": p.returncode,
            "exit_s": end_s,
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "cores_used": (ru.ru_utime + ru.ru_stime) / end_s if end_s > 0 else None,
            "peak_rss_mb": ru.ru_maxrss / 1024.0,
            "startup_s": parsed["start"] - t_launch if parsed["start"] else None,
            "first_shard_s": parsed["shards"][0][0] - t_launch if parsed["shards"] else None,
            "shards": len(parsed["shards"]),
            "samples": sum(s for _, _, s in parsed["shards"]),
            "steady": st,
            "writer_log": parsed["summary"],
            "cli_images_per_s": float(cli[5]) if cli else None,
            "output_tail": text.strip().splitlines()[-6:],
        }
        if p.returncode != 0:
            entry["output_tail"] = text.strip().splitlines()[-30:]
        per.append(entry)
        rates.append(st)
    rec["per_process"] = per
    samples = sum(e["samples"] for e in per)
    rec["samples"] = samples
    rec["ok"] = all(e["returncode"] == 0 for e in per) and not timed_out
    rec["images_per_s_wall"] = samples / wall if wall > 0 else None
    rec["first_shard_s"] = min(
        (e["first_shard_s"] for e in per if e["first_shard_s"] is not None), default=None
    )
    rec["cpu_s"] = sum(e["cpu_s"] for e in per)
    rec["cores_used"] = rec["cpu_s"] / wall if wall > 0 else None
    rec["peak_rss_mb"] = max(e["peak_rss_mb"] for e in per)
    if all(r["rate"] for r in rates):
        # Headline (conservative): all samples after each process's first shard over the union of
        # the steady windows; the sum of per-process rates is exact only when the windows overlap.
        t0s, t1s = [r["t0"] for r in rates], [r["t1"] for r in rates]
        span = max(t1s) - min(t0s)
        rec["steady_images_per_s"] = sum(r["samples"] for r in rates) / span
        rec["steady_sum_of_process_rates"] = sum(r["rate"] for r in rates)
        rec["steady_overlap"] = max(0.0, min(t1s) - max(t0s)) / span
    else:
        rec["steady_images_per_s"] = None
        rec["steady_note"] = "some process wrote < 2 shards: raise --images or lower --shard-size"
    busy = [e["writer_log"] for e in per if e["writer_log"]]
    if busy:
        rec["writer_busy_frac"] = sum(b["writer_busy_s"] for b in busy) / sum(b["seconds"] for b in busy)
        rec["writer_waited_frac"] = sum(b["waited_s"] for b in busy) / sum(b["seconds"] for b in busy)
    rec.update(_dataset_check(out, args.images))
    return rec


def _dataset_check(out: Path, expected: int) -> dict:
    """Opens the finished dataset: complete, sample count, bytes on disk."""
    try:
        from jaxdrr.datasets import open_dataset

        ds = open_dataset(out)
        first = ds[0]
        shards = sorted((out / "shards").glob("shard-*.h5"))
        nbytes = sum(p.stat().st_size for p in shards)
        manifest = json.loads((out / "manifest.json").read_text())
        return {
            "dataset_ok": len(ds) == expected and bool(manifest.get("complete")),
            "dataset_len": len(ds),
            "bytes": nbytes,
            "mb_per_image": nbytes / max(len(ds), 1) / 1e6,
            "coco_json": (out / "coco.json").is_file(),
            "image_shape": list(first["image"].shape),
            "fields": sorted(k for k, v in first.items() if hasattr(v, "shape")),
        }
    except Exception as e:  # noqa: BLE001 - reported, never fatal to the benchmark
        return {"dataset_ok": False, "dataset_error": f"{type(e).__name__}: {e}"}


# ----------------------------------------------------------------------------- in-process runs


def worker_main(cfg: dict) -> None:
    """Runs generate() in this (fresh) process with write_shard timed or discarded."""
    t_start = time.perf_counter()
    import jax

    import jaxdrr.datasets
    from jaxdrr.datasets import store

    import_s = time.perf_counter() - t_start
    writes: list[dict] = []
    real = store.write_shard
    discard = cfg["mode"] == "discard"

    def timed_write_shard(root, shard_id, arrays, attrs, entry, compression):
        t0 = time.perf_counter()
        if discard:
            entry = dict(entry, file=None, bytes=0)
        else:
            entry = real(root, shard_id, arrays, attrs, entry, compression)
        t1 = time.perf_counter()
        writes.append(
            {
                "t_end": t1 - t_start,
                "seconds": t1 - t0,
                "samples": int(entry["count"]),
                "bytes": int(entry["bytes"]),
            }
        )
        return entry

    store.write_shard = timed_write_shard
    t0 = time.perf_counter()
    report = jaxdrr.datasets.generate(cfg["spec"], cfg["out"], progress=False, write_final=not discard)
    call_s = time.perf_counter() - t0
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    emit(
        {
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.local_devices()],
            "import_s": import_s,
            "generate_call_s": call_s,
            "finalize_s": call_s - report.seconds,
            "report": {k: v for k, v in vars(report).items()},
            "images_per_second": report.images_per_second,
            "writes": writes,
            "peak_rss_mb": hwm,
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "total_s": time.perf_counter() - t_start,
        }
    )


def run_inproc(spec_path: Path, out: Path, mode: str, args) -> dict:
    cfg = {"spec": str(spec_path), "out": str(out), "mode": mode}
    r = run_worker(__file__, cfg, timeout=args.timeout)
    rec = {"kind": "inproc", "mode": mode, "processes": 1, **r}
    if "error" in r:
        rec["ok"] = False
        return rec
    rep, writes = r["report"], r["writes"]
    secs = rep["seconds"]
    rec["ok"] = rep["samples_written"] == args.images
    rec["samples"] = rep["samples_written"]
    rec["images_per_s_report"] = r["images_per_second"]
    rec["images_per_s_wall"] = rep["samples_written"] / r["wall_s"] if r.get("wall_s") else None
    rec["writer_busy_frac"] = rep["seconds_writer_busy"] / secs if secs else None
    rec["writer_waited_frac"] = rep["seconds_waiting_for_writer"] / secs if secs else None
    rec["write_shard_s"] = sum(w["seconds"] for w in writes)
    rec["write_shard_frac"] = rec["write_shard_s"] / secs if secs else None
    st = steady_rate([(w["t_end"], w["samples"]) for w in writes])
    rec["steady"] = st
    rec["steady_images_per_s"] = st["rate"]
    if st["rate"]:
        later = sorted(writes, key=lambda w: w["t_end"])[1:]
        rec["write_shard_frac_steady"] = sum(w["seconds"] for w in later) / st["window_s"]
    rec["first_shard_s"] = min((w["t_end"] for w in writes), default=None)
    rec["cores_used"] = r["cpu_s"] / r["total_s"] if r.get("total_s") else None
    rec["bytes"] = sum(w["bytes"] for w in writes)
    rec["mb_per_image"] = rec["bytes"] / max(rec["samples"], 1) / 1e6
    rec["write_mb_per_s"] = (
        rec["bytes"] / 1e6 / rec["write_shard_s"] if rec["write_shard_s"] and rec["bytes"] else None
    )
    if mode != "discard":
        rec.update(_dataset_check(out, args.images))
    return rec


# ----------------------------------------------------------------------------- expected rates


def projector_calls(spec, tables, ct, landmarks: int, labels: int) -> list[dict]:
    """The projector calls of one sample: traced (``jax.eval_shape``, nothing computed) with
    :func:`jaxdrr.ops.project.project`'s volume and detector checks wrapped to record each call's
    channel count and rays. Independent of how the pipeline groups its projections."""
    import jax
    import jax.numpy as jnp

    from jaxdrr.datasets import pipeline

    project_module = importlib.import_module("jaxdrr.ops.project")  # the attribute is the function
    calls: list[dict] = []
    check_volume, check_detector = project_module._check_volume, project_module.check_detector

    def recording_check_volume(volume):
        calls.append({"channels": int(jnp.shape(volume)[0])})
        return check_volume(volume)

    def recording_check_detector(height, width):
        calls[-1]["rays"] = int(height) * int(width)
        return check_detector(height, width)

    project_module._check_volume, project_module.check_detector = (
        recording_check_volume,
        recording_check_detector,
    )
    try:
        fn = pipeline.make_sample_fn(spec, landmarks, labels)
        jax.eval_shape(fn, tables, ct, jnp.asarray(0, jnp.int32))
    finally:
        project_module._check_volume, project_module.check_detector = check_volume, check_detector
    return calls


def samples_per_image(spec_dict: dict, n_poses: int) -> dict:
    """Projector samples (sum of per-ray steps) per image at the spec's first poses."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdrr.datasets import pipeline, sampling
    from jaxdrr.datasets.spec import spec_from_dict
    from jaxdrr.ops.rays import VolumeGrid, detector_rays, resolve_step

    # the module (jaxdrr.datasets.generate, the attribute, is the function of the same name)
    generate_module = importlib.import_module("jaxdrr.datasets.generate")
    spec = spec_from_dict(spec_dict)
    config = pipeline.render_config(spec)
    ct, assets = generate_module._load_ct_on_device(spec, spec.cts[0], config)
    grid = VolumeGrid.create(assets.volume.shape, assets.volume.affine)
    step = resolve_step(grid, config.step_mm)
    H, W = spec.detector.height, spec.detector.width
    nl = len(assets.landmark_names) if ct.get("landmarks") is not None else 0
    nk = len(assets.label_ids) if (spec.annotations.masks or spec.annotations.path_lengths) else 0
    try:
        calls = projector_calls(spec, pipeline.physics_tables(spec), ct, nl, nk)
        calls_note = "traced from make_sample_fn"
    except Exception as e:  # noqa: BLE001 - fall back to the documented layout, and say so
        calls = [{"channels": len(config.materials.names) + nk, "rays": H * W}]
        calls_note = f"tracing failed ({type(e).__name__}: {e}); assumed one projection of all channels"

    @jax.jit
    def count(i):
        d = sampling.draw(spec, sampling.sample_key(spec.seed, i), ct["isocenter"], config.materials.names)
        P = sampling.camera(spec, d)["P"]
        n = detector_rays(P, grid, H, W, step).num_steps
        return jnp.sum(n), jnp.sum(n > 0)

    per_pose = [tuple(int(v) for v in count(i)) for i in range(n_poses)]
    mean = float(np.mean([s for s, _ in per_pose]))
    per_ray = mean / (H * W)
    # A projection of R rays costs R x (mean samples per ray); calls at another resolution (if any)
    # are scaled by their ray count.
    total = sum(c.get("rays", H * W) * per_ray for c in calls)
    return {
        "poses": n_poses,
        "step_mm": step,
        "rays": H * W,
        "rays_hitting_mean": float(np.mean([h for _, h in per_pose])),
        "samples_per_projection_mean": mean,
        "samples_per_ray_mean": per_ray,
        "projector_calls": calls,
        "projector_calls_note": calls_note,
        "projections_per_image": len(calls),
        "samples_per_image": total,
        "channel_samples_per_image": sum(c.get("rays", H * W) * per_ray * c["channels"] for c in calls),
    }


def gpu_measurements(paths: list[Path]) -> list[dict]:
    """Forward-projector G samples/s measured on a GPU by gpu_check.py (mode.on_gpu true)."""
    found = []
    for path in paths:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(d, dict) or not (d.get("mode") or {}).get("on_gpu"):
            continue
        devices = (d.get("environment") or {}).get("devices")
        for name, sec in (d.get("sections") or {}).items():
            if not name.startswith("timing:"):
                continue
            parts = name.split(":")
            for key, m in (sec.get("measurements") or {}).items():
                backend, _, mode = key.partition("/")
                if mode == "fwd" and m.get("gsamples_per_s"):
                    found.append(
                        {
                            "file": str(path),
                            "section": name,
                            "detector": parts[2] if len(parts) > 2 else None,
                            "variant": ":".join(parts[3:]),
                            "backend": backend,
                            "gsamples_per_s": float(m["gsamples_per_s"]),
                            "channels": (sec.get("problem") or {}).get("channels"),
                            "device": devices[0] if devices else None,
                        }
                    )
    return found


def cpu_projector_rate() -> dict | None:
    """The CPU projector's measured 1-channel forward rate (bench_project.py, step 'planes')."""
    files = sorted(glob.glob(str(RESULTS_DIR / "project_*_planes.json")))
    if not files:
        return None
    d = json.loads(Path(files[-1]).read_text())
    s = d.get("summary", {})
    if not s.get("useful_samples_per_s"):
        return None
    return {
        "file": str(Path(files[-1]).relative_to(REPO)),
        "useful_samples_per_s": s["useful_samples_per_s"],
        "what": "1-channel forward projection, 256^3 pelvis, 256x256, step 'planes', "
        f"{d.get('info', {}).get('cpus')} CPU cores, {d.get('info', {}).get('date')}",
    }


def expectations(size: str, spi: dict, gpu: list[dict], cpu: dict | None) -> dict:
    n = spi["samples_per_image"]
    out: dict = {
        "formula": "images/s = samples_per_s / samples_per_image; samples_per_image = projections_per_image x "
        "sum over the H x W rays of the projector's samples per ray (mean over the spec's first poses)",
        "samples_per_image": n,
        "caveat": "projector-bound upper limit: scatter network, noise, annotations, channel count and writing "
        f"ignored (this pipeline: {spi['projections_per_image']} projector call(s) per image, channels "
        f"{[c['channels'] for c in spi['projector_calls']]}; measured projector rates are for 1-2 channels)",
    }
    if cpu:
        out["cpu_projector"] = {**cpu, "images_per_s": cpu["useful_samples_per_s"] / n}
    same = [g for g in gpu if g["detector"] == size and not g["variant"]]
    pick = max(same or gpu, key=lambda g: g["gsamples_per_s"], default=None)
    if pick is None:
        out["gpu"] = {
            "measured": None,
            "images_per_s": None,
            "note": "no GPU measurement of the projector found (no gpu_check.py JSON with mode.on_gpu in "
            "benchmarks/results, no --gpu-results): no GPU rate is given. docs/gpu.md has only a "
            "first-principles, unmeasured estimate for an H100",
        }
    else:
        out["gpu"] = {
            "measured": pick,
            "same_detector": bool(same),
            "images_per_s": pick["gsamples_per_s"] * 1e9 / n,
            "all": gpu,
        }
    return out


# ----------------------------------------------------------------------------- report


def _pct(x):
    return None if x is None else 100.0 * x


def markdown(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        f"# Dataset generation throughput ({payload['date']}{', QUICK smoke run' if payload['quick'] else ''})",
        "",
        f"`{payload['command']}`",
        "",
        f"Machine: {m.get('cpus')} CPUs, {m.get('platform')}, jax {m.get('jax')} ({m.get('jax_backend')}); "
        f"load average at start {m.get('loadavg')}, at end {payload.get('loadavg_end')}. "
        f"Work directory on {payload['work_fs']}.",
        "",
        f"Phantom: analytic pelvis {payload['ct_shape']} voxels, 13 landmarks, 7 masks; kVp 60/90/120, "
        "noise, scatter net on every image; "
        f"{payload['images']} images per run, shards of {payload['shard_size']}, batches of {payload['batch_size']}.",
        "",
        "## Throughput (every run: fresh processes, start-up and compilation included in the wall time)",
        "",
    ]
    if payload["quick"]:
        lines += [
            "**Smoke run**: a few tiny shards, rendered in milliseconds each, so 'steady' rates, speed-ups and "
            "write shares below are dominated by timer resolution and noise; only the wall times mean anything.",
            "",
        ]
    rows = []
    for size, res in payload["results"].items():
        for r in res["runs"]:
            label = f"CLI, {r['processes']} proc" + (", pinned" if r.get("pinned") else "")
            if r["kind"] == "inproc":
                label = f"generate(), {r['mode']}"
            rows.append(
                [
                    size,
                    label,
                    "yes" if r.get("ok") else "FAILED",
                    r.get("wall_s"),
                    r.get("images_per_s_wall"),
                    r.get("steady_images_per_s"),
                    r.get("first_shard_s"),
                    _pct(r.get("writer_busy_frac")),
                    _pct(r.get("writer_waited_frac")),
                    r.get("cores_used"),
                    r.get("peak_rss_mb"),
                ]
            )
    lines.append(
        md_table(
            [
                "detector",
                "run",
                "ok",
                "wall s",
                "images/s (wall)",
                "images/s (steady)",
                "first shard s",
                "writer busy %",
                "waited %",
                "cores used",
                "peak RSS MB",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Steady = samples after each process's first shard / (last 'wrote shard' time - first), all processes "
        "together over the union of their windows (the JSON also has the sum of per-process rates and the "
        "overlap of the windows). Writer busy / waited: the generator's Report (writer thread converting "
        "and writing, after block_until_ready; main thread blocked on the writer queue, which includes waiting "
        "for renders), as % of generate()'s time.",
        "",
        "## 1 vs 2 processes",
        "",
    ]
    rows = []
    for size, res in payload["results"].items():
        for k, v in res.get("speedups", {}).items():
            rows.append([size, k, v.get("wall"), v.get("steady")])
    lines.append(
        md_table(["detector", "comparison", "speed-up (wall)", "speed-up (steady)"], rows) if rows else "n/a"
    )
    lines += ["", "## Cost of writing (in-process generate(), 1 process)", ""]
    rows = []
    for size, res in payload["results"].items():
        for r in res["runs"]:
            if r["kind"] != "inproc":
                continue
            rows.append(
                [
                    size,
                    r["mode"],
                    r.get("steady_images_per_s"),
                    _pct(r.get("slowdown_vs_discard")),
                    _pct(r.get("write_shard_frac_steady")),
                    _pct(r.get("write_shard_frac")),
                    _pct(r.get("writer_busy_frac")),
                    _pct(r.get("writer_waited_frac")),
                    r.get("mb_per_image"),
                    r.get("write_mb_per_s"),
                    r.get("finalize_s"),
                ]
            )
    lines.append(
        md_table(
            [
                "detector",
                "compression",
                "images/s (steady)",
                "slowdown vs discard %",
                "write_shard % (steady)",
                "write_shard % (all)",
                "writer busy %",
                "waited %",
                "MB/image",
                "write MB/s",
                "manifest+COCO s",
            ],
            rows,
        )
        if rows
        else "n/a"
    )
    lines += [
        "",
        "Goal: writing < 10 % of wall time. 'slowdown vs discard' (steady rate with writing vs with write_shard "
        "replaced by a no-op) is the real cost; 'write_shard %' is the HDF5 write + fsync + SHA-256 time of the "
        "writer thread (it overlaps rendering).",
        "",
        "## Expected rate from the projector alone",
        "",
    ]
    rows = []
    for size, res in payload["results"].items():
        e = res["expected"]
        cpu = e.get("cpu_projector") or {}
        gpu = e["gpu"]
        measured = next(
            (r.get("steady_images_per_s") for r in res["runs"] if r["kind"] == "cli" and r["processes"] == 1),
            None,
        )
        rows.append(
            [
                size,
                f"{e['samples_per_image'] / 1e6:.2f} M",
                cpu.get("images_per_s"),
                measured,
                f"{gpu['measured']['gsamples_per_s']:.1f} G/s ({gpu['measured']['backend']})"
                if gpu["measured"]
                else "none",
                gpu.get("images_per_s"),
            ]
        )
    lines.append(
        md_table(
            [
                "detector",
                "samples/image",
                "CPU projector-bound images/s",
                "measured images/s (1 proc, steady)",
                "GPU projector measured",
                "GPU projector-bound images/s",
            ],
            rows,
        )
    )
    first = next(iter(payload["results"].values()))["expected"]
    lines += ["", f"Formula: {first['formula']}. {first['caveat']}."]
    if not first["gpu"]["measured"]:
        lines += ["", f"GPU: {first['gpu']['note']}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def _fs_type(path: Path) -> str:
    try:
        return subprocess.run(
            ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS_DIR), help="where dataset_<date>.json/.md go")
    ap.add_argument(
        "--sizes", default=None, help=f"detectors WIDTHxHEIGHT, comma-separated (default {DEFAULT_SIZES})"
    )
    ap.add_argument("--ct-shape", default=None, help="phantom voxels I,J,K (default 192,160,128)")
    ap.add_argument("--images", type=int, default=None, help="images per run and detector (default 64)")
    ap.add_argument("--processes", default="1,2", help="process counts of the CLI runs (default 1,2)")
    ap.add_argument(
        "--pin", choices=["auto", "none", "both"], default="auto", help="CPU affinity of N>1 processes"
    )
    ap.add_argument(
        "--write-modes",
        default=",".join(WRITE_MODES),
        help="in-process runs: discard,none,lzf,gzip ('' = none)",
    )
    ap.add_argument(
        "--cli-compression",
        default="lzf",
        choices=["none", "lzf", "gzip"],
        help="compression of the CLI runs",
    )
    ap.add_argument("--shard-size", type=int, default=None, help="images per shard (default 8)")
    ap.add_argument("--batch-size", type=int, default=None, help="poses per render call (default 8)")
    ap.add_argument("--heatmaps", action="store_true", help="also store landmark heatmaps")
    ap.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the CLI runs (experiments)")
    ap.add_argument("--gpu-results", nargs="*", default=[], help="gpu_check.py JSON files measured on a GPU")
    ap.add_argument("--poses", type=int, default=16, help="poses for the samples-per-image count")
    ap.add_argument("--work", default=None, help="directory for the datasets (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the generated datasets")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 64x64, CT 48x40x32, 8 images, shards of 2"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    defaults = (
        QUICK
        if args.quick
        else {
            "sizes": DEFAULT_SIZES,
            "ct_shape": "192,160,128",
            "images": 64,
            "shard_size": 8,
            "batch_size": 8,
        }
    )
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    procs = [int(p) for p in args.processes.split(",") if p]
    modes = [m for m in args.write_modes.split(",") if m]
    bad = sorted(set(modes) - set(WRITE_MODES))
    if bad:
        ap.error(f"--write-modes: unknown {bad}; choose from {WRITE_MODES}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="jaxdrr_bench_dataset_"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_dataset.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = machine_info()
    payload: dict = {
        "benchmark": "bench_dataset.py",
        "date": today(),
        "command": command,
        "quick": args.quick,
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "machine": machine,
        "work_dir": str(work),
        "work_fs": _fs_type(work),
        "ct_shape": [int(v) for v in args.ct_shape.split(",")],
        "images": args.images,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "threads_note": "XLA's CPU pool follows the affinity mask; XLA_FLAGS='--xla_cpu_multi_thread_eigen=false "
        "intra_op_parallelism_threads=1' had no effect with jax 0.12 (CPU/wall 1.96 with and without); "
        "pinned runs use taskset -c (sched_setaffinity where taskset is missing)",
        "results": {},
    }
    gpu_files = sorted(glob.glob(str(RESULTS_DIR / "*.json"))) + [Path(p) for p in args.gpu_results]
    gpu = gpu_measurements(gpu_files)
    cpu = cpu_projector_rate()
    stem = f"dataset{'_quick' if args.quick else ''}_{today()}"
    try:
        for width, height in sizes:
            size = f"{width}x{height}"
            res: dict = {"runs": []}
            payload["results"][size] = res
            spec_cli = make_spec(args, width, height, args.cli_compression)
            res["spec"] = spec_cli
            cli_spec_path = write_spec(work / size / "spec_cli.toml", spec_cli)
            for n in procs:
                pins = [True, False] if (n > 1 and args.pin == "both") else [args.pin == "auto"]
                for pin in pins:
                    tag = f"cli_{n}p" + ("_pinned" if pin and n > 1 else "")
                    print(f"[{size}] {tag} ...", flush=True)
                    r = run_cli(cli_spec_path, work / size / tag, n, pin, args)
                    r["label"] = tag
                    res["runs"].append(r)
                    print(
                        f"[{size}] {tag}: ok={r['ok']} wall {r['wall_s']:.1f} s, {r['images_per_s_wall'] or 0:.3f} img/s "
                        f"(wall), steady {r['steady_images_per_s'] or float('nan'):.3f} img/s, "
                        f"cores used {r['cores_used'] or 0:.2f}",
                        flush=True,
                    )
                    if not r["ok"]:
                        for e in r["per_process"]:
                            print(
                                "\n".join(f"    p{e['process']}: {x}" for x in e["output_tail"][-12:]),
                                flush=True,
                            )
            for mode in modes:
                compression = "lzf" if mode == "discard" else mode
                spec = make_spec(args, width, height, compression)
                spec_path = write_spec(work / size / f"spec_{compression}.toml", spec)
                tag = f"inproc_{mode}"
                print(f"[{size}] {tag} ...", flush=True)
                r = run_inproc(spec_path, work / size / tag, mode, args)
                r["label"] = tag
                res["runs"].append(r)
                if r.get("error"):
                    print(
                        f"[{size}] {tag}: FAILED {r['error']}\n    "
                        + "\n    ".join(r.get("stderr_tail", [])),
                        flush=True,
                    )
                else:
                    print(
                        f"[{size}] {tag}: steady {r['steady_images_per_s'] or float('nan'):.3f} img/s, generate() "
                        f"{r['report']['seconds']:.1f} s, write_shard {100 * (r['write_shard_frac'] or 0):.1f} %, "
                        f"writer busy {100 * (r['writer_busy_frac'] or 0):.1f} %, "
                        f"waited {100 * (r['writer_waited_frac'] or 0):.1f} %",
                        flush=True,
                    )
            base = next((r for r in res["runs"] if r["kind"] == "inproc" and r["mode"] == "discard"), None)
            for r in res["runs"]:
                if (
                    r["kind"] == "inproc"
                    and r["mode"] != "discard"
                    and base
                    and base.get("steady_images_per_s")
                ):
                    if r.get("steady_images_per_s"):
                        r["slowdown_vs_discard"] = (
                            1.0 - r["steady_images_per_s"] / base["steady_images_per_s"]
                        )
            one = next(
                (r for r in res["runs"] if r["kind"] == "cli" and r["processes"] == 1 and r["ok"]), None
            )
            res["speedups"] = {}
            for r in res["runs"]:
                if one and r["kind"] == "cli" and r["processes"] > 1 and r["ok"]:
                    res["speedups"][f"{r['label']} / cli_1p"] = {
                        "wall": r["images_per_s_wall"] / one["images_per_s_wall"],
                        "steady": (r["steady_images_per_s"] / one["steady_images_per_s"])
                        if r.get("steady_images_per_s") and one.get("steady_images_per_s")
                        else None,
                    }
            spi = samples_per_image(spec_cli, min(args.poses, args.images))
            res["samples"] = spi
            res["expected"] = expectations(size, spi, gpu, cpu)
    finally:
        payload["loadavg_end"] = load_average()
        if payload["results"] and all("expected" in r for r in payload["results"].values()):
            md = markdown(payload)
        else:
            md = "# Dataset generation throughput: INCOMPLETE run, see the JSON\n"
        js_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
        js_path.write_text(json.dumps(payload, indent=1, default=str))
        md_path.write_text(md)
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(md)
    print("wrote", js_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
