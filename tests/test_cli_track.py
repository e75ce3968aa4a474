"""``jaxdrr track``: a sequence of real wrist frames (frame 0002 twice), per-frame output, resume, and
the errors it reports before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxdrr.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
WRIST = ROOT / "data" / "autoscoper_wrist"
CALIB = str(WRIST / "Calibration" / "xr_calib_wrist_cam0{}.txt")
FRAME = str(WRIST / "frames" / "xr_rad_uln_cam0{}_UND.0002.tif")
# Coarse, short levels: the command's plumbing is under test here, not the registration (README).
FAST = ["--levels", "8:8,4:4", "--starts", "2", "--quiet"]


def _sequence(tmp_path: Path, n: int) -> list[str]:
    """Camera folders holding ``n`` copies of frame 0002 named so that only natural order is right
    (f.9 before f.10); the --view and --volume arguments."""
    argv = []
    for cam in (1, 2):
        folder = tmp_path / f"cam{cam}"
        folder.mkdir()
        for i in range(n):
            shutil.copy(FRAME.format(cam), folder / f"f.{9 + i}.tif")
        argv += ["--view", f"{folder}/f.*.tif:{CALIB.format(cam)}"]
    for bone in ("rad", "uln"):
        argv += ["--volume", f"{bone}={WRIST / 'Models' / f'{bone}_dcm_cropped.tif'}"]
    return argv


def _matrices(entry) -> dict:
    return {b: np.asarray(p["matrix"]) for b, p in entry["poses"].items()}


def test_track_writes_every_frame_in_natural_order_and_resumes(tmp_path, capsys):
    inputs = _sequence(tmp_path, 2)
    out = tmp_path / "track.json"
    seed = ROOT / "tests" / "data" / "wrist_0002_seed.json"
    argv = ["track", *inputs, "--init", str(seed), "--min-similarity", "0.2", "--out", str(out), *FAST]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["n_frames"] == 2 and [f["index"] for f in data["frames"]] == [0, 1]
    for f in data["frames"]:
        assert [Path(p).name for p in f["images"]] == ["f.9.tif" if f["index"] == 0 else "f.10.tif"] * 2
        assert set(f["flags"]) >= {"ok", "similarity_drop", "pose_jump", "low_similarity", "reseeded"}
        assert set(f["similarity"]) == {"view1", "view2"}
    # The same image twice: the second frame, warm-started from the first, stays where it was
    # (the registration's own spread on frame 0002 is ~0.1 mm; 1 mm leaves room for the short levels).
    first, second = (_matrices(f) for f in data["frames"])
    for b in first:
        assert np.abs(first[b][:3, 3] - second[b][:3, 3]).max() < 1.0, b
    assert not data["frames"][1]["flags"]["pose_jump"]

    # An interrupted run (only the first frame written) continues from there.
    data["frames"] = data["frames"][:1]
    out.write_text(json.dumps(data))
    assert main([*argv, "--resume"]) == 0
    resumed = json.loads(out.read_text())
    assert [f["index"] for f in resumed["frames"]] == [0, 1]
    assert main([*argv, "--resume"]) == 0
    assert "already holds all 2 frames" in capsys.readouterr().out
    # Resuming with other inputs is refused.
    other = [a.replace("rad_dcm", "uln_dcm") if a.startswith("rad=") else a for a in argv]
    assert main([*other, "--resume"]) == 2
    assert "other --view / --volume" in capsys.readouterr().err


def test_track_errors_before_work(tmp_path, capsys):
    inputs = _sequence(tmp_path, 1)
    extra = tmp_path / "cam2" / "f.10.tif"
    out = tmp_path / "t.json"
    cases = [
        (["--view", f"{tmp_path}/nothing*.tif:{CALIB.format(1)}", *inputs[2:]], "match no file"),
        (["--view", "no-calibration", *inputs[2:]], "FRAMES:CALIB"),
        ([*inputs, "--min-similarity", "2"], "--min-similarity"),
        ([*inputs, "--starts", "0"], "--starts"),
        ([*inputs, "--max-jump", "-1", "5"], "--max-jump"),
        ([*inputs, "--volume", inputs[5]], "unique"),
    ]
    for argv, message in cases:
        assert main(["track", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    shutil.copy(FRAME.format(2), extra)
    assert main(["track", *inputs, "--out", str(out)]) == 2
    assert "same number of frames, got [1, 2]" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("name", ["f.2.tif", "f.10.tif", "f.1.tif"])
def test_natural_order(tmp_path, name):
    from jaxdrr.cli.track import expand_frames

    for n in ("f.10.tif", "f.2.tif", "f.1.tif"):
        (tmp_path / n).write_bytes(b"")
    names = [p.name for p in expand_frames(str(tmp_path / "f.*.tif"))]
    assert names == ["f.1.tif", "f.2.tif", "f.10.tif"] and name in names
