"""A bone's similarity as it slides along its own shaft (Autoscoper wrist, frame 0002 only).

    python benchmarks/registration/shaft_slide_profile.py [--bone uln] [--span-mm 30 --step-mm 2] \
        [--out benchmarks/results/wrist_shaft_slide_<bone>_<date>.json]

The bone (its long principal axis, :func:`jaxdrr.registration.multiview.register_multiview`'s bone
frame) is slid from the reference pose (``--against``, the best optimum found) by ``-span..+span``
mm; the other bone stays. Each slid pose is a start of one registration with a single
zero-length Adam step at 1/2 size, so ``start_losses`` is the loss at each start (mean over views and
bones of ``1 - gradient NCC`` inside each bone's own footprint). A second optimum along the shaft
shows as a dip away from 0.
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
    p.add_argument("--bone", default="uln", choices=bw.BONES)
    p.add_argument("--span-mm", type=float, default=30.0)
    p.add_argument("--step-mm", type=float, default=2.0)
    p.add_argument("--against", default=str(bw.ROOT / "benchmarks" / "results" / "wrist_2026-12-07f.json"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from jaxdrr.atomic import write_json
    from jaxdrr.geometry.rigid import RigidTransform
    from jaxdrr.registration import multiview as mv

    views, _, _, volumes = bw.load(1)
    volumes = {b: volumes[b] for b in bw.BONES}
    ref = json.loads(Path(args.against).read_text())["reference"]["poses"]
    poses = {
        b: RigidTransform.from_matrix(np.asarray(ref[b]["matrix"], np.float64), tuple(ref[b]["pivot"]))
        for b in bw.BONES
    }
    frame = mv._bone_frame(mv.attenuation_volume(volumes[args.bone]))
    T0 = np.asarray(poses[args.bone].matrix(), np.float64)
    axis = T0[:3, :3] @ frame.axes[:, -1]  # the long axis in the world
    n = int(round(args.span_mm / args.step_mm))
    slides = args.step_mm * np.arange(-n, n + 1)
    seeds = []
    for s in slides:
        T = T0.copy()
        T[:3, 3] += s * axis
        seeds.append({**poses, args.bone: RigidTransform.from_matrix(T, poses[args.bone].pivot)})
    config = mv.MultiViewConfig(levels=((2, 1, "adam"),), learning_rate=1e-9)
    t0 = time.perf_counter()
    result = mv.register_multiview(volumes, views, seeds, config)
    elapsed = time.perf_counter() - t0
    losses = [float(v) for v in np.asarray(result.start_losses)]
    for s, v in zip(slides, losses, strict=True):
        print(f"{s:+6.1f} mm  loss {v:.4f}")
    date = datetime.date.today().isoformat()
    out = (
        Path(args.out)
        if args.out
        else bw.ROOT / "benchmarks" / "results" / f"wrist_shaft_slide_{args.bone}_{date}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        out,
        {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "date": date,
            "bone": args.bone,
            "against": args.against,
            "slide_mm": slides.tolist(),
            "loss": losses,
            "time_s": elapsed,
        },
        indent=1,
    )
    print("->", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
