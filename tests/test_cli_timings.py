"""The CLI's time estimates for long single steps (jaxdrr/cli/timings.py)."""

import json

import pytest

from jaxdrr.cli import timings


def test_reference_rate_before_any_run(tmp_path):
    path = tmp_path / "timings.json"
    assert timings.estimate_seconds("vnet", 10.0, path=path) == pytest.approx(
        10.0 * timings.REFERENCE_SECONDS_PER_UNIT["vnet"]
    )
    assert timings.estimate_seconds("no-such-step", 1.0, path=path) is None


def test_measured_rate_replaces_the_reference(tmp_path):
    path = tmp_path / "sub" / "timings.json"
    timings.record_seconds("vnet", 4.0, 20.0, path=path)  # 5 s per unit
    assert timings.estimate_seconds("vnet", 3.0, path=path) == pytest.approx(15.0)
    timings.record_seconds("mc", 2.0, 1.0, path=path)
    assert json.loads(path.read_text()) == {"mc": 0.5, "vnet": 5.0}


def test_bad_files_never_stop_a_command(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text("{not json")
    assert timings.estimate_seconds("mc", 1.0, path=path) == timings.REFERENCE_SECONDS_PER_UNIT["mc"]
    path.write_text(json.dumps({"mc": -1}))
    assert timings.estimate_seconds("mc", 1.0, path=path) is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    timings.record_seconds("mc", 1.0, 1.0, path=blocked / "timings.json")  # parent is a file: ignored
    timings.record_seconds("mc", 0.0, 1.0, path=path)  # nothing measured: nothing stored


def test_location_follows_xdg(tmp_path):
    assert timings.timings_path({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxdrr" / "timings.json"
    assert timings.timings_path({"XDG_CACHE_HOME": "relative"}).parts[-3:] == (
        ".cache",
        "jaxdrr",
        "timings.json",
    )
