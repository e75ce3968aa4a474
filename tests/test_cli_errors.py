"""Bad input to the command line, run as a user would: ``jaxdrr ...`` in a fresh folder.

Every case must end with exit code 2, one line on stderr that names the problem, no traceback,
and no file or folder left behind (the checks run before any computation). The cases run one
after another in one fresh Python process (each in its own folder, its output caught at the file
descriptors), so that jax and jaxdrr are imported once, not once per case (~2 CPU-seconds each);
``test_debug_shows_the_traceback`` runs ``python -m jaxdrr`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["--phantom-size", "8", "8", "8", "--height", "8", "--width", "8", "--pixel-size", "40"]


def _nifti(path: Path, shape) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))


def _bad_bundle(path: Path) -> None:
    np.savez(path, image=np.zeros((4, 4), np.float32))  # an .npz, but no P/height/width


def _spec(path: Path) -> None:
    from jaxdrr.datasets import write_example_spec

    write_example_spec(path)


# name: (arguments, text the one stderr line must contain, {input file: how to make it})
CASES = {
    # Inputs: missing, corrupt, wrong dimension, wrong kind.
    "ct_missing": (["render", "--ct", "missing.nii.gz", "--out", "x.png"], "does not exist", {}),
    "ct_corrupt": (["info", "bad.nii.gz"], "bad.nii.gz", {"bad.nii.gz": b"not a nifti file"}),
    "ct_2d": (["info", "--ct", "flat.nii.gz"], "3-D", {"flat.nii.gz": (8, 8)}),
    "ct_4d": (["segment", "four.nii.gz", "--out", "m.nii.gz"], "3-D", {"four.nii.gz": (4, 4, 4, 2)}),
    "xray_png": (
        ["register", "--xray", "xray.png", "--out", "pose.json"],
        "not a .npz file",
        {"xray.png": b"\x89PNG not really"},
    ),
    "xray_missing": (["register", "--xray", "xray.npz", "--out", "pose.json"], "does not exist", {}),
    "xray_corrupt": (
        ["register", "--xray", "xray.npz", "--out", "pose.json"],
        "cannot read npz",
        {"xray.npz": b"garbage"},
    ),
    "xray_not_bundle": (
        ["register", "--xray", "xray.npz", "--out", "pose.json"],
        "not a jaxdrr render bundle",
        {"xray.npz": _bad_bundle},
    ),
    "labels_missing": (
        ["segment", "--ct", "phantom", "--labels", "seg.nii.gz", "--mapping", "m.json", "--out", "m.nii.gz"],
        "seg.nii.gz",
        {"m.json": b'{"bone": [1]}'},
    ),
    "spectrum_csv_corrupt": (
        ["render", *TINY, "--spectrum-csv", "s.csv", "--out", "x.png"],
        "s.csv",
        {"s.csv": b"energy_keV,fluence\nten,a lot\n"},
    ),
    "config_missing": (["dataset", "--config", "spec.toml", "--out", "data"], "does not exist", {}),
    # Impossible geometry.
    "pixel_size_0": (["render", *TINY[:4], "--pixel-size", "0", "--out", "x.png"], "--pixel-size", {}),
    "pixel_size_negative": (["mc", *TINY[:4], "--pixel-size", "-1", "--out", "m.npz"], "--pixel-size", {}),
    "sdd_0": (["render", *TINY, "--sdd", "0", "--out", "x.png"], "--sdd", {}),
    "sdd_inf": (["render", *TINY, "--sdd", "inf", "--out", "x.png"], "--sdd must be finite", {}),
    "sid_beyond_sdd": (["render", *TINY, "--sid", "1100", "--out", "x.png"], "source-isocentre", {}),
    "sid_0": (["mc", *TINY, "--sid", "0", "--out", "m.npz"], "--sid", {}),
    "lao_nan": (["render", *TINY, "--lao", "nan", "--out", "x.png"], "--lao", {}),
    "height_0": (["render", *TINY[:4], "--height", "0", "--out", "x.png"], "--height", {}),
    "isocenter_inf": (["render", *TINY, "--isocenter", "0", "inf", "0", "--out", "x.png"], "--isocenter", {}),
    # Outputs: format, folder, permissions, options of the image.
    "out_jpg": (["render", *TINY, "--out", "x.jpg"], "unsupported format '.jpg'", {}),
    "out_png_float": (["render", *TINY, "--bit-depth", "float", "--out", "x.png"], "--bit-depth", {}),
    "window_reversed": (["render", *TINY, "--window", "5", "3", "--out", "x.png"], "--window", {}),
    "out_parent_is_file": (["render", *TINY, "--out", "note.txt/x.png"], "is a file", {"note.txt": b"x"}),
    "out_is_directory": (["render", *TINY, "--out", "folder.png"], "is a directory", {"folder.png/": None}),
    "npz_wrong_format": (["render", *TINY, "--save-npz", "x.npy", "--out", "x.png"], "--save-npz", {}),
    "register_out_txt": (
        ["register", "--ct", "phantom", "--xray", "xray.npz", "--out", "pose.txt"],
        "unsupported format",
        {"xray.npz": "bundle"},
    ),
    "segment_out_png": (["segment", "--ct", "phantom", "--out", "m.png"], "NIfTI", {}),
    "mc_out_json": (["mc", *TINY, "--out", "m.json"], "unsupported format", {}),
    "render_unwritable": (["render", *TINY, "--out", "ro/x.png"], "cannot write", {"ro/": "readonly"}),
    "mc_unwritable": (["mc", *TINY, "--out", "ro/sub/m.npz"], "cannot write", {"ro/": "readonly"}),
    "segment_unwritable": (
        ["segment", "--ct", "phantom", "--out", "ro/m.nii.gz"],
        "cannot write",
        {"ro/": "readonly"},
    ),
    "dataset_unwritable": (
        ["dataset", "--config", "spec.toml", "--out", "ro/data"],
        "cannot write",
        {"ro/": "readonly", "spec.toml": _spec},
    ),
    # Physics and counts out of range.
    "kvp_500": (["render", *TINY, "--kvp", "500", "--out", "x.png"], "kVp 500 is outside the 10-150 kV", {}),
    "kvp_5": (["mc", *TINY, "--kvp", "5", "--out", "m.npz"], "kVp 5 is outside", {}),
    "photons_0": (["render", *TINY, "--photons", "0", "--out", "x.png"], "--photons", {}),
    "mc_photons_negative": (["mc", *TINY, "--photons", "-5", "--out", "m.npz"], "--photons", {}),
    "filtration_negative": (
        ["render", *TINY, "--kvp", "80", "--filtration", "-1", "--out", "x.png"],
        "--filtration",
        {},
    ),
    # Argument errors (argparse) are one line too.
    "phantom_size_two_values": (
        ["mc", "--phantom-size", "8", "8", "--out", "m.npz"],
        "expected 3 arguments",
        {},
    ),
    "phantom_unknown": (["render", "--phantom", "head", "--out", "x.png"], "invalid choice", {}),
}


def _make_readonly(path: Path) -> bool:
    """Makes ``path`` a folder nobody may create files in; False where this process cannot."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    # root ignores permissions; the immutable attribute stops it too (ext4, xfs; not tmpfs).
    if shutil.which("chattr") is None:
        return False
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    return made and subprocess.run(["touch", str(path / "probe")], capture_output=True).returncode != 0


def _release(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    else:
        path.chmod(0o755)


def _prepare(folder: Path, inputs: dict) -> bool:
    """Writes a case's inputs; False when it needs a read-only folder that cannot be made here."""
    for name, how in inputs.items():
        path = folder / name.rstrip("/")
        if how == "readonly":
            if not _make_readonly(path):
                return False
        elif how == "bundle":
            import jaxdrr

            jaxdrr.save_npz(path, np.zeros((8, 8), np.float32), np.eye(3, 4), ct={"phantom": "pelvis"})
        elif name.endswith("/"):
            path.mkdir()
        elif isinstance(how, bytes):
            path.write_bytes(how)
        elif isinstance(how, tuple):
            _nifti(path, how)
        else:
            how(path)
    return True


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# Runs each case's `jaxdrr ARGV` in its folder inside one fresh Python process (imports once, not
# once per case), with file descriptors 1 and 2 redirected to files per case: C-level writes (XLA,
# absl) are caught as well as Python's. An exception that escapes `main` is printed as a traceback
# (exit code 1), as the console script would.
DRIVER = r"""
import json, os, sys, traceback
from jaxdrr.cli import main
report = {}
for name, folder, argv in json.loads(sys.argv[1]):
    os.chdir(folder)
    out_path, err_path = sys.argv[2] + "/" + name + ".out", sys.argv[2] + "/" + name + ".err"
    saved = os.dup(1), os.dup(2)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            rc = 1
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    os.close(saved[0]); os.close(saved[1])
    report[name] = rc
with open(sys.argv[2] + "/report.json", "w") as f:
    json.dump(report, f)
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every case in its own fresh folder; {name: result dict}."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAXDRR_DEBUG", None)
    cases = {}
    for name, (argv, _, inputs) in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        ready = _prepare(folder, inputs)
        cases[name] = {"folder": folder, "argv": argv, "ready": ready, "before": _listing(folder)}
    logs = tmp_path_factory.mktemp("logs")
    todo = [(name, str(c["folder"]), c["argv"]) for name, c in cases.items() if c["ready"]]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(todo), str(logs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and (logs / "report.json").exists(), proc.stderr[-3000:]
    codes = json.loads((logs / "report.json").read_text())
    for name, case in cases.items():
        if case["ready"]:
            case.update(
                rc=codes[name],
                out=(logs / f"{name}.out").read_text(),
                err=(logs / f"{name}.err").read_text(),
                after=_listing(case["folder"]),
            )
    yield cases
    for name, case in cases.items():
        for entry, how in CASES[name][2].items():
            if how == "readonly" and (case["folder"] / entry.rstrip("/")).exists():
                _release(case["folder"] / entry.rstrip("/"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(results, name):
    case = results[name]
    if not case["ready"]:
        pytest.skip("cannot make a read-only folder here (root without chattr +i)")
    expected = CASES[name][1]
    lines = case["err"].strip().split("\n")
    assert case["rc"] == 2, (case["rc"], case["err"][-2000:])
    assert "Traceback" not in case["err"] + case["out"]
    assert len(lines) == 1, case["err"]
    assert lines[0].startswith(f"jaxdrr {case['argv'][0]}: error: "), lines[0]
    assert expected in lines[0], lines[0]
    assert case["after"] == case["before"], case["after"] - case["before"]


def test_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDRR_DEBUG="1")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxdrr", "render", "--sdd", "0", "--out", "x.png"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "GeometryError" in proc.stderr
    assert not list(tmp_path.iterdir())
