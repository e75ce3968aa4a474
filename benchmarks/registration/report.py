"""Prints the side-by-side summary of results_jaxdrr.json and results_diffdrr.json (markdown).

python benchmarks/registration/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    j = json.loads((HERE / "results_jaxdrr.json").read_text())
    print(j["markdown"])
    d_path = HERE / "results_diffdrr.json"
    if not d_path.exists():
        print("\n(no DiffDRR results)")
        return
    d = json.loads(d_path.read_text())
    print()
    print(d["markdown"])
    jc = {c["index"]: c for c in j["cases"]}
    print("\n### Same cases side by side\n")
    print(
        "| case | init mTRE (mm) | jaxdrr mTRE (mm) | jaxdrr time (s) | DiffDRR mTRE (mm) | DiffDRR iters | "
        "DiffDRR time (s) | time ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for c in d["cases"]:
        a = jc.get(c["index"])
        if a is None:
            continue
        r = c["time_s"] / a["time_s"]
        ratios.append(r)
        print(
            f"| {c['index']} | {a['init_mtre_mm']:.2f} | {a['mtre_mm']:.3f} | {a['time_s']:.1f} | "
            f"{c['mtre_mm']:.3f} | {c['iterations']} | {c['time_s']:.1f} | {r:.1f}x |"
        )
    if ratios:
        print(f"\nmedian DiffDRR/jaxdrr wall-time ratio on these cases: {np.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
