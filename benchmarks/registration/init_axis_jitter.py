"""How far each bone's automatic initialisation survives small errors of the limb axis (frame 0002).

    python benchmarks/registration/init_axis_jitter.py [--out benchmarks/results/wrist_init_axis_jitter_<date>.json]

The limb axis (:func:`jaxdrr.registration.initialize.limb_axis_3d`) is turned by 1 deg about a
random axis and moved by 1 mm in a random direction, 8 times (seed 1); each bone is searched along
each jittered axis (:func:`~jaxdrr.registration.initialize.initialize_bone`) with ``rescored`` 15, 40
and 80, and each candidate's distance (mean over the bone's box corners) from the stored seed pose
(``tests/data/wrist_0002_seed.json``) is recorded. A bone is found when a candidate is within 5 mm.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_wrist as bw  # noqa: E402 (the frame-0002 benchmark's loaders)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from jaxdrr.registration import multiview as mv
    from jaxdrr.registration.initialize import (
        InitConfig,
        _rodrigues,
        initialize_bone,
        limb_axis_3d,
        load_initial_poses,
    )

    _, frames, Ps, volumes = bw.load(8)
    c0, d = limb_axis_3d(frames, Ps)
    seed = load_initial_poses(bw.ROOT / "tests" / "data" / "wrist_0002_seed.json")
    rng = np.random.default_rng(1)
    jittered = []
    for _ in range(8):
        turn = rng.normal(size=3)
        move = rng.normal(size=3)
        jittered.append(
            (c0 + move / np.linalg.norm(move), _rodrigues(turn / np.linalg.norm(turn), np.radians(1.0)) @ d)
        )
    rows = []
    for b in ("uln", "rad"):
        corners = mv._box_corners(mv.attenuation_volume(volumes[b]))
        for rescored in (15, 40, 80):
            for i, axis in enumerate(jittered):
                t0 = time.perf_counter()
                cands = initialize_bone(
                    volumes[b], frames, Ps, name=b, axis=axis, config=InitConfig(rescored=rescored)
                )
                errors = [round(mv.pose_difference(c.pose, seed[b], corners)["mean_mm"], 1) for c in cands]
                row = {
                    "bone": b,
                    "rescored": rescored,
                    "i": i,
                    "s": round(time.perf_counter() - t0, 1),
                    "errs": errors,
                    "scores": [round(c.score, 3) for c in cands],
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    date = datetime.date.today().isoformat()
    out = (
        Path(args.out)
        if args.out
        else bw.ROOT / "benchmarks" / "results" / f"wrist_init_axis_jitter_{date}.json"
    )
    out.write_text(json.dumps(rows))
    for b in ("uln", "rad"):
        for rescored in (15, 40, 80):
            sel = [r for r in rows if r["bone"] == b and r["rescored"] == rescored]
            best = sum(r["errs"][0] < 5 for r in sel)
            anywhere = sum(min(r["errs"]) < 5 for r in sel)
            print(
                f"{b} rescored {rescored}: best candidate within 5 mm {best}/{len(sel)}, any of 5 {anywhere}/{len(sel)}"
            )
    print("->", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
