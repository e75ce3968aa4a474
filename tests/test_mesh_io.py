"""Mesh validation (jaxdrr.mesh) and reading STL/OBJ/PLY files (jaxdrr.io.read_mesh)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import trimesh

from jaxdrr.errors import LoadError, MeshError
from jaxdrr.io import read_mesh
from jaxdrr.mesh import MeshUnitsWarning, TriangleMesh, check_mesh, signed_volume, units_warning


def box():
    b = trimesh.creation.box(extents=(10.0, 20.0, 30.0))
    return np.asarray(b.vertices), np.asarray(b.faces)


def test_check_mesh_accepts_closed_mesh_and_orients_it_outward():
    v, f = box()
    v2, f2 = check_mesh(v, f[:, ::-1], "inside-out")  # inverted winding: flipped back, not rejected
    assert signed_volume(v2, f2) == pytest.approx(6000.0)
    mesh = TriangleMesh.create(v, f[:, ::-1])
    assert mesh.volume_mm3 == pytest.approx(6000.0)
    lo, hi = mesh.bounds
    np.testing.assert_allclose(hi - lo, [10, 20, 30])
    assert mesh.bounding_radius == pytest.approx(np.sqrt(5**2 + 10**2 + 15**2))
    assert mesh.triangles().shape == (12, 3, 3)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda v, f: (v[:0], f[:0]), "empty"),
        (lambda v, f: (np.where(np.arange(8)[:, None] == 0, np.nan, v), f), "non-finite"),
        (lambda v, f: (v, np.where(f == 7, 8, f)), "outside"),
        (lambda v, f: (v, f[1:]), "open edges"),
        (lambda v, f: (v, np.concatenate([f, [[0, 0, 1]]])), "degenerate"),
        (lambda v, f: (v, np.concatenate([f[:1, ::-1], f[1:]])), "not closed|winding"),
        (lambda v, f: (v, f.astype(float)), "integer"),
    ],
)
def test_check_mesh_rejects_bad_meshes(mutate, match):
    v, f = mutate(*box())
    with pytest.raises(MeshError, match=match):
        check_mesh(v, f, "tool")


def test_open_mesh_error_counts_open_edges():
    v, f = box()
    with pytest.raises(MeshError, match="3 open edges"):
        check_mesh(v, f[1:], "tool")


def test_inconsistent_winding_is_rejected():
    v, f = box()
    f = f.copy()
    f[0] = f[0, ::-1]  # one face flipped: every edge is still shared by two faces
    with pytest.raises(MeshError, match="winding"):
        check_mesh(v, f, "tool")


def test_units_warning_thresholds():
    v, _ = box()
    with pytest.warns(MeshUnitsWarning, match="metres"):
        assert units_warning(v / 1000.0, "m")
    with pytest.warns(MeshUnitsWarning, match="micrometres"):
        assert units_warning(v * 1000.0, "um")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not units_warning(v, "mm")


@pytest.mark.parametrize("suffix", [".stl", ".obj", ".ply"])
def test_read_mesh_round_trips(tmp_path, suffix):
    source = trimesh.creation.icosphere(subdivisions=2, radius=5.0)
    path = tmp_path / f"sphere{suffix}"
    source.export(path)
    mesh = read_mesh(path)
    assert mesh.name == "sphere"
    assert mesh.num_faces == len(source.faces)
    assert mesh.volume_mm3 == pytest.approx(source.volume, rel=1e-5)  # float32 file coordinates
    scaled = read_mesh(path, scale=2.0, name="big")
    assert scaled.name == "big"
    assert scaled.volume_mm3 == pytest.approx(8 * source.volume, rel=1e-5)


def test_read_mesh_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_mesh(tmp_path / "missing.stl")
    (tmp_path / "tool.step").write_text("solid")
    with pytest.raises(LoadError, match="unsupported suffix"):
        read_mesh(tmp_path / "tool.step")
    (tmp_path / "garbage.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n")
    with pytest.raises((LoadError, MeshError)):
        read_mesh(tmp_path / "garbage.ply")
    (tmp_path / "empty.obj").write_text("# nothing\n")
    with pytest.raises((LoadError, MeshError), match="no triangles|cannot read"):
        read_mesh(tmp_path / "empty.obj")
    open_box = trimesh.creation.box(extents=(10.0, 10.0, 10.0))
    open_box = trimesh.Trimesh(open_box.vertices, open_box.faces[2:], process=False)
    open_box.export(tmp_path / "open.stl")
    with pytest.raises(MeshError, match=r"open\.stl.*4 open edges"):
        read_mesh(tmp_path / "open.stl")
    with pytest.raises(MeshError, match="scale"):
        read_mesh(tmp_path / "open.stl", scale=0.0)
