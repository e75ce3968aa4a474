"""jaxdrr registration benchmark (protocol in protocol.py). Rerun with e.g.

    python benchmarks/registration/run.py --n 40 --out benchmarks/registration/results_jaxdrr.json

Prints a markdown summary (overall and per bin) and writes per-case results as JSON. Wall time per
registration excludes the one-off JIT compilation (a warm-up registration on an extra problem is
run first; its time is reported separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import protocol  # noqa: E402

import jaxdrr  # noqa: E402
from jaxdrr import registration as reg  # noqa: E402


def parse_levels(text: str):
    return tuple(tuple(int(v) if v.isdigit() else v for v in item.split(":")) for item in text.split(","))


def summarize(rows, key_time="time_s") -> dict:
    m = np.array([r["mtre_mm"] for r in rows])
    t = np.array([r[key_time] for r in rows])
    return {
        "n": len(rows),
        "success_rate": float(np.mean(m < 1.0)) if len(m) else float("nan"),
        "median_mtre_mm": float(np.median(m)) if len(m) else float("nan"),
        "mean_mtre_mm": float(np.mean(m)) if len(m) else float("nan"),
        "p90_mtre_mm": float(np.percentile(m, 90)) if len(m) else float("nan"),
        "median_time_s": float(np.median(t)) if len(t) else float("nan"),
        "median_cpu_s": float(np.median([r["cpu_s"] for r in rows])) if rows else float("nan"),
        "mean_load_avg": float(np.mean([r["load_avg_1min"] for r in rows])) if rows else float("nan"),
    }


def markdown(rows, title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| subset | n | success (mTRE < 1 mm) | median mTRE (mm) | 90th pct mTRE (mm) | median wall (s) | median CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = {"all": rows}
    for r in rows:
        groups.setdefault(r["bin"], []).append(r)
    for name in ["all"] + sorted(k for k in groups if k != "all"):
        s = summarize(groups[name])
        lines.append(
            f"| {name} | {s['n']} | {100 * s['success_rate']:.0f} % | "
            f"{s['median_mtre_mm']:.3f} | {s['p90_mtre_mm']:.3f} | {s['median_time_s']:.2f} | "
            f"{s['median_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="number of problems")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128, help="detector pixels per side")
    ap.add_argument("--shape", default="64,64,48", help="phantom voxels")
    ap.add_argument("--metric", default="gncc")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--lr", type=float, default=1.0)
    ap.add_argument("--levels", default="4:60,2:15:lbfgs,1:25:lbfgs", help="factor:iterations,...")
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--out", default=None, help="JSON file for per-case results")
    args = ap.parse_args(argv)

    shape = tuple(int(v) for v in args.shape.split(","))
    volume = protocol.make_volume(shape)
    points = protocol.error_points(volume)
    t = time.perf_counter()
    problems = protocol.make_problems(volume, args.n + 1, args.size, args.seed)
    print(f"made {len(problems)} targets in {time.perf_counter() - t:.1f} s", flush=True)
    config = reg.RegistrationConfig(
        metric=args.metric,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        levels=parse_levels(args.levels),
        n_starts=args.starts,
        patience=args.patience,
    )
    model = jaxdrr.RenderConfig(args.size, args.size)  # 120 kVp, noise-free: differs from targets
    center = np.asarray(volume.center)

    def solve(p):
        cam = reg.Camera.from_projection(p.P_init, p.height, p.width, center=center)
        t0, c0 = time.perf_counter(), time.process_time()
        res = reg.register(volume, p.target, cam, config=config, render_config=model)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        err = reg.registration_errors(res.P, p.P_true, points, center)
        err0 = reg.registration_errors(p.P_init, p.P_true, points, center)
        return {
            "index": p.index,
            "lao": p.lao,
            "cran": p.cran,
            "init_rot_deg": p.rot_deg,
            "init_trans_mm": p.trans_mm,
            "bin": protocol.bin_name(p),
            "init_mtre_mm": err0["mtre_mm"],
            **err,
            "loss": res.loss,
            "iterations": res.n_iterations,
            "time_s": elapsed,
            "cpu_s": cpu,
            "load_avg_1min": os.getloadavg()[0],
        }

    warm = solve(problems[-1])
    print(f"warm-up (includes JIT compilation): {warm['time_s']:.1f} s", flush=True)
    rows = []
    for p in problems[:-1]:
        row = solve(p)
        rows.append(row)
        print(
            f"[{p.index:3d}] lao {p.lao:6.1f} cran {p.cran:6.1f} init rot {p.rot_deg:4.1f} deg "
            f"trans {p.trans_mm:4.1f} mm mTRE {row['init_mtre_mm']:6.2f} -> {row['mtre_mm']:6.3f} mm "
            f"(rot {row['rotation_deg']:.3f} deg, depth {row['translation_depth_mm']:.2f} mm, "
            f"mPD {row['mpd_px']:.3f} px) {row['iterations']} it {row['time_s']:.2f} s "
            f"(load {row['load_avg_1min']:.1f})",
            flush=True,
        )
    summary = summarize(rows)
    text = markdown(
        rows, f"jaxdrr ({args.metric}, {args.optimizer}, levels {args.levels}, {args.starts} start(s))"
    )
    lines = [
        text,
        "",
        f"mean 1-min load average during the run: {summary['mean_load_avg']:.2f} on "
        f"{os.cpu_count()} CPUs; warm-up (JIT compile) {warm['time_s']:.1f} s",
    ]
    text = "\n".join(lines)
    print()
    print(text)
    if args.out:
        out = {
            "args": vars(args),
            "summary": summary,
            "warmup_time_s": warm["time_s"],
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "jax": __import__("jax").__version__,
            },
            "cases": rows,
            "markdown": text,
        }
        Path(args.out).write_text(json.dumps(out, indent=1))
    return summary


if __name__ == "__main__":
    main()
