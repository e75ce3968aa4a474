"""Tool pose recovery: a K-wire's 6-DoF pose in the pelvis from noisy images, over random starts.

The scene of notebooks/04_tools.ipynb: the built-in pelvis CT (122 x 88 x 119 voxels, ~3.2 mm), a
2.5 x 250 mm stainless-steel K-wire with a trocar tip in the superior pubic ramus, a 128 x 128 px
detector (1.6 mm pixels, ~140 mm field at the isocentre), default spectrum and noise
(:class:`jaxdrr.NoiseConfig`). For each trial (seed ``i``):

* target: a noisy render (noise key ``i``) of the true pose, in 1 view (AP) or 2 views (AP + lateral);
* start: the true pose with the tip moved ``U(0, 10)`` mm in a uniform direction and the wire
  turned ``U(0, 10)`` degrees about its tip around a uniform axis (:func:`perturb_tool_pose`);
* :func:`jaxdrr.registration.register_tool`: Adam, MSE of noise-free renders vs the target, coarse
  to fine (blur 3, 1.5, 0 px; 30 + 20 + 20 iterations), then a scan along the wire (+-10 mm, 0.5 mm
  steps) for its axial position, which the gradient constrains weakly (only the tip shows it).

Success: 3D tip error < 2 mm and axis angle error < 2 degrees (a K-wire guiding a cannulated screw
must be within a couple of mm of plan; 2 deg over a 100 mm corridor is 3.5 mm at the far end).
Reported: success rate, median tip error (3D; AP in-plane and depth parts; AP reprojection px),
median axis error, median time per registration (excluding the first trial, which compiles).

Run::

    python benchmarks/bench_tool_pose.py                    # 20 trials, 1 and 2 views
    python benchmarks/bench_tool_pose.py --trials 3 --views 2   # a quick check

Raw results: benchmarks/results/tool_pose_<date>.json (+ .md summary).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, md_table, today, write_results  # noqa: E402

import jaxdrr  # noqa: E402
from jaxdrr.geometry import carm  # noqa: E402
from jaxdrr.geometry.carm import CArmGeometry  # noqa: E402
from jaxdrr.instruments import kwire  # noqa: E402
from jaxdrr.registration import register_tool, tool_pose_errors  # noqa: E402
from jaxdrr.registration.tool_pose import perturb_tool_pose, tool_pose_along  # noqa: E402
from jaxdrr.scene import MeshObject, Scene, make_scene_renderer, scene_params  # noqa: E402

TIP_SUCCESS_MM = 2.0
AXIS_SUCCESS_DEG = 2.0
MAX_SHIFT_MM = 10.0
MAX_ANGLE_DEG = 10.0
ITERATIONS = (30, 20, 20)
AXIAL_SEARCH_MM = MAX_SHIFT_MM  # the final 1-D scan along the wire (register_tool's axial_search_mm)
BLUR_PX = (3.0, 1.5, 0.0)
DETECTOR = 128
PIXEL_MM = 1.6


def build_scene():
    """The pelvis, the K-wire at the end of a retrograde ramus path, and the AP / lateral cameras."""
    ct = jaxdrr.phantom(kind="pelvis", shape=(122, 88, 119))
    wire = kwire(diameter_mm=2.5, length_mm=250.0, tip="trocar")
    mesh = wire.mesh
    goal, tubercle = np.array([-78.0, 18.0, -18.0]), np.array([-20.0, 58.0, -58.0])
    direction = (goal - tubercle) / np.linalg.norm(goal - tubercle)
    truth = tool_pose_along(goal, direction, wire.landmarks["tip"], wire.landmarks["base"])
    scene = Scene.create(
        ct,
        [
            MeshObject.create(
                mesh, wire.material, wire.density, pose=truth, name="kwire", landmarks=wire.landmarks
            )
        ],
    )
    geometry = CArmGeometry(height=DETECTOR, width=DETECTOR, pixel_size_mm=PIXEL_MM)
    isocenter = (tubercle + goal) / 2
    cameras = jnp.stack([carm(lao, 0.0, isocenter=isocenter, geometry=geometry) for lao in (0.0, 90.0)])
    return scene, truth, cameras, wire.landmarks["tip"], wire.landmarks["base"]


def run(trials: int, views_list, iterations=ITERATIONS, axial_search_mm=AXIAL_SEARCH_MM) -> dict:
    scene, truth, cameras, tip, base = build_scene()
    config = jaxdrr.RenderConfig(height=DETECTOR, width=DETECTOR, noise=jaxdrr.NoiseConfig())
    params = scene_params(config, scene)
    noisy = jax.jit(jax.vmap(make_scene_renderer(config), in_axes=(None, None, 0, 0)))
    clean = make_scene_renderer(config.replace(noise=None))
    out = {"views": {}}
    for n_views in views_list:
        P = cameras[:n_views]
        rows = []
        for i in range(trials):
            rng = np.random.default_rng(1000 + i)
            start = perturb_tool_pose(
                truth, rng.uniform(0.0, MAX_SHIFT_MM), rng.uniform(0.0, MAX_ANGLE_DEG), rng, tip=tip
            )
            target = noisy(params, scene, P, jax.random.split(jax.random.key(i), n_views))
            t0 = time.perf_counter()
            result = register_tool(
                clean,
                params,
                scene,
                "kwire",
                P,
                target,
                start,
                iterations=iterations,
                blur_sigmas_px=BLUR_PX,
                axial_search_mm=axial_search_mm,
            )
            seconds = time.perf_counter() - t0
            before = tool_pose_errors(start, truth, tip, base, P[0])
            after = tool_pose_errors(result.pose, truth, tip, base, P[0])
            success = after["tip_mm"] < TIP_SUCCESS_MM and after["axis_deg"] < AXIS_SUCCESS_DEG
            rows.append(
                {
                    "seed": i,
                    "start": before,
                    "final": after,
                    "success": bool(success),
                    "seconds": seconds,
                    "final_loss": result.loss,
                }
            )
            print(
                f"views={n_views} trial {i}: start tip {before['tip_mm']:.1f} mm / axis {before['axis_deg']:.1f} deg"
                f" -> tip {after['tip_mm']:.2f} mm (in-plane {after['tip_in_plane_mm']:.2f}, depth "
                f"{after['tip_depth_mm']:.2f}), axis {after['axis_deg']:.2f} deg, {seconds:.0f} s"
                f"{'' if success else '  FAIL'}",
                flush=True,
            )
        timed = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
        final = [r["final"] for r in rows]
        out["views"][str(n_views)] = {
            "trials": rows,
            "success_rate": float(np.mean([r["success"] for r in rows])),
            "median_tip_mm": float(np.median([f["tip_mm"] for f in final])),
            "median_tip_in_plane_mm": float(np.median([f["tip_in_plane_mm"] for f in final])),
            "median_tip_depth_mm": float(np.median([f["tip_depth_mm"] for f in final])),
            "median_tip_px": float(np.median([f["tip_px"] for f in final])),
            "median_axis_deg": float(np.median([f["axis_deg"] for f in final])),
            "median_seconds": float(np.median(timed)),
            "first_seconds_with_compile": rows[0]["seconds"],
        }
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--axial-search-mm", type=float, default=AXIAL_SEARCH_MM, help="0: no axial scan")
    parser.add_argument(
        "--iterations", type=int, nargs=3, default=list(ITERATIONS), help="Adam steps per stage"
    )
    parser.add_argument("--stem", default=None, help="results file stem (default tool_pose_<date>)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    results = run(args.trials, args.views, tuple(args.iterations), args.axial_search_mm)
    payload = {
        "benchmark": "tool_pose",
        "machine": machine_info(),
        "settings": {
            "trials": args.trials,
            "max_shift_mm": MAX_SHIFT_MM,
            "max_angle_deg": MAX_ANGLE_DEG,
            "iterations": tuple(args.iterations),
            "axial_search_mm": args.axial_search_mm,
            "blur_px": BLUR_PX,
            "detector": DETECTOR,
            "pixel_mm": PIXEL_MM,
            "success": f"tip < {TIP_SUCCESS_MM} mm and axis < {AXIS_SUCCESS_DEG} deg",
            "metric": "mse",
        },
        "total_seconds": time.perf_counter() - t0,
        **results,
    }
    rows = [
        [
            v,
            r["success_rate"],
            r["median_tip_mm"],
            r["median_tip_in_plane_mm"],
            r["median_tip_depth_mm"],
            r["median_tip_px"],
            r["median_axis_deg"],
            r["median_seconds"],
        ]
        for v, r in results["views"].items()
    ]
    table = md_table(
        [
            "views",
            "success",
            "median tip (mm)",
            "AP in-plane (mm)",
            "AP depth (mm)",
            "AP tip (px)",
            "median axis (deg)",
            "median s / registration",
        ],
        rows,
    )
    summary = (
        f"# Tool pose recovery ({args.trials} random starts within {MAX_SHIFT_MM:g} mm / {MAX_ANGLE_DEG:g} deg)\n\n"
        f"Success: tip < {TIP_SUCCESS_MM:g} mm and axis < {AXIS_SUCCESS_DEG:g} deg. "
        f"Machine: {payload['machine'].get('cpu_model', '?')}, load {payload['machine']['loadavg']}.\n\n{table}\n"
    )
    md, js = write_results(args.stem or f"tool_pose_{today()}", payload, summary)
    print(summary)
    print(f"wrote {js} and {md}")


if __name__ == "__main__":
    main()
