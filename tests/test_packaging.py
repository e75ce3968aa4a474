"""The distributions a user installs: sdist and wheel carry the package data, and the wheel,
installed into a new venv, renders from outside the source tree.

The venv sees this environment's packages (so jax and friends are not downloaded again) but
jaxdrr itself only from the wheel: the test runs from a temporary directory and asserts that the
imported module lives in the new venv.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import jaxdrr

ROOT = Path(__file__).resolve().parent.parent
NATIVE_LIBRARY = "jaxdrr/ops/_project_cpu.so"
NATIVE_SOURCES = [
    "setup.py",
    "jaxdrr/ops/csrc/project_cpu.cc",
    "jaxdrr/ops/csrc/xla_ffi/LICENSE",
    "jaxdrr/ops/csrc/xla_ffi/xla/ffi/api/ffi.h",
    "jaxdrr/ops/csrc/xla_ffi/xla/ffi/api/api.h",
    "jaxdrr/ops/csrc/xla_ffi/xla/ffi/api/c_api.h",
]
# Without a C++ compiler the native library is not built; its tests then fail unless this is set.
ALLOW_NO_NATIVE = os.environ.get("JAXDRR_ALLOW_NO_NATIVE", "") == "1"
DATA = [
    "jaxdrr/py.typed",
    "jaxdrr/physics/data/attenuation.npz",
    "jaxdrr/physics/data/PROVENANCE.md",
    "jaxdrr/physics/data/ipem78_W120kVp_Al4.3mm.csv",
    "jaxdrr/physics/data/interactions_xraylib.npz",
    "jaxdrr/models/weights/vnet_default.msgpack",
    "jaxdrr/models/weights/vnet_default.json",
    "jaxdrr/models/weights/README.md",
    "jaxdrr/models/weights/scatter_default.msgpack",
    "jaxdrr/models/weights/scatter_default.json",
]
# Not part of any distribution: version control, build outputs, virtual environments, run logs.
SOURCE_COPY_SKIPS = [".git", "build", "dist", "*.egg-info", ".ci-*", ".venv", "runs", "__pycache__", "*.so"]


def _run(args, **kwargs):
    """subprocess.run that shows the command's stderr when it fails."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy of the checkout: pytest-xdist may run this fixture in two workers at once,
    # and setuptools writes jaxdrr.egg-info/ into the source tree it builds from.
    source = tmp_path_factory.mktemp("source") / "jaxdrr"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SOURCE_COPY_SKIPS))
    # No --sdist/--wheel flags: build makes the sdist, then the wheel from the unpacked sdist in a
    # temporary directory, so a stale build/ folder cannot leak files into it.
    _run([sys.executable, "-m", "build", "--outdir", out, source])
    (wheel,) = out.glob("jaxdrr-*.whl")
    (sdist,) = out.glob("jaxdrr-*.tar.gz")
    return wheel, sdist


def test_version_is_single_sourced(dists):
    wheel, sdist = dists
    assert wheel.name.startswith(f"jaxdrr-{jaxdrr.__version__}-")
    assert sdist.name == f"jaxdrr-{jaxdrr.__version__}.tar.gz"


def test_distributions_carry_package_data(dists):
    wheel, sdist = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in DATA:
        assert path in names, f"{path} missing from the wheel"
    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    for path in DATA + NATIVE_SOURCES + ["ci/oldest-constraints.txt", "tests/float_bounds.py"]:
        assert path in members, f"{path} missing from the sdist"
    # The wheel carries the built native projector, not its sources.
    assert not [n for n in names if "/csrc/" in n], "C++ sources in the wheel"
    assert NATIVE_LIBRARY in names or ALLOW_NO_NATIVE, f"{NATIVE_LIBRARY} missing from the wheel"


def _venv_with_wheel(wheel, root: Path):
    """A new venv with only ``wheel`` installed from it; the dependencies come from this environment
    (a .pth appends its site-packages after the venv's own, so the wheel's jaxdrr shadows any jaxdrr
    installed here). Returns (venv, env without PYTHONPATH)."""
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAXDRR_NO_NATIVE")}
    _run([py, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel], env=env)
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    probe = _run([py, "-c", "import jaxdrr; print(jaxdrr.__file__)"], cwd=work, env=env)
    assert Path(probe.stdout.strip()).is_relative_to(venv), probe.stdout
    return venv, env


def test_sdist_installs_without_a_compiler(dists, tmp_path):
    """No C++ compiler: the wheel builds from the sdist without the native library (a notice, no
    error), and the installed jaxdrr renders with the XLA projector and says so."""
    _, sdist = dists
    out = tmp_path / "wheel"
    env = {k: v for k, v in os.environ.items() if k != "JAXDRR_NO_NATIVE"}
    env.update(CC="/nonexistent/cc", CXX="/nonexistent/c++")
    done = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", out, "-v", sdist], env=env)
    assert "native CPU projector not built" in done.stdout + done.stderr
    (wheel,) = out.glob("jaxdrr-*.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if "_project_cpu" in n]
    venv, env = _venv_with_wheel(wheel, tmp_path)
    version = _run([venv / "bin" / "jaxdrr", "--version"], cwd=tmp_path / "work", env=env)
    assert "projector: xla" in version.stdout and "not built" in version.stdout, version.stdout
    render = _run(
        [venv / "bin" / "jaxdrr", "render", "--height", "32", "--width", "32"]
        + ["--phantom-size", "32", "32", "32", "--out", "x.png", "--save-npz", "x.npz"],
        cwd=tmp_path / "work",
        env={**env, "JAX_PLATFORMS": "cpu"},
    )
    assert render.stderr.count("falls back to the pure-JAX marcher") == 1, render.stderr[-3000:]
    image = np.load(tmp_path / "work" / "x.npz")["image"]
    assert image.shape == (32, 32) and np.all(np.isfinite(image)) and image.max() > 0.5


def test_wheel_installs_and_renders(dists, tmp_path):
    wheel, _ = dists
    venv, env = _venv_with_wheel(wheel, tmp_path)
    work = tmp_path / "work"
    version = _run([venv / "bin" / "jaxdrr", "--version"], cwd=work, env=env)
    assert jaxdrr.__version__ in version.stdout
    # The wheel's own native library is the CPU projector.
    assert "projector: native" in version.stdout or ALLOW_NO_NATIVE, version.stdout
    _run(
        [
            venv / "bin" / "jaxdrr",
            "render",
            "--height",
            "32",
            "--width",
            "32",
            "--phantom-size",
            "32",
            "32",
            "32",
            "--out",
            "x.png",
            "--save-npz",
            "x.npz",
        ],
        cwd=work,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    image = np.load(work / "x.npz")["image"]
    assert image.shape == (32, 32) and np.all(np.isfinite(image)) and image.max() > 0.5
