"""Reading triangle meshes (STL, OBJ, PLY) of tools and implants with trimesh.

:func:`read_mesh` loads one file as a single surface, merging duplicate vertices (STL stores each
triangle's corners separately; without the merge no edge would be shared and no STL would be
closed), scales it to millimetres and validates it with :func:`jaxdrr.mesh.check_mesh` (closed,
consistently wound, oriented outward), warning when the size suggests another unit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxdrr.errors import LoadError, MeshError
from jaxdrr.mesh import TriangleMesh, check_mesh, units_warning

MESH_SUFFIXES = (".stl", ".obj", ".ply")


def read_mesh(path: str | os.PathLike, *, scale: float = 1.0, name: str | None = None) -> TriangleMesh:
    """Reads a closed triangle mesh from an STL, OBJ or PLY file.

    Args:
      path: the file.
      scale: multiplies the coordinates (e.g. 1000 for a file in metres); the result is in mm.
      name: the mesh's name; default the file name without its suffix.

    Returns:
      A validated, outward-oriented :class:`~jaxdrr.mesh.TriangleMesh` (float32 vertices, or
      float64 under x64).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      LoadError: unsupported suffix, or the file cannot be parsed.
      MeshError: no triangles, a non-positive scale, or a surface that is not closed (the message
        names the file and counts the open edges) or otherwise invalid (:func:`check_mesh`).
    """
    import trimesh  # field library; imported here to keep `import jaxdrr` light

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mesh file does not exist: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise LoadError(f"mesh file {str(path)!r}: unsupported suffix {suffix!r}; use one of {MESH_SUFFIXES}")
    scale_value = float(scale)
    if not np.isfinite(scale_value) or scale_value <= 0:
        raise MeshError(f"scale must be a positive number, got {scale!r}")
    try:
        loaded = trimesh.load(str(path), force="mesh", process=True)
    except Exception as exc:  # parsers raise anything from ValueError to struct.error
        raise LoadError(f"cannot read mesh file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    faces = getattr(loaded, "faces", None)
    if faces is None or len(faces) == 0:
        raise MeshError(f"mesh file {str(path)!r} holds no triangles")
    label = f"mesh file {str(path)!r}"
    vertices, faces = check_mesh(np.asarray(loaded.vertices, np.float64) * scale_value, faces, label)
    units_warning(vertices, label)
    return TriangleMesh.create(vertices, faces, check=False, name=name or path.stem)


__all__ = ["read_mesh", "MESH_SUFFIXES"]
