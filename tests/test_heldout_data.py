"""Held-out data stays held out: only its own benchmark names the held-out wrist frames.

Frames 0099 and 0158 of the Autoscoper wrist sample are an independent check of the settings developed
on frame 0002 (``benchmarks/data/autoscoper_wrist_heldout/PROVENANCE.md``). A test, notebook, training
script, tool or package default that read them would turn them into development data.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    Path("benchmarks/registration/bench_wrist_heldout.py"),  # the one reader
    Path("tests/test_heldout_data.py"),
}
# The folder's name and the frames' file names (with any separator before the frame number).
PATTERN = re.compile(r"autoscoper_wrist_heldout|UND[._-]?0(?:099|158)\b")
SUFFIXES = {".py", ".ipynb", ".sh", ".toml", ".cfg", ".json", ".yaml", ".yml"}


def _code_files():
    for top in ("jaxdrr", "tests", "notebooks", "tools", "benchmarks", "ci", ".ci", "runs"):
        base = ROOT / top
        if base.is_dir():
            yield from (
                p for p in base.rglob("*") if p.is_file() and (p.suffix in SUFFIXES or p.name == "run")
            )


def test_only_the_heldout_benchmark_names_the_heldout_frames():
    offenders = []
    for path in _code_files():
        rel = path.relative_to(ROOT)
        if rel in ALLOWED or rel.parts[:2] == ("benchmarks", "results"):
            continue
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        if PATTERN.search(text):
            offenders.append(str(rel))
    assert not offenders, (
        f"files that name the held-out wrist frames (only the held-out benchmark may): {offenders}"
    )


def test_pattern_catches_the_frame_names():
    # The check itself can fail: it recognises the names it guards.
    for name in (
        "xr_rad_uln_cam01_UND.0099.tif",
        "xr_rad_uln_cam02_UND.0158.tif",
        "autoscoper_wrist_heldout/",
    ):
        assert PATTERN.search(name), name
    assert not PATTERN.search("xr_rad_uln_cam01_UND.0002.tif")
