"""The projector against exact line integrals, finite differences and its own transformations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from float_bounds import assert_gradients_close, assert_projection_close, conditioned_cotangent
from jax_checks import pose_central_differences

from jaxdrr import geometry as G
from jaxdrr.errors import GeometryError, VolumeError
from jaxdrr.ops import project


def _affine(spacing, origin):
    A = np.diag(list(spacing) + [1.0])
    A[:3, 3] = origin
    return A


def _parallelish_P(height, width, pixel, center, sid=5000.0, lao=0.0, cran=0.0):
    """A C-arm with a far source (nearly parallel rays), centred on ``center``."""
    g = G.CArmGeometry(sdd_mm=2 * sid, sid_mm=sid, height=height, width=width, pixel_size_mm=pixel)
    return G.carm(lao, cran, isocenter=center, geometry=g)


def test_uniform_box_axis_aligned_thickness_is_exact():
    shape, spacing = (10, 12, 14), (1.0, 2.0, 1.5)
    A = _affine(spacing, (-4.5, -11.0, -9.75))
    vol = jnp.ones((1,) + shape)
    # A pinhole exactly on the central ray: pixel through the isocentre of a 1x1 detector.
    g = G.CArmGeometry(sdd_mm=1000.0, sid_mm=500.0, height=1, width=1, pixel_size_mm=1.0)
    for lao, axis in [(0.0, 1), (90.0, 0)]:
        P = G.carm(lao, 0.0, isocenter=(0.0, 0.0, 0.0), geometry=g)
        out = project(vol, A, P, 1, 1, step_mm=0.25)
        np.testing.assert_allclose(float(out[0, 0, 0]), shape[axis] * spacing[axis], rtol=1e-5)


def _ellipsoid_chord(src, dirs, center, radii):
    o = (src - center) / radii
    d = dirs / radii
    a = np.sum(d * d, -1)
    b = 2 * np.sum(o * d, -1)
    c = np.sum(o * o) - 1.0
    disc = np.maximum(b * b - 4 * a * c, 0.0)
    return np.sqrt(disc) / a * np.linalg.norm(dirs, axis=-1)


def _voxelised_ellipsoid(shape, spacing, center, radii, supersample=4):
    """Fraction of each voxel inside the ellipsoid (supersampled), world origin at index 0."""
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    grids = [(np.arange(n)[:, None] + offs[None, :]).reshape(-1) * s for n, s in zip(shape, spacing)]
    inside = ((grids[0][:, None, None] - center[0]) / radii[0]) ** 2 + (
        (grids[1][None, :, None] - center[1]) / radii[1]
    ) ** 2 + ((grids[2][None, None, :] - center[2]) / radii[2]) ** 2 <= 1.0
    frac = inside.reshape(shape[0], supersample, shape[1], supersample, shape[2], supersample)
    return frac.mean(axis=(1, 3, 5)).astype(np.float32)


@pytest.mark.parametrize("lao, cran", [(0.0, 0.0), (35.0, 20.0), (-60.0, -25.0)])
def test_ellipsoid_against_exact_chords_oblique(lao, cran):
    shape, spacing = (48, 40, 36), (1.0, 1.2, 1.4)
    center = np.array([23.0, 24.0, 25.0])
    radii = np.array([16.0, 14.0, 18.0])
    vol = _voxelised_ellipsoid(shape, spacing, center, radii)[None]
    A = _affine(spacing, (0.0, 0.0, 0.0))
    g = G.CArmGeometry(sdd_mm=600.0, sid_mm=300.0, height=24, width=24, pixel_size_mm=3.0)
    P = G.carm(lao, cran, isocenter=center, geometry=g)
    out = np.asarray(project(jnp.asarray(vol), A, P, 24, 24, step_mm=0.3))[..., 0]
    src, dirs = G.pixel_rays(P, 24, 24)
    exact = _ellipsoid_chord(np.asarray(src), np.asarray(dirs).reshape(-1, 3), center, radii).reshape(24, 24)
    interior = exact > 0.5 * exact.max()
    assert interior.sum() > 50
    rel = np.abs(out - exact)[interior] / exact[interior]
    assert np.median(rel) < 0.01 and rel.max() < 0.04, (np.median(rel), rel.max())
    # Rays that miss the ellipsoid by a margin of two voxels see (numerically) nothing.
    src_np, dirs_np = np.asarray(src), np.asarray(dirs).reshape(-1, 3)
    inflated = _ellipsoid_chord(src_np, dirs_np, center, radii + 2.5).reshape(24, 24)
    assert np.all(np.abs(out[inflated == 0]) < 1e-6)


def test_rays_that_miss_and_graze_the_volume():
    shape, spacing = (8, 8, 8), (1.0, 1.0, 1.0)
    A = _affine(spacing, (0.0, 0.0, 0.0))
    vol = jnp.ones((2,) + shape)
    # Isocentre far outside the volume: every ray misses.
    P = _parallelish_P(4, 4, 1.0, center=(100.0, 3.5, 3.5))
    out = project(vol, A, P, 4, 4)
    chex.assert_shape(out, (4, 4, 2))
    assert float(jnp.max(jnp.abs(out))) == 0.0
    # Grazing: rays along y at x = -1.5 (the edge of the support: voxel centres at 0..7, fade to -1).
    g = G.CArmGeometry(sdd_mm=1000.0, sid_mm=500.0, height=1, width=3, pixel_size_mm=0.5)
    P = G.carm(0.0, 0.0, isocenter=(-1.0, 3.5, 3.5), geometry=g)
    out = np.asarray(project(vol, A, P, 1, 3))
    assert np.all(np.isfinite(out))
    # Column 0 is at x ~ -0.75 (image left = patient right = +x... mirror: column 0 is +x side).
    xs = np.asarray(G.project_points(P, jnp.array([[-1.5, 3.5, 3.5], [-0.5, 3.5, 3.5]]))[0])[:, 0]
    assert xs[0] > xs[1]  # mirrored columns
    # Inside the fade region the field is linear: value (x + 1) at x in [-1, 0], thickness 8.
    src, dirs = G.pixel_rays(P, 1, 3)
    x_at = (
        np.asarray(src)[0]
        + np.asarray(dirs)[0, :, 0] * (3.5 - np.asarray(src)[1]) / np.asarray(dirs)[0, :, 1]
    )
    expected = np.clip(x_at + 1.0, 0, 1) * 8.0
    np.testing.assert_allclose(out[0, :, 0], expected, atol=0.02)


def test_error_shrinks_with_step():
    rng = np.random.default_rng(0)
    shape = (20, 18, 16)
    vol = jnp.asarray(rng.random((1,) + shape, dtype=np.float32))
    A = _affine((1.0, 1.1, 0.9), (0.0, 0.0, 0.0))
    P = G.carm(
        25.0,
        15.0,
        isocenter=(9.5, 9.35, 6.75),
        geometry=G.CArmGeometry(sdd_mm=400, sid_mm=200, height=8, width=8, pixel_size_mm=3.0),
    )
    with jax.enable_x64(True):
        ref = np.asarray(project(vol.astype(jnp.float64), A, P.astype(jnp.float64), 8, 8, step_mm=0.005))
        errs = [
            np.abs(
                np.asarray(project(vol.astype(jnp.float64), A, P.astype(jnp.float64), 8, 8, step_mm=s)) - ref
            ).max()
            for s in (1.0, 0.5, 0.25, 0.1)
        ]
    assert errs[0] > errs[1] > errs[2] > errs[3], errs
    assert errs[3] < 0.02 * np.abs(ref).max()


def _smooth_blob_volume():
    shape = (16, 14, 13)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, k) for k in shape], indexing="ij")
    return np.stack(
        [np.exp(-(x**2 + y**2 + z**2) * 6), np.exp(-((x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2) * 9)]
    )


AFFINE = np.array([[1.1, 0.1, 0, -8], [0, 0.9, 0.05, -6], [0.02, 0, 1.3, -8], [0, 0, 0, 1.0]])


def test_pose_gradient_matches_float64_finite_differences():
    with jax.enable_x64(True):
        vol = jnp.asarray(_smooth_blob_volume())
        g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=6, width=7, pixel_size_mm=2.0)
        P = G.carm(20.0, 10.0, isocenter=(0.5, 0.2, -0.3), geometry=g)
        W = jnp.asarray(np.random.default_rng(1).normal(size=(6, 7, 2)))
        f = lambda P: jnp.sum(project(vol, AFFINE, P, 6, 7, step_mm=0.1) * W)
        grad = np.asarray(jax.grad(f)(P))
        fd = pose_central_differences(f, P)
        np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-6 * np.abs(fd).max())


def test_angle_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        vol = jnp.asarray(_smooth_blob_volume())
        g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=6, width=7, pixel_size_mm=2.0)
        target = project(vol, AFFINE, G.carm(22.0, 8.0, geometry=g), 6, 7)
        f = lambda a: jnp.sum((project(vol, AFFINE, G.carm(a[0], a[1], geometry=g), 6, 7) - target) ** 2)
        a = jnp.array([20.0, 10.0])
        grad = np.asarray(jax.grad(f)(a))
        fd = [(f(a + 1e-5 * e) - f(a - 1e-5 * e)) / 2e-5 for e in jnp.eye(2)]
        np.testing.assert_allclose(grad, np.asarray(fd), rtol=1e-4)


def test_volume_gradient_is_exact_adjoint():
    with jax.enable_x64(True):
        vol = jnp.asarray(_smooth_blob_volume())
        g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=6, width=7, pixel_size_mm=2.0)
        P = G.carm(20.0, 10.0, geometry=g)
        W = jnp.asarray(np.random.default_rng(2).normal(size=(6, 7, 2)))
        f = lambda v: jnp.sum(project(v, AFFINE, P, 6, 7) * W)
        gv = jax.grad(f)(vol)
        d = jnp.asarray(np.random.default_rng(3).normal(size=vol.shape))
        # The projector is linear in the volume, so the central difference is exact.
        fd = (f(vol + 1e-3 * d) - f(vol - 1e-3 * d)) / 2e-3
        np.testing.assert_allclose(float(jnp.sum(gv * d)), float(fd), rtol=1e-9)
        # Joint gradient (volume and pose) gives the same volume part.
        gv2, gP = jax.grad(lambda v, P: jnp.sum(project(v, AFFINE, P, 6, 7) * W), argnums=(0, 1))(vol, P)
        chex.assert_trees_all_close(gv, gv2)
        assert np.all(np.isfinite(np.asarray(gP)))


def test_vmap_equals_loop_and_jit_equals_eager():
    vol = jnp.asarray(_smooth_blob_volume(), dtype=jnp.float32)
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=5, width=6, pixel_size_mm=2.0)
    Ps = jnp.stack([G.carm(a, b, geometry=g) for a, b in [(0, 0), (30, 5), (-40, 20)]])
    f = lambda P: project(vol, AFFINE, P, 5, 6)
    # Every float32 result is checked against float64 within the bound derived from float32
    # arithmetic (tests/float_bounds.py); vmap, the loop, jit and eager each must satisfy it.
    batched = jax.vmap(f)(Ps)
    looped = [f(P) for P in Ps]
    for i, P in enumerate(Ps):
        assert_projection_close(batched[i], vol, AFFINE, P, 5, 6, what=f"vmap, pose {i}")
        assert_projection_close(looped[i], vol, AFFINE, P, 5, 6, what=f"loop, pose {i}")
    assert_projection_close(jax.jit(f)(Ps[1]), vol, AFFINE, Ps[1], 5, 6, what="jit")
    Wts = jnp.stack([conditioned_cotangent(vol, AFFINE, P, 5, 6, seed=i) for i, P in enumerate(Ps)])
    loss = lambda P, Wt: jnp.sum(f(P) * Wt)
    gb = jax.vmap(jax.grad(loss))(Ps, Wts)
    for i, P in enumerate(Ps):
        assert_gradients_close(None, gb[i], vol, AFFINE, P, 5, 6, Wts[i], what=f"vmap(grad), pose {i}")
        assert_gradients_close(
            None, jax.grad(loss)(P, Wts[i]), vol, AFFINE, P, 5, 6, Wts[i], what=f"grad, pose {i}"
        )


def test_chunking_does_not_change_the_result():
    from jaxdrr.ops import march, rays

    vol = jnp.asarray(_smooth_blob_volume(), dtype=jnp.float32)
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=7, width=9, pixel_size_mm=2.0)
    P = G.carm(10, 5, geometry=g)
    grid = rays.VolumeGrid.create(vol.shape[1:], AFFINE)
    r = rays.detector_rays(P, grid, 7, 9, 0.5)
    flat = march.pad_channels_last(vol)
    for chunk in (5, 10_000):
        out = march.march(flat, grid.padded_shape, r, chunk=chunk).reshape(7, 9, -1)
        assert_projection_close(out, vol, AFFINE, P, 7, 9, step_mm=0.5, what=f"chunk {chunk}")


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(height=0), GeometryError, "height must be positive"),
        (dict(width=-3), GeometryError, "width must be positive"),
        (dict(step_mm=-0.5), GeometryError, "step_mm must be a positive"),
        (dict(step_mm=float("nan")), GeometryError, "step_mm"),
        (dict(P=np.zeros((3, 4))), GeometryError, "rank"),
        (dict(P=np.ones((4, 4))), GeometryError, "3x4"),
        (dict(volume=np.ones((4, 4, 4))), VolumeError, r"\[C, I, J, K\]"),
        (dict(volume=np.full((1, 4, 4, 4), np.nan)), VolumeError, "non-finite"),
        (dict(affine=np.zeros((4, 4))), VolumeError, "singular|affine"),
    ],
)
def test_bad_input_gives_clear_errors(kwargs, err, match):
    args = dict(
        volume=np.ones((1, 4, 4, 4), np.float32),
        affine=np.eye(4),
        P=G.carm(0, 0, geometry=G.CArmGeometry(height=4, width=4)),
        height=4,
        width=4,
    )
    step = kwargs.pop("step_mm", None)
    args.update(kwargs)
    with pytest.raises(err, match=match):
        project(args["volume"], args["affine"], args["P"], args["height"], args["width"], step_mm=step)


# ---- plane sampling (Joseph's method): step_mm="planes" ----------------------------------------


def test_planes_uniform_box_thickness_and_oblique_chord():
    shape, spacing = (10, 12, 14), (1.0, 2.0, 1.5)
    A = _affine(spacing, (-4.5, -11.0, -9.75))
    vol = jnp.ones((1,) + shape)
    g = G.CArmGeometry(sdd_mm=1000.0, sid_mm=500.0, height=1, width=1, pixel_size_mm=1.0)
    for lao, axis in [(0.0, 1), (90.0, 0)]:
        out = project(vol, A, G.carm(lao, 0.0, geometry=g), 1, 1, step_mm="planes")
        np.testing.assert_allclose(float(out[0, 0, 0]), shape[axis] * spacing[axis], rtol=1e-5)
    # Oblique through the centre: equals a fine uniform march of the same field.
    P = G.carm(30.0, 20.0, geometry=g)
    np.testing.assert_allclose(
        np.asarray(project(vol, A, P, 1, 1, step_mm="planes")),
        np.asarray(project(vol, A, P, 1, 1, step_mm=0.01)),
        rtol=2e-3,
    )


@pytest.mark.parametrize("lao, cran", [(0.0, 0.0), (35.0, 20.0), (-60.0, -25.0)])
def test_planes_ellipsoid_against_exact_chords(lao, cran):
    shape, spacing = (48, 40, 36), (1.0, 1.2, 1.4)
    center, radii = np.array([23.0, 24.0, 25.0]), np.array([16.0, 14.0, 18.0])
    vol = _voxelised_ellipsoid(shape, spacing, center, radii)[None]
    A = _affine(spacing, (0.0, 0.0, 0.0))
    g = G.CArmGeometry(sdd_mm=600.0, sid_mm=300.0, height=24, width=24, pixel_size_mm=3.0)
    P = G.carm(lao, cran, isocenter=center, geometry=g)
    out = np.asarray(project(jnp.asarray(vol), A, P, 24, 24, step_mm="planes"))[..., 0]
    src, dirs = G.pixel_rays(P, 24, 24)
    exact = _ellipsoid_chord(np.asarray(src), np.asarray(dirs).reshape(-1, 3), center, radii).reshape(24, 24)
    interior = exact > 0.5 * exact.max()
    rel = np.abs(out - exact)[interior] / exact[interior]
    assert np.median(rel) < 0.01 and rel.max() < 0.04, (np.median(rel), rel.max())


def test_planes_gradients_match_finite_differences_and_adjoint():
    with jax.enable_x64(True):
        vol = jnp.asarray(_smooth_blob_volume())
        g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=6, width=7, pixel_size_mm=2.0)
        P = G.carm(20.0, 10.0, isocenter=(0.5, 0.2, -0.3), geometry=g)
        W = jnp.asarray(np.random.default_rng(1).normal(size=(6, 7, 2)))
        f = lambda v, P: jnp.sum(project(v, AFFINE, P, 6, 7, step_mm="planes") * W)
        gP = np.asarray(jax.grad(f, argnums=1)(vol, P))
        fd = pose_central_differences(lambda P: f(vol, P), P)
        np.testing.assert_allclose(gP, fd, rtol=1e-4, atol=1e-6 * np.abs(fd).max())
        gv = jax.grad(f)(vol, P)
        d = jnp.asarray(np.random.default_rng(3).normal(size=vol.shape))
        np.testing.assert_allclose(
            float(jnp.sum(gv * d)), float((f(vol + 1e-3 * d, P) - f(vol - 1e-3 * d, P)) / 2e-3), rtol=1e-9
        )


def test_planes_vmap_equals_loop():
    vol = jnp.asarray(_smooth_blob_volume(), dtype=jnp.float32)
    g = G.CArmGeometry(sdd_mm=300, sid_mm=150, height=5, width=6, pixel_size_mm=2.0)
    Ps = jnp.stack([G.carm(a, b, geometry=g) for a, b in [(0, 0), (50, 5), (-40, 60)]])  # 3 dominant axes
    f = lambda P: project(vol, AFFINE, P, 5, 6, step_mm="planes")
    batched = jax.vmap(f)(Ps)
    for i, P in enumerate(Ps):
        assert_projection_close(batched[i], vol, AFFINE, P, 5, 6, "planes", what=f"vmap, pose {i}")
        assert_projection_close(f(P), vol, AFFINE, P, 5, 6, "planes", what=f"loop, pose {i}")
    # Same field as the uniform march, to quadrature accuracy.
    ref = jax.vmap(lambda P: project(vol, AFFINE, P, 5, 6, step_mm=0.05))(Ps)
    np.testing.assert_allclose(
        np.asarray(jax.vmap(f)(Ps)), np.asarray(ref), rtol=0.02, atol=0.02 * float(ref.max())
    )


def test_bad_step_string():
    with pytest.raises(GeometryError, match="planes"):
        project(
            np.ones((1, 4, 4, 4), np.float32),
            np.eye(4),
            G.carm(0, 0, geometry=G.CArmGeometry(height=4, width=4)),
            4,
            4,
            step_mm="fast",
        )
