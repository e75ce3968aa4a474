"""Detector noise: quantum (photon) noise, pixel crosstalk and electronic readout noise.

Abstraction
-----------
The noise model acts on the per-pixel *spectral moments* produced by :mod:`jaxdrr.spectral`
(see docs/architecture.md, "Spectral detector signal")::

    m0 = sum_E w a,   m1 = sum_E w E a,   m2 = sum_E w E^2 a          (each [H, W])

with ``w`` the emitted photon fractions (sum 1), ``E`` in keV and ``a`` the transmission per energy.
With ``N0`` photons emitted per pixel, the registered photons, mean and mean-square energy are::

    N = N0 m0,   Ebar = m1 / m0,   <E^2> = m2 / m0.

A *detector signal* is either a photon count (``detector="pc"``, photon counting, unit: photons)
or a deposited energy (``detector="ei"``, energy integrating, unit: keV). Its expectation is
:func:`expected_signal` (``N0 m0`` photons, or ``N0 m1`` keV). :func:`noisy_signal` draws one
realisation; it is a pure function of an explicit PRNG key (no global state), works under ``jit``
and ``vmap`` (vmapped keys give independent images), and with ``config=None`` (or every switch
off) returns *exactly* :func:`expected_signal`, so noise-free gradients stay clean.

Model (DeepDRR, Unberath et al. MICCAI 2018, Sect. 2.2 "Noise Injection", Eq. 2; Zhang et al.,
Med. Phys. 41(3) 2014 for the noise correlations; kernel from Wang et al., Med. Phys. 41(7) 2014)::

    signal = expected + crosstalk_kernel (*) quantum_noise + readout_noise

1. Quantum noise (signal dependent, independent between pixels before crosstalk).

   * Photon counting: counts ~ Poisson(N); noise = Poisson(N) - N (variance N).
   * Energy integrating: the deposited energy S is a sum of a Poisson number of photon energies
     (compound Poisson), so E[S] = N Ebar and Var[S] = N <E^2> (not N Ebar^2: the Swank factor
     I = Ebar^2 / <E^2> = m1^2 / (m0 m2) < 1 captures the extra variance of a polychromatic
     spectrum, see reference PHYSICS.md Sect. 6). We draw an "effective Poisson" variable with the
     same mean and variance::

         N_eff = N Ebar^2 / <E^2> = N0 m1^2 / m2     (Swank-scaled photon count)
         E_eff = <E^2> / Ebar     = m2 / m1          (variance-weighted photon energy)
         S     = E_eff Poisson(N_eff),  noise = S - N Ebar

     For a mono-energetic spectrum N_eff = N, E_eff = Ebar and this is DeepDRR's
     ``Ebar (Poisson(N) - N)`` (the paper divides by N0 to work in normalised units; we keep keV).

   Sampling: ``jax.random.poisson`` (float32 transformed rejection) is accurate up to rates of
   ~1e4-3e4 but measurably biased above ~1e5 (mean off by ~0.5 counts at 1e5; variance +0.7 % at
   3e5, +2.5 % at 1e6, measured on 2^22 draws). Rates above :data:`GAUSSIAN_RATE_THRESHOLD` (1e4)
   therefore use the Gaussian with the same mean and variance; its only error is the missing
   skewness 1/sqrt(rate) <= 0.01, far below anything visible. Both branches are unbiased.

   Gradients: the draw is written as ``noise = sigma * z`` with ``sigma^2`` the exact variance
   (``N0 m0`` for pc, ``N0 m2`` for ei) and ``z = (K - rate) / sqrt(rate)`` the standardised count,
   held constant under differentiation (Poisson samples have no gradient anyway). The value is
   identical to the formulas above; the gradient is the pathwise (reparameterisation) gradient of
   a Gaussian with the same mean and variance, so its expectation is the gradient of the expected
   signal and it is finite everywhere (a safe square root handles fully attenuated pixels).

2. Pixel crosstalk (flat-panel light/charge spread): the quantum noise field -- not the signal --
   is convolved with a small kernel (DeepDRR's ``[[.03,.06,.02],[.11,.98,.11],[.02,.06,.03]]``).
   This correlates neighbouring pixels; the noise variance is scaled by sum(k^2) (0.994 for the
   default, i.e. nearly preserved) while the mean signal is untouched because the noise has zero
   mean. Boundary: zero padding ("same" size), the physical choice -- there are no pixels beyond
   the panel edge to receive signal from; edge pixels hence keep ~1 % less noise variance.

3. Electronic readout noise: additive, signal independent, Gaussian, correlated along detector
   rows by sequential readout (Zhang et al. 2014). Modelled as a stationary AR(1) process along
   each row with unit-variance marginals::

       x_0 ~ N(0, 1),   x_j = rho x_{j-1} + sqrt(1 - rho^2) e_j,   e_j ~ N(0, 1)

   so corr(x_j, x_{j+k}) = rho^k along a row and rows are independent. It is scaled to
   ``readout_noise_std`` photon equivalents: photons for "pc", and photons times the unattenuated
   mean energy ``e_mean0 = sum_E w E`` (keV) for "ei".

The noisy signal is not clipped (clipping would bias the mean); it can be <= 0 where N is tiny,
so a caller taking ``-log`` must clip explicitly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdrr.errors import JaxdrrError

DETECTORS = ("ei", "pc")
"""Detector types: ``"ei"`` energy integrating (signal in keV), ``"pc"`` photon counting (photons)."""

DEEPDRR_CROSSTALK_KERNEL: tuple[tuple[float, ...], ...] = (
    (0.03, 0.06, 0.02),
    (0.11, 0.98, 0.11),
    (0.02, 0.06, 0.03),
)
"""Pixel-crosstalk kernel of DeepDRR (from Wang et al., Med. Phys. 41(7) 2014); sum 1.42, sum of
squares 0.994 (so it nearly preserves the noise variance); point symmetric, so convolution and
correlation coincide."""

GAUSSIAN_RATE_THRESHOLD = 1e4
"""Poisson rates at or above this are drawn from the moment-matched Gaussian (see module docstring)."""


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Detector noise settings (hashable, so it can be a static argument of ``jax.jit``).

    Attributes:
      photons_per_pixel: N0, photons emitted towards each pixel. Default 5e5, the DeepDRR paper's
        "high-dose" setting. Quantum noise scales as 1/sqrt(N0) relative to the signal.
      crosstalk_kernel: odd-sized 2D kernel convolved with the quantum noise only (never the
        signal). Default: DeepDRR's kernel :data:`DEEPDRR_CROSSTALK_KERNEL`.
      readout_noise_std: standard deviation of the electronic readout noise, in photon
        equivalents (photons of the unattenuated mean energy for an energy-integrating detector).
        Default 3.0: in indirect-conversion (CsI / a-Si) flat panels the additive electronic noise
        (order 10^3 electrons rms) is comparable to the signal of a few X-ray quanta (order 10^3
        electrons per absorbed diagnostic photon), i.e. a few photon equivalents. It is
        negligible next to the quantum noise (sqrt(N) ~ 700 at N0 = 5e5) except behind very dense
        material or at very low dose, which is where it matters in practice. DeepDRR ships with it
        switched off; set ``readout=False`` to reproduce that.
      readout_row_correlation: rho, correlation coefficient of the readout noise between
        horizontally adjacent pixels of a row (AR(1) along the row: sequential readout); pixels of
        different rows are uncorrelated. Must lie in (-1, 1). Default 0.5, a moderate row
        correlation, matching the qualitative finding of Zhang et al. 2014 (correlation along the
        readout direction, none across it).
      quantum: include quantum (photon) noise.
      readout: include electronic readout noise.
      crosstalk: convolve the quantum noise with ``crosstalk_kernel``.
    """

    photons_per_pixel: float = 5e5
    crosstalk_kernel: tuple[tuple[float, ...], ...] = DEEPDRR_CROSSTALK_KERNEL
    readout_noise_std: float = 3.0
    readout_row_correlation: float = 0.5
    quantum: bool = True
    readout: bool = True
    crosstalk: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.photons_per_pixel) and self.photons_per_pixel > 0):
            raise JaxdrrError(f"photons_per_pixel must be finite and > 0, got {self.photons_per_pixel}")
        kernel = tuple(tuple(float(v) for v in row) for row in self.crosstalk_kernel)
        object.__setattr__(self, "crosstalk_kernel", kernel)  # normalise lists/arrays to a hashable tuple
        k = np.asarray(kernel, dtype=np.float64)
        if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0 or len({len(r) for r in kernel}) != 1:
            raise JaxdrrError(
                f"crosstalk_kernel must be a rectangular 2D kernel of odd size (so it has a centre pixel), got {kernel}"
            )
        if not np.all(np.isfinite(k)):
            raise JaxdrrError("crosstalk_kernel contains non-finite values")
        if not (math.isfinite(self.readout_noise_std) and self.readout_noise_std >= 0):
            raise JaxdrrError(f"readout_noise_std must be finite and >= 0, got {self.readout_noise_std}")
        if not -1.0 < self.readout_row_correlation < 1.0:
            raise JaxdrrError(
                f"readout_row_correlation must lie in (-1, 1) (an AR(1) correlation), got {self.readout_row_correlation}"
            )


# ----------------------------------------------------------------------------------------------
# helpers


def _check_detector(detector: str) -> None:
    if detector not in DETECTORS:
        raise JaxdrrError(
            f"detector must be one of {DETECTORS} ('ei' energy integrating, 'pc' photon counting), got {detector!r}"
        )


def _check_moments(*moments: Any) -> None:
    chex.assert_rank(moments[0], 2)  # [H, W]; use jax.vmap for batches of images
    chex.assert_equal_shape(moments)


def _float_dtype(*xs: Any) -> jnp.dtype:
    return jnp.result_type(float, *xs)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(max(x, 0)) with a finite (zero) gradient at and below 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0 (fully attenuated pixels have all moments 0)."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def _standardized_poisson(key: jax.Array, rate: jax.Array) -> jax.Array:
    """Draw z = (K - rate) / sqrt(rate), K ~ Poisson(rate), elementwise; no gradient.

    Rates below :data:`GAUSSIAN_RATE_THRESHOLD` use ``jax.random.poisson`` (exact); rates at or
    above it use a standard normal (moment matched; jax's float32 Poisson sampler drifts there).
    Pixels with rate 0 get z = 0 (their noise amplitude is 0 anyway).
    """
    rate = lax.stop_gradient(rate)
    key_poisson, key_gauss = jax.random.split(key)
    use_poisson = rate < GAUSSIAN_RATE_THRESHOLD
    # Gaussian-branch pixels get rate 0 in the Poisson sampler: cheap, and never overflow int32.
    poisson_rate = jnp.where(use_poisson, jnp.maximum(rate, 0.0), 0.0)
    # Skip the (costly, ~0.1 s per megapixel on CPU) Poisson sampler when no pixel needs it, e.g. a
    # high-dose image without dense material; under vmap lax.cond becomes a select (still correct).
    counts = lax.cond(
        jnp.any(use_poisson),
        lambda: jax.random.poisson(key_poisson, poisson_rate).astype(rate.dtype),
        lambda: jnp.zeros_like(poisson_rate),
    )
    z_poisson = _safe_divide(counts - poisson_rate, _safe_sqrt(poisson_rate))
    z_gauss = jax.random.normal(key_gauss, rate.shape, rate.dtype)
    return lax.stop_gradient(jnp.where(use_poisson, z_poisson, z_gauss))


# ----------------------------------------------------------------------------------------------
# public pieces


def expected_signal(m0: jax.Array, m1: jax.Array, n0: Any, detector: str = "ei") -> jax.Array:
    """Expected (noise-free) detector signal.

    Args:
      m0: zeroth spectral moment sum_E w a, [H, W].
      m1: first spectral moment sum_E w E a (keV), [H, W].
      n0: photons emitted per pixel (scalar, or an array broadcastable to [H, W], e.g. a bow-tie).
      detector: ``"pc"`` (photon counting) or ``"ei"`` (energy integrating).

    Returns:
      [H, W]: expected photons ``n0 * m0`` for "pc", expected deposited energy ``n0 * m1`` (keV)
      for "ei".
    """
    _check_detector(detector)
    _check_moments(m0, m1)
    dtype = _float_dtype(m0, m1)
    moment = m0 if detector == "pc" else m1
    return (jnp.asarray(n0, dtype) * moment).astype(dtype)


def quantum_noise(
    key: jax.Array, m0: jax.Array, m1: jax.Array, m2: jax.Array, n0: Any, detector: str = "ei"
) -> jax.Array:
    """Zero-mean quantum (photon) noise, independent between pixels.

    Photon counting: Poisson(N) - N with N = n0 m0. Energy integrating: E_eff Poisson(N_eff) - N Ebar
    with N_eff = n0 m1^2 / m2 and E_eff = m2 / m1, which has the exact compound-Poisson mean
    (n0 m1) and variance (n0 m2). Rates >= :data:`GAUSSIAN_RATE_THRESHOLD` use the moment-matched
    Gaussian. Differentiable (pathwise gradient of the moment-matched Gaussian, finite everywhere).

    Args:
      key: PRNG key.
      m0, m1, m2: spectral moments, [H, W] each (m1 in keV, m2 in keV^2).
      n0: photons emitted per pixel (scalar or broadcastable to [H, W]).
      detector: ``"pc"`` or ``"ei"``.

    Returns:
      [H, W] noise in signal units (photons for "pc", keV for "ei").
    """
    _check_detector(detector)
    _check_moments(m0, m1, m2)
    dtype = _float_dtype(m0, m1, m2)
    n0 = jnp.asarray(n0, dtype)
    if detector == "pc":
        variance = n0 * m0
        rate = variance
    else:
        variance = n0 * m2  # N <E^2> = n0 m0 * (m2 / m0)
        rate = n0 * _safe_divide(m1 * m1, m2)  # N_eff = N Ebar^2 / <E^2>
    z = _standardized_poisson(key, rate.astype(dtype))
    return (_safe_sqrt(variance) * z).astype(dtype)


def apply_crosstalk(noise: jax.Array, kernel: Any = DEEPDRR_CROSSTALK_KERNEL) -> jax.Array:
    """Correlate a noise field between neighbouring pixels by convolving it with ``kernel``.

    Deterministic (no key). Zero padding, output the same size as the input; apply it to noise
    only, never to the signal (it would blur and rescale the image by sum(kernel) = 1.42).

    Args:
      noise: [H, W] noise field.
      kernel: odd-sized 2D kernel (nested tuples or array).

    Returns:
      [H, W] correlated noise; for white unit-variance input, the variance is sum(k^2) and the
      covariance at offset (di, dj) is sum_{i,j} k[i, j] k[i + di, j + dj].
    """
    chex.assert_rank(noise, 2)
    k = jnp.asarray(kernel, noise.dtype)
    chex.assert_rank(k, 2)
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise JaxdrrError(f"crosstalk kernel must have odd size, got shape {k.shape}")
    return jax.scipy.signal.convolve2d(noise, k, mode="same", precision=lax.Precision.HIGHEST)


def readout_noise(key: jax.Array, shape: tuple[int, int], std: Any, row_correlation: Any) -> jax.Array:
    """Electronic readout noise: Gaussian, AR(1)-correlated along each row, rows independent.

    x_0 ~ N(0, 1), x_j = rho x_{j-1} + sqrt(1 - rho^2) e_j along the last axis, so every pixel has
    variance 1 and corr(x_j, x_{j+k}) = rho^k; the result is ``std * x``. The recurrence runs as a
    parallel ``lax.associative_scan`` over columns (log depth, no Python loop).

    Args:
      key: PRNG key.
      shape: (H, W) image shape.
      std: standard deviation in signal units (scalar, may be traced).
      row_correlation: rho in (-1, 1), correlation of horizontally adjacent pixels (may be traced).

    Returns:
      [H, W] zero-mean readout noise with standard deviation ``std``.
    """
    if len(shape) != 2:
        raise JaxdrrError(f"readout noise shape must be (H, W), got {shape}")
    white = jax.random.normal(key, tuple(shape), jnp.float32)
    rho = jnp.asarray(row_correlation, white.dtype)
    # Affine maps x -> a x + b, composed along the row; the prefix composition applied to 0 is x_j.
    offsets = jnp.sqrt(1.0 - rho * rho) * white
    offsets = offsets.at[:, 0].set(white[:, 0])  # stationary start: x_0 ~ N(0, 1)
    slopes = jnp.broadcast_to(rho, white.shape)

    def compose(left, right):
        slope_l, offset_l = left
        slope_r, offset_r = right
        return slope_l * slope_r, slope_r * offset_l + offset_r

    _, ar1 = lax.associative_scan(compose, (slopes, offsets), axis=1)
    return jnp.asarray(std, white.dtype) * ar1


# ----------------------------------------------------------------------------------------------
# public entry points


def _noise_active(config: NoiseConfig | None) -> tuple[bool, bool]:
    if config is None:
        return False, False
    return config.quantum, config.readout and config.readout_noise_std > 0


def _readout_scale(config: NoiseConfig, detector: str, e_mean0: Any, dtype) -> jax.Array:
    if detector == "pc":
        return jnp.asarray(config.readout_noise_std, dtype)
    if e_mean0 is None:
        raise JaxdrrError(
            "e_mean0 (the emitted mean energy sum_E w E, keV) is required to scale readout noise for an "
            "energy-integrating detector; pass it, or set NoiseConfig(readout=False)"
        )
    return jnp.asarray(config.readout_noise_std, dtype) * jnp.asarray(e_mean0, dtype)


def noisy_signal(
    key: jax.Array | None,
    m0: jax.Array,
    m1: jax.Array,
    m2: jax.Array,
    config: NoiseConfig | None = NoiseConfig(),
    detector: str = "ei",
    e_mean0: Any = None,
    photons_per_pixel: Any = None,
) -> jax.Array:
    """One noisy realisation of the detector signal.

    ``signal = expected + crosstalk (*) quantum_noise + readout_noise`` (see module docstring).
    The key is split into a fixed pair (quantum, readout) regardless of the switches, so turning
    one component off does not change the realisation of the other. For ``jit``, pass ``config``
    and ``detector`` as static arguments; ``vmap`` over keys (and moments) for batches.

    Args:
      key: PRNG key (may be None only when no noise is active).
      m0, m1, m2: spectral moments sum_E w E^k a, [H, W] each (keV^k).
      config: :class:`NoiseConfig`, or None for the noise-free signal.
      detector: ``"ei"`` (energy integrating, keV) or ``"pc"`` (photon counting, photons).
      e_mean0: emitted mean photon energy sum_E w E (keV); needed for "ei" readout noise, which
        is ``readout_noise_std`` photons of this energy.
      photons_per_pixel: optional override of ``config.photons_per_pixel`` (scalar or array
        broadcastable to [H, W], may be traced: e.g. dose augmentation or a bow-tie profile). With
        ``config=None`` it sets the scale of the noise-free signal (default
        ``NoiseConfig().photons_per_pixel``).

    Returns:
      [H, W] noisy signal (photons for "pc", keV for "ei"); exactly :func:`expected_signal` when
      ``config`` is None or both ``quantum`` and ``readout`` are off. Not clipped at 0.
    """
    _check_detector(detector)
    _check_moments(m0, m1, m2)
    n0 = photons_per_pixel
    if n0 is None:
        n0 = (config if config is not None else NoiseConfig()).photons_per_pixel
    signal = expected_signal(m0, m1, n0, detector)
    use_quantum, use_readout = _noise_active(config)
    if not (use_quantum or use_readout):
        return signal
    if key is None:
        raise JaxdrrError("noisy_signal needs a PRNG key (jax.random.key(seed)) when noise is enabled")
    key_quantum, key_readout = jax.random.split(key)
    if use_quantum:
        quantum = quantum_noise(key_quantum, m0, m1, m2, n0, detector)
        if config.crosstalk:
            quantum = apply_crosstalk(quantum, config.crosstalk_kernel)
        signal = signal + quantum
    if use_readout:
        scale = _readout_scale(config, detector, e_mean0, signal.dtype)
        signal = signal + readout_noise(
            key_readout, signal.shape, scale, config.readout_row_correlation
        ).astype(signal.dtype)
    return signal


def signal_variance(
    m0: jax.Array,
    m1: jax.Array,
    m2: jax.Array,
    config: NoiseConfig | None = NoiseConfig(),
    detector: str = "ei",
    e_mean0: Any = None,
    photons_per_pixel: Any = None,
) -> jax.Array:
    """Predicted per-pixel variance of :func:`noisy_signal` (e.g. for likelihood weighting).

    Quantum variance (n0 m0 for "pc", n0 m2 for "ei") times sum(k^2) when crosstalk is on
    (exact for locally uniform exposure; at image edges zero padding lowers it by ~1 %), plus
    the readout variance. Zero when no noise is active.

    Args:
      m0, m1, m2: spectral moments, [H, W] each.
      config, detector, e_mean0, photons_per_pixel: as for :func:`noisy_signal`.

    Returns:
      [H, W] variance in squared signal units.
    """
    _check_detector(detector)
    _check_moments(m0, m1, m2)
    dtype = _float_dtype(m0, m1, m2)
    variance = jnp.zeros(m0.shape, dtype)
    use_quantum, use_readout = _noise_active(config)
    n0 = photons_per_pixel
    if n0 is None and config is not None:
        n0 = config.photons_per_pixel
    if use_quantum:
        quantum = jnp.asarray(n0, dtype) * (m0 if detector == "pc" else m2)
        if config.crosstalk:
            quantum = quantum * float(np.sum(np.square(np.asarray(config.crosstalk_kernel))))
        variance = variance + quantum
    if use_readout:
        variance = variance + _readout_scale(config, detector, e_mean0, dtype) ** 2
    return variance
