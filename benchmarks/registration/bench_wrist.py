"""Biplanar radius + ulna registration on the real Autoscoper wrist, frame 0002 (issue 24's numbers).

    python benchmarks/registration/bench_wrist.py [--starts 20] [--quick] [--init POSES.json]
    python benchmarks/registration/bench_wrist.py --skip repeatability consistency realism \
        --against benchmarks/results/wrist_2026-12-07.json      # the automatic initialisation alone
    python benchmarks/registration/bench_wrist.py --skip repeatability consistency realism \
        --strap 2:45:1.5 --against ...                          # the same, a strap at camera 2's rim

No ground-truth poses ship with the data, so the measures are ground-truth free:

1. **Reference.** The bones are initialised (``--init`` file, else the automatic search of
   :mod:`jaxdrr.registration.initialize`: every combination of the bones' candidates that keeps
   them apart, :func:`~jaxdrr.registration.initialize.joint_seeds`, as the starts of one joint
   registration) and registered jointly in both views; then registered again from
   the result (the reference pose: a fixed point of the registration).
2. **Repeatability.** ``--starts`` random starts, each bone independently turned by up to 10 deg
   (uniform angle and axis) and moved by up to 10 mm (uniform in a ball) from the reference, each
   registered jointly. Converged = within 2 mm (mean voxel displacement) of the best optimum found
   for that bone (the highest similarity among the reference and the runs; the reference is a fixed
   point, not necessarily the best). Spread = each converged pose's displacement of the bone's voxels
   (mean over the bone, "target registration spread") from the mean converged pose; rotation spread
   = angle from the mean rotation. Target: <= 0.3 mm and <= 0.3 deg. Starts that end elsewhere are
   counted as failures and reported separately.
3. **Speed.** The wall time of those registrations (compiled: the first start is excluded and
   reported apart). Target: <= 10 s for biplanar two-bone registration from 10 deg / 10 mm.
4. **Biplanar consistency.** Each camera alone (both bones, from the reference pose perturbed by
   2 deg / 2 mm, one start) vs the joint reference, in that camera's frame: in-plane = translation across
   the ray and rotation about the ray; out-of-plane = translation along the ray (depth) and
   rotation about the two axes across it. Target for in-plane: <= 0.5 mm / 0.5 deg. Each view's
   similarity at the single-view result and at the joint pose tells a local optimum of the single
   view (lower than the joint pose's) from a disagreement between the views (higher).
5. **Realism.** At the reference pose, the similarity (gradient NCC and NCC inside the bones'
   masks) of the real frame's ``-ln`` to (a) the mono-energetic single-material DRR the
   registration uses (attenuation line integrals) and (b) the full-physics DRR (HU -> materials,
   60 kVp spectrum, polyenergetic ``-ln`` transmission; bone-only CT, so no soft tissue).

Raw results go to ``benchmarks/results/wrist_<date>.json`` and an overlay PNG beside it (``--overlay``);
with the repeatability runs, each bone's best optimum goes to ``<json stem>_best_poses.json`` (an
``--init`` file).
``--quick`` runs everything at a reduced size (3 starts, short levels) to check that the script
works; its numbers are not the benchmark's.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "autoscoper_wrist"
# MultiViewConfig fields settable from the command line (--roll-search-deg etc.).
CONFIG_OPTIONS = ("roll_search_deg", "roll_step_deg", "slide_search_mm", "slide_step_mm", "mask_margin_mm")
BONES = ("rad", "uln")
VOXEL_MM = (0.39625, 0.39625, 0.625)


def strapped(frame, angle_deg: float, strength: float):
    """``frame`` with a synthetic strap: an absorber of Gaussian profile (``strength`` in ``-ln``
    units on its centre line, sigma 8 % of the FOV radius) entering the field of view from its rim
    at ``angle_deg`` (0 = right, 90 = up) and reaching to 0.45 FOV radii from the centre. Fingers,
    a hand or a strap at the rim, stronger than the forearm's entry: a check of the automatic
    initialisation's limb-axis hypotheses (``--strap``)."""
    import dataclasses

    cx, cy, r = frame.fov
    y, x = np.indices(frame.shape, dtype=np.float64)
    c, s = math.cos(math.radians(angle_deg)), -math.sin(math.radians(angle_deg))  # outwards, rows down
    inward_limit = (x - cx) * c + (y - cy) * s > 0.45 * r
    profile = np.exp(-0.5 * ((-(x - cx) * s + (y - cy) * c) / (0.08 * r)) ** 2)
    return dataclasses.replace(
        frame, image=(frame.image * np.exp(-strength * profile * inward_limit)).astype(np.float32)
    )


def load(downsample: int = 1, frame: str = "0002", frames_dir: Path | None = None, straps=()):
    """Views (both cameras' ``frame`` from ``frames_dir``, default frame 0002's folder), the frames,
    the projection matrices and the bones' volumes, at 1 / ``downsample`` of the frames' size.
    ``straps``: (camera, angle_deg, strength) of synthetic straps (:func:`strapped`)."""
    from jaxdrr.io.frames import read_fluoro_frame
    from jaxdrr.io.mayacam import projection_from_mayacam, read_mayacam
    from jaxdrr.io.tiff_stack import read_tiff_volume
    from jaxdrr.registration import multiview as mv

    frames_dir = DATA / "frames" if frames_dir is None else Path(frames_dir)
    views, frames, Ps = [], [], []
    for cam in (1, 2):
        frame_data = read_fluoro_frame(
            frames_dir / f"xr_rad_uln_cam0{cam}_UND.{frame}.tif", downsample=downsample
        )
        for _, angle, strength in (st for st in straps if st[0] == cam):
            frame_data = strapped(frame_data, angle, strength)
        P = projection_from_mayacam(
            read_mayacam(DATA / "Calibration" / f"xr_calib_wrist_cam0{cam}.txt"), image_scale=1.0 / downsample
        )
        frames.append(frame_data)
        Ps.append(P)
        views.append(mv.View(P, frame_data.image, frame_data.mask, f"cam{cam}"))
    volumes = {b: read_tiff_volume(DATA / "Models" / f"{b}_dcm_cropped.tif", VOXEL_MM) for b in BONES}
    return views, frames, Ps, volumes


def initial_poses(volumes, init_path, config, frame: str = "0002", frames_dir: Path | None = None, straps=()):
    """Seeds: the --init file, else the automatic search (every combination of the bones'
    candidates that keeps the bones apart, as multiple starts of one joint registration)."""
    from jaxdrr.registration.initialize import initialize_bones, joint_seeds, load_initial_poses

    if init_path:
        poses = load_initial_poses(init_path)
        return {b: poses[b] for b in BONES}, {"source": str(init_path)}
    _, frames8, Ps8, _ = load(8, frame, frames_dir, straps)
    cands = initialize_bones({b: volumes[b] for b in BONES}, frames8, Ps8)
    seeds = joint_seeds({b: volumes[b] for b in BONES}, cands)
    info = {
        "source": "automatic",
        "axis_hypothesis": {b: cands[b][0].axis_index if cands[b] else None for b in BONES},
        "candidate_scores": {b: [c.score for c in cands[b]] for b in BONES},
        "n_joint_seeds": len(seeds),
    }
    return seeds, info


def bone_points(volume, n=2000):
    """Up to ``n`` voxel centres of the bone (object mm), for target registration spreads."""
    from jaxdrr.registration.initialize import bone_samples

    return bone_samples(volume, 200.0, n)


def random_start(pose, rng, max_deg, max_mm):
    from jaxdrr.geometry.rigid import RigidTransform

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(max_deg) * rng.uniform()
    d = rng.normal(size=3)
    d *= max_mm * rng.uniform() ** (1 / 3) / np.linalg.norm(d)
    T0 = np.asarray(pose.matrix(), np.float64)
    centre = T0[:3, :3] @ np.asarray(pose.pivot) + T0[:3, 3]  # turn about the bone's centre (world)
    delta = RigidTransform.create(axis * angle, d, pivot=tuple(centre))
    T = np.asarray(delta.matrix(), np.float64) @ T0
    return RigidTransform.from_matrix(T, pose.pivot)


def mean_pose(poses):
    """Chordal mean rotation and mean translation of 4x4 poses."""
    Ts = np.stack([np.asarray(p.matrix(), np.float64) for p in poses])
    U, _, Vt = np.linalg.svd(Ts[:, :3, :3].sum(axis=0))
    R = U @ np.diag([1, 1, np.linalg.det(U @ Vt)]) @ Vt
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, Ts[:, :3, 3].mean(axis=0)
    return T


def spread(poses, points):
    """Per pose: mean displacement of ``points`` (mm) and rotation angle (deg) from the mean pose."""
    M = mean_pose(poses)
    out = []
    for p in poses:
        T = np.asarray(p.matrix(), np.float64)
        d = np.linalg.norm(points @ (T[:3, :3] - M[:3, :3]).T + (T[:3, 3] - M[:3, 3]), axis=1)
        c = np.clip((np.trace(M[:3, :3].T @ T[:3, :3]) - 1) / 2, -1, 1)
        out.append((float(d.mean()), math.degrees(math.acos(c))))
    return out


def camera_frame_difference(P, single, joint, points):
    """Difference single - joint in the camera frame of P: in-plane (across-ray translation of the
    bone's centroid, rotation about the ray) and out-of-plane (depth, rotations across the ray)."""
    from jaxdrr.geometry.projection import decompose_projection
    from jaxdrr.geometry.rotations import so3_log

    _, Rc, _ = decompose_projection(P)
    Ts, Tj = (np.asarray(p.matrix(), np.float64) for p in (single, joint))
    c = points.mean(axis=0)
    dc = Rc @ ((Ts[:3, :3] @ c + Ts[:3, 3]) - (Tj[:3, :3] @ c + Tj[:3, 3]))
    dR = Ts[:3, :3] @ Tj[:3, :3].T
    rv = Rc @ np.asarray(so3_log(dR), np.float64)
    return {
        "in_plane_translation_mm": float(np.hypot(dc[0], dc[1])),
        "in_plane_rotation_deg": float(abs(math.degrees(rv[2]))),
        "out_of_plane_translation_mm": float(abs(dc[2])),
        "out_of_plane_rotation_deg": float(math.degrees(np.hypot(rv[0], rv[1]))),
        "camera_frame_translation_mm": dc.tolist(),
        "camera_frame_rotation_deg": np.degrees(rv).tolist(),
    }


def realism(volumes, poses, views, rois, factor=2, kvp=60):
    """Similarity of the real frames to the mono-energetic attenuation DRR and to the full-physics
    DRR at ``poses`` (same masks: each bone's footprint dilated, in the ROI at ``factor``)."""
    import jax.numpy as jnp

    import jaxdrr
    from jaxdrr.geometry.rigid import object_projection
    from jaxdrr.ops.project import project
    from jaxdrr.registration import metrics
    from jaxdrr.registration import multiview as mv
    from jaxdrr.registration.optimize import downsample_image
    from jaxdrr.render import RenderConfig, default_params, image_from_line_integrals, line_integrals

    out = {}
    for view in views:
        x0, y0, w, h = rois[view.name]
        P = mv._crop_projection(view.P, x0, y0, factor)
        H, W = h // factor, w // factor
        target = np.asarray(
            downsample_image(mv._crop(-np.log(np.maximum(view.image, 1 / 512)), rois[view.name]), factor)
        )
        fov = np.asarray(downsample_image(mv._crop(view.mask.astype(float), rois[view.name]), factor))
        mono, L_all = np.zeros((H, W)), 0.0
        cfg = RenderConfig(height=H, width=W, step_mm=None, output="log")
        params = default_params(cfg, jaxdrr.default_spectrum(kvp))
        masks = []
        for b, vol in volumes.items():
            att = mv.attenuation_volume(vol)
            Pb = object_projection(jnp.asarray(P, jnp.float32), poses[b])
            Lb = np.asarray(project(att.data, att.affine, Pb, H, W)[..., 0])
            mono += Lb
            masks.append(mv._bone_masks(Lb[None], fov, 0.05, int(4.0 / (0.146 * factor)))[0])
            L_all = L_all + line_integrals(cfg, vol, Pb, params)
        full = np.asarray(image_from_line_integrals(cfg, params, L_all, None))
        mask = np.max(masks, axis=0)
        out[view.name] = {
            "mono_gncc": float(metrics.gradient_ncc(mono, target, mask)),
            "full_gncc": float(metrics.gradient_ncc(full, target, mask)),
            "mono_ncc": float(metrics.ncc(mono, target, mask)),
            "full_ncc": float(metrics.ncc(full, target, mask)),
            "kvp": kvp,
        }
    return out


def save_overlay(volumes, poses, views, path, factor=2):
    """PNG: both frames (ROI) with each bone's projected outline (radius red, ulna cyan)."""
    from PIL import Image
    from scipy import ndimage

    from jaxdrr.registration import multiview as mv

    panels = []
    for view in views:
        small = mv.View(
            np.asarray(mv._crop_projection(view.P, 0, 0, factor)),
            np.asarray(view.image[: view.shape[0] // factor * factor, : view.shape[1] // factor * factor])
            .reshape(view.shape[0] // factor, factor, view.shape[1] // factor, factor)
            .mean(axis=(1, 3)),
            None,
            view.name,
        )
        rgb = np.repeat(small.image[..., None], 3, axis=-1)
        for b, colour in zip(BONES, ([1.0, 0.1, 0.0], [0.0, 0.8, 1.0])):
            L = mv.render_views({b: volumes[b]}, poses, [small], taper_mm=8.0)[0]
            inside = L > 0.05 * L.max()
            rgb[inside ^ ndimage.binary_erosion(inside)] = colour
        ys, xs = np.nonzero(mv.render_views(volumes, poses, [small])[0] > 0)
        pad = 40
        crop = rgb[max(ys.min() - pad, 0) : ys.max() + pad, max(xs.min() - pad, 0) : xs.max() + pad]
        panels.append(crop)
    h = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, h - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    Image.fromarray((np.clip(np.concatenate(panels, axis=1), 0, 1) * 255).astype(np.uint8)).save(path)


def repeatability(volumes, views, ref, search, n_starts, points, seed=0):
    """``n_starts`` joint registrations (config ``search``) from random starts 10 deg / 10 mm around
    ``ref``'s poses; per bone: converged (within 2 mm of the best optimum found) and their spread.

    Returns:
      (report dict, ``{bone: best optimum}``).
    """
    from jaxdrr.registration import multiview as mv

    poses = ref.poses
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n_starts):
        start = {b: random_start(poses[b], rng, 10.0, 10.0) for b in BONES}
        t = time.perf_counter()
        r = mv.register_multiview(volumes, views, start, search, rois=ref.rois)
        runs.append({"time_s": time.perf_counter() - t, "result": r, "start": start})
        print(f"start {i}: {runs[-1]['time_s']:.1f} s, similarity {r.mean_similarity():.4f}", flush=True)
    rep, anchors = {}, {}
    for b in BONES:
        to_ref = [mv.pose_difference(run["result"].poses[b], poses[b], points[b]) for run in runs]
        # The anchor: the best optimum found for this bone (highest similarity over the views),
        # among the reference and the runs. The reference is a fixed point of the registration
        # from the seed, not necessarily the best optimum (the ulna's was ~5 mm from one that
        # every random start found, with a higher similarity).
        candidates = [ref] + [run["result"] for run in runs]
        scores = [float(np.mean([c.similarity[v][b] for v in c.similarity])) for c in candidates]
        anchor = candidates[int(np.argmax(scores))].poses[b]
        anchors[b] = anchor
        to_anchor = [mv.pose_difference(run["result"].poses[b], anchor, points[b]) for run in runs]
        ok = [i for i, d in enumerate(to_anchor) if d["mean_mm"] < 2.0]
        sp = spread([runs[i]["result"].poses[b] for i in ok], points[b]) if len(ok) > 1 else []
        start_d = [mv.pose_difference(run["start"][b], poses[b], points[b]) for run in runs]
        rep[b] = {
            "n_starts": len(runs),
            "n_converged_within_2mm": len(ok),
            "spread_mean_mm": [s[0] for s in sp],
            "spread_rotation_deg": [s[1] for s in sp],
            "max_spread_mm": max((s[0] for s in sp), default=None),
            "max_spread_deg": max((s[1] for s in sp), default=None),
            "rms_spread_mm": float(np.sqrt(np.mean([s[0] ** 2 for s in sp]))) if sp else None,
            "rms_spread_deg": float(np.sqrt(np.mean([s[1] ** 2 for s in sp]))) if sp else None,
            "to_reference": to_ref,
            "anchor": "reference" if int(np.argmax(scores)) == 0 else f"start {int(np.argmax(scores)) - 1}",
            "anchor_similarity": max(scores),
            "reference_similarity": scores[0],
            "to_anchor": to_anchor,
            "start_offsets": start_d,
        }
    times = [run["time_s"] for run in runs]
    rep["time_s"] = times
    rep["median_time_s_excluding_first"] = float(np.median(times[1:])) if len(times) > 1 else None
    rep["similarities"] = [run["result"].similarity for run in runs]
    rep["converged"] = [run["result"].converged for run in runs]
    for b in BONES:
        print(
            f"{b}: {rep[b]['n_converged_within_2mm']}/{len(runs)} within 2 mm of the best optimum "
            f"({rep[b]['anchor']}, similarity {rep[b]['anchor_similarity']:.4f}; reference "
            f"{rep[b]['reference_similarity']:.4f}); spread max "
            f"{rep[b]['max_spread_mm']} mm, {rep[b]['max_spread_deg']} deg"
        )
    print(f"median time {rep['median_time_s_excluding_first']} s (first {times[0]:.1f} s)")
    return rep, anchors


def consistency(volumes, views, poses, config, points, seed=1):
    """Each camera alone (both bones, settings ``config``) from the joint ``poses`` perturbed by
    2 deg / 2 mm, against ``poses``, in that camera's frame; with the view's similarity at both
    poses (each measured with its own masks): a single-view result whose similarity is lower
    than the joint pose's stopped in a local optimum of its own view."""
    from jaxdrr.registration import multiview as mv

    rng = np.random.default_rng(seed)
    cons = {}
    start = {b: random_start(poses[b], rng, 2.0, 2.0) for b in BONES}
    for view in views:
        r = mv.register_multiview(volumes, [view], start, config)
        # The joint poses' similarity in this view, measured as the result's (a last level of no
        # iterations, in the result's crop, masks dilated by mask_margin_mm: no start spread).
        at_joint = mv.register_multiview(
            volumes,
            [view],
            poses,
            config.replace(
                n_starts=1,
                levels=(config.levels[-1][:1] + (0,),),
                roll_search_deg=0.0,
                start_translation_mm=0.0,
            ),
            rois=r.rois,
        )
        cons[view.name] = {b: camera_frame_difference(view.P, r.poses[b], poses[b], points[b]) for b in BONES}
        cons[view.name]["similarity"] = r.similarity
        cons[view.name]["similarity_at_joint_pose"] = at_joint.similarity
        print(
            f"{view.name} alone vs joint: "
            + "; ".join(
                f"{b} in-plane {cons[view.name][b]['in_plane_translation_mm']:.2f} mm "
                f"{cons[view.name][b]['in_plane_rotation_deg']:.2f} deg, depth "
                f"{cons[view.name][b]['out_of_plane_translation_mm']:.2f} mm, similarity "
                f"{r.similarity[view.name][b]:.4f} (joint pose {at_joint.similarity[view.name][b]:.4f})"
                for b in BONES
            ),
            flush=True,
        )
    return cons


def write_report(path: Path, report: dict) -> None:
    """The result JSON, written atomically."""
    from jaxdrr.atomic import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, report, indent=1)
    print(f"-> {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--starts", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="small, fast settings (checks the script)")
    p.add_argument("--init", default=None, help="initial poses JSON (load_initial_poses format)")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/wrist_<date>.json)")
    p.add_argument("--overlay", default=None, help="overlay PNG (default: beside the JSON)")
    p.add_argument(
        "--multistart",
        type=int,
        default=8,
        help="first-level starts per random start (10 deg / 10 mm spread)",
    )
    p.add_argument("--skip", nargs="*", default=(), choices=("repeatability", "consistency", "realism"))
    p.add_argument(
        "--strap",
        action="append",
        default=[],
        metavar="CAM:ANGLE:STRENGTH",
        help="add a synthetic strap to camera CAM's frame, entering the FOV at ANGLE deg (0 = right, 90 = "
        "up) with STRENGTH (-ln units) on its centre line (repeatable; a robustness check)",
    )
    p.add_argument(
        "--against",
        default=None,
        help="an earlier result JSON: report how far this run's reference poses are from its reference "
        "(e.g. the automatic initialisation against a run from --init)",
    )
    p.add_argument(
        "--levels",
        default=None,
        help="coarse-to-fine levels FACTOR:ITERATIONS[:OPTIMIZER],... (default MultiViewConfig's, e.g. "
        "8:30,4:20,2:10,2:10:lbfgs; OPTIMIZER adam or lbfgs)",
    )
    p.add_argument(
        "--single-view-search",
        default=None,
        metavar="ROLL_DEG:SLIDE_MM",
        help="the turn and slide search (roll_search_deg, slide_search_mm) in the single-view registrations of "
        "the consistency step only (one view leaves a cropped shaft's slide along itself weakly constrained)",
    )
    for field in CONFIG_OPTIONS:
        p.add_argument(
            "--" + field.replace("_", "-"),
            type=float,
            default=None,
            help=f"MultiViewConfig.{field} (default: the config's)",
        )
    args = p.parse_args(argv)

    from jaxdrr.registration import multiview as mv

    if not (DATA / "frames").is_dir():
        print(f"no data in {DATA}", file=sys.stderr)
        return 2
    config = mv.MultiViewConfig()
    n_starts = args.starts
    if args.levels:
        from jaxdrr.cli.register import parse_levels  # the CLI's --levels syntax

        config = config.replace(levels=parse_levels(args.levels))
    config = config.replace(**{f: getattr(args, f) for f in CONFIG_OPTIONS if getattr(args, f) is not None})
    if args.quick:
        config = config.replace(levels=((8, 15), (4, 10)))
        n_starts = min(n_starts, 3)
    date = datetime.date.today().isoformat()
    out_path = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / f"wrist_{date}{'_quick' if args.quick else ''}.json"
    )
    overlay = Path(args.overlay) if args.overlay else out_path.with_suffix(".png")
    try:
        straps = [tuple(float(x) for x in spec.split(":")) for spec in args.strap]
    except ValueError:
        straps = [()]
    if any(len(st) != 3 or st[0] not in (1, 2) for st in straps):
        p.error(f"--strap wants CAM:ANGLE:STRENGTH with CAM 1 or 2, got {args.strap}")
    straps = [(int(cam), angle, strength) for cam, angle, strength in straps]
    views, _, _, volumes = load(1, straps=straps)
    report = {
        "date": date,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "quick": args.quick,
        "config": {
            "levels": [list(lv) for lv in config.levels],
            "metric": config.metric,
            "lr": config.learning_rate,
            "multistart": args.multistart,
            "roll_refine_iterations": config.roll_refine_iterations,
            **{f: getattr(config, f) for f in CONFIG_OPTIONS},
        },
    }

    t0 = time.perf_counter()
    seeds, report["init"] = initial_poses(volumes, args.init, config, straps=straps)
    report["straps"] = [list(st) for st in straps]
    report["init"]["time_s"] = time.perf_counter() - t0
    # The reference: refinements from the seeds (one start each), then from that result.
    first = mv.register_multiview(volumes, views, seeds, config)
    ref = mv.register_multiview(volumes, views, first.poses, config, rois=first.rois)
    search = config.replace(n_starts=args.multistart)  # the random starts also search around themselves
    poses = ref.poses
    report["reference"] = ref.to_dict()
    report["reference"]["first_pass"] = first.to_dict()
    print(f"reference: similarity {ref.similarity}, converged {ref.converged}, {ref.time_s:.1f} s")
    save_overlay(volumes, poses, views, overlay)
    report["overlay"] = str(overlay)
    points = {b: bone_points(volumes[b]) for b in BONES}
    if args.against:
        import json

        from jaxdrr.geometry.rigid import RigidTransform

        other = json.loads(Path(args.against).read_text())["reference"]
        report["against"] = {"file": str(args.against)}
        for b in BONES:
            T = np.asarray(other["poses"][b]["matrix"], np.float64)
            d = mv.pose_difference(poses[b], RigidTransform.from_matrix(T, poses[b].pivot), points[b])
            d["similarity_here"] = float(np.mean([per[b] for per in ref.similarity.values()]))
            d["similarity_there"] = float(np.mean([per[b] for per in other["similarity"].values()]))
            report["against"][b] = d
            print(
                f"{b} vs {args.against}: {d['mean_mm']:.2f} mm mean over the bone, {d['rotation_deg']:.2f} deg; "
                f"similarity {d['similarity_here']:.4f} here, {d['similarity_there']:.4f} there"
            )

    if "repeatability" not in args.skip:
        rep, anchors = repeatability(volumes, views, ref, search, n_starts, points)
        # The best optimum of each bone, as an --init file (load_initial_poses format).
        from jaxdrr.registration.initialize import save_initial_poses

        best = out_path.with_name(out_path.stem + "_best_poses.json")
        save_initial_poses(best, anchors)
        rep["best_poses"] = str(best)
        report["repeatability"] = rep

    if "consistency" not in args.skip:
        single = config
        if args.single_view_search:
            roll, slide = (float(x) for x in args.single_view_search.split(":"))
            single = config.replace(roll_search_deg=roll, slide_search_mm=slide)
            report["config"]["single_view_search"] = [roll, slide]
        report["consistency"] = consistency(volumes, views, poses, single, points)

    if "realism" not in args.skip:
        report["realism"] = realism(volumes, poses, views, ref.rois)
        print("realism", report["realism"])

    write_report(out_path, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
