"""Tests of the detector noise model (jaxdrr.noise) against the statistics it claims.

Tolerances are multiples (5x unless stated) of the standard error of each estimate, computed from
the number of (effectively independent) pixels, so the tests are tight enough to catch a wrong
model and still not flaky; all keys are fixed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr import noise
from jaxdrr.errors import JaxdrrError

SHAPE = (512, 512)
N_PIXELS = SHAPE[0] * SHAPE[1]
QUANTUM_ONLY = noise.NoiseConfig(readout=False, crosstalk=False)
# Compiled once per (config, detector, shape); eager op-by-op Poisson sampling is much slower.
noisy_signal = jax.jit(noise.noisy_signal, static_argnames=("config", "detector"))
readout_noise = jax.jit(noise.readout_noise, static_argnames=("shape",))

# A smooth polychromatic photon spectrum on a 1 keV grid and a water-like attenuation law:
# enough to make Ebar and <E^2> differ from the emitted ones (beam hardening) and Swank factor < 1.
ENERGIES = np.arange(20.0, 121.0)
WEIGHTS = np.exp(-(((ENERGIES - 60.0) / 25.0) ** 2))
WEIGHTS /= WEIGHTS.sum()
MU_RHO = 0.2 * (30.0 / ENERGIES) ** 3 + 0.18  # cm^2/g
E_MEAN0 = float(np.sum(WEIGHTS * ENERGIES))


def moments_for(thickness_g_cm2: float | np.ndarray, shape=SHAPE, weights=WEIGHTS, energies=ENERGIES):
    """Spectral moments m0, m1, m2 (float32) for a constant (or per-pixel) water thickness."""
    thickness = np.broadcast_to(np.asarray(thickness_g_cm2, np.float64), shape)
    transmission = np.exp(-thickness[..., None] * MU_RHO)
    return tuple(
        jnp.asarray(np.sum(weights * energies**k * transmission, axis=-1), jnp.float32) for k in range(3)
    )


def interior(x: np.ndarray, margin: int = 2) -> np.ndarray:
    return np.asarray(x, np.float64)[margin:-margin, margin:-margin]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def neighbour_correlation(field: np.ndarray, axis: int, lag: int = 1) -> float:
    n = field.shape[axis]
    first = np.take(field, np.arange(0, n - lag), axis=axis)
    second = np.take(field, np.arange(lag, n), axis=axis)
    return correlation(first, second)


# ---------------------------------------------------------------------------------------------
# mean and variance of the quantum noise


@pytest.mark.parametrize("detector", ["pc", "ei"])
@pytest.mark.parametrize("n0", [30.0, 3e3, 3e5])  # Knuth, rejection and Gaussian sampling regimes
def test_quantum_noise_mean_and_variance(detector, n0):
    m0, m1, m2 = moments_for(10.0)
    signal = noisy_signal(jax.random.key(1), m0, m1, m2, QUANTUM_ONLY, detector, photons_per_pixel=n0)
    expected = np.asarray(noise.expected_signal(m0, m1, n0, detector), np.float64)
    x = np.asarray(signal, np.float64)
    # Poisson prediction: Var = N for counts, Var = N <E^2> = N0 m2 for deposited energy.
    predicted_var = n0 * float(m0[0, 0] if detector == "pc" else m2[0, 0])
    mean_error = (x.mean() - expected.mean()) / np.sqrt(predicted_var / N_PIXELS)
    assert abs(mean_error) < 5, f"mean off by {mean_error:.2f} standard errors"
    assert x.var() / predicted_var == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / N_PIXELS))


def test_energy_integrating_variance_exceeds_mean_energy_poisson_by_swank_factor():
    """Polychromatic EI variance is N <E^2> = N Ebar^2 / Swank, not the naive N Ebar^2."""
    m0, m1, m2 = moments_for(10.0)
    n0 = 2e3
    x = np.asarray(noisy_signal(jax.random.key(2), m0, m1, m2, QUANTUM_ONLY, "ei", photons_per_pixel=n0))
    swank = float(m1[0, 0] ** 2 / (m0[0, 0] * m2[0, 0]))
    assert 0.8 < swank < 0.99
    naive_var = n0 * float(m0[0, 0]) * float(m1[0, 0] / m0[0, 0]) ** 2
    assert x.var() * swank / naive_var == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / N_PIXELS))


def test_monoenergetic_energy_integrating_noise_is_energy_times_poisson():
    """DeepDRR's Ebar (Poisson(N) - N): the deposited energy is an integer number of photons."""
    energy = np.array([60.0])
    m0, m1, m2 = moments_for(5.0, shape=(256, 256), weights=np.array([1.0]), energies=energy)
    n0 = 50.0
    x = np.asarray(noisy_signal(jax.random.key(3), m0, m1, m2, QUANTUM_ONLY, "ei", photons_per_pixel=n0))
    photons = x / 60.0
    np.testing.assert_allclose(photons, np.round(photons), atol=2e-3)
    assert photons.min() >= 0
    n_expected = n0 * float(m0[0, 0])
    assert photons.var() / n_expected == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / photons.size))


@pytest.mark.parametrize("detector", ["pc", "ei"])
def test_relative_variance_scales_as_inverse_photon_number(detector):
    """log-log slope of Var/mean^2 against N0 is -1 across all sampling regimes."""
    m0, m1, m2 = moments_for(10.0)
    doses = np.array([30.0, 300.0, 3e3, 3e4, 3e5, 3e6])
    relative_variance = []
    for i, n0 in enumerate(doses):
        x = np.asarray(
            noisy_signal(jax.random.key(10 + i), m0, m1, m2, QUANTUM_ONLY, detector, photons_per_pixel=n0),
            np.float64,
        )
        relative_variance.append(x.var() / x.mean() ** 2)
    slope = np.polyfit(np.log(doses), np.log(relative_variance), 1)[0]
    # each point has relative error ~ sqrt(2/n) = 0.3 %; over 5 decades the slope error is ~1e-3.
    assert slope == pytest.approx(-1.0, abs=0.01)
    # halving N0 doubles the relative variance
    x_full = np.asarray(
        noisy_signal(jax.random.key(30), m0, m1, m2, QUANTUM_ONLY, detector, photons_per_pixel=1e3)
    )
    x_half = np.asarray(
        noisy_signal(jax.random.key(31), m0, m1, m2, QUANTUM_ONLY, detector, photons_per_pixel=5e2)
    )
    ratio = (x_half.var() / x_half.mean() ** 2) / (x_full.var() / x_full.mean() ** 2)
    assert ratio == pytest.approx(2.0, abs=2.0 * 5 * np.sqrt(4.0 / N_PIXELS))


def test_noise_follows_the_per_pixel_signal():
    """Spatially varying attenuation: standardised residuals are unit variance everywhere."""
    thickness = np.linspace(0.0, 40.0, SHAPE[1])[None, :] * np.ones((SHAPE[0], 1))
    m0, m1, m2 = moments_for(thickness)
    config = noise.NoiseConfig(readout=False, crosstalk=False, photons_per_pixel=2e4)
    x = noisy_signal(jax.random.key(4), m0, m1, m2, config, "ei")
    expected = noise.expected_signal(m0, m1, config.photons_per_pixel, "ei")
    variance = noise.signal_variance(m0, m1, m2, config, "ei")
    z = np.asarray((x - expected) / jnp.sqrt(variance), np.float64)
    assert abs(z.mean()) < 5 / np.sqrt(N_PIXELS)
    assert z.var() == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / N_PIXELS))
    # thin and thick halves separately (different N, different Poisson regimes)
    for half in (z[:, : SHAPE[1] // 2], z[:, SHAPE[1] // 2 :]):
        assert half.var() == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / half.size))


# ---------------------------------------------------------------------------------------------
# crosstalk


def test_crosstalk_neighbour_correlation_matches_kernel_autocorrelation():
    m0, m1, m2 = moments_for(5.0)
    config = noise.NoiseConfig(readout=False, crosstalk=True, photons_per_pixel=1e4)
    x = noisy_signal(jax.random.key(5), m0, m1, m2, config, "pc")
    field = interior(x - noise.expected_signal(m0, m1, config.photons_per_pixel, "pc"))

    k = np.asarray(config.crosstalk_kernel)
    energy = np.sum(k * k)
    predicted_horizontal = np.sum(k[:, :-1] * k[:, 1:]) / energy
    predicted_vertical = np.sum(k[:-1, :] * k[1:, :]) / energy
    predicted_two_apart = np.sum(k[:, :-2] * k[:, 2:]) / energy
    # correlation estimates have standard error ~ 1/sqrt(n) (inflated a little by the correlation)
    tolerance = 5 * 1.5 / np.sqrt(field.size)
    assert neighbour_correlation(field, axis=1) == pytest.approx(predicted_horizontal, abs=tolerance)
    assert neighbour_correlation(field, axis=0) == pytest.approx(predicted_vertical, abs=tolerance)
    assert neighbour_correlation(field, axis=1, lag=2) == pytest.approx(predicted_two_apart, abs=tolerance)
    assert neighbour_correlation(field, axis=1, lag=3) == pytest.approx(0.0, abs=tolerance)
    # crosstalk scales the quantum variance by sum(k^2) and leaves the mean alone
    n = float(config.photons_per_pixel * m0[0, 0])
    assert field.var() / (n * energy) == pytest.approx(1.0, abs=5 * 3 * np.sqrt(2.0 / field.size))
    assert abs(field.mean()) < 5 * np.sqrt(n * np.sum(k) ** 2 / field.size)


def test_apply_crosstalk_is_a_same_size_zero_padded_convolution():
    impulse = jnp.zeros((7, 9)).at[3, 4].set(1.0)
    response = np.asarray(noise.apply_crosstalk(impulse))
    assert response.shape == (7, 9)
    np.testing.assert_allclose(
        response[2:5, 3:6], np.asarray(noise.DEEPDRR_CROSSTALK_KERNEL)[::-1, ::-1], atol=1e-7
    )
    corner = np.asarray(noise.apply_crosstalk(jnp.zeros((5, 5)).at[0, 0].set(1.0)))
    assert corner.sum() == pytest.approx(0.98 + 0.11 + 0.06 + 0.03, abs=1e-6)  # zero padding: no wrap


# ---------------------------------------------------------------------------------------------
# readout noise


@pytest.mark.parametrize("rho", [0.5, -0.3, 0.0])
def test_readout_noise_is_ar1_along_rows_and_independent_across_rows(rho):
    field = np.asarray(readout_noise(jax.random.key(6), SHAPE, 2.5, rho), np.float64)
    tolerance = 5 * 1.5 / np.sqrt(field.size)
    assert neighbour_correlation(field, axis=1) == pytest.approx(rho, abs=tolerance)
    assert neighbour_correlation(field, axis=1, lag=2) == pytest.approx(rho**2, abs=tolerance)
    assert neighbour_correlation(field, axis=0) == pytest.approx(0.0, abs=tolerance)
    # stationary unit-variance marginals scaled by std; the AR(1) start column has the same spread.
    # Effective sample size of an AR(1) row: n (1 - rho^2) / (1 + rho^2).
    n_eff = field.size * (1 - rho**2) / (1 + rho**2)
    assert field.std() / 2.5 == pytest.approx(1.0, abs=5 * np.sqrt(0.5 / n_eff))
    assert field[:, 0].std() / 2.5 == pytest.approx(1.0, abs=5 * np.sqrt(0.5 / SHAPE[0]))
    assert abs(field.mean()) < 5 * 2.5 * np.sqrt((1 + abs(rho)) / (1 - abs(rho)) / field.size)


@pytest.mark.parametrize("detector", ["pc", "ei"])
def test_readout_noise_in_noisy_signal_has_photon_equivalent_std(detector):
    m0, m1, m2 = moments_for(np.full(SHAPE, 50.0))
    config = noise.NoiseConfig(quantum=False, readout_noise_std=4.0, readout_row_correlation=0.5)
    x = noisy_signal(jax.random.key(7), m0, m1, m2, config, detector, e_mean0=E_MEAN0)
    field = np.asarray(x - noise.expected_signal(m0, m1, config.photons_per_pixel, detector), np.float64)
    unit = E_MEAN0 if detector == "ei" else 1.0
    n_eff = field.size * (1 - 0.25) / (1 + 0.25)
    assert field.std() / (4.0 * unit) == pytest.approx(1.0, abs=5 * np.sqrt(0.5 / n_eff) + 1e-4)
    assert neighbour_correlation(field, axis=1) == pytest.approx(0.5, abs=0.015)


def test_full_model_variance_matches_signal_variance():
    m0, m1, m2 = moments_for(15.0)
    config = noise.NoiseConfig(photons_per_pixel=3e3, readout_noise_std=20.0)
    x = noisy_signal(jax.random.key(8), m0, m1, m2, config, "ei", e_mean0=E_MEAN0)
    expected = noise.expected_signal(m0, m1, config.photons_per_pixel, "ei")
    predicted = float(noise.signal_variance(m0, m1, m2, config, "ei", e_mean0=E_MEAN0)[0, 0])
    field = interior(x - expected)
    assert field.var() / predicted == pytest.approx(1.0, abs=5 * 3 * np.sqrt(2.0 / field.size))
    assert abs(field.mean()) < 5 * np.sqrt(3 * predicted / field.size)


# ---------------------------------------------------------------------------------------------
# keys, jit, vmap


def test_same_key_same_image_and_different_keys_uncorrelated():
    m0, m1, m2 = moments_for(10.0)
    config = noise.NoiseConfig(photons_per_pixel=1e3)
    run = lambda key: np.asarray(noisy_signal(key, m0, m1, m2, config, "ei", e_mean0=E_MEAN0))
    a, b, c = run(jax.random.key(9)), run(jax.random.key(9)), run(jax.random.key(10))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert correlation(a, c) == pytest.approx(0.0, abs=5 / np.sqrt(N_PIXELS))


def test_vmapped_keys_give_the_single_key_images_and_independent_noise():
    m0, m1, m2 = moments_for(10.0, shape=(128, 128))
    config = noise.NoiseConfig(photons_per_pixel=1e3)
    keys = jax.random.split(jax.random.key(11), 4)
    batched = jax.vmap(lambda k: noisy_signal(k, m0, m1, m2, config, "ei", e_mean0=E_MEAN0))(keys)
    for i in range(4):
        single = noisy_signal(keys[i], m0, m1, m2, config, "ei", e_mean0=E_MEAN0)
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), rtol=1e-6, atol=1e-3)
    images = np.asarray(batched, np.float64)
    for i in range(4):
        for j in range(i + 1, 4):
            assert correlation(images[i], images[j]) == pytest.approx(0.0, abs=5 / np.sqrt(images[i].size))


def test_legacy_uint32_keys_work():
    m0, m1, m2 = moments_for(10.0, shape=(32, 32))
    x = noisy_signal(jax.random.PRNGKey(0), m0, m1, m2, QUANTUM_ONLY, "pc")
    assert x.shape == (32, 32) and bool(jnp.all(jnp.isfinite(x)))


@pytest.mark.parametrize("detector", ["pc", "ei"])
def test_jit_equals_eager(detector):
    thickness = np.linspace(0.0, 60.0, 128)[None, :] * np.ones((64, 1))  # spans all sampling regimes
    m0, m1, m2 = moments_for(thickness, shape=(64, 128))
    config = noise.NoiseConfig(photons_per_pixel=1e5)
    key = jax.random.key(12)
    eager = noise.noisy_signal(key, m0, m1, m2, config, detector, e_mean0=E_MEAN0)
    jitted = noisy_signal(key, m0, m1, m2, config, detector, E_MEAN0)
    scale = float(jnp.max(jnp.abs(eager)))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=0, atol=1e-6 * scale)


def test_switching_readout_does_not_change_the_quantum_realisation():
    m0, m1, m2 = moments_for(10.0, shape=(64, 64))
    key = jax.random.key(13)
    with_readout = noisy_signal(key, m0, m1, m2, noise.NoiseConfig(readout_noise_std=5.0), "pc")
    readout_only = noisy_signal(
        key, m0, m1, m2, noise.NoiseConfig(quantum=False, readout_noise_std=5.0), "pc"
    )
    quantum_only = noisy_signal(key, m0, m1, m2, noise.NoiseConfig(readout=False), "pc")
    expected = noise.expected_signal(m0, m1, noise.NoiseConfig().photons_per_pixel, "pc")
    np.testing.assert_allclose(
        np.asarray(with_readout), np.asarray(quantum_only + readout_only - expected), rtol=1e-6, atol=1e-2
    )


# ---------------------------------------------------------------------------------------------
# noise-free path and gradients


@pytest.mark.parametrize("detector", ["pc", "ei"])
def test_noise_free_path_is_exactly_the_expected_signal(detector):
    m0, m1, m2 = moments_for(np.linspace(0.0, 30.0, 64)[None, :] * np.ones((32, 1)), shape=(32, 64))
    n0 = noise.NoiseConfig().photons_per_pixel
    expected = np.asarray(noise.expected_signal(m0, m1, n0, detector))
    all_off = noise.NoiseConfig(quantum=False, readout=False)
    np.testing.assert_array_equal(np.asarray(noise.noisy_signal(None, m0, m1, m2, None, detector)), expected)
    np.testing.assert_array_equal(np.asarray(noisy_signal(None, m0, m1, m2, None, detector)), expected)
    np.testing.assert_array_equal(
        np.asarray(noisy_signal(jax.random.key(0), m0, m1, m2, all_off, detector)), expected
    )
    zero_readout = noise.NoiseConfig(quantum=False, readout_noise_std=0.0)
    np.testing.assert_array_equal(
        np.asarray(noisy_signal(None, m0, m1, m2, zero_readout, detector)), expected
    )
    np.testing.assert_array_equal(np.asarray(noise.signal_variance(m0, m1, m2, None, detector)), 0.0)
    # noise-free gradient equals the analytic one: d(N0 m0)/dm0 = N0, d(N0 m1)/dm1 = N0
    grads = jax.grad(lambda a, b: jnp.sum(noisy_signal(None, a, b, m2, None, detector)), argnums=(0, 1))(
        m0, m1
    )
    np.testing.assert_array_equal(np.asarray(grads[0 if detector == "pc" else 1]), n0)
    np.testing.assert_array_equal(np.asarray(grads[1 if detector == "pc" else 0]), 0.0)
    if detector == "pc":
        assert np.array_equal(expected, np.asarray(n0 * m0))
    else:
        assert np.array_equal(expected, np.asarray(n0 * m1))


@pytest.mark.parametrize("detector", ["pc", "ei"])
def test_gradients_are_finite_including_fully_attenuated_pixels(detector):
    m0, m1, m2 = moments_for(np.linspace(0.0, 80.0, 64)[None, :] * np.ones((16, 1)), shape=(16, 64))
    # fully attenuated (all moments exactly 0) and denormal-small pixels
    m0, m1, m2 = (m.at[:, :4].set(0.0).at[:, 4].set(1e-30) for m in (m0, m1, m2))
    config = noise.NoiseConfig(photons_per_pixel=1e4, readout_noise_std=3.0)

    def loss(a, b, c):
        return jnp.sum(noisy_signal(jax.random.key(14), a, b, c, config, detector, e_mean0=E_MEAN0))

    values = noisy_signal(jax.random.key(14), m0, m1, m2, config, detector, e_mean0=E_MEAN0)
    assert bool(jnp.all(jnp.isfinite(values)))
    for grad in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(m0, m1, m2):
        assert bool(jnp.all(jnp.isfinite(grad)))


def test_pathwise_gradient_is_unbiased_for_the_expected_signal():
    """d/dt of the noisy signal for moments scaled by t averages to d/dt of the expected signal."""
    m0, m1, m2 = moments_for(10.0)
    n0 = 1e3  # Poisson regime: N_eff ~ 100
    config = noise.NoiseConfig(readout=False, crosstalk=False, photons_per_pixel=n0)

    def mean_signal(t):
        return jnp.mean(noisy_signal(jax.random.key(15), t * m0, t * m1, t * m2, config, "ei"))

    grad = float(jax.grad(mean_signal)(1.0))
    # pathwise derivative per pixel: N0 m1 + sqrt(N0 m2) z / 2; z has unit variance
    standard_error = 0.5 * np.sqrt(n0 * float(m2[0, 0]) / N_PIXELS)
    assert abs(grad - n0 * float(m1[0, 0])) < 5 * standard_error


# ---------------------------------------------------------------------------------------------
# input checking


def test_config_validation():
    with pytest.raises(JaxdrrError):
        noise.NoiseConfig(photons_per_pixel=0.0)
    with pytest.raises(JaxdrrError):
        noise.NoiseConfig(readout_row_correlation=1.0)
    with pytest.raises(JaxdrrError):
        noise.NoiseConfig(readout_noise_std=-1.0)
    with pytest.raises(JaxdrrError):
        noise.NoiseConfig(crosstalk_kernel=((0.5, 0.5), (0.5, 0.5)))
    config = noise.NoiseConfig(crosstalk_kernel=[[0.0, 1.0, 0.0]])  # lists are normalised to tuples
    assert config.crosstalk_kernel == ((0.0, 1.0, 0.0),)
    hash(config)
    assert dataclasses.replace(config, quantum=False).quantum is False


def test_entry_point_input_checks():
    m0, m1, m2 = moments_for(10.0, shape=(8, 8))
    with pytest.raises(JaxdrrError, match="detector"):
        noise.noisy_signal(jax.random.key(0), m0, m1, m2, noise.NoiseConfig(), "ccd")
    with pytest.raises(JaxdrrError, match="e_mean0"):
        noise.noisy_signal(jax.random.key(0), m0, m1, m2, noise.NoiseConfig(), "ei")
    with pytest.raises(JaxdrrError, match="key"):
        noise.noisy_signal(None, m0, m1, m2, noise.NoiseConfig(), "pc")
    with pytest.raises(AssertionError):
        noise.noisy_signal(jax.random.key(0), m0, m1[:4], m2, noise.NoiseConfig(), "pc")
    with pytest.raises(AssertionError):
        noise.expected_signal(m0[0], m1[0], 1e3, "pc")
