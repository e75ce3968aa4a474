"""Spectral Beer-Lambert: PHYSICS.md section 5 values from an independent NumPy reference, then
jaxdrr.spectral (float32, shipped tables) against that reference; gradients; chunking; memory.
Also the display helpers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import spekpy  # noqa: E402  (test dependencies: the independent reference)
import xraydb  # noqa: E402

from jaxdrr import display, spectral
from jaxdrr.errors import JaxdrrError
from jaxdrr.physics import ipem78, mass_attenuation, spekpy_spectrum

# ---------------------------------------------------------------------------------------------
# Independent reference: SpekPy + xraydb + NIST compositions typed in here, float64 NumPy.
# Nothing below imports jaxdrr.
# ---------------------------------------------------------------------------------------------
WATER = {"H": 0.111898, "O": 0.888102}
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
BONE_DENSITY = 1.92
WATER_20CM = 20.0  # g/cm^2
BONE_2CM = 2.0 * BONE_DENSITY  # g/cm^2

# PHYSICS.md section 5.
EXPECTED = {  # name: (L_water, L_bone) g/cm^2 -> (T_pc, T_ei)
    "water 20 cm": ((WATER_20CM, 0.0), (1.41769e-2, 1.74765e-2)),
    "bone 2 cm": ((0.0, BONE_2CM), (0.242254, 0.293792)),
    "water 20 cm + bone 2 cm": ((WATER_20CM, BONE_2CM), (4.88496e-3, 6.54703e-3)),
}


def ref_mu_rho(fractions, energies_kev):
    return sum(
        w * xraydb.mu_elam(el, np.asarray(energies_kev) * 1000.0, kind="total") for el, w in fractions.items()
    )


@pytest.fixture(scope="module")
def reference():
    """SpekPy 120 kVp, W 12 deg, 4.3 mm Al, 1 keV bins centred on integer keV."""
    spek = spekpy.Spek(kvp=120, th=12, dk=1, shift=0.5)
    spek.filter("Al", 4.3)
    energies, fluence = spek.get_spectrum()
    weights = fluence / fluence.sum()
    mu = np.stack([ref_mu_rho(WATER, energies), ref_mu_rho(CORTICAL_BONE, energies)])  # [2, E]
    return energies, weights, mu


def ref_transmission(L, energies, weights, mu):
    a = np.exp(-np.asarray(L, np.float64) @ mu)
    t_pc = np.sum(weights * a, axis=-1)
    t_ei = np.sum(weights * energies * a, axis=-1) / np.sum(weights * energies)
    mean_e = np.sum(weights * energies * a, axis=-1) / t_pc
    return t_pc, t_ei, mean_e


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_reproduces_physics_md(reference, name):
    L, (t_pc, t_ei) = EXPECTED[name]
    got_pc, got_ei, _ = ref_transmission(L, *reference)
    assert got_pc == pytest.approx(t_pc, rel=1e-5)
    assert got_ei == pytest.approx(t_ei, rel=1e-5)


def test_reference_beam_hardening_and_mono(reference):
    energies, weights, mu = reference
    assert np.sum(weights * energies) == pytest.approx(57.49, abs=0.01)
    assert ref_transmission((WATER_20CM, 0.0), *reference)[2] == pytest.approx(70.88, abs=0.01)
    mu60 = ref_mu_rho(WATER, np.array([60.0]))[0]
    assert mu60 == pytest.approx(0.20587, rel=1e-4)
    assert np.exp(-mu60 * WATER_20CM) == pytest.approx(1.62855e-2, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# jaxdrr.spectral (float32, shipped tables, jaxdrr's SpekPy wrapper) against the reference.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jaxdrr_setup():
    s = spekpy_spectrum(120, 4.3)
    mu = mass_attenuation(["water", "cortical_bone"], s.energies_keV)
    return s.energies_keV, s.photon_fractions, mu


def test_jaxdrr_matches_reference(reference, jaxdrr_setup):
    energies, weights, mu = jaxdrr_setup
    L = np.array([v[0] for v in EXPECTED.values()] + [(0.0, 0.0), (5.0, 0.5)], np.float32)
    moments = jax.jit(spectral.detector_moments)(jnp.asarray(L), mu, energies, weights)
    chex.assert_type(moments.m0, jnp.float32)
    ref_pc, ref_ei, ref_mean = ref_transmission(L, *reference)
    np.testing.assert_allclose(spectral.transmission(moments, energies, weights, "pc"), ref_pc, rtol=1e-3)
    np.testing.assert_allclose(spectral.transmission(moments, energies, weights, "ei"), ref_ei, rtol=1e-3)
    np.testing.assert_allclose(spectral.mean_energy(moments), ref_mean, rtol=1e-3)
    for (_case, (t_pc, t_ei)), got_pc, got_ei in zip(
        EXPECTED.values(),
        spectral.transmission(moments, energies, weights, "pc"),
        spectral.transmission(moments, energies, weights, "ei"),
    ):
        assert float(got_pc) == pytest.approx(t_pc, rel=1e-3)
        assert float(got_ei) == pytest.approx(t_ei, rel=1e-3)
    assert float(spectral.mean_energy(moments)[0]) == pytest.approx(70.88, abs=0.05)


def test_monoenergetic_and_moment_identities():
    mu = mass_attenuation(["water"], [60.0])
    m = spectral.detector_moments(jnp.array([[20.0], [0.0]]), mu, jnp.array([60.0]), jnp.array([1.0]))
    assert float(m.m0[0]) == pytest.approx(1.62855e-2, rel=1e-3)
    chex.assert_trees_all_close(m.m1, 60.0 * m.m0, rtol=1e-6)
    chex.assert_trees_all_close(m.m2, 3600.0 * m.m0, rtol=1e-6)
    chex.assert_trees_all_close(spectral.swank_factor(m), jnp.ones(2), rtol=1e-6)
    np.testing.assert_allclose(spectral.transmission(m, [60.0], [1.0], "ei"), m.m0, rtol=1e-6)


def test_swank_factor_after_water(jaxdrr_setup):
    energies, weights, mu = jaxdrr_setup
    m = spectral.detector_moments(jnp.array([[20.0, 0.0]]), mu, energies, weights)
    assert float(spectral.swank_factor(m)[0]) == pytest.approx(0.93, abs=0.01)  # PHYSICS.md section 6


def test_batch_shapes_and_errors(jaxdrr_setup):
    energies, weights, mu = jaxdrr_setup
    L = jnp.ones((4, 3, 2))
    m = spectral.detector_moments(L, mu, energies, weights)
    chex.assert_shape([m.m0, m.m1, m.m2], (4, 3))
    with pytest.raises(JaxdrrError):
        spectral.detector_moments(jnp.ones((4, 3)), mu, energies, weights)
    with pytest.raises(JaxdrrError):
        spectral.detector_moments(L, mu, energies[:-1], weights)
    with pytest.raises(JaxdrrError, match="ei"):
        spectral.transmission(m, energies, weights, "flat_panel")


@pytest.mark.parametrize("chunk", [1, 7, 16, 119, 500])
def test_chunked_equals_unchunked(jaxdrr_setup, chunk):
    energies, weights, mu = jaxdrr_setup
    L = jax.random.uniform(jax.random.PRNGKey(1), (33, 2), maxval=jnp.array([25.0, 4.0]))
    full = spectral.detector_moments(L, mu, energies, weights, energy_chunk=len(energies))
    chunked = jax.jit(spectral.detector_moments, static_argnames="energy_chunk")(
        L, mu, energies, weights, energy_chunk=chunk
    )
    chex.assert_trees_all_close(tuple(chunked), tuple(full), rtol=2e-5)
    g = lambda c: jax.grad(lambda x: spectral.spectral_transmission(x, mu, energies, weights, "ei", c).sum())(
        L
    )
    chex.assert_trees_all_close(jax.jit(lambda: g(chunk))(), jax.jit(lambda: g(len(energies)))(), rtol=2e-5)


@pytest.mark.parametrize("detector", ["ei", "pc"])
@pytest.mark.parametrize("chunk", [None, 10])
def test_gradient_matches_finite_differences(detector, chunk):
    s = ipem78(90)
    mu = mass_attenuation(["air", "soft_tissue", "cortical_bone"], s.energies_keV)
    L0 = np.array([0.01, 12.0, 1.5])
    with jax.enable_x64(True):
        f = lambda L: spectral.spectral_transmission(
            L, mu, s.energies_keV, s.photon_fractions, detector, chunk
        )
        grad = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(L0)))
        h = 1e-5
        fd = np.array(
            [
                (float(f(jnp.asarray(L0 + h * e))) - float(f(jnp.asarray(L0 - h * e)))) / (2 * h)
                for e in np.eye(3)
            ]
        )
    assert np.all(grad < 0)  # more material, less signal
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_float32_gradient_close_to_float64(jaxdrr_setup):
    energies, weights, mu = jaxdrr_setup
    L0 = np.array([20.0, 3.84])
    f = lambda L: spectral.spectral_transmission(L, mu, energies, weights, "ei")
    g32 = np.asarray(jax.grad(f)(jnp.asarray(L0, jnp.float32)))
    with jax.enable_x64(True):
        g64 = np.asarray(jax.grad(f)(jnp.asarray(L0)))
    np.testing.assert_allclose(g32, g64, rtol=1e-4)


def test_memory_bounded_for_1024_detector(jaxdrr_setup):
    """1024^2 pixels x 119 energies would be 500 MB as one float32 array; the automatic energy
    chunking keeps forward and reverse-mode temporaries well below that (compile only, no run)."""
    energies, weights, _ = jaxdrr_setup
    mu = mass_attenuation(["air", "soft_tissue", "cortical_bone"], energies)
    loss = lambda L: spectral.spectral_transmission(L, mu, energies, weights, "ei").sum()
    shape = jax.ShapeDtypeStruct((1024, 1024, 3), jnp.float32)
    for fn in (loss, jax.grad(loss)):
        analysis = jax.jit(fn).lower(shape).compile().memory_analysis()
        assert analysis is not None, "the CPU backend reports memory analysis"
        assert analysis.temp_size_in_bytes < 250e6


# ---------------------------------------------------------------------------------------------
# Display helpers.
# ---------------------------------------------------------------------------------------------
def test_window_explicit_bounds_and_uint():
    img = jnp.array([[-1.0, 0.0], [0.5, 2.0]])
    w = display.window(img, low=0.0, high=1.0)
    np.testing.assert_allclose(w, [[0.0, 0.0], [0.5, 1.0]])
    np.testing.assert_array_equal(display.to_uint8(w), [[0, 0], [128, 255]])
    chex.assert_type(display.to_uint16(w), jnp.uint16)
    assert int(display.to_uint16(w)[1, 1]) == 65535


def test_window_percentiles_and_constant_image():
    img = jnp.arange(1001.0)
    w = display.window(img, percentiles=(10.0, 90.0))
    # Percentiles 100 and 900 are interpolated in float32 (a few roundings of values up to 900),
    # and the window divides by the 800 span: each output is within 8 eps * 900 / 800 of exact.
    tol = 8 * float(np.finfo(np.float32).eps) * 900 / 800
    assert float(w[100]) == pytest.approx(0.0, abs=tol) and float(w[900]) == pytest.approx(1.0, abs=tol)
    assert float(w[500]) == pytest.approx(0.5, abs=tol)
    np.testing.assert_array_equal(display.window(jnp.full((3, 3), 7.0)), 0.0)
    with pytest.raises(JaxdrrError):
        display.window(img, percentiles=(90.0, 10.0))
