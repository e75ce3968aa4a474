"""First vs second call of a ``jaxdrr`` command with the persistent compilation cache (issue 21.5).

Each round uses a fresh, empty cache directory (``XDG_CACHE_HOME`` in a temporary directory) and
runs, each in a fresh process, as a user would:

1. ``cold``: the command with the empty cache (compiles and writes the cache);
2. ``warm``: the same command again (loads the compiled programs);
3. ``off``: the same command with ``--no-compile-cache`` (compiles, writes nothing): the time
   every call took before the cache.

Reported per run: the wall time of the whole process (``/usr/bin/time``-like, from the parent), the
time the command itself prints ("rendered 1 view(s) of 512x512 in X s": CT, compile and render),
the cache's entries and bytes, and the 1-minute load average before and after. Medians over rounds.

``--min-compile-time S`` runs the variant with ``jaxdrr._compile_cache.MIN_COMPILE_TIME_SECS``
patched to S (to compare thresholds; the default is the shipped value).

    python benchmarks/bench_compile_cache.py --rounds 3 --out
    python benchmarks/bench_compile_cache.py --rounds 2 --min-compile-time 1.0 --tag jaxdefault
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info, md_table, median, today, write_results  # noqa: E402

DEFAULT_COMMAND = ["render", "--out", "x.png"]
RENDERED = re.compile(r"in ([0-9.]+) s")


def run_once(command: list[str], cache_home: Path, workdir: Path, min_compile_time: float | None) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAXDRR_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")
    }
    env["XDG_CACHE_HOME"] = str(cache_home)
    if min_compile_time is None:
        cmd = [sys.executable, "-m", "jaxdrr", *command]
    else:
        code = (
            "import sys; import jaxdrr._compile_cache as c; "
            f"c.MIN_COMPILE_TIME_SECS = {min_compile_time!r}; "
            "from jaxdrr.cli.main import main; sys.exit(main(sys.argv[1:]))"
        )
        cmd = [sys.executable, "-c", code, *command]
    load_before = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    m = RENDERED.search(proc.stdout)
    cache = cache_home / "jaxdrr" / "jax"
    files = [p for p in cache.iterdir() if p.name.endswith("-cache")] if cache.exists() else []
    return {
        "wall_s": round(wall, 2),
        "command_s": float(m.group(1)) if m else None,
        "entries": len(files),
        "cache_mb": round(sum(p.stat().st_size for p in files) / 1e6, 2),
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--command", nargs=argparse.REMAINDER, default=None, help="jaxdrr arguments")
    parser.add_argument("--min-compile-time", type=float, default=None)
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--out", action="store_true", help="write benchmarks/results/compile_cache_<date>*")
    args = parser.parse_args()
    command = args.command or DEFAULT_COMMAND
    rounds = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            row = {}
            for name, extra in (("cold", []), ("warm", []), ("off", ["--no-compile-cache"])):
                row[name] = run_once(
                    [*command[:1], *extra, *command[1:]], tmp / "cache", tmp, args.min_compile_time
                )
                print(f"round {r + 1} {name}: {row[name]}", flush=True)
            rounds.append(row)
    summary = {
        name: {key: median([row[name][key] for row in rounds]) for key in ("wall_s", "command_s")}
        for name in ("cold", "warm", "off")
    }
    entries, cache_mb = rounds[-1]["cold"]["entries"], rounds[-1]["cold"]["cache_mb"]
    loads = [row[n]["loadavg_before"][0] for row in rounds for n in row] + [
        row[n]["loadavg_after"][0] for row in rounds for n in row
    ]
    threshold = "shipped" if args.min_compile_time is None else f"{args.min_compile_time} s"
    table = md_table(
        ["run", "whole process, wall s (median)", "compile + render as the command prints it, s (median)"],
        [[n, summary[n]["wall_s"], summary[n]["command_s"]] for n in ("cold", "warm", "off")],
    )
    markdown = (
        f"# Compilation cache: `jaxdrr {' '.join(command)}` ({today()})\n\n"
        f"{args.rounds} rounds, each with a fresh cache directory; min compile time {threshold}. "
        f"Cache after the cold run: {entries} entries, {cache_mb} MB. 1-minute load average during the "
        f"runs: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs.\n\n{table}\n"
    )
    print(markdown)
    if args.out:
        stem = f"compile_cache_{today()}" + (f"_{args.tag}" if args.tag else "")
        payload = {"machine": machine_info(), "command": command, "threshold": threshold, "rounds": rounds}
        payload["summary"] = summary
        for path in write_results(stem, payload, markdown):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
