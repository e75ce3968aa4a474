"""Tests of jaxdrr.phantoms: the painted pelvis phantom, its voxelisation and exact line integrals."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdrr import phantoms as ph


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def random_rays_through(rng, n, radius, center=(0.0, 0.0, 0.0)):
    """Random lines passing within ``radius`` of ``center``: origins far out, random directions."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    offset = rng.uniform(-radius, radius, size=(n, 3))
    origin = center + offset - 400.0 * direction
    return origin, direction * rng.uniform(0.5, 3.0, size=(n, 1))  # non-unit on purpose


def numeric_integral(field_fn, origin, direction, t_lo=-800.0, t_hi=800.0, dt=0.01):
    """Midpoint-rule integral of field_fn(points) along each ray (unit-normalised direction)."""
    direction = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    t = np.arange(t_lo, t_hi, dt) + dt / 2
    totals = []
    for o, d in zip(origin, direction):
        points = o + t[:, None] * d
        totals.append(np.sum(field_fn(points)) * dt)
    return np.array(totals)


# --------------------------------------------------------------------------------------------------
# Chord lengths
# --------------------------------------------------------------------------------------------------


def test_sphere_chord_matches_closed_form():
    radius = 10.0
    impact = np.array([0.0, 3.0, 9.999, 10.0, 10.5])
    origin = np.stack([impact, np.full_like(impact, -50.0), np.zeros_like(impact)], axis=-1)
    direction = np.array([0.0, 2.0, 0.0])  # not unit: lengths are in mm regardless
    lengths = ph.ellipsoid_chord_length(np.zeros(3), (radius,) * 3, None, origin, direction)
    expected = 2 * np.sqrt(np.maximum(radius**2 - impact**2, 0))
    np.testing.assert_allclose(lengths, expected, atol=1e-9)
    assert lengths[3] == 0.0  # tangent
    assert lengths[4] == 0.0  # miss


def test_ellipsoid_chord_matches_numeric_integration():
    rng = np.random.default_rng(0)
    center, semi_axes, rotation = (
        np.array([5.0, -3.0, 8.0]),
        np.array([30.0, 12.0, 20.0]),
        random_rotation(rng),
    )
    shape = ph.ellipsoid(center, semi_axes, 1.0, rotation)
    origin, direction = random_rays_through(rng, 25, 12.0, center)
    exact = ph.ellipsoid_chord_length(center, semi_axes, rotation, origin, direction)
    numeric = numeric_integral(lambda p: shape.contains(p).astype(float), origin, direction)
    assert np.count_nonzero(exact) > 10  # most rays hit
    np.testing.assert_allclose(exact, numeric, atol=0.02)


def test_cylinder_chord_matches_numeric_integration():
    rng = np.random.default_rng(1)
    center, semi_axes, rotation = (
        np.array([-4.0, 6.0, 1.0]),
        np.array([15.0, 9.0, 25.0]),
        random_rotation(rng),
    )
    shape = ph.Shape("cylinder", center, semi_axes, rotation, 1.0)
    origin, direction = random_rays_through(rng, 25, 12.0, center)
    exact = ph.cylinder_chord_length(center, semi_axes, rotation, origin, direction)
    numeric = numeric_integral(lambda p: shape.contains(p).astype(float), origin, direction)
    assert np.count_nonzero(exact) > 10
    np.testing.assert_allclose(exact, numeric, atol=0.02)


def test_cylinder_special_directions():
    semi_axes = (10.0, 5.0, 20.0)
    # Along the axis: the full length, inside the cross-section; a miss outside it.
    along = ph.cylinder_chord_length(
        np.zeros(3), semi_axes, None, [[3.0, 2.0, -100.0], [11.0, 0.0, -100.0]], [0.0, 0.0, 1.0]
    )
    np.testing.assert_allclose(along, [40.0, 0.0])
    # Parallel to the caps: a lateral chord inside the slab, nothing outside it.
    across = ph.cylinder_chord_length(
        np.zeros(3),
        semi_axes,
        None,
        [[-50.0, 0.0, 19.0], [-50.0, 0.0, 20.5], [-50.0, 3.0, 0.0]],
        [1.0, 0.0, 0.0],
    )
    np.testing.assert_allclose(across, [20.0, 0.0, 2 * 10.0 * np.sqrt(1 - (3.0 / 5.0) ** 2)])
    # Tangent to the lateral surface.
    tangent = ph.cylinder_chord_length(np.zeros(3), semi_axes, None, [-50.0, 5.0, 0.0], [1, 0, 0])
    assert tangent == 0.0


def test_box_chord_length():
    lo, hi = np.array([-1.0, -2.0, -3.0]), np.array([1.0, 2.0, 3.0])
    lengths = ph.box_chord_length(
        lo,
        hi,
        [[0, 0, -10], [0, 0, 0], [5, 5, 5], [1.0, 0, -10]],
        [[0, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 1]],
    )
    np.testing.assert_allclose(lengths, [6.0, 2 * np.sqrt(2), 0.0, 6.0])


# --------------------------------------------------------------------------------------------------
# Phantom line integrals
# --------------------------------------------------------------------------------------------------


def test_phantom_line_integral_matches_fine_sampling():
    shapes = ph.pelvis_shapes(screw=True)
    rng = np.random.default_rng(2)
    origin, direction = random_rays_through(rng, 12, 60.0)
    exact = ph.phantom_line_integral(shapes, origin, direction)
    numeric = numeric_integral(
        lambda p: ph.paint_points(shapes, p) + 1000.0, origin, direction, t_lo=100.0, t_hi=700.0, dt=0.02
    )
    assert exact.min() > 1e4  # rays cross the body
    np.testing.assert_allclose(exact, numeric, rtol=2e-4)


def test_phantom_line_integral_with_value_fn_range_and_box():
    shapes = ph.pelvis_shapes(screw=False)
    rng = np.random.default_rng(3)
    origin, direction = random_rays_through(rng, 6, 60.0)

    def density(hu):  # a nonlinear pointwise map: exactness needs only a piecewise constant field
        return np.where(hu < 0, (hu + 1000.0) / 1000.0, 1.0 + hu / 1500.0)

    exact = ph.phantom_line_integral(shapes, origin, direction, density)
    numeric = numeric_integral(
        lambda p: density(ph.paint_points(shapes, p)), origin, direction, t_lo=100.0, t_hi=700.0, dt=0.02
    )
    np.testing.assert_allclose(exact, numeric, rtol=2e-4)

    # A range along the ray (t measured in mm from origin along the unit direction).
    exact_part = ph.phantom_line_integral(shapes, origin, direction, density, t_min=380.0, t_max=420.0)
    numeric_part = numeric_integral(
        lambda p: density(ph.paint_points(shapes, p)), origin, direction, t_lo=380.0, t_hi=420.0, dt=0.01
    )
    np.testing.assert_allclose(exact_part, numeric_part, rtol=1e-3, atol=0.05)

    # Non-zero background needs a bounded range; a box bounds it.
    with pytest.raises(ValueError, match="unbounded"):
        ph.phantom_line_integral([], origin, direction, lambda hu: hu * 0 + 1.0)
    box = (np.array([-10.0, -20.0, -30.0]), np.array([10.0, 20.0, 30.0]))
    ones = ph.phantom_line_integral([], origin, direction, lambda hu: hu * 0 + 1.0, box=box)
    np.testing.assert_allclose(ones, ph.box_chord_length(*box, origin, direction))


def test_painting_order_replace_and_add():
    big = ph.ellipsoid((0, 0, 0), (20, 20, 20), 100.0)
    small = ph.ellipsoid((0, 0, 0), (5, 5, 5), 1000.0)
    bump = ph.ellipsoid((0, 0, 0), (10, 10, 10), 50.0, mode="add")
    points = np.array([[0.0, 0, 0], [7.0, 0, 0], [15.0, 0, 0], [30.0, 0, 0]])
    np.testing.assert_allclose(
        ph.paint_points([big, small, bump], points, background=0, clip=None), [1050.0, 150.0, 100.0, 0.0]
    )
    # Replace after add wipes the addition inside its support.
    np.testing.assert_allclose(
        ph.paint_points([big, bump, small], points, background=0, clip=None), [1000.0, 150.0, 100.0, 0.0]
    )
    ray = ph.phantom_line_integral(
        [big, small, bump], [-100.0, 0, 0], [1.0, 0, 0], lambda h: h, background=0.0, clip=None
    )
    assert ray == pytest.approx(100 * 40 + 900 * 10 + 50 * 20)
    # Clipping is part of the field: 3000 + 1000 is clipped to 3071.
    metal = ph.ellipsoid((0, 0, 0), (1, 1, 1), 3000.0)
    extra = ph.ellipsoid((0, 0, 0), (1, 1, 1), 1000.0, mode="add")
    assert ph.paint_points([metal, extra], [[0.0, 0, 0]])[0] == 3071.0


def test_add_shapes_lie_inside_trabecular_bone():
    shapes = ph.pelvis_shapes()
    rng = np.random.default_rng(4)
    for index, shape in enumerate(shapes):
        if shape.mode != "add":
            continue
        unit = rng.normal(size=(4000, 3))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        unit *= rng.uniform(0, 1, size=(4000, 1)) ** (1 / 3)
        points = shape.center + (unit * shape.semi_axes) @ shape.rotation.T
        below = np.unique(ph.paint_points(shapes[:index], points))
        assert below.size == 1 and 150 <= below[0] <= 350, (shape.name, below)


# --------------------------------------------------------------------------------------------------
# Voxelised phantom
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 24, 20), (64, 64, 48), (97, 80, 33)])
def test_phantom_shape_affine_and_hu_ranges(shape):
    volume = ph.phantom(shape)
    data = np.asarray(volume.data)
    assert volume.kind == "hu" and volume.shape == shape
    spacing = np.array([380.0, 300.0, 240.0]) / np.array(shape)
    np.testing.assert_allclose(volume.spacing, spacing)
    np.testing.assert_allclose(volume.affine[:3, :3], np.diag(spacing))
    np.testing.assert_allclose(volume.center, 0.0, atol=1e-9)
    lo, hi = volume.world_bounds()
    np.testing.assert_allclose(hi, [190.0, 150.0, 120.0])
    np.testing.assert_allclose(lo, -hi)
    assert data.min() >= -1024.0 and data.max() <= 3071.0
    assert data.min() == -1000.0  # air around the body
    assert np.isfinite(data).all()


def test_phantom_tissue_classes_present():
    volume = ph.phantom((128, 128, 96))
    data = np.asarray(volume.data)
    for hu in (-1000.0, -100.0, 40.0, 10.0, 3071.0):
        assert np.count_nonzero(data == hu) > 0, hu
    assert np.count_nonzero(data >= 1000) > 1000  # cortical bone
    assert np.count_nonzero((data >= 200) & (data <= 350)) > 1000  # trabecular bone
    assert np.count_nonzero(data == -1000.0) > np.count_nonzero(
        ph.phantom((128, 128, 96), bowel_gas=False).data == -1000.0
    )
    no_screw = np.asarray(ph.phantom((64, 64, 48), screw=False).data)
    assert 1000.0 <= no_screw.max() <= 1600.0


def test_phantom_explicit_spacing():
    volume = ph.phantom((40, 30, 20), spacing=2.0)
    np.testing.assert_allclose(volume.spacing, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(volume.world_bounds()[1], [40.0, 30.0, 20.0])


def test_phantom_is_mirror_symmetric_without_screw_and_gas():
    data = np.asarray(ph.phantom((64, 50, 40), screw=False, bowel_gas=False).data)
    np.testing.assert_allclose(data, data[::-1], atol=1e-3)
    with_screw = np.asarray(ph.phantom((64, 50, 40), screw=True, bowel_gas=False).data)
    assert np.abs(with_screw - with_screw[::-1]).max() > 1000  # the screw is on one side
    shapes = ph.pelvis_shapes(screw=False, bowel_gas=False)
    origin = np.array([[30.0, -200.0, -40.0], [70.0, -200.0, 20.0]])
    direction = np.array([[0.1, 1.0, 0.05], [-0.2, 1.0, 0.0]])
    mirror = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        ph.phantom_line_integral(shapes, origin, direction),
        ph.phantom_line_integral(shapes, origin * mirror, direction * mirror),
        rtol=1e-12,
    )


def test_voxelize_equals_brute_force_supersampling():
    shapes = ph.pelvis_shapes()
    shape, spacing = (38, 30, 24), np.array([10.0, 10.0, 10.0])
    fast = ph.voxelize(shapes, shape, spacing, supersample=3)
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    centres = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    offsets = (np.arange(3) + 0.5) / 3 - 0.5
    total = np.zeros(shape)
    for a in offsets:
        for b in offsets:
            for c in offsets:
                total += ph.paint_points(shapes, centres + np.array([a, b, c]) * spacing)
    np.testing.assert_allclose(fast, total / 27, atol=1e-3)


def test_voxel_sums_approximate_analytic_integrals():
    """Summing the voxel grid along y approximates the exact integral along the same lines."""
    shape = (96, 96, 64)
    volume = ph.phantom(shape, screw=True)
    data = np.asarray(volume.data, dtype=np.float64) + 1000.0
    spacing = volume.spacing
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    i_index, k_index = np.meshgrid(np.arange(10, 86, 5), np.arange(5, 60, 5), indexing="ij")
    voxel_sums = data[i_index, :, k_index].sum(axis=-1) * spacing[1]
    origin = np.stack([axes[0][i_index], np.full(i_index.shape, -500.0), axes[2][k_index]], axis=-1)
    exact = ph.phantom_line_integral(ph.pelvis_shapes(screw=True), origin, [0.0, 1.0, 0.0])
    relative = np.abs(voxel_sums - exact) / np.maximum(exact, 1.0)
    # Partial-volume voxels make single lines differ; on average they agree to ~1 %.
    assert np.median(relative) < 0.01
    assert np.mean(np.abs(voxel_sums - exact)) / np.mean(exact) < 0.02


def test_supersampling_smooths_edges_but_keeps_interiors():
    point = np.asarray(ph.phantom((48, 40, 32), supersample=1).data)
    smooth = np.asarray(ph.phantom((48, 40, 32), supersample=3).data)
    assert np.unique(point).size < np.unique(smooth).size
    same = point == smooth
    assert same.mean() > 0.5  # most voxels are away from any edge


def test_phantom_at_256_matches_a_coarse_voxelisation():
    """At the benchmark size (256^3, many chunks of boundary voxels; its time is measured in
    benchmarks/bench_phantom.py, not here) the body occupies the same fraction of the field of view
    as at 64^3, up to the partial-volume voxels of the coarse grid (the only voxels whose side of the
    -500 HU body threshold can change with resolution)."""
    fine = np.asarray(ph.phantom((256, 256, 256)).data)
    coarse = np.asarray(ph.phantom((64, 64, 64)).data)
    assert fine.shape == (256, 256, 256) and np.all(np.isfinite(fine))
    body_fine, body_coarse = np.mean(fine > -500.0), np.mean(coarse > -500.0)
    partial = np.mean((coarse > ph.HU_AIR + 1.0) & (coarse < -100.0))  # between air and fat: boundary
    assert abs(body_fine - body_coarse) <= partial, (body_fine, body_coarse, partial)


# --------------------------------------------------------------------------------------------------
# Simple test volumes
# --------------------------------------------------------------------------------------------------


def test_uniform_box_integral():
    volume = ph.uniform_box((10, 12, 8), (1.0, 2.0, 3.0), value=2.5)
    assert np.all(np.asarray(volume.data) == 2.5)
    lengths = ph.uniform_box_line_integral(
        volume, 2.5, [[0.0, 0, -100], [0.0, -100, 0]], [[0.0, 0, 1], [0.0, 1, 0]]
    )
    np.testing.assert_allclose(lengths, [2.5 * 24.0, 2.5 * 24.0])


def test_sphere_volume_discretisation_shrinks_with_supersampling():
    radius, spacing = 10.3, 1.0
    exact_volume = 4 / 3 * np.pi * radius**3
    errors = []
    for supersample in (1, 4):
        volume = ph.sphere_volume((32, 32, 32), spacing, radius, value=1.0, supersample=supersample)
        errors.append(abs(float(np.asarray(volume.data).sum()) * spacing**3 - exact_volume))
    assert errors[1] < errors[0]
    assert errors[1] / exact_volume < 2e-3
    # Along a voxel row through the centre the voxel sum approximates the exact chord.
    volume = ph.sphere_volume((33, 33, 33), spacing, radius, supersample=4)
    row_sum = float(np.asarray(volume.data)[16, 16, :].sum())
    exact = float(ph.sphere_line_integral([0.0, 0.0, -50.0], [0.0, 0.0, 1.0], radius))
    assert exact == pytest.approx(2 * radius)
    assert row_sum == pytest.approx(exact, abs=0.5)


def test_ellipsoid_volume_and_integral():
    rotation = ph.rotation_matrix((1, 1, 0), 30.0)
    semi_axes = (12.0, 7.0, 9.0)
    volume = ph.ellipsoid_volume(
        (40, 40, 40),
        1.0,
        semi_axes,
        rotation=rotation,
        center=(2, -1, 3),
        value=2.0,
        background=0.0,
        supersample=4,
    )
    total = float(np.asarray(volume.data).sum())
    assert total == pytest.approx(2.0 * 4 / 3 * np.pi * np.prod(semi_axes), rel=3e-3)
    value = ph.ellipsoid_line_integral(
        [2.0, -1.0, -100.0], [0, 0, 1], semi_axes, center=(2, -1, 3), rotation=rotation, value=2.0
    )
    expected = 2.0 * ph.ellipsoid_chord_length((2, -1, 3), semi_axes, rotation, [2.0, -1, -100], [0, 0, 1])
    assert value == pytest.approx(expected)


def test_shape_validation():
    with pytest.raises(ValueError, match="kind"):
        ph.Shape("cone", (0, 0, 0), (1, 1, 1), np.eye(3), 1.0)
    with pytest.raises(ValueError, match="mode"):
        ph.Shape("ellipsoid", (0, 0, 0), (1, 1, 1), np.eye(3), 1.0, mode="multiply")
    with pytest.raises(ValueError, match="semi-axes must be positive"):
        ph.ellipsoid((0, 0, 0), (1, 0, 1), 1.0)
    with pytest.raises(ValueError, match="not orthonormal"):
        ph.ellipsoid((0, 0, 0), (1, 1, 1), 1.0, rotation=np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="zero length"):
        ph.ellipsoid_chord_length((0, 0, 0), (1, 1, 1), None, (0, 0, 0), (0, 0, 0))


def test_rotation_helpers():
    for axis in ([1.0, 2.0, -0.5], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]):
        for local in (0, 1, 2):
            r = ph.rotation_from_axis(axis, local)
            np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0)
            np.testing.assert_allclose(r[:, local], np.asarray(axis) / np.linalg.norm(axis))
    np.testing.assert_allclose(ph.rotation_matrix((0, 0, 1), 90.0) @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)
    for s in ph.pelvis_shapes():
        assert np.linalg.det(s.rotation) == pytest.approx(1.0), s.name
