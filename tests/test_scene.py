"""Scenes (jaxdrr.scene): a CT plus posed mesh and volume objects, rendered spectrally.

Exactness tests run in float64, where the two sides of each comparison differ only by rounding of
the ray set-up and of the sums (relative ~1e-13 per quantity, times < 10^3 terms), so the bounds
below (1e-8 relative) are loose by orders of magnitude yet far below any modelling error (a missing
displacement, a wrong unit or pose changes results by O(1e-2) or more).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrr
from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry import carm
from jaxdrr.geometry.carm import CArmGeometry
from jaxdrr.geometry.projection import pixel_rays
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.mesh import TriangleMesh
from jaxdrr.physics import density as table_density
from jaxdrr.physics import mass_attenuation
from jaxdrr.physics.params import physics_params
from jaxdrr.render import (
    RenderConfig,
    default_params,
    image_from_line_integrals,
    line_integrals,
    make_renderer,
)
from jaxdrr.scene import (
    MeshObject,
    Scene,
    SceneError,
    VolumeObject,
    make_scene_renderer,
    object_path_lengths,
    project_landmarks,
    render_scene,
    scene_line_integrals,
    scene_params,
    with_object_materials,
)
from jaxdrr.volume import Volume

SIZE = 32
PIXEL_MM = 2.0
GEOMETRY = CArmGeometry(height=SIZE, width=SIZE, pixel_size_mm=PIXEL_MM)
REL64 = 1e-8  # float64 bound, see the module docstring


@contextlib.contextmanager
def x64():
    with jax.enable_x64(True):
        yield


def config(**kw):
    base = dict(height=SIZE, width=SIZE, backend="xla", step_mm=0.5)
    base.update(kw)
    return RenderConfig(**base)


def density_volume(shape=(14, 12, 10), spacing=2.0, seed=0, origin=None):
    """A random 3-channel (air, soft tissue, bone) density volume centred at the origin."""
    rng = np.random.default_rng(seed)
    data = np.stack(
        [
            rng.uniform(0.0, 0.0012, shape),
            rng.uniform(0.5, 1.1, shape),
            rng.uniform(0.0, 0.8, shape),
        ]
    )
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing if origin is None else origin
    return Volume.create(data, affine, kind="density", channel_names=("air", "soft_tissue", "bone"))


def view(lao=20.0, cran=-10.0, iso=(0.0, 0.0, 0.0)):
    return np.asarray(carm(lao, cran, isocenter=np.asarray(iso, float), geometry=GEOMETRY))


def moved(volume: Volume, pose: RigidTransform) -> Volume:
    T = np.asarray(pose.matrix(), np.float64)
    return Volume.create(volume.data, T @ volume.affine, kind="density", channel_names=volume.channel_names)


# --------------------------------------------------------------------------------------------------
# Volume objects and CT-less scenes
# --------------------------------------------------------------------------------------------------


def test_scene_with_ct_only_renders_like_the_renderer():
    cfg = config()
    vol = density_volume()
    P = view()
    params = scene_params(cfg, Scene.create(vol))
    image = jax.jit(make_scene_renderer(cfg))(params, Scene.create(vol), P, None)
    expected = jax.jit(make_renderer(cfg))(default_params(cfg), vol, P, None)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


def test_posed_volume_object_equals_volume_with_moved_affine():
    with x64():
        cfg = config()
        vol = density_volume()
        pose = RigidTransform.create(
            rotation=[0.2, -0.3, 0.15], translation=[6.0, -4.0, 3.0], pivot=(1.0, 2.0, 0.0)
        )
        P = view()
        scene = Scene.create(None, [VolumeObject.create(vol, pose, name="bone")])
        L, mu = scene_line_integrals(cfg, scene_params(cfg, scene), scene, P)
        expected = line_integrals(cfg, moved(vol, pose), P)
        assert L.dtype == jnp.float64
        assert float(jnp.max(expected)) > 1.0  # the object is in view
        np.testing.assert_allclose(L, expected, rtol=0, atol=REL64 * float(jnp.max(expected)))
        np.testing.assert_array_equal(mu, default_params(cfg)["mu_rho"])


def test_ct_less_scene_with_two_volume_objects_sums_them():
    with x64():
        cfg = config()
        a, b = density_volume(seed=1), density_volume(shape=(8, 8, 8), seed=2)
        pa = RigidTransform.create(translation=[-10.0, 0.0, 0.0])
        pb = RigidTransform.create(rotation=[0.0, 0.0, 0.5], translation=[12.0, 3.0, -2.0])
        scene = Scene.create(objects=[VolumeObject.create(a, pa, "a"), VolumeObject.create(b, pb, "b")])
        params = scene_params(cfg, scene)
        image = jax.jit(make_scene_renderer(cfg))(params, scene, view(), None)
        L = line_integrals(cfg, moved(a, pa), view()) + line_integrals(cfg, moved(b, pb), view())
        expected = image_from_line_integrals(cfg, params, L, None)
        assert float(jnp.max(expected)) > 0.5
        np.testing.assert_allclose(image, expected, rtol=0, atol=REL64 * float(jnp.max(expected)))


def test_volume_object_pose_vmap_equals_loop_and_grad_is_finite():
    cfg = config()
    vol = density_volume(shape=(8, 8, 8))
    scene = Scene.create(objects=[VolumeObject.create(vol, name="bone")])
    params = scene_params(cfg, scene)
    render = make_scene_renderer(cfg)
    translations = jnp.asarray([[0.0, 0.0, 0.0], [5.0, -3.0, 2.0], [-4.0, 2.0, 6.0]])
    rotations = jnp.asarray([[0.0, 0.0, 0.0], [0.1, 0.2, -0.1], [-0.3, 0.0, 0.2]])
    batched = scene.with_pose("bone", RigidTransform.create(rotations, translations))
    images = jax.jit(jax.vmap(render, in_axes=(None, batched.pose_in_axes("bone"), None, None)))(
        params, batched, view(), None
    )
    for i in range(3):
        one = scene.with_pose("bone", RigidTransform.create(rotations[i], translations[i]))
        single = jax.jit(render)(params, one, view(), None)
        # float32: vmap and a loop may fuse differently; 1e-5 of the log image's range is ~100 ulps.
        np.testing.assert_allclose(images[i], single, rtol=0, atol=1e-5 * float(jnp.max(single)) + 1e-6)
    assert not np.allclose(images[0], images[1])

    def loss(t):
        img = render(params, scene.with_pose("bone", RigidTransform.create(translation=t)), view(), None)
        return jnp.sum(img**2)

    g = jax.grad(loss)(jnp.asarray([1.0, 2.0, -1.0]))
    assert np.all(np.isfinite(g)) and np.any(g != 0)


# --------------------------------------------------------------------------------------------------
# Mesh objects: displacement against the exact answer
# --------------------------------------------------------------------------------------------------


BOX_MM = np.array([12.0, 8.0, 6.0])


def box_mesh(extents=BOX_MM, name="box"):
    import trimesh

    box = trimesh.creation.box(extents=np.asarray(extents, float))
    return TriangleMesh.create(np.asarray(box.vertices), np.asarray(box.faces), name=name)


def box_chords(P, pose: RigidTransform, extents=BOX_MM) -> np.ndarray:
    """Exact chord length [H, W] (mm) of each pixel ray through a posed box (slab method, float64)."""
    src, dirs = (np.asarray(x, np.float64) for x in pixel_rays(jnp.asarray(P, jnp.float64), SIZE, SIZE))
    T = np.asarray(pose.matrix(), np.float64)
    o = (src - T[:3, 3]) @ T[:3, :3]  # object coordinates
    d = dirs @ T[:3, :3]
    half = np.asarray(extents) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    t_near = np.max(np.minimum(t1, t2), -1)
    t_far = np.min(np.maximum(t1, t2), -1)
    return np.maximum(t_far - t_near, 0.0)


def uniform_ct(density=1.0, shape=(20, 18, 16), spacing=2.0):
    """Soft tissue of uniform density (g/cm^3), no air or bone: a density volume centred at 0."""
    data = np.zeros((3, *shape))
    data[1] = density
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing
    return Volume.create(data, affine, kind="density", channel_names=("air", "soft_tissue", "bone"))


def mono_params(cfg, materials, energy_keV=60.0):
    params = physics_params(cfg.materials.table_names, [energy_keV], [1.0])
    return with_object_materials(params, materials)


def box_pose():
    """The box's pose (built inside the float64 context, so its matrix is float64)."""
    return RigidTransform.create(rotation=[0.3, -0.2, 0.4], translation=[3.0, -2.0, 1.5])


STEP = 0.5  # mm: the projector's and the displacement integral's sampling step in these tests


def _mesh_scene(ct, displaces=True, pose=None, material="titanium", density=None):
    pose = box_pose() if pose is None else pose
    tool = MeshObject.create(
        box_mesh(), material, density=density, pose=pose, name="box", displaces=displaces
    )
    return Scene.create(ct, [tool])


def test_displacement_in_a_uniform_ct_is_exact_monochromatic():
    with x64():
        cfg = config(step_mm=STEP)
        ct = uniform_ct()
        P = view()
        scene = _mesh_scene(ct)
        params = mono_params(cfg, ("titanium",))
        image = np.asarray(jax.jit(make_scene_renderer(cfg))(params, scene, P, None))
        L_ct = np.asarray(line_integrals(cfg, ct, P))[..., 1] * 10.0  # soft tissue, g/cm^3 x mm
        chord = box_chords(P, box_pose())
        mu_w, mu_ti = mass_attenuation(["soft_tissue", "titanium"], [60.0])[:, 0]
        rho_ti = table_density("titanium")
        expected = (mu_w * (L_ct - 1.0 * chord) + mu_ti * rho_ti * chord) / 10.0
        assert chord.max() > 5.0 and (chord > 0).sum() > 20  # the box is in view, seen through
        # The box lies well inside the CT, where the trilinear field is exactly uniform, and the
        # in-mesh integral is exact for a field linear along the ray: only rounding remains.
        bound = REL64 * expected.max()
        np.testing.assert_allclose(image, expected, rtol=0, atol=bound)
        # A missing displacement would be off by mu_w * chord / 10, far above the bound.
        assert mu_w * chord.max() / 10.0 > 1e4 * bound


def test_displacement_polychromatic_matches_float64_beer_lambert():
    with x64():
        cfg = config(step_mm=STEP)
        ct = uniform_ct()
        P = view(lao=-35.0, cran=15.0)
        scene = _mesh_scene(ct, material="stainless_steel_316l", density=7.9)
        params = scene_params(cfg, scene)
        image = np.asarray(jax.jit(make_scene_renderer(cfg))(params, scene, P, None))
        E = np.asarray(params["energies"], np.float64)
        w = np.asarray(params["spectrum"], np.float64)
        L_ct = np.asarray(line_integrals(cfg, ct, P))[..., 1] * 10.0
        chord = box_chords(P, box_pose())
        mu_w, mu_steel = mass_attenuation(["soft_tissue", "stainless_steel_316l"], E)
        att = np.exp(
            -(np.multiply.outer(L_ct - chord, mu_w) + np.multiply.outer(7.9 * chord, mu_steel)) / 10.0
        )
        expected = -np.log(att @ (w * E) / np.sum(w * E))  # energy-integrating detector
        np.testing.assert_allclose(image, expected, rtol=0, atol=REL64 * expected.max())


def test_object_outside_the_ct_adds_without_displacing():
    with x64():
        cfg = config(step_mm=STEP)
        ct = uniform_ct(shape=(8, 8, 8))  # 16 mm cube at the origin; the box sits 30 mm to the right
        pose = RigidTransform.create(rotation=[0.0, 0.0, 0.3], translation=[30.0, 0.0, 0.0])
        params = mono_params(cfg, ("titanium",))
        render = jax.jit(make_scene_renderer(cfg))
        P = view(lao=0.0, cran=0.0, iso=(15.0, 0.0, 0.0))
        on = render(params, _mesh_scene(ct, True, pose), P, None)
        off = render(params, _mesh_scene(ct, False, pose), P, None)
        np.testing.assert_allclose(on, off, rtol=0, atol=REL64 * float(jnp.max(on)))
        chord = box_chords(P, pose)
        mu_w, mu_ti = mass_attenuation(["soft_tissue", "titanium"], [60.0])[:, 0]
        L_ct = np.asarray(line_integrals(cfg, ct, P))[..., 1] * 10.0
        expected = (mu_w * L_ct + mu_ti * table_density("titanium") * chord) / 10.0
        np.testing.assert_allclose(on, expected, rtol=0, atol=REL64 * expected.max())


def test_non_displacing_object_adds_on_top():
    with x64():
        cfg = config(step_mm=STEP)
        ct = uniform_ct()
        P = view()
        params = mono_params(cfg, ("titanium",))
        image = jax.jit(make_scene_renderer(cfg))(
            params, _mesh_scene(ct, displaces=False, density=3.0), P, None
        )
        chord = box_chords(P, box_pose())
        mu_w, mu_ti = mass_attenuation(["soft_tissue", "titanium"], [60.0])[:, 0]
        L_ct = np.asarray(line_integrals(cfg, ct, P))[..., 1] * 10.0
        expected = (mu_w * L_ct + mu_ti * 3.0 * chord) / 10.0
        np.testing.assert_allclose(image, expected, rtol=0, atol=REL64 * expected.max())


# --------------------------------------------------------------------------------------------------
# Mesh poses under vmap and grad; auxiliary outputs; errors
# --------------------------------------------------------------------------------------------------


def test_mesh_pose_vmap_equals_loop():
    cfg = config(step_mm=0.25)
    scene = _mesh_scene(uniform_ct(shape=(10, 10, 8)), pose=RigidTransform.identity())
    params = scene_params(cfg, scene)
    render = make_scene_renderer(cfg)
    rotations = jnp.asarray([[0.0, 0.0, 0.0], [0.3, -0.2, 0.4], [0.0, 1.0, 0.0]])
    translations = jnp.asarray([[0.0, 0.0, 0.0], [3.0, -2.0, 1.5], [-4.0, 1.0, 2.0]])
    batched = scene.with_pose("box", RigidTransform.create(rotations, translations))
    images = jax.jit(jax.vmap(render, in_axes=(None, batched.pose_in_axes(), None, None)))(
        params, batched, view(), None
    )
    assert images.shape == (3, SIZE, SIZE)
    for i in range(3):
        one = jax.jit(render)(
            params, scene.with_pose("box", RigidTransform.create(rotations[i], translations[i])), view(), None
        )
        # float32 rounding of fused vs unfused evaluation (~100 ulps of the largest value)
        np.testing.assert_allclose(images[i], one, rtol=0, atol=1e-5 * float(jnp.max(one)))
    assert not np.allclose(images[0], images[1])


def test_pose_gradient_matches_float64_finite_differences():
    with x64():
        cfg = config(step_mm=0.5)
        mesh = box_mesh()
        rot = jnp.asarray([0.3, -0.2, 0.4])

        def make(t):
            tool = MeshObject.create(mesh, "titanium", pose=RigidTransform.create(rot, t), name="box")
            return Scene.create(None, [tool])

        params = scene_params(cfg, make(jnp.zeros(3)))
        render = jax.jit(make_scene_renderer(cfg))
        weights = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, (SIZE, SIZE)))

        P = jnp.asarray(view())

        @jax.jit
        def loss(t):
            return jnp.sum(weights * render(params, make(t), P, None))

        t0 = jnp.asarray([1.1, -0.7, 0.4])
        g = np.asarray(jax.grad(loss)(t0))
        h = 1e-6  # mm; central differences: truncation ~h^2, rounding ~eps / h, both << 1e-6
        fd = np.array([(loss(t0.at[k].add(h)) - loss(t0.at[k].add(-h))) / (2 * h) for k in range(3)])
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_gradients_wrt_pose_and_P_are_finite_with_displacement():
    cfg = config(step_mm=0.5)
    scene = _mesh_scene(uniform_ct(shape=(10, 10, 8)))
    params = scene_params(cfg, scene)
    render = make_scene_renderer(cfg)

    def loss(rotation, translation, P):
        s = scene.with_pose("box", RigidTransform.create(rotation, translation))
        return jnp.sum(render(params, s, P, None) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        jnp.asarray([0.3, -0.2, 0.4]), jnp.asarray([1.0, 2.0, 0.5]), jnp.asarray(view())
    )
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)


def test_object_path_lengths_and_landmarks():
    with x64():
        cfg = config()
        pose = box_pose()
        scene = Scene.create(uniform_ct(), [MeshObject.create(box_mesh(), "titanium", pose=pose, name="box")])
        P = view()
        paths = object_path_lengths(cfg, scene, P)
        assert set(paths) == {"box"}
        chord = box_chords(P, pose)
        np.testing.assert_allclose(paths["box"], chord, rtol=0, atol=REL64 * chord.max())
        corner = np.array([6.0, 4.0, 3.0])
        marks = project_landmarks(P, pose, {"corner": corner})
        uv, depth = marks["corner"]
        world = np.asarray(pose.matrix()) @ np.append(corner, 1.0)
        h = np.asarray(P) @ world
        np.testing.assert_allclose(uv, h[:2] / h[2], rtol=1e-12)
        np.testing.assert_allclose(depth, h[2], rtol=1e-12)


def test_render_scene_one_shot_and_mesh_only_scene():
    cfg = config()
    tool = MeshObject.create(box_mesh(), "titanium", name="box")
    image = render_scene(Scene.create(objects=[tool]), view(), config=cfg)
    assert image.shape == (SIZE, SIZE) and np.all(np.isfinite(np.asarray(image)))
    # Rays that miss the box: -ln of (sum of the spectrum's weights) / (the same sum), which float32
    # may round by a few ulps per energy bin: |-ln T| <= 2 E eps.
    n_energies = jaxdrr.default_params(cfg)["energies"].shape[0]
    miss_bound = 2 * n_energies * float(jnp.finfo(jnp.float32).eps)
    assert float(jnp.max(image)) > 0.5 and abs(float(jnp.min(image))) <= miss_bound


def test_errors():
    mesh = box_mesh()
    with pytest.raises(JaxdrrError, match="unknown object material 'unobtainium'"):
        MeshObject.create(mesh, "unobtainium")
    with pytest.raises(SceneError, match="density must be a finite number >= 0"):
        MeshObject.create(mesh, "titanium", density=-1.0)
    with pytest.raises(SceneError, match="density must be a finite number >= 0"):
        MeshObject.create(mesh, "titanium", density=float("nan"))
    a = MeshObject.create(mesh, "titanium", name="screw")
    with pytest.raises(SceneError, match="duplicate object name"):
        Scene.create(None, [a, a])
    with pytest.raises(SceneError, match="empty"):
        Scene.create()
    with pytest.raises(SceneError, match="no object named 'nail'"):
        Scene.create(None, [a]).with_pose("nail", RigidTransform.identity())
    with pytest.raises(SceneError, match="pose must be a jaxdrr.geometry.RigidTransform"):
        MeshObject.create(mesh, "titanium", pose=np.eye(4))
    cfg = config()
    scene = Scene.create(uniform_ct(shape=(8, 8, 8)), [a])
    with pytest.raises(SceneError, match="no attenuation for object material"):
        make_scene_renderer(cfg)(default_params(cfg), scene, view(), None)
    mc = config(scatter="mc")
    with pytest.raises(SceneError, match="scatter='mc'"):
        make_scene_renderer(mc)(scene_params(mc, scene), scene, view(), jax.random.key(0))


def test_default_density_and_from_instrument():
    class Tool:  # duck-typed instrument
        mesh = box_mesh()
        material = "ti6al4v"
        density = None
        name = "wire"
        landmarks = {"tip": [6.0, 0.0, 0.0]}

    obj = MeshObject.from_instrument(Tool())
    assert obj.name == "wire" and obj.material == "ti6al4v"
    assert float(obj.density) == pytest.approx(table_density("ti6al4v"))
    np.testing.assert_array_equal(obj.landmark_points()["tip"], [6.0, 0.0, 0.0])
    assert obj.depth_range_mm == pytest.approx(2 * float(np.linalg.norm(BOX_MM / 2)), rel=1e-6)
    steel = MeshObject.from_instrument(Tool(), material="stainless_steel_316l")
    assert float(steel.density) == pytest.approx(table_density("stainless_steel_316l"))
