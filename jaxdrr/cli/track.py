"""``jaxdrr track``: follow several bones through a biplanar (or multi-view) fluoroscopy sequence.

    jaxdrr track --view 'CAM1_FRAMES:CALIB1.txt' --view 'CAM2_FRAMES:CALIB2.txt' \\
                 --volume NAME=STACK.tif[:voxel=SX,SY,SZ] ... [--init poses.json] [--reseed] \\
                 --out track.json

Each ``--view`` is a glob pattern of one camera's frames (quote it; sorted in natural order, so
``frame.9.tif`` comes before ``frame.10.tif``; every view the same number of frames, frame ``t`` of
every view taken at the same time) and the camera's MayaCam calibration. Frame by frame, all bones
are registered jointly in all views, each frame warm-started from the previous frame's poses
(:func:`jaxdrr.registration.multiview.track_sequence`, ``--starts`` starts around them). The first
frame starts from ``--init`` (the format of ``jaxdrr register --view``'s output or of
:func:`jaxdrr.registration.initialize.load_initial_poses`), else from the automatic search
(:func:`jaxdrr.registration.initialize.search_seeds`).

Every frame is flagged (``similarity_drop``, ``pose_jump``, ``not_converged``, ``low_similarity``
with ``--min-similarity``; ``ok`` when none). With ``--reseed`` a frame flagged for a similarity
drop or a low similarity is registered again from the automatic search on that frame, and the
better result kept (``reseeded``, ``recovered``): a motion between frames beyond the warm start's
reach (about 10 deg / 10 mm) is found again instead of being followed on the wrong shadow.

The output JSON (rewritten atomically after every frame, so an interrupted run loses at most the
frame in progress) holds per frame the images, each bone's pose (4x4 ``matrix`` and
``pivot_mm``), the similarity per view and bone and the flags. ``--resume`` continues an
interrupted run from its last frame (same views and volumes).

Frames are read one at a time (a sequence of any length fits in memory).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

from jaxdrr.atomic import write_json
from jaxdrr.cli.common import (
    HelpFormatter,
    check_input_file,
    check_non_negative,
    check_output,
    check_positive,
    long_step,
    make_parent_dir,
    progress_bar,
)
from jaxdrr.cli.register import (
    WRIST_VOXEL_MM,
    format_levels,
    init_poses,
    parse_levels,
    parse_volume,
    pose_entries,
    poses_from_entries,
)
from jaxdrr.errors import JaxdrrError

SEARCH_DOWNSAMPLE = 8  # the automatic search works at ~1/8 of a 1760 px frame
DEFAULT_JUMP = (5.0, 5.0)  # mm, deg: track_sequence's defaults


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``track`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "track",
        help="follow bones through a multi-view fluoroscopy sequence, frame by frame",
        description="Register several bones jointly in several calibrated views, frame after frame, "
        "each warm-started from the previous frame; flag doubtful frames, optionally re-seed lost ones. "
        "Writes the per-frame poses as JSON.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--view",
        action="append",
        required=True,
        metavar="FRAMES:CALIB",
        help="one camera: a glob pattern of its frames (quoted; natural order) and its MayaCam calibration "
        "(repeatable; every view the same number of frames)",
    )
    p.add_argument(
        "--volume",
        action="append",
        required=True,
        metavar="NAME=PATH[:voxel=SX,SY,SZ]",
        help="a bone's TIFF stack (repeatable); voxel size in mm "
        f"(default {','.join(str(v) for v in WRIST_VOXEL_MM)}, the Autoscoper wrist's)",
    )
    p.add_argument("--init", default=None, help="poses for the first frame (default: automatic search)")
    p.add_argument("--out", required=True, help="output JSON (rewritten after every frame)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last frame")
    p.add_argument(
        "--starts", type=int, default=8, help="starts around the previous frame's poses (first level)"
    )
    p.add_argument(
        "--levels",
        default=None,
        help="coarse-to-fine levels FACTOR:ITERATIONS[:OPTIMIZER],... (default MultiViewConfig's, "
        "8:30,4:20,2:10,2:10:lbfgs)",
    )
    p.add_argument(
        "--reseed",
        action="store_true",
        help="re-register a frame flagged for a similarity drop or --min-similarity from the automatic search",
    )
    p.add_argument(
        "--min-similarity",
        type=float,
        default=None,
        metavar="S",
        help="flag a frame where a bone's similarity in a view is below S (0.35 separates found from lost "
        "bones on the Autoscoper wrist; the scale depends on the images)",
    )
    p.add_argument(
        "--max-jump",
        type=float,
        nargs=2,
        default=None,
        metavar=("MM", "DEG"),
        help=f"flag a frame where a bone moved more than this from the previous frame (default {DEFAULT_JUMP[0]:g} "
        f"mm, {DEFAULT_JUMP[1]:g} deg)",
    )
    p.add_argument(
        "--max-similarity-drop",
        type=float,
        default=0.1,
        help="flag a frame whose mean similarity fell by more than this from the previous frame",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the starts around the previous poses")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_view(text: str) -> tuple[str, Path]:
    """``--view FRAMES:CALIB`` -> (glob pattern, calibration path); the split is at the last ':'."""
    frames, sep, calib = text.rpartition(":")
    if not sep or not frames or not calib:
        raise JaxdrrError(
            f"--view must be FRAMES:CALIB (a glob pattern of one camera's frames and its MayaCam .txt), got {text!r}"
        )
    return frames, Path(calib)


def _natural_key(path: Path) -> list:
    """Sort key: digit runs compare as numbers (frame.9 before frame.10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def expand_frames(pattern: str) -> list[Path]:
    """The files a ``--view`` glob pattern names, in natural order."""
    paths = [Path(p) for p in glob.glob(pattern) if Path(p).is_file()]
    if not paths:
        raise JaxdrrError(f"--view frames {pattern!r} match no file")
    return sorted(paths, key=_natural_key)


class FrameSequence(Sequence):
    """One camera's frames, read when indexed (intensity in [0, 1], as :func:`read_fluoro_frame`)."""

    def __init__(self, paths: Sequence[Path], shape: tuple[int, int], downsample: int = 1):
        self.paths, self.shape, self.downsample = list(paths), tuple(shape), downsample

    def __len__(self) -> int:
        return len(self.paths)

    def frame(self, t: int):
        from jaxdrr.io.frames import read_fluoro_frame

        frame = read_fluoro_frame(self.paths[t], downsample=self.downsample)
        if frame.shape != self.shape:
            raise JaxdrrError(
                f"{self.paths[t]}: {frame.shape[1]}x{frame.shape[0]} pixels, but this view's frames are "
                f"{self.shape[1]}x{self.shape[0]}"
            )
        return frame

    def __getitem__(self, t):
        if isinstance(t, slice):
            return FrameSequence(self.paths[t], self.shape, self.downsample)
        return self.frame(t).image


def run(args) -> int:
    """Runs ``jaxdrr track`` for parsed arguments; returns the exit code."""
    from jaxdrr.registration import multiview as mv

    views_in = [parse_view(v) for v in args.view]
    volumes_in = [parse_volume(v) for v in args.volume]
    names = [n for n, _, _ in volumes_in]
    if len(set(names)) != len(names):
        raise JaxdrrError(f"--volume names must be unique, got {names}")
    for _, calib in views_in:
        check_input_file(calib, "--view calibration", suffixes=(".txt",))
    for _, path, _ in volumes_in:
        check_input_file(path, "--volume", suffixes=(".tif", ".tiff"))
    if args.init is not None:
        check_input_file(args.init, "--init", suffixes=(".json",))
    check_positive(args.starts, "--starts", integer=True)
    if args.max_jump is None:
        args.max_jump = DEFAULT_JUMP
    check_non_negative(args.max_jump[0], "--max-jump MM")
    check_non_negative(args.max_jump[1], "--max-jump DEG")
    check_non_negative(args.max_similarity_drop, "--max-similarity-drop")
    if args.min_similarity is not None and not -1.0 <= args.min_similarity <= 1.0:
        raise JaxdrrError(f"--min-similarity must lie in [-1, 1] (a correlation), got {args.min_similarity}")
    frame_paths = [expand_frames(pattern) for pattern, _ in views_in]
    counts = [len(f) for f in frame_paths]
    if len(set(counts)) != 1:
        raise JaxdrrError(f"every --view needs the same number of frames, got {counts}")
    inputs = (
        [p for paths in frame_paths for p in paths] + [c for _, c in views_in] + [p for _, p, _ in volumes_in]
    )
    check_output(args.out, "--out", (".json",), inputs=inputs + [args.init])
    levels = parse_levels(args.levels) if args.levels else mv.MultiViewConfig().levels
    first_config = mv.MultiViewConfig(levels=levels, n_starts=1, seed=args.seed)
    config = first_config.replace(n_starts=args.starts)
    record = {
        "views": [{"frames": pattern, "calibration": str(calib.resolve())} for pattern, calib in views_in],
        "volumes": {n: {"path": str(p.resolve()), "voxel_mm": list(vx)} for n, p, vx in volumes_in},
    }
    done: list[dict] = []
    if args.resume and Path(args.out).is_file():
        try:
            previous = json.loads(Path(args.out).read_text())
        except json.JSONDecodeError as e:
            raise JaxdrrError(f"--resume: {args.out} is not valid JSON: {e}") from e
        if {k: previous.get(k) for k in record} != record:
            raise JaxdrrError(f"--resume: {args.out} was written for other --view / --volume inputs")
        done = list(previous.get("frames", []))

    from jaxdrr.io.mayacam import projection_from_mayacam, read_mayacam
    from jaxdrr.io.tiff_stack import read_tiff_volume

    t0 = time.perf_counter()
    with long_step(f"loading {len(views_in)} views and {len(volumes_in)} volumes", disable=args.quiet):
        views, sequences, calibrations = [], [], []
        for i, ((_, calib), paths) in enumerate(zip(views_in, frame_paths, strict=True)):
            cal = read_mayacam(calib)
            first = FrameSequence(paths, (cal.height, cal.width))
            frame = first.frame(0)  # also checks the calibration's image size
            sequences.append(first)
            calibrations.append(cal)
            views.append(mv.View(projection_from_mayacam(cal), frame.image, frame.mask, f"view{i + 1}"))
        volumes = {n: read_tiff_volume(p, voxel) for n, p, voxel in volumes_in}
    start = len(done)
    if start >= counts[0]:
        print(f"{args.out} already holds all {counts[0]} frames")
        return 0
    if done:
        last = poses_from_entries(done[-1].get("poses", {}), f"--resume: the last frame of {args.out}")
        if set(last) != set(names):
            raise JaxdrrError(
                f"--resume: the last frame of {args.out} has poses of {sorted(last)}, not {names}"
            )
        seeds = last
        first_config = config  # a warm start
    elif args.init is not None:
        seeds = init_poses(args.init, names)
    else:
        seeds = None
    small = [
        FrameSequence(p, (c.height // SEARCH_DOWNSAMPLE, c.width // SEARCH_DOWNSAMPLE), SEARCH_DOWNSAMPLE)
        for p, c in zip(frame_paths, calibrations, strict=True)
    ]
    small_Ps = [projection_from_mayacam(c, image_scale=1.0 / SEARCH_DOWNSAMPLE) for c in calibrations]

    def search(t: int):
        from jaxdrr.registration.initialize import search_seeds

        return search_seeds(volumes, [s.frame(t) for s in small], small_Ps)

    if seeds is None:
        with long_step("searching initial poses", disable=args.quiet):
            try:
                seeds = search(start)
            except JaxdrrError as error:
                raise JaxdrrError(f"{error} (pass --init)") from None

    def reseed(t: int, frame_views):
        try:
            return search(start + t)
        except JaxdrrError:  # no candidate: keep the warm-started result (flagged)
            return []

    out_path = make_parent_dir(args.out)
    bar = progress_bar(counts[0] - start, desc="track", unit="frame", disable=args.quiet)

    def save(t: int, result, flags) -> None:
        index = start + t
        done.append(
            {
                "index": index,
                "images": [str(paths[index]) for paths in frame_paths],
                "poses": pose_entries(result.poses),
                "similarity": result.similarity,
                "flags": flags,
                "converged": result.converged,
                "time_s": result.time_s,
            }
        )
        write_json(
            out_path,
            {
                **record,
                "config": {
                    "levels": format_levels(config.levels),
                    "starts": config.n_starts,
                    "reseed": args.reseed,
                    "min_similarity": args.min_similarity,
                    "max_jump": list(args.max_jump),
                    "max_similarity_drop": args.max_similarity_drop,
                },
                "frames": done,
                "n_frames": counts[0],
            },
            indent=1,
        )
        bar.update(1)
        if not flags["ok"] or flags["reseeded"]:
            bar.write(f"frame {index}: flags {[k for k, v in flags.items() if v and k != 'ok'] or ['none']}")

    track = mv.track_sequence(
        volumes,
        [s[start:] for s in sequences],
        views,
        seeds,
        config,
        first_config=first_config,
        max_similarity_drop=args.max_similarity_drop,
        max_jump_mm=args.max_jump[0],
        max_jump_deg=args.max_jump[1],
        min_similarity=args.min_similarity,
        reseed=reseed if args.reseed else None,
        on_frame=save,
    )
    bar.close()
    flagged = sum(not f["ok"] for f in track.flags)
    print(
        f"tracked {len(names)} bone(s) in {len(views)} view(s) over {len(track.results)} frame(s) in "
        f"{time.perf_counter() - t0:.1f} s; {flagged} flagged -> {out_path}"
    )
    return 0
