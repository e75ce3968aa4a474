"""Volumes: a voxel array plus the affine that places it in the world.

A :class:`Volume` is a JAX pytree whose only leaf is ``data``; the 4x4 ``affine`` (voxel index ->
world mm, of voxel *centres*, the NIfTI convention) is static metadata, so geometry derived from it
is computed once at trace time, and ``jax.grad``/``jax.vmap`` act on the voxel values only.

World frame: jaxdrr uses **RAS+** world coordinates in millimetres
(+x = patient Right, +y = Anterior, +z = Superior), the nibabel/NIfTI convention. DICOM (LPS+,
+x = patient Left, +y = Posterior) is converted on load by negating x and y. See docs/geometry.md.

``data`` is either Hounsfield units, shape [I, J, K] (``kind="hu"``), or per-material densities in
g/cm^3, shape [C, I, J, K] (``kind="density"``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr._compat import is_tracer
from jaxdrr.errors import VolumeError

VOLUME_KINDS = ("hu", "density")


def _as_static_affine(affine: Any) -> tuple[tuple[float, ...], ...]:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise VolumeError(f"affine must be 4x4 (voxel index -> world mm), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise VolumeError("affine contains non-finite values")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise VolumeError(f"affine last row must be [0, 0, 0, 1], got {a[3].tolist()}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise VolumeError("affine is singular (zero voxel spacing or collinear axes)")
    return tuple(tuple(float(v) for v in row) for row in a)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """A CT (HU) or material-density volume in world coordinates.

    Attributes:
      data: voxel values, [I, J, K] for ``kind="hu"`` or [C, I, J, K] for ``kind="density"``.
      affine_key: the affine as a hashable tuple (use :attr:`affine` for the array).
      kind: ``"hu"`` or ``"density"``.
      channel_names: names of the channels of a density volume (material names), else ``()``.
    """

    data: jax.Array
    affine_key: tuple[tuple[float, ...], ...]
    kind: str = "hu"
    channel_names: tuple[str, ...] = ()

    @classmethod
    def create(cls, data, affine, kind: str = "hu", channel_names=(), check: bool = True) -> Volume:
        """Builds a Volume, validating shape, kind, affine and (for concrete data) finiteness.

        Args:
          data: array of HU ([I, J, K]) or densities ([C, I, J, K]).
          affine: 4x4 voxel-index -> world-mm matrix of voxel centres.
          kind: ``"hu"`` or ``"density"``.
          channel_names: material names of density channels.
          check: check concrete data for NaN/Inf (skipped automatically under tracing).

        Returns:
          A Volume.
        """
        if kind not in VOLUME_KINDS:
            raise VolumeError(f"kind must be one of {VOLUME_KINDS}, got {kind!r}")
        expected_ndim = 3 if kind == "hu" else 4
        ndim = np.ndim(data)
        if ndim != expected_ndim:
            raise VolumeError(
                f"a {kind!r} volume must have {expected_ndim} dimensions "
                f"({'[I, J, K]' if kind == 'hu' else '[C, I, J, K]'}), got shape {np.shape(data)}"
            )
        if min(np.shape(data)) < 1:
            raise VolumeError(f"volume has an empty axis: shape {np.shape(data)}")
        if kind == "density" and channel_names and len(channel_names) != np.shape(data)[0]:
            raise VolumeError(f"{len(channel_names)} channel names for {np.shape(data)[0]} channels")
        if check and not is_tracer(data):
            arr = np.asarray(data)
            bad = ~np.isfinite(arr)
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                raise VolumeError(
                    f"volume has {int(bad.sum())} non-finite voxel(s) (NaN/Inf), first at index {idx}"
                )
        if not is_tracer(data):
            data = jnp.asarray(data, dtype=jnp.result_type(float))
        return cls(
            data=data, affine_key=_as_static_affine(affine), kind=kind, channel_names=tuple(channel_names)
        )

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 voxel-index -> world-mm affine (float64 NumPy array)."""
        return np.array(self.affine_key, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (I, J, K)."""
        return tuple(self.data.shape[-3:])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing in mm along each index axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def center(self) -> np.ndarray:
        """World position (mm) of the volume's centre."""
        ijk = (np.array(self.shape, dtype=np.float64) - 1.0) / 2.0
        return (self.affine @ np.append(ijk, 1.0))[:3]

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world box (min, max) enclosing all voxels (voxel boundaries, not centres)."""
        corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in self.shape], indexing="ij"))
        corners = corners.reshape(3, -1).T
        world = corners @ self.affine[:3, :3].T + self.affine[:3, 3]
        return world.min(axis=0), world.max(axis=0)

    def replace(self, **changes) -> Volume:
        return dataclasses.replace(self, **changes)

    def tree_flatten(self):
        return (self.data,), (self.affine_key, self.kind, self.channel_names)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)

    def __repr__(self) -> str:
        return (
            f"Volume(kind={self.kind!r}, shape={tuple(self.data.shape)}, "
            f"spacing={np.round(self.spacing, 4).tolist()}, channels={self.channel_names})"
        )
