"""Rotations as smooth functions of parameters: the one place for rotation formulas.

Axis-angle (rotation vector) exponential and logarithm, elementary axis rotations, and the 6D
(Gram-Schmidt) and quaternion parameterisations used for optimisation. All pure ``jnp``; the
exponential is safe at (and differentiable through) the zero rotation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rotation_x(angle) -> jax.Array:
    """Right-handed rotation by ``angle`` radians about +x."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    o, z = jnp.ones_like(c), jnp.zeros_like(c)
    return jnp.stack([jnp.stack([o, z, z]), jnp.stack([z, c, -s]), jnp.stack([z, s, c])])


def rotation_y(angle) -> jax.Array:
    """Right-handed rotation by ``angle`` radians about +y."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    o, z = jnp.ones_like(c), jnp.zeros_like(c)
    return jnp.stack([jnp.stack([c, z, s]), jnp.stack([z, o, z]), jnp.stack([-s, z, c])])


def rotation_z(angle) -> jax.Array:
    """Right-handed rotation by ``angle`` radians about +z."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    o, z = jnp.ones_like(c), jnp.zeros_like(c)
    return jnp.stack([jnp.stack([c, -s, z]), jnp.stack([s, c, z]), jnp.stack([z, z, o])])


def _skew(v):
    x, y, z = v[0], v[1], v[2]
    zero = jnp.zeros_like(x)
    return jnp.stack([jnp.stack([zero, -z, y]), jnp.stack([z, zero, -x]), jnp.stack([-y, x, zero])])


def so3_exp(rotvec) -> jax.Array:
    """Rotation matrix of a rotation vector (axis * angle in radians), Rodrigues' formula.

    Uses Taylor expansions below 1e-4 rad (float32-safe) so value and gradient are exact at zero.
    """
    rotvec = jnp.asarray(rotvec)
    theta2 = jnp.sum(rotvec**2)
    small = theta2 < 1e-8
    safe2 = jnp.where(small, 1.0, theta2)
    theta = jnp.sqrt(safe2)
    a = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
    b = jnp.where(small, 0.5 - theta2 / 24.0, (1.0 - jnp.cos(theta)) / safe2)
    W = _skew(rotvec)
    return jnp.eye(3, dtype=W.dtype) + a * W + b * (W @ W)


def so3_log(R) -> jax.Array:
    """Rotation vector of a rotation matrix (inverse of :func:`so3_exp`, angle in [0, pi])."""
    R = jnp.asarray(R)
    cos = jnp.clip((jnp.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    theta = jnp.arccos(cos)
    v = jnp.stack([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    sin = jnp.sin(theta)
    small = sin < 1e-6
    factor = jnp.where(small, 0.5 + theta**2 / 12.0, theta / (2.0 * jnp.where(small, 1.0, sin)))
    near_pi = cos < -0.999
    # Near pi the antisymmetric part vanishes: recover the axis from the symmetric part.
    B = (R + R.T) / 2.0 - cos * jnp.eye(3, dtype=R.dtype)
    col = jnp.argmax(jnp.diagonal(B))
    axis = B[:, col] / jnp.sqrt(jnp.maximum(B[col, col], 1e-12))
    axis = axis * jnp.where(jnp.dot(axis, v) < 0, -1.0, 1.0)
    axis = axis / jnp.linalg.norm(axis)
    return jnp.where(near_pi, theta * axis, factor * v)


def rotation_from_6d(x) -> jax.Array:
    """Rotation from the continuous 6D representation (Zhou et al. 2019): two 3-vectors,
    Gram-Schmidt orthonormalised; rows of the result are (b1, b2, b1 x b2) transposed to columns."""
    x = jnp.asarray(x)
    a1, a2 = x[:3], x[3:6]
    b1 = a1 / jnp.linalg.norm(a1)
    a2 = a2 - jnp.dot(b1, a2) * b1
    b2 = a2 / jnp.linalg.norm(a2)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=1)


def rotation_to_6d(R) -> jax.Array:
    """The 6D representation of a rotation: its first two columns."""
    R = jnp.asarray(R)
    return jnp.concatenate([R[:, 0], R[:, 1]])


def rotation_from_quaternion(q) -> jax.Array:
    """Rotation from a quaternion (w, x, y, z); normalised first, so any non-zero 4-vector works."""
    q = jnp.asarray(q)
    w, x, y, z = q / jnp.linalg.norm(q)
    return jnp.stack(
        [
            jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)]),
            jnp.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)]),
            jnp.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]),
        ]
    )


def rotation_to_quaternion(R) -> jax.Array:
    """Quaternion (w, x, y, z), w >= 0, of a rotation matrix (via the rotation vector)."""
    v = so3_log(R)
    theta = jnp.linalg.norm(v)
    axis = v / jnp.maximum(theta, 1e-12)
    return jnp.concatenate([jnp.cos(theta / 2)[None], jnp.sin(theta / 2) * axis])


def rotation_angle_between(Ra, Rb) -> jax.Array:
    """Geodesic angle (radians) between two rotations."""
    cos = (jnp.trace(Ra.T @ Rb) - 1.0) / 2.0
    return jnp.arccos(jnp.clip(cos, -1.0, 1.0))
