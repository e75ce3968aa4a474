"""Spectral image formation: Beer-Lambert over the spectrum, reduced to detector moments.

Given per-pixel, per-material line integrals ``L`` [..., M] (g/cm^2), mass attenuation ``mu_rho``
[M, E] (cm^2/g) and a spectrum (``energies`` [E] keV, photon fractions ``weights`` [E], sum 1),
the transmitted fraction at each energy is ``a = exp(-L @ mu_rho)`` [..., E]. Everything the
detector and the noise model need are three moments over energy (docs/architecture.md):

    m_k = sum_E w(E) E^k a(E),  k = 0, 1, 2

photon-counting transmission ``T_pc = m0``, energy-integrating ``T_ei = m1 / sum(w E)``, mean
energy ``m1 / m0``, Swank factor ``m1^2 / (m0 m2)``. This module is the one place the
Beer-Lambert formula lives.

Memory: ``a`` is never materialised for all energies at once when that would be large. The energy
axis is processed in chunks with ``lax.scan`` (chunk size chosen so one chunk of ``a`` stays below
~64 MB, or given explicitly) and the scan body is rematerialised (``jax.checkpoint``) so reverse-mode
differentiation stores only the running moments, not ``a``. Computation is in the dtype of ``L``
(float32 by default) with full-precision matmuls.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdrr.errors import JaxdrrError

DETECTOR_KINDS = ("ei", "pc")
# Elements of one chunk of the [..., E] transmission array: 16 Mi float32 = 64 MB.
CHUNK_BUDGET_ELEMENTS = 1 << 24


class DetectorMoments(NamedTuple):
    """Energy moments of the transmitted spectrum, each with the batch shape of the line integrals.

    Attributes:
      m0: sum_E w a            (photon-counting transmission).
      m1: sum_E w E a          (keV; energy-integrating signal before normalisation).
      m2: sum_E w E^2 a        (keV^2; for the Swank factor / noise variance).
    """

    m0: jax.Array
    m1: jax.Array
    m2: jax.Array


def auto_energy_chunk(batch_size: int, num_energies: int) -> int:
    """Largest energy chunk whose [batch, chunk] transmission block fits the memory budget."""
    return int(max(1, min(num_energies, CHUNK_BUDGET_ELEMENTS // max(batch_size, 1))))


def _moments_block(L, mu_rho, energies, weights):
    """Moments contributed by one block of energies: L [B, M], mu_rho [M, C], energies/weights [C]."""
    attenuation = jnp.exp(-jnp.dot(L, mu_rho, precision=lax.Precision.HIGHEST))  # [B, C]
    w_e = weights * energies
    per_energy = jnp.stack([weights, w_e, w_e * energies], axis=-1)  # [C, 3]
    return jnp.dot(attenuation, per_energy, precision=lax.Precision.HIGHEST)  # [B, 3]


def detector_moments(
    line_integrals_g_cm2: jax.Array, mu_rho, energies, weights, energy_chunk: int | None = None
) -> DetectorMoments:
    """Spectral Beer-Lambert moments m0, m1, m2 per pixel.

    Args:
      line_integrals_g_cm2: per-material line integrals [..., M] in g/cm^2 (``ops.project`` gives
        g/cm^3 * mm: divide by 10).
      mu_rho: mass attenuation coefficients [M, E] (cm^2/g), e.g. from
        :func:`jaxdrr.physics.mass_attenuation`.
      energies: bin energies [E] (keV).
      weights: photon fractions [E] (normally summing to 1).
      energy_chunk: energies per scan step (static). ``None``: automatic (unchunked for small
        batches, bounded to ~64 MB per chunk for large ones).

    Returns:
      :class:`DetectorMoments` (m0, m1, m2), each of shape ``line_integrals.shape[:-1]``.
    """
    L = jnp.asarray(line_integrals_g_cm2)
    dtype = L.dtype if jnp.issubdtype(L.dtype, jnp.floating) else jnp.float32
    L = L.astype(dtype)
    mu_rho = jnp.asarray(mu_rho, dtype)
    energies = jnp.asarray(energies, dtype)
    weights = jnp.asarray(weights, dtype)
    if mu_rho.ndim != 2 or L.ndim < 1 or L.shape[-1] != mu_rho.shape[0]:
        raise JaxdrrError(f"line integrals [..., M] and mu_rho [M, E] disagree: {L.shape} vs {mu_rho.shape}")
    num_e = mu_rho.shape[1]
    if energies.shape != (num_e,) or weights.shape != (num_e,):
        raise JaxdrrError(f"energies {energies.shape} and weights {weights.shape} must both be [{num_e}]")

    batch_shape = L.shape[:-1]
    L = L.reshape(-1, L.shape[-1])
    chunk = auto_energy_chunk(L.shape[0], num_e) if energy_chunk is None else int(energy_chunk)
    if chunk < 1:
        raise JaxdrrError(f"energy_chunk must be >= 1, got {energy_chunk}")

    if chunk >= num_e:
        moments = _moments_block(L, mu_rho, energies, weights)
    else:
        num_chunks = -(-num_e // chunk)
        pad = num_chunks * chunk - num_e
        # Padded energies carry zero weight, so they add exactly nothing.
        mu_chunks = jnp.pad(mu_rho, ((0, 0), (0, pad))).reshape(-1, num_chunks, chunk).transpose(1, 0, 2)
        e_chunks = jnp.pad(energies, (0, pad)).reshape(num_chunks, chunk)
        w_chunks = jnp.pad(weights, (0, pad)).reshape(num_chunks, chunk)

        # Rematerialised body: the backward pass recomputes each chunk's attenuation instead of
        # storing all of them, keeping memory at O(batch * chunk).
        @jax.checkpoint
        def step(acc, xs):
            mu_c, e_c, w_c = xs
            return acc + _moments_block(L, mu_c, e_c, w_c), None

        moments, _ = lax.scan(step, jnp.zeros((L.shape[0], 3), dtype), (mu_chunks, e_chunks, w_chunks))

    moments = moments.reshape(*batch_shape, 3)
    return DetectorMoments(moments[..., 0], moments[..., 1], moments[..., 2])


def transmission(moments: DetectorMoments, energies, weights, detector: str = "ei") -> jax.Array:
    """Detector transmission from moments: the signal relative to no object.

    Args:
      moments: from :func:`detector_moments`.
      energies: bin energies [E] (keV), as passed to :func:`detector_moments`.
      weights: photon fractions [E], as passed to :func:`detector_moments`.
      detector: ``"ei"`` (energy-integrating: m1 / sum(w E)) or ``"pc"`` (photon-counting:
        m0 / sum(w)).

    Returns:
      Transmission in [0, 1], shape of the moments.
    """
    dtype = moments.m0.dtype
    w = jnp.asarray(weights, dtype)
    if detector == "ei":
        return moments.m1 / jnp.sum(w * jnp.asarray(energies, dtype))
    if detector == "pc":
        return moments.m0 / jnp.sum(w)
    raise JaxdrrError(f"detector must be one of {DETECTOR_KINDS}, got {detector!r}")


def spectral_transmission(
    line_integrals_g_cm2: jax.Array,
    mu_rho,
    energies,
    weights,
    detector: str = "ei",
    energy_chunk: int | None = None,
) -> jax.Array:
    """Shortcut: :func:`transmission` of :func:`detector_moments` (same arguments)."""
    moments = detector_moments(line_integrals_g_cm2, mu_rho, energies, weights, energy_chunk)
    return transmission(moments, energies, weights, detector)


def mean_energy(moments: DetectorMoments) -> jax.Array:
    """Mean energy of the transmitted photons m1 / m0 (keV); 0 where nothing is transmitted."""
    safe = jnp.where(moments.m0 > 0, moments.m0, 1.0)
    return jnp.where(moments.m0 > 0, moments.m1 / safe, 0.0)


def swank_factor(moments: DetectorMoments) -> jax.Array:
    """Swank factor m1^2 / (m0 m2) of an energy-integrating detector (1 for a monoenergetic beam)."""
    denom = moments.m0 * moments.m2
    safe = jnp.where(denom > 0, denom, 1.0)
    return jnp.where(denom > 0, moments.m1**2 / safe, 1.0)


def log_transmission(transmission_: jax.Array, floor: float = 1e-12) -> jax.Array:
    """The "log" image -ln(T), with T floored to keep it finite where nothing is transmitted."""
    return -jnp.log(jnp.maximum(transmission_, floor))


__all__ = [
    "DETECTOR_KINDS",
    "DetectorMoments",
    "auto_energy_chunk",
    "detector_moments",
    "transmission",
    "spectral_transmission",
    "mean_energy",
    "swank_factor",
    "log_transmission",
]
