"""Exact ray path lengths through triangle meshes and integrals over their inside (jaxdrr.ops.mesh_project).

References are independent of the projector: every test mesh is convex or a union of convex pieces
(the torus), and a convex polyhedron's chord is computed in NumPy float64 by clipping the ray
against its face planes (entry = max over front-facing planes, exit = min over back-facing ones).
Pixel rays of the references are built from P with NumPy (pixel (r, c) at image point (x=c, y=r)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from jaxdrr.errors import GeometryError, MeshError
from jaxdrr.geometry.projection import intrinsic_matrix
from jaxdrr.geometry.rigid import RigidTransform, object_projection
from jaxdrr.mesh import TriangleMesh
from jaxdrr.ops import mesh_inside_integrals, mesh_path_lengths, project

U32 = 2.0**-24
H, W = 36, 40  # non-square: catches row/column mix-ups


def camera(rotvec=(0.3, -0.4, 0.2), pixel_mm=2.5, sod=600.0, sdd=1000.0, height=H, width=W):
    """P looking at the origin from distance ``sod``, rotated by ``rotvec`` (NumPy float64)."""
    K = np.asarray(intrinsic_matrix(sdd, pixel_mm, height, width), np.float64)
    R = Rotation.from_rotvec(rotvec).as_matrix()
    return K @ np.concatenate([R, np.array([[0.0], [0.0], [sod]])], axis=1)


def reference_rays(P, height, width):
    M = np.asarray(P, np.float64)[:, :3]
    source = -np.linalg.solve(M, np.asarray(P, np.float64)[:, 3])
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    points = np.stack([cols, rows, np.ones_like(rows)], axis=-1).reshape(-1, 3).astype(np.float64)
    d = np.linalg.solve(M, points.T).T
    return source, d / np.linalg.norm(d, axis=1, keepdims=True)


def face_planes(triangles):
    """Outward unit normals [F, 3] and offsets [F] (n . x <= c inside) of a convex mesh's faces."""
    tri = np.asarray(triangles, np.float64)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return n, np.einsum("fi,fi->f", n, tri[:, 0])


def convex_chord(source, directions, normals, offsets):
    """[R, 2] (t_in, t_out) of rays against the convex set {n . x <= c}, t >= 0 (t_in > t_out: miss)."""
    denom = directions @ normals.T  # [R, F]
    num = offsets[None, :] - source @ normals.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / denom
    t_in = np.max(np.where(denom < 0, t, -np.inf), axis=1)
    t_out = np.min(np.where(denom > 0, t, np.inf), axis=1)
    parallel_outside = np.any((denom == 0) & (num < 0), axis=1)
    t_in = np.maximum(t_in, 0.0)
    t_out = np.where(parallel_outside, -1.0, t_out)
    return np.stack([t_in, t_out], axis=1)


def chord_length(span):
    return np.maximum(span[:, 1] - span[:, 0], 0.0)


def torus(major=14.0, minor=5.0, n_major=20, n_minor=10):
    """A polygonal torus (vertices, faces) and its convex pieces (one per major step)."""
    theta = 2 * np.pi * np.arange(n_major) / n_major
    phi = 2 * np.pi * np.arange(n_minor) / n_minor
    rho = major + minor * np.cos(phi)
    rings = np.stack(
        [
            rho[None, :] * np.cos(theta)[:, None],
            rho[None, :] * np.sin(theta)[:, None],
            np.broadcast_to(minor * np.sin(phi), (n_major, n_minor)),
        ],
        axis=-1,
    )  # [n_major, n_minor, 3]
    index = np.arange(n_major * n_minor).reshape(n_major, n_minor)
    faces = []
    for i in range(n_major):
        for j in range(n_minor):
            a, b = index[i, j], index[(i + 1) % n_major, j]
            c, d = index[(i + 1) % n_major, (j + 1) % n_minor], index[i, (j + 1) % n_minor]
            faces += [[a, b, c], [a, c, d]]
    pieces = []
    for i in range(n_major):
        hull = ConvexHull(np.concatenate([rings[i], rings[(i + 1) % n_major]]))
        pieces.append((hull.equations[:, :3], -hull.equations[:, 3]))
    return rings.reshape(-1, 3), np.array(faces), pieces


def shapes():
    """name -> (TriangleMesh, pose, convex pieces or None (the mesh itself is convex))."""
    box = trimesh.creation.box(extents=(20.0, 30.0, 40.0))
    prism = trimesh.creation.cylinder(radius=8.0, height=40.0, sections=24)
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=12.0)
    tv, tf, pieces = torus()
    pose = RigidTransform.create(rotation=(0.2, 0.5, -0.3), translation=(3.0, -2.0, 5.0))
    return {
        "box": (TriangleMesh.create(box.vertices, box.faces, name="box"), pose, None),
        "prism": (TriangleMesh.create(prism.vertices, prism.faces, name="prism"), pose, None),
        "icosphere": (TriangleMesh.create(sphere.vertices, sphere.faces, name="icosphere"), pose, None),
        "torus": (TriangleMesh.create(tv, tf, name="torus"), pose, pieces),
    }


def reference_lengths(P, triangles, pieces, pose, height=H, width=W):
    source, d = reference_rays(P, height, width)
    if pieces is None:
        return chord_length(convex_chord(source, d, *face_planes(triangles))).reshape(height, width)
    T = np.asarray(pose.matrix(), np.float64)
    total = np.zeros(len(d))
    for normals, offsets in pieces:  # pieces are in the object frame: move them to the world
        n_world = normals @ T[:3, :3].T
        total += chord_length(convex_chord(source, d, n_world, offsets + n_world @ T[:3, 3]))
    return total.reshape(height, width)


# ---- Exact chords ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["box", "prism", "icosphere", "torus"])
def test_chords_match_exact_polyhedron_float64(x64, name):
    mesh, pose, pieces = shapes()[name]
    mesh = TriangleMesh(jnp.asarray(mesh.vertices, jnp.float64), mesh.faces, mesh.name)
    pose = RigidTransform.create(pose.rotation, pose.translation, dtype=jnp.float64)
    P = camera()
    tri = mesh.triangles(pose)
    L = np.asarray(mesh_path_lengths(tri, jnp.asarray(P), H, W))
    ref = reference_lengths(P, np.asarray(tri), pieces, pose)
    assert np.count_nonzero(ref > 0) > 150  # the mesh covers a good part of the detector
    diameter = 2 * mesh.bounding_radius
    # float64: each hit depth is a convex combination of corner depths, a few dozen roundings of
    # values below 1e3: errors ~1e-13 mm; 1e-9 x the diameter leaves a wide margin.
    np.testing.assert_allclose(L, ref, rtol=0, atol=1e-9 * diameter)


def test_rays_through_shared_vertices_and_edges_count_once(x64):
    """Looking down the prism's axis: the central ray hits both caps' centre vertex (where all fan
    triangles meet) exactly, and the central row and column run along fan edges."""
    prism = trimesh.creation.cylinder(radius=8.0, height=40.0, sections=24)
    mesh = TriangleMesh.create(prism.vertices, prism.faces, dtype=jnp.float64)
    n = 41  # odd: pixel (20, 20) is the principal point
    P = camera(rotvec=(0.0, 0.0, 0.0), pixel_mm=1.0, height=n, width=n)
    tri = mesh.triangles()
    L = np.asarray(mesh_path_lengths(tri, jnp.asarray(P), n, n))
    ref = reference_lengths(P, np.asarray(tri), None, None, n, n)
    assert L[20, 20] == pytest.approx(40.0, abs=1e-9)
    np.testing.assert_allclose(L, ref, rtol=0, atol=1e-9 * 40.0)


def test_float32_within_rounding_bound(x64):
    mesh, pose, _ = shapes()["box"]
    P = camera()
    tri32 = mesh.triangles(RigidTransform.create(pose.rotation, pose.translation, dtype=jnp.float32))
    tri32 = jnp.asarray(tri32, jnp.float32)
    L32 = np.asarray(mesh_path_lengths(tri32, jnp.asarray(P, jnp.float32), H, W), np.float64)
    tri = np.asarray(tri32, np.float64)  # the same polyhedron, exactly
    source, d = reference_rays(P, H, W)
    planes = face_planes(tri)
    ref = chord_length(convex_chord(source, d, *planes)).reshape(H, W)
    # Bound: (1) each hit depth is a convex combination of corner depths measured from the vertex
    # centroid; the corners (|x| <= X) and their depths take ~12 roundings, the combination and the
    # conversion to mm ~8: per hit <= gamma(32) * 2X, two hits per ray (convex). (2) Float32 pixel
    # positions in ray space are off by <= delta = gamma(16) * (W + H) pixels, so a ray may be
    # classified as its neighbour at that distance: add the float64 variation of the chord within
    # 4 * delta (covers silhouettes and face switches).
    X = float(np.max(np.abs(tri)))
    gamma = lambda n: n * U32 / (1 - n * U32)  # noqa: E731
    delta = 4 * gamma(16) * (W + H)
    K_inv = np.linalg.inv(P[:, :3])
    variation = np.zeros(H * W)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    for dx, dy in ((delta, 0), (-delta, 0), (0, delta), (0, -delta)):
        pts = np.stack([cols + dx, rows + dy, np.ones_like(rows)], axis=-1).reshape(-1, 3)
        dd = pts @ K_inv.T
        dd /= np.linalg.norm(dd, axis=1, keepdims=True)
        variation = np.maximum(
            variation, np.abs(chord_length(convex_chord(source, dd, *planes)) - ref.ravel())
        )
    bound = 2 * gamma(32) * 2 * X + variation.reshape(H, W)
    err = np.abs(L32 - ref)
    assert np.all(err <= bound), float(np.max(err - bound))
    assert float(np.max(ref)) > 30.0


def test_voxelised_mesh_converges_to_mesh_answer():
    """A fine voxelisation of the posed box, rendered by ops.project, approaches the mesh chords."""
    mesh, pose, _ = shapes()["box"]
    P = jnp.asarray(camera(), jnp.float32)
    L = np.asarray(mesh_path_lengths(mesh.triangles(pose), P, H, W))
    T_inv = np.linalg.inv(np.asarray(pose.matrix(), np.float64))
    half = np.array([10.0, 15.0, 20.0])
    errors = []
    for spacing in (2.0, 1.0, 0.5):
        n = int(round(70 / spacing))
        centres = (np.arange(n) - (n - 1) / 2) * spacing
        grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
        local = grid @ T_inv[:3, :3].T + T_inv[:3, 3]
        inside = np.all(np.abs(local) <= half, axis=1).reshape(n, n, n).astype(np.float32)
        affine = np.diag([spacing, spacing, spacing, 1.0])
        affine[:3, 3] = centres[0]
        L_vox = np.asarray(project(inside[None], affine, P, H, W, step_mm=spacing / 2))[..., 0]
        errors.append(float(np.mean(np.abs(L_vox - L))))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.6 * errors[0], errors


# ---- Culling --------------------------------------------------------------------------------


@pytest.mark.parametrize("subdivisions", [None, 2])
def test_culled_equals_dense_and_ignores_capacity(x64, subdivisions):
    """The torus (triangles of several pixels: the tile pass) and a fine icosphere (sub-pixel
    triangles: mostly the window pass of small triangles) against every ray x every triangle."""
    if subdivisions is None:
        mesh, pose, _ = shapes()["torus"]
    else:
        sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=12.0)
        mesh, pose = (
            TriangleMesh.create(sphere.vertices, sphere.faces),
            RigidTransform.create(translation=(9, 0, 0)),
        )
    tri = jnp.asarray(mesh.triangles(pose), jnp.float64)
    P = jnp.asarray(camera(pixel_mm=1.2))  # the mesh covers part of the detector only
    dense = np.asarray(mesh_path_lengths(tri, P, H, W, cull=False))
    culled = np.asarray(mesh_path_lengths(tri, P, H, W))  # 36 x 40: partial tiles at two edges
    capped = np.asarray(mesh_path_lengths(tri, P, H, W, max_tiles=1))
    assert np.count_nonzero(dense) > 50 and np.count_nonzero(dense == 0) > 50
    # Same hits, summed in another order: float64 rounding of ~1e2 mm sums.
    np.testing.assert_allclose(culled, dense, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(capped, culled)


def test_culling_of_a_long_wire_reaching_far_off_the_detector():
    """A 250 mm wire whose base projects far outside the detector: the culling must not distort the
    projected triangles (corners clipped one by one once dropped faces from tiles they hit, leaving a
    partner's hit unpaired: errors of the whole ray depth, ~700 mm)."""
    from jaxdrr.geometry import CArmGeometry, carm
    from jaxdrr.instruments import kwire

    wire = kwire(diameter_mm=2.5, length_mm=250.0, tip="trocar")
    tip = np.array([-78.0, 18.0, -18.0])
    axis = tip - np.array([-20.0, 58.0, -58.0])
    axis /= np.linalg.norm(axis)
    # Rotate +z (the wire's axis) onto ``axis``; put the tip at ``tip - k axis`` for a few advances.
    rotvec = np.cross([0.0, 0.0, 1.0], axis)
    rotvec *= np.arccos(axis[2]) / np.linalg.norm(rotvec)
    P = carm(
        0.0, 0.0, isocenter=tip - 25.0 * axis, geometry=CArmGeometry(height=128, width=128, pixel_size_mm=1.6)
    )
    R = Rotation.from_rotvec(rotvec).as_matrix()
    for advance in (0.0, 17.0, 33.0):
        translation = tip - advance * axis - R @ np.array([0.0, 0.0, 250.0])
        triangles = wire.mesh.triangles(RigidTransform.create(rotvec, translation))
        culled = np.asarray(mesh_path_lengths(triangles, P, 128, 128))
        dense = np.asarray(mesh_path_lengths(triangles, P, 128, 128, cull=False))
        # Same hits, same sums: equal up to the float32 rounding of a few depth terms (~1e3 mm x eps x 8).
        np.testing.assert_allclose(culled, dense, rtol=0, atol=1e3 * 1.2e-7 * 8)
        assert culled.max() <= 2.5 * 1.01 / np.sin(np.deg2rad(10)) and culled.min() >= -1e-3


def test_mesh_off_detector_and_behind_source_give_zeros():
    mesh, _, _ = shapes()["box"]
    P = jnp.asarray(camera(), jnp.float32)
    aside = RigidTransform.create(translation=(5000.0, 0.0, 0.0))
    source = np.asarray(-np.linalg.solve(np.asarray(P[:, :3], np.float64), np.asarray(P[:, 3], np.float64)))
    behind = RigidTransform.create(translation=tuple(2.0 * source))  # mirror of the origin through the source
    for pose in (aside, behind):
        assert np.all(np.asarray(mesh_path_lengths(mesh.triangles(pose), P, H, W)) == 0.0)


def test_mesh_straddling_the_source_plane(x64):
    """A long bar passing beside the source (source outside): only hits in front count."""
    bar = trimesh.creation.box(extents=(10.0, 10.0, 1400.0))
    mesh = TriangleMesh.create(bar.vertices, bar.faces, dtype=jnp.float64)
    P = camera(rotvec=(0.0, 0.0, 0.0))
    pose = RigidTransform.create(translation=(20.0, 0.0, -300.0), dtype=jnp.float64)  # z in [-1000, 400]
    tri = mesh.triangles(pose)
    L = np.asarray(mesh_path_lengths(tri, jnp.asarray(P), H, W))
    ref = reference_lengths(P, np.asarray(tri), None, None)
    assert np.count_nonzero(ref) > 10
    np.testing.assert_allclose(L, ref, rtol=0, atol=1e-9 * 1400)


# ---- Transformations: grad, vmap, jit -------------------------------------------------------


def _weights():
    return jnp.asarray(np.random.default_rng(3).uniform(0.5, 1.5, (H, W)))


def test_pose_and_P_gradients_match_finite_differences(x64):
    mesh, _, _ = shapes()["icosphere"]
    mesh = TriangleMesh(jnp.asarray(mesh.vertices, jnp.float64), mesh.faces, mesh.name)
    P = jnp.asarray(camera(pixel_mm=1.5))
    weights = _weights()

    def loss(rotation, translation, P):
        pose = RigidTransform(rotation, translation)
        return jnp.sum(weights * mesh_path_lengths(mesh.triangles(pose), P, H, W))

    rot = jnp.asarray([0.1, -0.2, 0.3])
    trans = jnp.asarray([1.0, 2.0, -1.5])
    g_rot, g_trans, g_P = jax.grad(loss, argnums=(0, 1, 2))(rot, trans, P)
    # Directional central differences along random directions of (rotation, translation, P), each
    # part scaled to its magnitude. The loss is piecewise smooth (a pixel centre crossing a
    # silhouette or an edge changes its slope); steps of 1e-6 make a crossing inside the stencil
    # unlikely, and truncation (~h^2) and rounding (~1e-16 |loss| / h ~ 1e-7) stay far below 1e-5.
    h = 1e-6
    rng = np.random.default_rng(4)
    for _ in range(3):
        d_rot, d_trans = jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=3))
        d_P = jnp.asarray(rng.normal(size=(3, 4))) * jnp.maximum(1.0, jnp.abs(P))
        plus = loss(rot + h * d_rot, trans + h * d_trans, P + h * d_P)
        minus = loss(rot - h * d_rot, trans - h * d_trans, P - h * d_P)
        fd = (plus - minus) / (2 * h)
        parts = (g_rot * d_rot, g_trans * d_trans, g_P * d_P)
        exact = sum(float(jnp.sum(x)) for x in parts)
        scale = sum(float(jnp.sum(jnp.abs(x))) for x in parts)
        assert abs(exact - float(fd)) <= 1e-5 * scale, (exact, float(fd))
    assert np.max(np.abs(np.asarray(g_trans))) > 1.0  # not a vacuous comparison


def test_vmap_over_poses_equals_loop_and_jit_equals_eager():
    mesh, _, _ = shapes()["prism"]
    P = jnp.asarray(camera(), jnp.float32)
    rotations = jnp.asarray([[0.1, 0.2, 0.0], [1.2, 0.0, -0.4]], jnp.float32)
    translations = jnp.asarray([[0.0, 0.0, 0.0], [-4.0, 1.0, 8.0]], jnp.float32)

    def render(rotation, translation):
        return mesh_path_lengths(mesh.triangles(RigidTransform(rotation, translation)), P, H, W)

    batched = np.asarray(jax.jit(jax.vmap(render))(rotations, translations))  # vmap under jit
    looped = np.stack([np.asarray(render(r, t)) for r, t in zip(rotations, translations)])  # eager
    # Same operations on the same float32 inputs; vmap and jit may fuse differently: a hit depth
    # (|t - t_ref| <= 30 mm) may round differently in ~20 operations, two hits per ray.
    bound = 2 * 20 * U32 * 60.0
    np.testing.assert_allclose(batched, looped, rtol=0, atol=bound)
    assert np.count_nonzero(looped) > 100


def test_object_frame_triangles_with_posed_projection(x64):
    """Rendering the posed mesh in P equals rendering the unposed mesh in P @ T."""
    mesh, pose, _ = shapes()["box"]
    mesh = TriangleMesh(jnp.asarray(mesh.vertices, jnp.float64), mesh.faces, mesh.name)
    pose = RigidTransform.create(pose.rotation, pose.translation, dtype=jnp.float64)
    P = jnp.asarray(camera())
    a = mesh_path_lengths(mesh.triangles(pose), P, H, W)
    b = mesh_path_lengths(mesh.triangles(), object_projection(P, pose), H, W)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-9 * 60)


# ---- Integrals over the inside ---------------------------------------------------------------


def _volume(shape, spacing, values):
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing  # centred on the origin
    return jnp.asarray(values), affine


def test_inside_integrals_uniform_and_linear_fields_exact(x64):
    mesh, pose, _ = shapes()["box"]
    mesh = TriangleMesh(jnp.asarray(mesh.vertices, jnp.float64), mesh.faces, mesh.name)
    pose = RigidTransform.create(pose.rotation, pose.translation, dtype=jnp.float64)
    tri = mesh.triangles(pose)
    P = camera()
    shape, spacing = (40, 40, 40), 2.0  # interior (voxel centres) +-39 mm: holds the box (radius 27 + 6)
    channels, affine = _volume(shape, spacing, np.zeros((2,) + shape))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    gradient = np.array([0.01, -0.02, 0.015])
    uniform = np.full(shape, 0.7)
    linear = 1.0 + world @ gradient  # trilinear interpolation reproduces a linear field exactly
    channels = jnp.asarray(np.stack([uniform, linear]))
    radius = mesh.bounding_radius
    out = np.asarray(
        mesh_inside_integrals(
            channels, affine, tri, jnp.asarray(P), H, W, step_mm=1.0, depth_range_mm=2 * radius
        )
    )
    source, d = reference_rays(P, H, W)
    span = convex_chord(source, d, *face_planes(np.asarray(tri)))
    length = chord_length(span)
    hit = length > 0
    t0, t1 = span[:, 0], np.where(hit, span[:, 1], span[:, 0])
    # integral of 1 + g . (o + t d) over [t0, t1]
    exact_linear = (1.0 + gradient @ source) * (t1 - t0) + (d @ gradient) * (t1**2 - t0**2) / 2
    exact_linear = np.where(hit, exact_linear, 0.0)
    # The trapezoid rule and the interpolation of F are exact for a linear field; the rest is
    # float64 rounding of sums of ~100 terms of magnitude <= 60.
    np.testing.assert_allclose(out[..., 0], 0.7 * length.reshape(H, W), rtol=0, atol=1e-9 * 60)
    np.testing.assert_allclose(out[..., 1], exact_linear.reshape(H, W), rtol=0, atol=1e-9 * 60)


def test_inside_integrals_mesh_partly_outside_volume(x64):
    """The box sticks out of the volume through its +x face: the field fades to zero there."""
    spacing, shape = 2.0, (20, 20, 20)  # physical extent +-20 mm; fade slab x in [19, 21]
    channels, affine = _volume(shape, spacing, np.full((1,) + shape, 1.0))
    box = trimesh.creation.box(extents=(30.0, 16.0, 16.0))
    mesh = TriangleMesh.create(box.vertices, box.faces, dtype=jnp.float64)
    tri = mesh.triangles(RigidTransform.create(translation=(20.0, 0.0, 0.0), dtype=jnp.float64))
    P = camera(rotvec=(0.0, -1.42, 0.1), pixel_mm=1.0)  # looking along +x, through the fade slab
    step = 0.25
    out = np.asarray(
        mesh_inside_integrals(channels, affine, tri, jnp.asarray(P), H, W, step_mm=step, depth_range_mm=40.0)
    )[..., 0].ravel()
    source, d = reference_rays(P, H, W)
    planes = face_planes(np.asarray(tri))
    span = convex_chord(source, d, *planes)
    # Reference: the uniform field integrates to the chord inside the physical box x <= 20 (the
    # linear fade from the last voxel centre to the zero padding is symmetric about the face) as
    # long as the ray crosses the whole fade slab inside the mesh.
    clipped = convex_chord(source, d, np.vstack([planes[0], [1.0, 0, 0]]), np.append(planes[1], 20.0))
    x_in = source[0] + span[:, 0] * d[:, 0]
    x_out = source[0] + span[:, 1] * d[:, 0]
    clean = (chord_length(span) > 0) & ~((19 <= x_in) & (x_in <= 21)) & ~((19 <= x_out) & (x_out <= 21))
    assert np.count_nonzero(clean) > 100
    # Error: the trapezoid rule is exact except at the two kinks of the fade (slope change
    # |d_x| / spacing each): <= h^2 |jump| / 8 per kink, for the sum and for F at a hit.
    bound = 4 * step**2 * (1.0 / spacing) / 8 + 1e-9
    np.testing.assert_allclose(out[clean], chord_length(clipped)[clean], rtol=0, atol=bound)
    assert np.max(np.abs(out[clean] - chord_length(span)[clean])) > 1.0  # the volume does clip


def test_inside_integrals_pose_gradient(x64):
    """Gradient of the computed (discrete) integrals: a random field, so the trapezoid rule is not
    exact and the sample grid's ends (the first and last hits) matter."""
    mesh, _, _ = shapes()["icosphere"]
    mesh = TriangleMesh(jnp.asarray(mesh.vertices, jnp.float64), mesh.faces, mesh.name)
    shape = (24, 24, 24)
    channels, affine = _volume(shape, 2.0, np.zeros((1,) + shape))
    channels = jnp.asarray(np.random.default_rng(2).uniform(0.5, 1.5, (1,) + shape))
    P = jnp.asarray(camera(pixel_mm=1.5))
    weights = _weights()

    def loss(translation, volume):
        tri = mesh.triangles(RigidTransform(jnp.asarray([0.1, 0.2, 0.0]), translation))
        out = mesh_inside_integrals(volume, affine, tri, P, H, W, step_mm=1.0, depth_range_mm=26.0)
        return jnp.sum(weights * out[..., 0])

    trans = jnp.asarray([1.0, -2.0, 0.5])
    g_trans, g_volume = jax.grad(loss, argnums=(0, 1))(trans, channels)
    h = 1e-6
    d_trans = jnp.asarray([0.6, -0.3, 0.74])
    fd = (loss(trans + h * d_trans, channels) - loss(trans - h * d_trans, channels)) / (2 * h)
    # Truncation and rounding of the difference are ~1e-9 relative; the trilinear field has kinks
    # on voxel faces, and a few of the ~4e4 samples may cross one inside the stencil (each moves
    # the difference by ~1 / 4e4 of one sample's slope change): 1e-4 relative covers that. Dropping
    # the derivative of the grid's ends (a planted bug) made this test fail by 1.4%.
    exact = float(jnp.sum(g_trans * d_trans))
    assert exact == pytest.approx(float(fd), rel=1e-4), (exact, float(fd))
    assert abs(exact) > 1.0
    # The result is linear in the volume: its gradient is exact, check one direction.
    direction = jnp.asarray(np.random.default_rng(1).normal(size=channels.shape))
    fd_v = (loss(trans, channels + h * direction) - loss(trans, channels - h * direction)) / (2 * h)
    assert float(jnp.sum(g_volume * direction)) == pytest.approx(float(fd_v), rel=1e-6)


# ---- Errors ---------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    mesh, _, _ = shapes()["box"]
    tri = mesh.triangles()
    P = jnp.asarray(camera(), jnp.float32)
    with pytest.raises(MeshError, match="shape"):
        mesh_path_lengths(tri[:, :2], P, H, W)
    with pytest.raises(MeshError, match="non-finite"):
        mesh_path_lengths(tri.at[0, 0, 0].set(jnp.nan), P, H, W)
    with pytest.raises(GeometryError, match="tile"):
        mesh_path_lengths(tri, P, H, W, tile=0)
    with pytest.raises(GeometryError):
        mesh_path_lengths(tri, jnp.zeros((3, 4)), H, W)
    channels, affine = _volume((4, 4, 4), 1.0, np.ones((1, 4, 4, 4), np.float32))
    with pytest.raises(GeometryError, match="positive"):
        mesh_inside_integrals(channels, affine, tri, P, H, W, step_mm=0.0, depth_range_mm=10.0)


def test_unpadded_sampling_equals_sampling_the_padded_copy():
    # mesh_inside_integrals gathers from the unpadded volume; the field must be ops.project's
    # (trilinear over the zero-padded volume), including the ramp to zero outside it. Both are the
    # same eight products of the same numbers: equal to the last bit.
    from jaxdrr.ops import trilinear
    from jaxdrr.ops.march import pad_channels_last

    rng = np.random.default_rng(0)
    volume = jnp.asarray(rng.normal(size=(3, 5, 6, 7)), jnp.float32)
    positions = jnp.asarray(rng.uniform(-1.5, 9.5, size=(4000, 3)), jnp.float32)
    expected = trilinear.sample(pad_channels_last(volume), (7, 8, 9), positions)
    np.testing.assert_array_equal(trilinear.sample_unpadded(volume, positions), expected)
