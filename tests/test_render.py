"""The full renderer: physics end to end against an independent reference, transformations,
noise through the renderer, gradients, and input validation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xraydb

import jaxdrr
from jaxdrr import geometry as G
from jaxdrr.errors import JaxdrrError, VolumeError

SOFT_TISSUE = {
    "H": 0.102,
    "C": 0.143,
    "N": 0.034,
    "O": 0.708,
    "Na": 0.002,
    "P": 0.003,
    "S": 0.003,
    "Cl": 0.002,
    "K": 0.003,
}
CORTICAL_BONE = {
    "H": 0.034,
    "C": 0.155,
    "N": 0.042,
    "O": 0.435,
    "Na": 0.001,
    "Mg": 0.002,
    "P": 0.103,
    "S": 0.003,
    "Ca": 0.225,
}


def _mu(fractions, energies):
    return sum(
        w * xraydb.mu_elam(el, np.asarray(energies) * 1000.0, kind="total") for el, w in fractions.items()
    )


def _slab_volume():
    """Density channels (air, soft, bone): 200 mm of soft tissue then 20 mm of bone along +y."""
    shape = (5, 110, 5)  # 2 mm voxels along y
    A = np.diag([2.0, 2.0, 2.0, 1.0])
    A[:3, 3] = [-4.0, -109.0, -4.0]
    data = np.zeros((3,) + shape, np.float32)
    data[1, :, :100, :] = 1.06
    data[2, :, 100:, :] = 1.92
    return jaxdrr.Volume.create(data, A, kind="density", channel_names=("air", "soft_tissue", "bone"))


SINGLE_PIXEL = G.CArmGeometry(sdd_mm=1000.0, sid_mm=500.0, height=1, width=1, pixel_size_mm=0.5)


@pytest.mark.parametrize("detector", ["ei", "pc"])
def test_slab_transmission_matches_independent_reference(detector):
    vol = _slab_volume()
    cfg = jaxdrr.RenderConfig(height=1, width=1, detector=detector, output="transmission", step_mm=0.5)
    params = jaxdrr.default_params(cfg)
    P = G.carm(0.0, 0.0, isocenter=(0.0, 0.0, 0.0), geometry=SINGLE_PIXEL)
    T = float(jaxdrr.make_renderer(cfg)(params, vol, P, None)[0, 0])
    # Independent: spectrum as published (0.5 keV IPEM bins from shared data), xraydb mu/rho.
    s = jaxdrr.physics.ipem78(120)
    E, w = np.asarray(s.energies_keV), np.asarray(s.photon_fractions)
    a = np.exp(-(20.0 * 1.06) * _mu(SOFT_TISSUE, E) - (2.0 * 1.92) * _mu(CORTICAL_BONE, E))
    ref = np.sum(w * E * a) / np.sum(w * E) if detector == "ei" else np.sum(w * a)
    np.testing.assert_allclose(T, ref, rtol=1e-3)
    assert 1e-3 < T < 1e-2  # sanity: 20 cm tissue + 2 cm bone


def test_log_output_is_physical_not_normalised():
    vol = _slab_volume()
    P = G.carm(0.0, 0.0, geometry=SINGLE_PIXEL)
    base = dict(height=1, width=1, step_mm=0.5)
    T = jaxdrr.render(vol, P, config=jaxdrr.RenderConfig(output="transmission", **base))
    log = jaxdrr.render(vol, P, config=jaxdrr.RenderConfig(output="log", **base))
    np.testing.assert_allclose(np.asarray(log), -np.log(np.asarray(T)), rtol=1e-5)
    photons = jaxdrr.render(vol, P, config=jaxdrr.RenderConfig(output="photons", detector="pc", **base))
    Tpc = jaxdrr.render(vol, P, config=jaxdrr.RenderConfig(output="transmission", detector="pc", **base))
    np.testing.assert_allclose(np.asarray(photons), 5e5 * np.asarray(Tpc), rtol=1e-5)


@pytest.fixture(scope="module")
def small():
    vol = jaxdrr.phantom(shape=(40, 32, 28))
    g = G.CArmGeometry(sdd_mm=1020, sid_mm=700, height=24, width=32, pixel_size_mm=14.0)
    return vol, g


def test_phantom_render_is_finite_and_shows_bone(small):
    vol, g = small
    cfg = jaxdrr.RenderConfig(height=24, width=32)
    img = jaxdrr.render(vol, G.carm(0, 0, geometry=g), config=cfg)
    chex.assert_shape(img, (24, 32))
    chex.assert_tree_all_finite(img)
    assert float(img.max()) > 3.0 and float(img.min()) >= 0.0


def _log_image_bound(cfg, params, vol, P):
    """Float64 -ln T of a noise-free render and the bound on its float32 error.

    The line integrals' float32 error is bounded per material by ``float_bounds`` (plus the HU ->
    density conversion's own rounding, gamma(16) relative); -ln T moves by the transmitted-spectrum
    mean of mu_m (d(-ln T)/dL_m, evaluated in float64) times that, plus a second-order term, plus
    the rounding of the spectral sums (relative gamma(E + 16) in numerator and denominator).
    """
    from float_bounds import analyse, forward_bound, gamma

    dens = np.asarray(jaxdrr.material_densities(vol, cfg.materials))
    a = analyse(dens, vol.affine, P, cfg.height, cfg.width, cfg.step_mm)
    chord = a.step * a.num_steps  # mm
    bound_L = (forward_bound(a) + gamma(16) * chord[:, None] * a.vmax[None, :]) / 10.0  # g/cm^2
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, np.float64)), params)
        vol64 = vol.replace(data=jnp.asarray(np.asarray(vol.data, np.float64)))
        cfg64 = cfg.replace(noise=None)
        L64 = jaxdrr.line_integrals(cfg64, vol64, jnp.asarray(np.asarray(P, np.float64)))
        image = lambda L: jaxdrr.image_from_line_integrals(cfg64, p64, L, None)
        log64 = np.asarray(image(L64))
        # Pixels are independent, so the gradient of the sum is each pixel's own d(-ln T)/dL_m.
        slope = np.asarray(jax.grad(lambda L: jnp.sum(image(L)))(L64))
    mu_max = float(np.max(np.asarray(params["mu_rho"])[:, np.asarray(params["spectrum"]) > 0]))
    dL = bound_L.reshape(slope.shape)
    n_e = np.asarray(params["energies"]).size
    bound = np.sum(np.abs(slope) * dL, -1) + (mu_max * dL.sum(-1)) ** 2 + 2 * gamma(n_e + 16)
    return log64, bound


def test_jit_vmap_and_keys(small):
    """vmap over poses and keys, a Python loop, jit and eager all give the float64 image within the
    float32 bound (noise-free), and the same noise for the same key."""
    from float_bounds import assert_within, gamma

    vol, g = small
    cfg = jaxdrr.RenderConfig(height=24, width=32)
    params = jaxdrr.default_params(cfg)
    render = jaxdrr.make_renderer(cfg)
    Ps = jnp.stack([G.carm(a, b, geometry=g) for a, b in [(0, 0), (30, 10), (-20, -5)]])
    batched = jax.jit(jax.vmap(render, in_axes=(None, None, 0, None)))(params, vol, Ps, None)
    for i, P in enumerate(Ps):
        log64, bound = _log_image_bound(cfg, params, vol, P)
        assert_within(batched[i], log64, bound, f"vmap, pose {i}")
        assert_within(render(params, vol, P, None), log64, bound, f"loop, pose {i}")
        if i == 0:
            assert_within(jax.jit(render)(params, vol, P, None), log64, bound, "jit")

    # Noise: the same expected signal and key give the same draw in a vmap and in a loop (the
    # noise transform is a few float32 roundings of the signal: gamma(16) relative). Jitted: eager,
    # each of the noise's primitives compiles once per shape (~500 small compilations, most of this
    # test's time), and eager rendering is checked above.
    noisy = cfg.replace(noise=jaxdrr.NoiseConfig(photons_per_pixel=1e3), photons_per_pixel=1e3)
    L = jaxdrr.line_integrals(noisy, vol, Ps[0])
    keys = jax.random.split(jax.random.key(0), 3)
    form = jax.jit(lambda k: jaxdrr.image_from_line_integrals(noisy, params, L, k))
    vmapped = jax.vmap(form)(keys)
    looped = jnp.stack([form(k) for k in keys])
    assert_within(vmapped, looped, gamma(16) * np.abs(np.asarray(looped)) * 2, "noise, vmap vs loop")
    other = form(jax.random.key(99))
    assert float(jnp.abs(other - looped[0]).mean()) > 1e-3  # a different key is a different image


def test_noise_is_unbiased_through_the_renderer(small):
    vol, g = small
    cfg = jaxdrr.RenderConfig(
        height=24,
        width=32,
        output="intensity",
        photons_per_pixel=2e3,
        noise=jaxdrr.NoiseConfig(photons_per_pixel=2e3),
    )
    params = jaxdrr.default_params(cfg)
    P = G.carm(10, 0, geometry=g)
    clean = jaxdrr.make_renderer(cfg.replace(noise=None))(params, vol, P, None)
    keys = jax.random.split(jax.random.key(1), 256)
    noisy = jax.jit(jax.vmap(jaxdrr.make_renderer(cfg), in_axes=(None, None, None, 0)))(params, vol, P, keys)
    mean, sd = noisy.mean(0), noisy.std(0)
    z = (mean - clean) / (sd / np.sqrt(256) + 1e-6)
    assert float(jnp.abs(z).mean()) < 1.2 and float(jnp.abs(z).max()) < 5.5


def test_pose_gradient_of_render_matches_finite_differences(small):
    vol, g = small
    with jax.enable_x64(True):
        vol64 = jaxdrr.Volume.create(np.asarray(vol.data, np.float64), vol.affine)
        cfg = jaxdrr.RenderConfig(height=24, width=32, step_mm=2.0)
        params = jaxdrr.default_params(cfg)
        render = jaxdrr.make_renderer(cfg)
        target = render(params, vol64, G.carm(12.0, 4.0, geometry=g), None)
        f = lambda a: jnp.mean((render(params, vol64, G.carm(a[0], a[1], geometry=g), None) - target) ** 2)
        a = jnp.array([10.0, 6.0])
        grad = np.asarray(jax.grad(f)(a))
        fd = np.array([(f(a + 1e-4 * e) - f(a - 1e-4 * e)) / 2e-4 for e in jnp.eye(2)])
        np.testing.assert_allclose(grad, fd, rtol=2e-3)
        assert grad[0] < 0 < grad[1]  # the gradient points away from the target (lao 12, cran 4)


def test_gradient_wrt_ct_and_spectrum_is_finite(small):
    vol, g = small
    cfg = jaxdrr.RenderConfig(height=24, width=32)
    params = jaxdrr.default_params(cfg)
    render = jaxdrr.make_renderer(cfg)
    P = G.carm(0, 0, geometry=g)
    gv = jax.grad(lambda d: jnp.sum(render(params, vol.replace(data=d), P, None)))(vol.data)
    chex.assert_tree_all_finite(gv)
    assert float(jnp.abs(gv).max()) > 0
    gp = jax.grad(lambda p: jnp.sum(render(p, vol, P, None)))(params)
    chex.assert_tree_all_finite(gp)


def test_bad_inputs(small):
    vol, g = small
    cfg = jaxdrr.RenderConfig(height=24, width=32)
    render = jaxdrr.make_renderer(cfg)
    params = jaxdrr.default_params(cfg)
    P = G.carm(0, 0, geometry=g)
    with pytest.raises(VolumeError, match="Volume"):
        render(params, np.zeros((4, 4, 4)), P, None)
    two = jaxdrr.Volume.create(np.ones((2, 4, 4, 4)), np.eye(4), kind="density")
    with pytest.raises(VolumeError, match="2 channels"):
        render(params, two, P, None)
    with pytest.raises(JaxdrrError, match="output"):
        jaxdrr.RenderConfig(output="png")
    with pytest.raises(JaxdrrError, match="height"):
        jaxdrr.RenderConfig(height=0)
    with pytest.raises(JaxdrrError, match="step_mm"):
        jaxdrr.RenderConfig(step_mm=-1.0)
    with pytest.raises(JaxdrrError, match="rank"):
        render(params, vol, np.zeros((3, 4)), None)
    with pytest.raises(VolumeError, match="non-finite"):
        jaxdrr.Volume.create(np.full((4, 4, 4), np.nan), np.eye(4))


def test_decompose_once_renders_like_the_hu_volume(small):
    """render(decompose(ct)) and render(ct) with the same materials are both within the float32
    bound of the float64 render of the CT (so of each other). The four-channel (metal) case is
    compared in tests/test_segment.py."""
    from float_bounds import assert_within

    vol, g = small
    cfg = jaxdrr.RenderConfig(height=24, width=32, materials="thresholds")
    params = jaxdrr.default_params(cfg)
    render = jax.jit(jaxdrr.make_renderer(cfg))
    dens = jaxdrr.decompose(params, vol, cfg.materials)
    assert dens.kind == "density" and dens.channel_names == cfg.materials.names
    assert dens.affine_key == vol.affine_key
    # Eagerly, decompose() computes exactly what the renderer computes from HU.
    np.testing.assert_array_equal(dens.data, jaxdrr.material_densities(vol, cfg.materials))
    metal = jaxdrr.materials.MaterialConfig.with_metal()
    np.testing.assert_array_equal(
        jaxdrr.decompose(None, vol, metal).data, jaxdrr.material_densities(vol, metal)
    )
    P = G.carm(20, 5, geometry=g)
    log64, bound = _log_image_bound(cfg, params, vol, P)
    assert_within(render(params, vol, P, None), log64, bound, "HU volume")
    assert_within(render(params, dens, P, None), log64, bound, "decomposed volume")


def test_material_presets_and_labels_need_decompose(small):
    vol, g = small
    assert jaxdrr.RenderConfig(materials="thresholds") == jaxdrr.RenderConfig()
    assert jaxdrr.RenderConfig(materials="vnet").materials.method == "vnet"
    with pytest.raises(JaxdrrError, match="unknown materials"):
        jaxdrr.RenderConfig(materials="otsu")
    cfg = jaxdrr.RenderConfig(height=24, width=32, materials="labels")
    with pytest.raises(JaxdrrError, match="jaxdrr.decompose"):
        jaxdrr.make_renderer(cfg)(jaxdrr.default_params(cfg), vol, G.carm(0, 0, geometry=g), None)
