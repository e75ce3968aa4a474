"""geometry.carm over arrays of angles and isocentres: a batch of P [..., 3, 4] equal to a loop over
scalar calls, under jit, vmap and grad."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr import geometry as G

SMALL = G.CArmGeometry(height=40, width=48, pixel_size_mm=3.0)
ISO = (3.0, -4.0, 10.0)


def float32_bound(P) -> float:
    """Bound on |batched - scalar| for matrices the size of P.

    Each entry of P = K [R | t] is a sum of at most three products of float32 numbers, R and t come
    from sin/cos (a few ulps) and t = -R @ source (three products again): a few tens of float32
    rounding errors of the largest entry's size at most; 64 units of 2^-24 * max|P| covers them.
    """
    return 64 * float(np.finfo(np.float32).eps) / 2 * float(np.max(np.abs(P)))


def loop(lao, cran, iso=ISO):
    return np.stack(
        [np.asarray(G.carm(float(a), float(c), isocenter=iso, geometry=SMALL)) for a, c in zip(lao, cran)]
    )


def test_angle_arrays_give_a_batch_equal_to_the_loop():
    lao = np.array([-60.0, -30.0, 0.0, 15.0, 90.0])
    Ps = np.asarray(G.carm(lao=jnp.asarray(lao), cran=10.0, isocenter=ISO, geometry=SMALL))
    assert Ps.shape == (5, 3, 4)
    ref = loop(lao, np.full(5, 10.0))
    np.testing.assert_allclose(Ps, ref, rtol=0, atol=float32_bound(ref))
    # A list of angles works too, and scalars keep the single-view shape.
    np.testing.assert_array_equal(
        np.asarray(G.carm(lao=list(lao), cran=10.0, isocenter=ISO, geometry=SMALL)), Ps
    )
    assert G.carm(30.0, 10.0, geometry=SMALL).shape == (3, 4)


def test_angles_and_isocentres_broadcast():
    lao = np.array([-20.0, 0.0, 20.0])[:, None]  # [3, 1]
    cran = np.array([-10.0, 25.0])[None, :]  # [1, 2]
    Ps = np.asarray(G.carm(lao=lao, cran=cran, isocenter=ISO, geometry=SMALL))
    assert Ps.shape == (3, 2, 3, 4)
    a, c = np.broadcast_arrays(lao, cran)
    ref = loop(a.ravel(), c.ravel()).reshape(3, 2, 3, 4)
    np.testing.assert_allclose(Ps, ref, rtol=0, atol=float32_bound(ref))

    isos = np.array([[0.0, 0.0, 0.0], [10.0, -5.0, 3.0]])  # [2, 3]: one view per isocentre
    Ps = np.asarray(G.carm(lao=30.0, cran=5.0, isocenter=isos, geometry=SMALL))
    assert Ps.shape == (2, 3, 4)
    ref = np.stack([np.asarray(G.carm(30.0, 5.0, isocenter=tuple(i), geometry=SMALL)) for i in isos])
    np.testing.assert_allclose(Ps, ref, rtol=0, atol=float32_bound(ref))


def test_batched_carm_under_jit_vmap_and_grad():
    lao, cran = jnp.array([-25.0, 5.0, 40.0]), jnp.array([0.0, 12.0, -8.0])
    batched = jax.jit(lambda a, c: G.carm(a, c, isocenter=ISO, geometry=SMALL))(lao, cran)
    mapped = jax.vmap(lambda a, c: G.carm(a, c, isocenter=ISO, geometry=SMALL))(lao, cran)
    ref = loop(np.asarray(lao), np.asarray(cran))
    for Ps in (batched, mapped):
        np.testing.assert_allclose(np.asarray(Ps), ref, rtol=0, atol=float32_bound(ref))

    point = jnp.array([[20.0, 10.0, -15.0]])

    def column(P):  # image column of a point
        return G.project_points(P, point)[0][0, 0]

    def total(a, c):  # the views' columns, summed: d/d(angle i) is view i's own derivative
        return jnp.sum(jax.vmap(column)(G.carm(a, c, isocenter=ISO, geometry=SMALL)))

    grad_batched = jax.grad(total, argnums=(0, 1))(lao, cran)
    for i in range(3):
        grad_one = jax.grad(lambda a, c: column(G.carm(a, c, isocenter=ISO, geometry=SMALL)), argnums=(0, 1))(
            lao[i], cran[i]
        )
        for g_b, g_1 in zip(grad_batched, grad_one):
            # d(column)/d(angle) is at most a few pixels per degree here; the batched and scalar
            # derivatives are the same float32 expressions, evaluated in a different order.
            np.testing.assert_allclose(float(g_b[i]), float(g_1), rtol=1e-5, atol=1e-5)
