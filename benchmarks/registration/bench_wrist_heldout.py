"""The independent check: frame 0002's settings on the held-out wrist frames 0099 and 0158.

Everything in jaxdrr's real-X-ray registration was developed, tested and tuned on frame 0002 of the
Autoscoper wrist sample (``data/autoscoper_wrist/``). Frames 0099 and 0158 of the same trial
(``benchmarks/data/autoscoper_wrist_heldout/``, see its PROVENANCE.md) are read by this script only,
with settings fixed before it first ran (the defaults of :class:`MultiViewConfig`, and
``--multistart`` 8 starts as in ``bench_wrist.py``). Nothing may be tuned on what it reports.

Usage::

    python benchmarks/registration/bench_wrist_heldout.py \\
        --out benchmarks/results/wrist_heldout_<date>.json

Steps (no ground-truth poses ship with the data: measured is what needs none):

1. **Tracking.** :func:`track_sequence` over frames 0002, 0099, 0158: frame 0002 from the stored seed
   (``tests/data/wrist_0002_seed.json``), each later frame warm-started from the previous frame's
   poses (8 starts, 10 deg / 10 mm around them). Per frame: similarities per view and bone, the
   tracker's flags, each bone's motion from the previous frame. The frames are 97 and 59 video
   frames apart: a pose jump flag (> 5 mm / 5 deg) is expected, the motion is reported.
2. **Automatic initialisation**, independently on each held-out frame (no warm start): the shadow
   triangulation and rotation search of :mod:`jaxdrr.registration.initialize`, then the joint
   registration. Two independent routes that end at the same pose, or the one with the higher
   similarity, are evidence of the right pose.
3. **Repeatability** on each held-out frame: ``--starts`` random starts 10 deg / 10 mm around the
   tracked pose (as ``bench_wrist.py``), converged count and spread. Target <= 0.3 mm / 0.3 deg.
4. **Biplanar consistency** on each held-out frame (as ``bench_wrist.py``). Target in-plane <= 0.5 mm / 0.5 deg.
5. Overlays: ``<out stem>_<frame>.png`` (tracked pose; radius red, ulna cyan).

``--reseed`` (written after the first run, so a second look, not an independent check): the
tracking re-seeds a frame flagged for a similarity drop or a bone below similarity 0.35 (the
threshold chosen on frame 0002, ``track_recovery.py``) from the automatic search on that frame
(:func:`jaxdrr.registration.initialize.search_seeds`), and reports each frame's distance from the
best optimum of the first run's 20 random starts (``wrist_heldout_2026-12-07_<frame>_best_poses.json``).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_wrist as bw  # noqa: E402 (the frame-0002 benchmark's loaders and measurements)

HELDOUT = bw.ROOT / "benchmarks" / "data" / "autoscoper_wrist_heldout" / "frames"
FRAMES = ("0002", "0099", "0158")
SEED = bw.ROOT / "tests" / "data" / "wrist_0002_seed.json"
RESEED_MIN_SIMILARITY = 0.35  # chosen on frame 0002 (track_recovery.py)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--starts", type=int, default=20, help="repeatability starts per held-out frame")
    p.add_argument("--multistart", type=int, default=8, help="first-level starts per registration")
    p.add_argument("--skip", nargs="*", default=(), choices=("auto", "repeatability", "consistency"))
    p.add_argument(
        "--out", default=None, help="result JSON (default benchmarks/results/wrist_heldout_<date>.json)"
    )
    p.add_argument("--reseed", action="store_true", help="re-seed flagged frames from the automatic search")
    args = p.parse_args(argv)

    from jaxdrr.registration import multiview as mv
    from jaxdrr.registration.initialize import load_initial_poses, save_initial_poses, search_seeds

    date = datetime.date.today().isoformat()
    out_path = (
        Path(args.out) if args.out else bw.ROOT / "benchmarks" / "results" / f"wrist_heldout_{date}.json"
    )
    config = mv.MultiViewConfig()
    search = config.replace(n_starts=args.multistart)
    loaded = {f: bw.load(1, f, None if f == "0002" else HELDOUT) for f in FRAMES}
    volumes = loaded["0002"][3]
    views = loaded["0002"][0]
    points = {b: bw.bone_points(volumes[b]) for b in bw.BONES}
    report = {
        "date": date,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "frames": list(FRAMES),
        "config": {
            "levels": [list(lv) for lv in config.levels],
            "metric": config.metric,
            "multistart": args.multistart,
        },
    }

    # 1. Tracking.
    seed = load_initial_poses(SEED)
    t0 = time.perf_counter()
    reseed_options = {}
    if args.reseed:
        small = [bw.load(8, f, None if f == "0002" else HELDOUT) for f in FRAMES]
        reseed_options = dict(
            reseed=lambda t, frame_views: search_seeds(volumes, small[t][1], small[t][2]),
            reseed_config=config,
            min_similarity=RESEED_MIN_SIMILARITY,
        )
    track = mv.track_sequence(
        volumes,
        [[loaded[f][0][v].image for f in FRAMES] for v in range(len(views))],
        views,
        {b: seed[b] for b in bw.BONES},
        search,
        first_config=config,
        **reseed_options,
    )
    tracking = {"time_s": time.perf_counter() - t0, "reseed": args.reseed, "frames": {}}
    for i, (f, res, flag) in enumerate(zip(FRAMES, track.results, track.flags)):
        entry = {
            "similarity": res.similarity,
            "flags": flag,
            "converged": res.converged,
            "time_s": res.time_s,
        }
        if i:
            prev = track.results[i - 1].poses
            entry["motion"] = {b: mv.pose_difference(prev[b], res.poses[b], points[b]) for b in bw.BONES}
        entry["poses"] = {b: mv.pose_to_dict(res.poses[b]) for b in bw.BONES}
        if track.tracked[i] is not res:
            entry["warm_start"] = {
                "similarity": track.tracked[i].similarity,
                "poses": {b: mv.pose_to_dict(track.tracked[i].poses[b]) for b in bw.BONES},
            }
        best_file = bw.ROOT / "benchmarks" / "results" / f"wrist_heldout_2026-12-07_{f}_best_poses.json"
        if i and best_file.is_file():
            best = load_initial_poses(best_file)
            entry["vs_first_run_best"] = {
                b: mv.pose_difference(res.poses[b], best[b], points[b]) for b in bw.BONES
            }
        tracking["frames"][f] = entry
        save_initial_poses(out_path.with_name(f"{out_path.stem}_{f}_tracked_poses.json"), res.poses)
        bw.save_overlay(volumes, res.poses, loaded[f][0], out_path.with_name(f"{out_path.stem}_{f}.png"))
        print(
            f"frame {f}: similarity {res.similarity}, flags {flag}"
            + (
                "; motion "
                + ", ".join(
                    f"{b} {entry['motion'][b]['mean_mm']:.1f} mm {entry['motion'][b]['rotation_deg']:.1f} deg"
                    for b in bw.BONES
                )
                if i
                else ""
            )
            + (
                "; from the first run's best: "
                + ", ".join(f"{b} {d['mean_mm']:.2f} mm" for b, d in entry["vs_first_run_best"].items())
                if "vs_first_run_best" in entry
                else ""
            ),
            flush=True,
        )
    report["tracking"] = tracking

    for i, f in enumerate(FRAMES[1:], start=1):
        frame_views = [v.replace(image=img.image) for v, img in zip(views, loaded[f][1])]
        tracked = track.results[i]
        per = report.setdefault("heldout", {}).setdefault(f, {})
        if "auto" not in args.skip:
            # 2. Automatic initialisation, no warm start.
            t = time.perf_counter()
            seeds, info = bw.initial_poses(volumes, None, config, f, HELDOUT)
            first = mv.register_multiview(volumes, frame_views, seeds, config)
            auto = mv.register_multiview(volumes, frame_views, first.poses, config, rois=first.rois)
            info["time_s"] = time.perf_counter() - t
            per["auto"] = {
                "init": info,
                "similarity": auto.similarity,
                "poses": {b: mv.pose_to_dict(auto.poses[b]) for b in bw.BONES},
                "vs_tracked": {
                    b: {
                        **mv.pose_difference(auto.poses[b], tracked.poses[b], points[b]),
                        "similarity_auto": float(np.mean([s[b] for s in auto.similarity.values()])),
                        "similarity_tracked": float(np.mean([s[b] for s in tracked.similarity.values()])),
                    }
                    for b in bw.BONES
                },
            }
            print(f"frame {f} automatic initialisation vs tracked: {per['auto']['vs_tracked']}", flush=True)
        if "repeatability" not in args.skip:
            # 3. Repeatability around the tracked pose.
            rep, anchors = bw.repeatability(volumes, frame_views, tracked, search, args.starts, points)
            best = out_path.with_name(f"{out_path.stem}_{f}_best_poses.json")
            save_initial_poses(best, anchors)
            rep["best_poses"] = str(best)
            rep["best_vs_tracked"] = {
                b: mv.pose_difference(anchors[b], tracked.poses[b], points[b]) for b in bw.BONES
            }
            per["repeatability"] = rep
        if "consistency" not in args.skip:
            # 4. Each camera alone against the joint (tracked) pose.
            per["consistency"] = bw.consistency(volumes, frame_views, tracked.poses, config, points)

    bw.write_report(out_path, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
