"""The command line: render (single and multi-view with resume), info, and error reporting."""

import subprocess
import sys

import numpy as np

import jaxdrr
from jaxdrr.cli import main

SMALL = ["--phantom-size", "40", "32", "28", "--height", "24", "--width", "32", "--pixel-size", "14"]


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


def test_multi_view_resumes(tmp_path, capsys):
    args = [
        "render",
        *SMALL,
        "--lao",
        "-20",
        "20",
        "--cran",
        "0",
        "--out",
        str(tmp_path / "v.png"),
        "--batch",
        "2",
    ]
    assert main(args) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["v_0000.png", "v_0001.png"]
    (tmp_path / "v_0001.png").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "rendered 1 view" in capsys.readouterr().out
    assert main(args) == 0
    assert "already rendered" in capsys.readouterr().out


def test_info(capsys):
    assert main(["info", "phantom", "--phantom-size", "20", "16", "12"]) == 0
    out = capsys.readouterr().out
    assert "shape" in out and "(20, 16, 12)" in out and "HU" in out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["render", "--ct", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "x.png")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    assert main(["info", str(bad)]) == 2
    assert "bad.nii.gz" in capsys.readouterr().err
    assert (
        main(
            [
                "render",
                *SMALL,
                "--kvp",
                "75",
                "--spectrum-csv",
                str(tmp_path / "nope.csv"),
                "--out",
                str(tmp_path / "y.png"),
            ]
        )
        == 2
    )


def test_help_documents_every_option():
    text = subprocess.run(
        [sys.executable, "-m", "jaxdrr.cli", "render", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in (
        "--ct",
        "--lao",
        "--cran",
        "--kvp",
        "--out",
        "--save-npz",
        "--photons",
        "--no-noise",
        "--detector",
        "--output",
        "--step",
        "--seed",
        "--window",
        "--materials",
        "--mapping",
        "--structures",
        "--metal",
    ):
        assert option in text
    text = subprocess.run(
        [sys.executable, "-m", "jaxdrr.cli", "segment", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--out", "--method", "--labels", "--mapping", "--structures", "--metal"):
        assert option in text
