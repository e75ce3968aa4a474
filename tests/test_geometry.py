"""Geometry conventions: projection round trips, the C-arm's angle conventions, rotations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr import geometry as G
from jaxdrr.errors import GeometryError

SMALL = G.CArmGeometry(sdd_mm=1000.0, sid_mm=600.0, height=60, width=80, pixel_size_mm=2.0)


def test_point_projects_where_its_ray_lands():
    P = G.carm(25.0, -12.0, isocenter=(3.0, -4.0, 10.0), geometry=SMALL)
    rng = np.random.default_rng(0)
    points = rng.uniform(-80, 80, size=(20, 3))
    xy, depth = G.project_points(P, jnp.asarray(points))
    assert np.all(np.asarray(depth) > 0)
    src = G.source_position(P)
    homog = jnp.concatenate([xy, jnp.ones((20, 1))], axis=1)
    dirs = G.ray_directions(P, homog)
    to_point = points - np.asarray(src)
    dist = np.linalg.norm(to_point, axis=1)
    np.testing.assert_allclose(np.asarray(dirs), to_point / dist[:, None], atol=1e-5)


def test_isocenter_projects_to_detector_centre():
    iso = jnp.array([10.0, 20.0, -5.0])
    for lao, cran in [(0, 0), (30, 10), (-45, -20), (90, 0)]:
        P = G.carm(lao, cran, isocenter=iso, geometry=SMALL)
        xy, _ = G.project_points(P, iso[None])
        np.testing.assert_allclose(np.asarray(xy[0]), [(80 - 1) / 2, (60 - 1) / 2], atol=1e-3)
        src = G.source_position(P)
        np.testing.assert_allclose(float(jnp.linalg.norm(src - iso)), 600.0, rtol=1e-5)


def test_carm_angle_conventions():
    iso = np.zeros(3)
    ap = np.asarray(G.source_position(G.carm(0.0, 0.0, geometry=SMALL)))
    np.testing.assert_allclose(ap, [0.0, -600.0, 0.0], atol=1e-3)  # AP: source posterior (-y)
    lao = np.asarray(G.source_position(G.carm(30.0, 0.0, geometry=SMALL)))
    assert lao[0] > 100.0  # LAO: source to the patient's right (+x in RAS)
    rao = np.asarray(G.source_position(G.carm(-30.0, 0.0, geometry=SMALL)))
    assert rao[0] < -100.0
    cran = np.asarray(G.source_position(G.carm(0.0, 20.0, geometry=SMALL)))
    assert cran[2] < -100.0  # CRAN: detector to the head, so the source towards the feet
    lat = np.asarray(G.source_position(G.carm(90.0, 0.0, geometry=SMALL)))
    np.testing.assert_allclose(lat, [600.0, 0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(np.asarray(G.carm_source(30.0, 0.0, iso, 600.0)), lao, atol=1e-3)


def test_radiological_display_convention():
    P = G.carm(0.0, 0.0, geometry=SMALL)
    pts = jnp.array([[50.0, 0, 0], [-50.0, 0, 0], [0, 0, 50.0], [0, 0, -50.0]])
    xy, _ = G.project_points(P, pts)
    xy = np.asarray(xy)
    assert xy[0, 0] < xy[1, 0]  # patient's right (+x) on the image's left
    assert xy[2, 1] < xy[3, 1]  # head (+z) at the top (smaller row)


def test_decompose_projection_round_trip():
    P = np.asarray(G.carm(20.0, 15.0, isocenter=(1.0, 2.0, 3.0), geometry=SMALL), dtype=np.float64)
    K, R, t = G.decompose_projection(P * 3.7)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(R) > 0
    np.testing.assert_allclose(K @ np.concatenate([R, t[:, None]], 1), P, rtol=1e-6, atol=1e-6)
    assert K[0, 0] < 0 < K[1, 1]  # the display mirror lives in K


def test_rescale_detector_keeps_rays():
    P = G.carm(10.0, 5.0, geometry=SMALL)
    Pc = G.rescale_detector(P, 2.0)
    # Coarse pixel (0, 0) covers fine pixels (0..1, 0..1); its centre is fine point (0.5, 0.5).
    d_coarse = G.ray_directions(Pc, jnp.array([0.0, 0.0, 1.0]))
    d_fine = G.ray_directions(P, jnp.array([0.5, 0.5, 1.0]))
    np.testing.assert_allclose(np.asarray(d_coarse), np.asarray(d_fine), atol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 4)), "rank"),
        (np.ones((3, 3)), "3x4"),
        (np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]), "singular|rank"),
        (np.full((3, 4), np.nan), "non-finite"),
    ],
)
def test_degenerate_projection_matrices_rejected(bad, match):
    with pytest.raises(GeometryError, match=match):
        G.check_projection_matrix(bad)


def test_rotation_parameterisations_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(10):
        v = rng.normal(size=3)
        v = v / np.linalg.norm(v) * rng.uniform(0.0, 3.0)
        R = G.so3_exp(jnp.asarray(v))
        chex.assert_trees_all_close(R @ R.T, jnp.eye(3), atol=1e-5)
        np.testing.assert_allclose(np.asarray(G.so3_log(R)), v, atol=2e-4)
        np.testing.assert_allclose(
            np.asarray(G.rotation_from_6d(G.rotation_to_6d(R))), np.asarray(R), atol=1e-5
        )
        np.testing.assert_allclose(
            np.asarray(G.rotation_from_quaternion(G.rotation_to_quaternion(R))), np.asarray(R), atol=2e-4
        )
    # Elementary rotations agree with the exponential map.
    np.testing.assert_allclose(
        np.asarray(G.rotation_z(0.3)), np.asarray(G.so3_exp(jnp.array([0, 0, 0.3]))), atol=1e-6
    )


def test_so3_exp_gradient_at_zero_is_finite_and_correct():
    with jax.enable_x64(True):
        f = lambda v: G.so3_exp(v)[0, 1]  # = -v_z to first order
        g = jax.grad(f)(jnp.zeros(3))
        np.testing.assert_allclose(np.asarray(g), [0.0, 0.0, -1.0], atol=1e-12)


def test_carm_differentiable_wrt_angles():
    with jax.enable_x64(True):
        pt = jnp.array([30.0, 10.0, -20.0])
        f = lambda a: G.project_points(G.carm(a[0], a[1], geometry=SMALL), pt[None])[0][0, 0]
        a = jnp.array([20.0, 5.0])
        g = jax.grad(f)(a)
        eps = 1e-6
        fd = [(f(a + eps * e) - f(a - eps * e)) / (2 * eps) for e in jnp.eye(2)]
        np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-5)
