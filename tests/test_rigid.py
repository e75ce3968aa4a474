"""Rigid object poses (jaxdrr/geometry/rigid.py): the matrix, pivots, and posed projection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr.errors import GeometryError
from jaxdrr.geometry import carm, project_points
from jaxdrr.geometry.rigid import RigidTransform, object_projection
from jaxdrr.geometry.rotations import so3_exp


def test_matrix_is_rotation_about_the_pivot(x64):
    rot = np.array([0.3, -0.2, 0.5])
    pose = RigidTransform.create(rot, [1.0, -2.0, 3.0], pivot=(10.0, 20.0, 30.0))
    R = np.asarray(so3_exp(jnp.asarray(rot)))
    x = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    expected = (x - [10, 20, 30]) @ R.T + [10, 20, 30] + [1, -2, 3]
    np.testing.assert_allclose(np.asarray(pose.apply(x)), expected, rtol=0, atol=1e-12)
    T = np.asarray(pose.matrix())
    np.testing.assert_allclose(T[3], [0, 0, 0, 1])
    back = RigidTransform.from_matrix(T, pivot=pose.pivot)
    np.testing.assert_allclose(np.asarray(back.matrix()), T, atol=1e-12)


def test_posed_projection_equals_projecting_posed_points(x64):
    P = carm(20.0, -10.0)
    pose = RigidTransform.create([0.1, 0.2, -0.3], [5.0, -4.0, 2.0], pivot=(1.0, 2.0, 3.0))
    pts = jnp.asarray(np.random.default_rng(0).normal(scale=40.0, size=(7, 3)))
    uv_a, d_a = project_points(object_projection(P, pose), pts)
    uv_b, d_b = project_points(P, pose.apply(pts))
    np.testing.assert_allclose(np.asarray(uv_a), np.asarray(uv_b), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(np.asarray(d_a), np.asarray(d_b), rtol=1e-12)


def test_jit_vmap_grad():
    rots = jnp.asarray(np.random.default_rng(1).normal(scale=0.3, size=(4, 3)), jnp.float32)
    point = jnp.asarray([1.0, 2.0, 3.0])

    def moved(r):
        return RigidTransform(r, jnp.zeros(3), (0.0, 0.0, 1.0)).apply(point)

    batched = jax.jit(jax.vmap(moved))(rots)
    for i in range(4):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(moved(rots[i])), rtol=1e-6, atol=1e-6)
    # d(R (x - c))/d rotvec at zero is -[x - c]_x: the derivative of the cross product w x (x - c).
    J = jax.jacfwd(moved)(jnp.zeros(3))
    v = np.array([1.0, 2.0, 2.0])
    skew = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    np.testing.assert_allclose(np.asarray(J), -skew, atol=1e-6)


def test_bad_input_is_named():
    with pytest.raises(GeometryError, match="3 components"):
        RigidTransform.create([0.0, 0.0], [0.0, 0.0, 0.0])
    with pytest.raises(GeometryError, match="pivot"):
        RigidTransform.create(pivot=(0.0, float("nan"), 0.0))
