"""Rigid poses of scene objects: a pytree ``(rotation vector, translation)`` and its 4x4 matrix.

A :class:`RigidTransform` maps an object's own coordinates (mm) to world coordinates (mm, RAS+):
``x_world = R(rotation) @ (x_object - pivot) + pivot + translation``, with ``R`` the rotation
matrix of the rotation vector (:func:`jaxdrr.geometry.rotations.so3_exp`) and ``pivot`` a static
point (default the origin) so that a tool can turn about its tip or a bone about its centre. Both
leaves are plain arrays, so ``jit``, ``vmap`` (a batch of poses) and ``grad`` (pose estimation)
see through it.

One place for the projection of a posed object: rendering an object posed by ``T`` in a camera
``P`` is rendering the unposed object in ``P @ T`` (:func:`object_projection`); volumes (whose
affine is static) and meshes are posed the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import GeometryError
from jaxdrr.geometry.rotations import so3_exp, so3_log


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RigidTransform:
    """Object -> world rigid transform.

    Attributes:
      rotation: rotation vector [3] (axis * angle, radians).
      translation: [3] mm.
      pivot: static point [3] (object coordinates, mm) the rotation turns about; default origin.
    """

    rotation: jax.Array
    translation: jax.Array
    pivot: tuple[float, float, float] = dataclasses.field(default=(0.0, 0.0, 0.0), metadata=dict(static=True))

    @classmethod
    def create(cls, rotation=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0), pivot=(0.0, 0.0, 0.0), dtype=None):
        """A transform from array-likes (degrees nowhere: the rotation vector is in radians)."""
        dtype = dtype or jnp.result_type(float)
        rotation = jnp.asarray(rotation, dtype)
        translation = jnp.asarray(translation, dtype)
        if rotation.shape[-1:] != (3,) or translation.shape[-1:] != (3,):
            raise GeometryError(
                f"rotation and translation must have 3 components, got shapes {rotation.shape} and {translation.shape}"
            )
        pivot_arr = np.asarray(pivot, dtype=np.float64)
        if pivot_arr.shape != (3,) or not np.all(np.isfinite(pivot_arr)):
            raise GeometryError(f"pivot must be 3 finite numbers, got {pivot!r}")
        return cls(rotation, translation, tuple(float(v) for v in pivot_arr))

    @classmethod
    def identity(cls, pivot=(0.0, 0.0, 0.0), dtype=None) -> RigidTransform:
        return cls.create(pivot=pivot, dtype=dtype)

    @classmethod
    def from_matrix(cls, T, pivot=(0.0, 0.0, 0.0)) -> RigidTransform:
        """The transform whose :meth:`matrix` is the 4x4 rigid ``T`` (about ``pivot``)."""
        T = jnp.asarray(T)
        R, t = T[:3, :3], T[:3, 3]
        c = jnp.asarray(pivot, T.dtype)
        # T x = R x + t = R (x - c) + c + (t + R c - c)
        return cls(so3_log(R), t + R @ c - c, tuple(float(v) for v in np.asarray(pivot, np.float64)))

    def rotation_matrix(self) -> jax.Array:
        return so3_exp(self.rotation)

    def matrix(self) -> jax.Array:
        """The 4x4 homogeneous object -> world matrix."""
        R = self.rotation_matrix()
        c = jnp.asarray(self.pivot, R.dtype)
        t = self.translation + c - R @ c
        top = jnp.concatenate([R, t[:, None]], axis=1)
        bottom = jnp.asarray([[0.0, 0.0, 0.0, 1.0]], R.dtype)
        return jnp.concatenate([top, bottom], axis=0)

    def apply(self, points) -> jax.Array:
        """World coordinates of object points [..., 3]."""
        T = self.matrix()
        points = jnp.asarray(points, T.dtype)
        return points @ T[:3, :3].T + T[:3, 3]


def object_projection(P, pose: RigidTransform) -> jax.Array:
    """The 3x4 matrix that projects an object's own coordinates: ``P @ pose.matrix()``."""
    P = jnp.asarray(P)
    return P @ pose.matrix().astype(P.dtype)
