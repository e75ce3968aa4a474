"""HU -> mass density (g/cm^3): DeepDRR's bilinear fit and the Schneider (2000) calibration.

Both live in the :data:`HU_TO_DENSITY` registry, keyed by the names that
:attr:`jaxdrr.materials.MaterialConfig.hu_to_density` accepts. They are pure ``jax.numpy`` functions
of HU alone (no material knowledge), so they work under ``jit``/``vmap``/``grad``.

:func:`channel_densities` is the one place fractions become per-channel densities. CT numbers
saturate at 3071 HU (12-bit storage), so neither curve can give the density of metal: channels of
metal use the metal's nominal density instead (see :mod:`jaxdrr.materials.decomposition`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxdrr.errors import JaxdrrError

# Schneider, Bortfeld & Schlegel 2000 (Phys Med Biol 45:459) nodes (HU, g/cm^3), PHYSICS.md sect. 2.
SCHNEIDER_HU = (-1000.0, -98.0, -97.0, 14.0, 23.0, 100.0, 101.0, 1600.0, 3000.0)
SCHNEIDER_DENSITY = (0.00121, 0.93, 0.930486, 1.03, 1.031, 1.1199, 1.0762, 1.9642, 2.8)


def hu_to_density_deepdrr(hu: jax.Array) -> jax.Array:
    """DeepDRR's bilinear HU -> density fit (knee at 0 HU), clipped at 0.

    ``rho = max(min(0.001029 HU + 1.030, 0.0005886 HU + 1.030), 0)``

    Args:
      hu: Hounsfield units, any shape.

    Returns:
      Density in g/cm^3, same shape.
    """
    hu = jnp.asarray(hu, dtype=jnp.result_type(hu, jnp.float32))
    return jnp.maximum(jnp.minimum(0.001029 * hu + 1.030, 0.0005886 * hu + 1.030), 0.0)


def hu_to_density_schneider(hu: jax.Array) -> jax.Array:
    """Schneider et al. (2000) piecewise-linear HU -> density calibration.

    Linear between the nodes; clamped to the air density below -1000 HU and extrapolated along the
    last segment above 3000 HU (so metal keeps getting denser instead of saturating at 2.8 g/cm^3).

    Args:
      hu: Hounsfield units, any shape.

    Returns:
      Density in g/cm^3, same shape.
    """
    hu = jnp.asarray(hu, dtype=jnp.result_type(hu, jnp.float32))
    xp = jnp.asarray(SCHNEIDER_HU, hu.dtype)
    fp = jnp.asarray(SCHNEIDER_DENSITY, hu.dtype)
    inside = jnp.interp(hu, xp, fp)
    last_slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return jnp.where(hu > xp[-1], fp[-1] + last_slope * (hu - xp[-1]), inside)


HU_TO_DENSITY: dict[str, Callable[[jax.Array], jax.Array]] = {
    "deepdrr": hu_to_density_deepdrr,
    "schneider": hu_to_density_schneider,
}
DEFAULT_HU_TO_DENSITY = "deepdrr"


def check_hu_to_density(method: str) -> str:
    """Returns ``method`` if it is a key of :data:`HU_TO_DENSITY`, else raises a JaxdrrError."""
    if method not in HU_TO_DENSITY:
        raise JaxdrrError(f"unknown HU->density method {method!r}; choose one of {sorted(HU_TO_DENSITY)}")
    return method


def hu_to_density(hu: jax.Array, method: str = DEFAULT_HU_TO_DENSITY) -> jax.Array:
    """HU -> density (g/cm^3) with a method from :data:`HU_TO_DENSITY`."""
    return HU_TO_DENSITY[check_hu_to_density(method)](hu)


def channel_densities(
    hu: jax.Array,
    fractions: jax.Array,
    method: str = DEFAULT_HU_TO_DENSITY,
    nominal_densities: Sequence[float | None] | None = None,
) -> jax.Array:
    """Per-channel densities [M, ...] (g/cm^3): ``fraction_m * density(HU)``, or
    ``fraction_m * nominal_m`` for the channels given a nominal density (metal).

    Args:
      hu: Hounsfield units [...].
      fractions: material fractions [M, ...].
      method: HU -> density method (key of :data:`HU_TO_DENSITY`), static.
      nominal_densities: per channel a nominal density (g/cm^3) used instead of density(HU), or
        None; None (the default) for none at all.

    Returns:
      Densities [M, ...]; they sum to density(HU) where no channel has a nominal density.
    """
    rho = hu_to_density(hu, method)
    if nominal_densities is None or all(n is None for n in nominal_densities):
        return rho[None] * fractions
    scale = jnp.stack([rho if n is None else jnp.full_like(rho, n) for n in nominal_densities])
    return scale * fractions
