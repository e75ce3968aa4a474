"""The command line: one CT vocabulary recorded in every output, render (single and multi-view with
resume, shared grey window, angles in the names), render -> register (the README example), info,
help texts, and error reporting. Bad-input cases: tests/test_cli_errors.py."""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import jaxdrr
from jaxdrr.cli import build_parser, main
from jaxdrr.cli.common import CtSelection, ct_selection, long_step

SMALL = ["--phantom-size", "40", "32", "28", "--height", "24", "--width", "32", "--pixel-size", "14"]
# The README's registration example on a tiny grid: the detailed pelvis (the default phantom).
README_CT = ["--phantom-size", "32", "32", "32"]
README_DETECTOR = ["--height", "32", "--width", "32", "--pixel-size", "12"]


def jaxdrr_cli(*argv, cwd):
    """``python -m jaxdrr ARGV`` in ``cwd``, as a user runs it."""
    # A wide terminal for progress bars (tqdm truncates them to the terminal's width).
    env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="300", LINES="50")
    return subprocess.run(
        [sys.executable, "-m", "jaxdrr", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """``jaxdrr render --kvp 90 ... --out xray.tiff --save-npz xray.npz`` in a fresh folder."""
    folder = tmp_path_factory.mktemp("readme")
    args = ["render", "--kvp", "90", "--lao", "20", *README_CT, *README_DETECTOR]
    proc = jaxdrr_cli(*args, "--out", "xray.tiff", "--save-npz", "xray.npz", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder


def test_bundle_records_the_ct_exactly(rendered):
    bundle = jaxdrr.load_npz(rendered / "xray.npz")
    assert bundle["ct"] == {
        "phantom": "pelvis",
        "phantom_size": [32, 32, 32],
        "phantom_seed": 0,
        "shape": [32, 32, 32],
    }
    assert CtSelection.from_record(bundle["ct"]) == CtSelection.of_phantom("pelvis", (32, 32, 32), 0)


def test_readme_registration_ends_at_the_true_pose(rendered):
    """``jaxdrr register --ct phantom --xray xray.npz --out pose.json``: the bundle's CT, not another."""
    proc = jaxdrr_cli("register", "--ct", "phantom", "--xray", "xray.npz", "--out", "pose.json", cwd=rendered)
    assert proc.returncode == 0, proc.stderr
    pose = json.loads((rendered / "pose.json").read_text())
    # Started at the true pose; the wrong CT moved it 9 mm away. Sub-voxel (voxel ~12 mm here).
    assert pose["difference_to_bundle_P"]["mtre_mm"] < 1.0
    assert pose["ct"]["phantom"] == "pelvis" and pose["ct"]["phantom_size"] == [32, 32, 32]
    assert pose["carm"]["lao"] == pytest.approx(20.0, abs=0.5)
    assert "res=1/" in proc.stderr  # the bar labels the resolution factor as such


def test_register_refuses_another_ct_than_the_recorded_one(rendered):
    proc = jaxdrr_cli(
        "register",
        "--ct",
        "phantom",
        "--phantom",
        "chest",
        "--xray",
        "xray.npz",
        "--out",
        "other.json",
        cwd=rendered,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "phantom chest" in line and "--ignore-recorded-ct" in line
    assert "--ct phantom --phantom pelvis --phantom-size 32 32 32" in line
    assert not (rendered / "other.json").exists()


def test_every_command_takes_the_same_ct_options():
    parser = build_parser()
    ct = ["--ct", "phantom", "--phantom", "chest", "--phantom-size", "8", "9", "10", "--phantom-seed", "3"]
    extra = {
        "render": [],
        "info": [],
        "register": ["--xray", "x.npz", "--out", "p.json"],
        "mc": ["--out", "m.npz"],
        "segment": ["--out", "m.nii.gz"],
    }
    want = CtSelection.of_phantom("chest", (8, 9, 10), 3)
    for command, rest in extra.items():
        assert ct_selection(parser.parse_args([command, *ct, *rest])) == want, command
    # The default everywhere (register: the bundle's, else the same): the anatomical pelvis.
    for command, rest in extra.items():
        selection = ct_selection(parser.parse_args([command, *rest]))
        assert selection == CtSelection.of_phantom("pelvis"), command
    assert ct_selection(parser.parse_args(["info", "phantom", "--phantom", "limb"])).phantom == "limb"


def test_help_every_option_explained_and_default_shown_once():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.dest != "help" and action.help != argparse.SUPPRESS:
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = command.format_help()
        assert "default: None" not in text, name
        assert not re.search(r"\(default:[^()]*\)\s*\(default:", text), name
    text = sub.choices["register"].format_help()
    assert "--seed SEED" in text and "(default: 0)" in text
    for option in ("--hu-to-density", "--backend"):
        assert option in sub.choices["render"].format_help()


def test_render_png_and_npz(tmp_path):
    out, npz = tmp_path / "x.png", tmp_path / "x.npz"
    assert (
        main(["render", *SMALL, "--lao", "30", "--cran", "10", "--out", str(out), "--save-npz", str(npz)])
        == 0
    )
    assert out.exists()
    bundle = jaxdrr.load_npz(npz)
    assert bundle["image"].shape == (24, 32) and np.all(np.isfinite(bundle["image"]))
    P = np.asarray(bundle["P"])
    K, R, t = bundle["K"], bundle["R"], bundle["t"]
    np.testing.assert_allclose(K @ np.concatenate([R, t[:, None]], 1), P, rtol=1e-5, atol=1e-4)
    assert float(bundle["lao"]) == 30.0 and bundle["output"] == "log"
    # The saved P is the one the CLI's C-arm builds.
    ref = jaxdrr.geometry.carm(
        30.0,
        10.0,
        isocenter=bundle["isocenter"],
        geometry=jaxdrr.geometry.CArmGeometry(height=24, width=32, pixel_size_mm=14.0),
    )
    np.testing.assert_allclose(P, np.asarray(ref), rtol=1e-5, atol=1e-3)


def test_render_tiff_float_is_physical(tmp_path):
    import tifffile

    out = tmp_path / "x.tiff"
    assert main(["render", *SMALL, "--no-noise", "--out", str(out)]) == 0
    img = tifffile.imread(out)
    assert img.dtype == np.float32 and img.max() > 2.0  # -ln T, not normalised to [0, 1]


def test_multi_view_names_carry_angles_share_one_window_and_resume(tmp_path, capsys):
    args = ["render", *SMALL, "--lao", "-20", "20", "--cran", "0", "--batch", "2"]
    args += ["--out", str(tmp_path / "v.png"), "--save-npz", str(tmp_path / "v.npz")]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "shared by all 2 views" in printed.out + printed.err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "v_lao+20_cran+0.npz",
        "v_lao+20_cran+0.png",
        "v_lao-20_cran+0.npz",
        "v_lao-20_cran+0.png",
    ]
    windows = [jaxdrr.load_npz(tmp_path / f"v_lao{a}_cran+0.npz")["window"].tolist() for a in ("-20", "+20")]
    assert windows[0] == windows[1] and windows[0][0] < windows[0][1]
    (tmp_path / "v_lao+20_cran+0.png").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "rendered 1 view" in capsys.readouterr().out
    # The resumed view used the recorded window of the series.
    assert jaxdrr.load_npz(tmp_path / "v_lao+20_cran+0.npz")["window"].tolist() == windows[0]
    assert main(args) == 0
    assert "already rendered" in capsys.readouterr().out


def test_info(capsys):
    assert main(["info", "phantom", "--phantom", "analytic", "--phantom-size", "20", "16", "12"]) == 0
    out = capsys.readouterr().out
    assert "shape" in out and "(20, 16, 12)" in out and "HU" in out
    assert "--ct phantom --phantom analytic --phantom-size 20 16 12" in out


def test_long_step_prints_one_status_line_in_a_log(capsys):
    with long_step("decomposing the CT", estimate_s=3.0):
        pass
    captured = capsys.readouterr()
    assert captured.out == "decomposing the CT ...\n" and captured.err == ""


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["render", "--ct", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "x.png")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    assert main(["info", str(bad)]) == 2
    assert "bad.nii.gz" in capsys.readouterr().err
    args = ["render", *SMALL, "--kvp", "75", "--spectrum-csv", str(tmp_path / "nope.csv")]
    assert main([*args, "--out", str(tmp_path / "y.png")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nii.gz"]
