"""Shared helpers for the jaxdrr benchmarks: timing, memory, subprocess workers, machine info.

Memory method (used by every benchmark here): each measurement runs in a **fresh Python
subprocess**. The worker loads its inputs, then reads ``VmRSS`` from ``/proc/self/status`` as the
baseline, compiles and runs the measured function, and reads ``VmHWM`` (the kernel's peak resident
set size of the process). Two numbers are reported:

* ``peak_mb`` = VmHWM - baseline over compile + warm-up + timed runs: what the measurement costs
  on top of the loaded inputs, including compilation (XLA / TorchInductor scratch).
* ``exec_peak_mb``: after warm-up the peak is reset (``echo 5 > /proc/self/clear_refs``, which sets
  VmHWM to the current RSS); the value is VmHWM after the timed runs minus the RSS at the reset,
  i.e. the transient working memory of executing the already-compiled function.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHE_DIR = Path(os.environ.get("JAXDRR_BENCH_CACHE", "/tmp/jaxdrr_bench_cache"))
MARK = "@@RESULT@@"


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024.0


def hwm_mb() -> float:
    return _status_kb("VmHWM") / 1024.0


def reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0). Returns False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Baseline at construction; ``mark_warm()`` after warm-up; ``result()`` at the end."""

    def __init__(self):
        self.baseline = rss_mb()
        self.warm_rss = None
        self.reset_ok = False

    def mark_warm(self):
        self.peak_so_far = hwm_mb()
        self.warm_rss = rss_mb()
        self.reset_ok = reset_peak()

    def result(self) -> dict:
        hwm = hwm_mb()
        total_peak = max(hwm, getattr(self, "peak_so_far", 0.0))
        out = {
            "baseline_rss_mb": round(self.baseline, 1),
            "peak_mb": round(total_peak - self.baseline, 1),
            "process_peak_rss_mb": round(total_peak, 1),
        }
        if self.warm_rss is not None and self.reset_ok:
            out["exec_peak_mb"] = round(hwm - self.warm_rss, 1)
        return out


# ----------------------------------------------------------------------------- timing


def time_repeats(fn, repeats: int, warmup: int = 1, sync=lambda x: x) -> tuple[list[float], float]:
    """Calls ``fn()`` ``warmup`` times (first call timed as compile+run), then ``repeats`` times.

    ``sync`` must block until the result is ready (``jax.block_until_ready``; identity for torch
    on CPU, which is synchronous). Returns (list of repeat times in s, first-call time in s).
    """
    t0 = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        sync(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
    return times, first


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return float("nan")
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


# ----------------------------------------------------------------------------- machine info


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    info = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": load_average(),
    }
    try:
        info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    try:  # the host CPU: results from different machines of the same name are not comparable
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next(
            x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if x.startswith("model name")
        )
        flags = next(x.split(":", 1)[1].split() for x in cpuinfo.splitlines() if x.startswith("flags"))
        info["cpu_simd"] = [f for f in ("sse4_2", "avx2", "fma", "avx512f") if f in flags]
    except (OSError, StopIteration):
        pass
    try:
        import jax

        info["jax"] = jax.__version__
        info["jax_backend"] = jax.default_backend()
    except ImportError:
        pass
    return info


# ----------------------------------------------------------------------------- workers


def emit(result: dict):
    """Worker side: prints the result as one marked JSON line on stdout."""
    print(MARK + json.dumps(result), flush=True)


def run_worker(
    script: str, spec: dict, python: str | None = None, timeout: float = 1800, env: dict | None = None
) -> dict:
    """Runs ``python script --worker JSON`` in a fresh process and returns its emitted result."""
    cmd = [python or sys.executable, script, "--worker", json.dumps(spec)]
    load_before = load_average()
    e = dict(os.environ)
    if env:
        e.update(env)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s", "spec": spec}
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith(MARK):
            r = json.loads(line[len(MARK) :])
            r["wall_s"] = round(wall, 1)
            r["loadavg_before"] = load_before
            r["loadavg_after"] = load_average()
            return r
    tail = (p.stderr or "").strip().splitlines()[-15:]
    return {"error": f"worker exited {p.returncode}", "stderr_tail": tail, "spec": spec}


def today() -> str:
    return _dt.date.today().isoformat()


def write_results(stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    md = RESULTS_DIR / f"{stem}.md"
    js = RESULTS_DIR / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(payload, indent=2, default=float))
    return md, js


def md_table(headers: list[str], rows: list[list]) -> str:
    def fmt(x):
        if x is None:
            return "n/a"
        if isinstance(x, float):
            if x != x:
                return "n/a"
            if abs(x) >= 100:
                return f"{x:.0f}"
            if abs(x) >= 1:
                return f"{x:.2f}"
            return f"{x:.3g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)
