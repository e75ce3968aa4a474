"""The physics-parameter pytree: the one builder of the tables every forward model reads.

Image formation (:mod:`jaxdrr.spectral`), the renderer, the Monte Carlo (:mod:`jaxdrr.scatter`),
the dataset generator and the training-data generators all read the same three arrays::

    {"energies": [E] keV, "spectrum": [..., E] photon fractions (each row sums to 1),
     "mu_rho": [M, E] cm^2/g of the M material channels' table materials}

:func:`physics_params` builds them, once per (materials, spectrum); :func:`jaxdrr.default_params`
adds network weights on top. The arrays are constants of a render configuration computed in NumPy
(float64) and handed to JAX in the default float dtype, so they can be replaced, vmapped over or
differentiated like any other argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.physics.attenuation import mass_attenuation

__all__ = ["physics_params"]


def physics_params(
    table_names: Sequence[str],
    energies_keV,
    photon_fractions,
    *,
    trim: bool = True,
    dtype=None,
) -> dict:
    """``{"energies", "spectrum", "mu_rho"}`` for material tables and one or several spectra.

    Args:
      table_names: attenuation-table material of each channel (e.g. ``MaterialConfig.table_names``).
      energies_keV: the energy grid [E] (keV).
      photon_fractions: the emitted spectrum [E], or several spectra [S, E] on the same grid;
        each is normalised to sum 1.
      trim: drop the energies at which every spectrum is zero (fewer bins to sum over). Keep them
        (``trim=False``) when arrays of one shape are needed for several spectra, e.g. to compile
        one jitted function for every kVp.
      dtype: array dtype; default the JAX default float (float32 unless x64 is enabled).

    Returns:
      energies [E'], spectrum [E'] or [S, E'], mu_rho [M, E'].

    Raises:
      JaxdrrError: shapes disagree, or a spectrum is negative, not finite or all zero.
    """
    energies = np.asarray(energies_keV, np.float64)
    weights = np.asarray(photon_fractions, np.float64)
    if energies.ndim != 1 or weights.ndim not in (1, 2) or weights.shape[-1] != energies.shape[0]:
        raise JaxdrrError(
            f"spectrum of shape {weights.shape} does not match the energy grid of shape {energies.shape}"
        )
    if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
        raise JaxdrrError("spectrum weights must be finite and >= 0")
    totals = weights.sum(axis=-1, keepdims=True)
    if np.any(totals <= 0):
        raise JaxdrrError("a spectrum has no photons (all weights are zero)")
    if trim:
        keep = (weights > 0) if weights.ndim == 1 else (weights > 0).any(axis=0)
        energies, weights = energies[keep], weights[..., keep]
    weights = weights / weights.sum(axis=-1, keepdims=True)
    dtype = dtype or jnp.result_type(float)
    return {
        "energies": jnp.asarray(energies, dtype),
        "spectrum": jnp.asarray(weights, dtype),
        "mu_rho": jnp.asarray(mass_attenuation(list(table_names), energies), dtype),
    }
