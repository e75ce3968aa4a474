"""Closed triangle meshes: surgical tools and implants as surfaces (mm, object frame).

A :class:`TriangleMesh` is a pytree with two leaves, ``vertices`` [V, 3] (float, mm, in the
object's own frame) and ``faces`` [F, 3] (int32 vertex indices), and a static ``name``. Meshes made
with :meth:`TriangleMesh.create` (``check=True``, the default) are guaranteed to be:

* non-empty, finite, with face indices in range and no zero-area triangle;
* **closed** (watertight: every edge is shared by exactly two faces) with consistent winding, the
  condition under which the length of a ray inside the mesh is the signed sum of its hit depths
  (:mod:`jaxdrr.ops.mesh_project`);
* **oriented outward**: face normals ``(v1 - v0) x (v2 - v0)`` point out of the solid, i.e. the
  signed volume ``sum(v0 . (v1 x v2)) / 6`` is positive. A mesh given inside-out has its faces
  flipped (``faces[:, ::-1]``), not rejected.

Topology checks use trimesh (``Trimesh(process=False)``: ``is_watertight``,
``is_winding_consistent``); geometry checks use NumPy float64 on the concrete arrays. The unit
check (:func:`units_warning`) only warns: a mesh whose bounding box is smaller than
:data:`MIN_EXTENT_MM` overall was probably written in metres, one larger than
:data:`MAX_EXTENT_MM` in micrometres (or is not a tool).

The pose is separate (:class:`jaxdrr.geometry.rigid.RigidTransform`): :meth:`TriangleMesh.triangles`
gives the posed triangle corners that the projector takes.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import MeshError

MIN_EXTENT_MM = 1.0  # largest bounding-box side below this: probably metres (a 10 cm tool = 0.1 "mm")
MAX_EXTENT_MM = 2000.0  # above 2 m: micrometres or a wrong scale (no surgical tool is that large)
# A triangle is degenerate when its area is below this fraction of (mesh bounding-box diagonal)^2.
DEGENERATE_AREA_FRACTION = 1e-14


class MeshUnitsWarning(UserWarning):
    """A mesh's size suggests it is not in millimetres."""


def _as_numpy(vertices, faces, name):
    try:
        v = np.asarray(vertices, dtype=np.float64)
        f_raw = np.asarray(faces)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise MeshError(f"{name}: vertices and faces must be concrete arrays to be checked") from e
    if v.ndim != 2 or v.shape[1] != 3:
        raise MeshError(f"{name}: vertices must have shape [V, 3], got {v.shape}")
    if f_raw.ndim != 2 or f_raw.shape[1] != 3:
        raise MeshError(f"{name}: faces must have shape [F, 3], got {f_raw.shape}")
    if f_raw.size and not np.issubdtype(f_raw.dtype, np.integer):
        raise MeshError(f"{name}: faces must be integer vertex indices, got dtype {f_raw.dtype}")
    return v, f_raw.astype(np.int64)


def signed_volume(vertices, faces) -> float:
    """Signed volume (mm^3) of a closed mesh, positive for outward normals (NumPy float64)."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]
    return float(np.einsum("fi,fi->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0)


def open_edge_count(faces) -> tuple[int, int]:
    """(edges used by one face, edges used by more than two faces) of a triangle mesh."""
    f = np.asarray(faces, np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int(np.sum(counts == 1)), int(np.sum(counts > 2))


def check_mesh(vertices, faces, name: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    """Validates a closed triangle mesh and orients it outward.

    Args:
      vertices: [V, 3] vertex positions (mm).
      faces: [F, 3] integer vertex indices.
      name: how error messages call the mesh.

    Returns:
      (vertices float64 [V, 3], faces int32 [F, 3]) with outward normals (positive signed volume;
      the faces of an inside-out mesh are flipped).

    Raises:
      MeshError: empty mesh, NaN/Inf, out-of-range indices, zero-area triangles, an open surface
        (the message gives the count of open edges), a non-manifold or inconsistently wound one.
    """
    import trimesh  # field library for the topology; imported here to keep `import jaxdrr` light

    v, f = _as_numpy(vertices, faces, name)
    if v.shape[0] == 0 or f.shape[0] == 0:
        raise MeshError(f"{name}: empty mesh ({v.shape[0]} vertices, {f.shape[0]} faces)")
    if not np.all(np.isfinite(v)):
        raise MeshError(f"{name}: {int(np.sum(~np.isfinite(v)))} non-finite vertex coordinates (NaN/Inf)")
    bad = (f < 0) | (f >= v.shape[0])
    if np.any(bad):
        row = int(np.argwhere(bad)[0, 0])
        raise MeshError(
            f"{name}: {int(np.sum(np.any(bad, axis=1)))} faces index vertices outside [0, {v.shape[0]}); "
            f"first: face {row} = {f[row].tolist()}"
        )
    tri = v[f]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    diagonal = float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))
    degenerate = area <= DEGENERATE_AREA_FRACTION * max(diagonal, np.finfo(float).tiny) ** 2
    if np.any(degenerate):
        raise MeshError(
            f"{name}: {int(np.sum(degenerate))} degenerate (zero-area) triangles; first: face "
            f"{int(np.argmax(degenerate))}"
        )
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False, validate=False)
    if not mesh.is_watertight:
        open_edges, shared = open_edge_count(f)
        raise MeshError(
            f"{name}: the surface is not closed (watertight): {open_edges} open edges, {shared} edges "
            "shared by more than two faces; the inside of a tool is only defined for a closed mesh "
            "(repair it, e.g. trimesh.repair.fill_holes, or merge duplicate vertices)"
        )
    if not mesh.is_winding_consistent:
        raise MeshError(
            f"{name}: inconsistent winding (neighbouring faces list their shared edge in the same "
            "direction); fix it with trimesh.repair.fix_winding"
        )
    volume = signed_volume(v, f)
    if volume == 0.0:
        raise MeshError(f"{name}: the closed surface encloses zero volume")
    if volume < 0:
        f = f[:, ::-1]
    return v, np.ascontiguousarray(f, dtype=np.int32)


def units_warning(vertices, name: str = "mesh") -> bool:
    """Warns (:class:`MeshUnitsWarning`) when the mesh's size suggests a unit other than mm.

    The largest side of the axis-aligned bounding box is compared with :data:`MIN_EXTENT_MM`
    (1 mm: a tool written in metres) and :data:`MAX_EXTENT_MM` (2 m: micrometres or a wrong scale).

    Returns:
      True when it warned.
    """
    v = np.asarray(vertices, dtype=np.float64)
    extent = float(np.max(v.max(axis=0) - v.min(axis=0)))
    if extent < MIN_EXTENT_MM:
        message = f"smaller than {MIN_EXTENT_MM} mm: was it written in metres? (scale=1000)"
    elif extent > MAX_EXTENT_MM:
        message = f"larger than {MAX_EXTENT_MM} mm: was it written in micrometres? (scale=0.001)"
    else:
        return False
    warnings.warn(
        f"{name}: bounding box {extent:.4g} mm is {message}; jaxdrr meshes are in mm",
        MeshUnitsWarning,
        stacklevel=3,
    )
    return True


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TriangleMesh:
    """A closed, outward-oriented triangle mesh in its object frame.

    Attributes:
      vertices: [V, 3] float, mm (object frame).
      faces: [F, 3] int32 vertex indices, counter-clockwise seen from outside.
      name: static label used in messages.
    """

    vertices: jax.Array
    faces: jax.Array
    name: str = dataclasses.field(default="mesh", metadata=dict(static=True))

    @classmethod
    def create(cls, vertices, faces, *, check: bool = True, name: str = "mesh", dtype=None) -> TriangleMesh:
        """A mesh from array-likes; ``check`` validates it (:func:`check_mesh`, :func:`units_warning`)
        and orients it outward. ``dtype``: the vertex dtype (default float32, or float64 under x64)."""
        dtype = dtype or jnp.result_type(float)
        if check:
            vertices, faces = check_mesh(vertices, faces, name)
            units_warning(vertices, name)
        return cls(jnp.asarray(vertices, dtype), jnp.asarray(faces, jnp.int32), name)

    @property
    def num_faces(self) -> int:
        return int(np.shape(self.faces)[0])

    def triangles(self, pose=None) -> jax.Array:
        """Triangle corners [F, 3, 3] (mm): world positions if a ``RigidTransform`` ``pose`` is given.

        Vertices are transformed before they are gathered, so a vertex shared by several faces has
        bit-identical coordinates in each (the projector's watertight edge rule relies on it).
        """
        vertices = self.vertices if pose is None else pose.apply(self.vertices)
        return vertices[self.faces]

    def _numpy(self):
        try:
            return np.asarray(self.vertices, np.float64), np.asarray(self.faces)
        except jax.errors.ConcretizationTypeError as e:
            raise MeshError(f"{self.name}: mesh properties need concrete (not traced) arrays") from e

    @property
    def volume_mm3(self) -> float:
        """Enclosed volume (mm^3; positive for an outward-oriented mesh)."""
        return signed_volume(*self._numpy())

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min corner, max corner) of the axis-aligned bounding box, object frame (mm)."""
        v, _ = self._numpy()
        return v.min(axis=0), v.max(axis=0)

    @property
    def bounding_radius(self) -> float:
        """Largest distance (mm) of a vertex from the vertex centroid: any chord is at most twice this."""
        v, _ = self._numpy()
        return float(np.max(np.linalg.norm(v - v.mean(axis=0), axis=1)))
