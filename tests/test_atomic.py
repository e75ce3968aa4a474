"""jaxdrr.atomic (the one atomic-write helper) and jaxdrr.physics.params (the one physics-table builder)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxdrr import atomic
from jaxdrr.errors import JaxdrrError
from jaxdrr.physics import mass_attenuation
from jaxdrr.physics.params import physics_params


def test_atomic_writes_replace_the_file_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_json(path, {"a": 1}, indent=1)
    assert json.loads(path.read_text()) == {"a": 1}
    atomic.write_text(path, "second")
    assert path.read_text() == "second"
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "out.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "volume.nii.gz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")  # writers pick formats by suffix
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["volume.nii.gz"]


def test_atomic_path_needs_an_existing_directory(tmp_path):
    with (
        pytest.raises(FileNotFoundError, match="does not exist"),
        atomic.atomic_path(tmp_path / "no" / "x.png"),
    ):
        pass


def test_atomic_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_physics_params_trims_normalises_and_tabulates():
    energies = np.arange(1.0, 11.0)
    weights = np.array([0, 0, 1, 2, 3, 4, 0, 5, 0, 0], float)
    p = physics_params(("soft_tissue", "cortical_bone"), energies, weights)
    keep = weights > 0
    np.testing.assert_array_equal(np.asarray(p["energies"]), energies[keep].astype(np.float32))
    np.testing.assert_allclose(np.asarray(p["spectrum"], np.float64), weights[keep] / 15.0, rtol=2**-23)
    mu = mass_attenuation(["soft_tissue", "cortical_bone"], energies[keep])
    np.testing.assert_allclose(np.asarray(p["mu_rho"], np.float64), mu, rtol=2**-24)
    assert p["mu_rho"].dtype == np.float32
    # Several spectra on one grid: rows normalised, bins kept where any spectrum is non-zero.
    two = np.stack([weights, np.roll(weights, 1)])
    q = physics_params(("water",), energies, two)
    assert q["spectrum"].shape == (2, int((two > 0).any(0).sum()))
    np.testing.assert_allclose(np.asarray(q["spectrum"]).sum(-1), 1.0, rtol=4 * 2**-24 * 10)
    # trim=False keeps the grid (one shape for every spectrum).
    assert physics_params(("water",), energies, weights, trim=False)["spectrum"].shape == (10,)


@pytest.mark.parametrize(
    "energies, weights, match",
    [
        (np.arange(1.0, 5.0), np.ones(3), "does not match"),
        (np.arange(1.0, 4.0), np.array([1.0, -1.0, 1.0]), ">= 0"),
        (np.arange(1.0, 4.0), np.array([1.0, np.nan, 1.0]), "finite"),
        (np.arange(1.0, 4.0), np.zeros(3), "no photons"),
    ],
)
def test_physics_params_rejects_bad_spectra(energies, weights, match):
    with pytest.raises(JaxdrrError, match=match):
        physics_params(("water",), energies, weights)
