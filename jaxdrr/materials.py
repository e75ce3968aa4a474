"""From Hounsfield units to per-material density channels.

Two steps turn a CT in HU into what the ray marcher integrates:

1. **HU -> density** (g/cm^3): :func:`hu_to_density_deepdrr` (DeepDRR's bilinear fit, the default)
   or :func:`hu_to_density_schneider` (Schneider, Bortfeld & Schlegel 2000 piecewise-linear
   calibration). Both live in the :data:`HU_TO_DENSITY` registry.
2. **Material decomposition**: :func:`decompose` splits every voxel into fractions of
   ("air", "soft_tissue", "bone") with DeepDRR's thresholds (air <= -800 HU < soft tissue <= 350 HU
   < bone) made *soft*: each threshold is a logistic step of width ``softness_hu``, so the fractions
   sum to 1 exactly and are differentiable with respect to HU. ``softness_hu=0`` gives DeepDRR's
   hard segmentation (zero gradient almost everywhere).

:func:`density_channels` combines both: channel m = density(HU) * fraction_m, shape [M, I, J, K].
A :class:`MaterialConfig` holds the static choices and maps each channel to its attenuation-table
material (bone -> ``"cortical_bone"``). Everything is pure ``jax.numpy`` and works under
``jit``/``vmap``/``grad``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import JaxdrrError

DEFAULT_THRESHOLDS_HU = (-800.0, 350.0)
# 10 HU: fractions are one-hot to 1e-4 at +-100 HU from a threshold while gradients still flow
# through the ~+-40 HU transition band.
DEFAULT_SOFTNESS_HU = 10.0
MATERIAL_NAMES = ("air", "soft_tissue", "bone")

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


def hu_to_density(hu: jax.Array, method: str = DEFAULT_HU_TO_DENSITY) -> jax.Array:
    """HU -> density (g/cm^3) with a method from :data:`HU_TO_DENSITY`."""
    try:
        fn = HU_TO_DENSITY[method]
    except KeyError:
        raise JaxdrrError(
            f"unknown HU->density method {method!r}; choose one of {sorted(HU_TO_DENSITY)}"
        ) from None
    return fn(hu)


def _check_thresholds(thresholds, softness_hu) -> tuple[float, float]:
    if len(thresholds) != 2:
        raise JaxdrrError(f"thresholds must be (air/soft, soft/bone) HU, got {thresholds!r}")
    lo, hi = (float(t) for t in thresholds)
    if not lo < hi:
        raise JaxdrrError(f"thresholds must increase (air/soft < soft/bone), got {thresholds!r}")
    if not float(softness_hu) >= 0:
        raise JaxdrrError(f"softness_hu must be >= 0, got {softness_hu!r}")
    return lo, hi


def decompose(
    hu: jax.Array, thresholds=DEFAULT_THRESHOLDS_HU, softness_hu: float = DEFAULT_SOFTNESS_HU
) -> jax.Array:
    """Soft-threshold decomposition into (air, soft tissue, bone) fractions.

    With logistic steps ``s_k = sigmoid((HU - t_k) / softness)``: air = 1 - s_1,
    soft tissue = s_1 - s_2, bone = s_2. Since t_1 < t_2 with a shared softness, s_1 > s_2, so all
    fractions are in [0, 1] and sum to 1 by construction.

    Args:
      hu: Hounsfield units [I, J, K] (any shape).
      thresholds: (air/soft tissue, soft tissue/bone) boundaries in HU (static).
      softness_hu: logistic scale in HU (static); 0 gives hard thresholds
        (air: HU <= t_1; bone: HU > t_2), as DeepDRR.

    Returns:
      Fractions [3, *hu.shape] in the order of :data:`MATERIAL_NAMES`.
    """
    lo, hi = _check_thresholds(thresholds, softness_hu)
    hu = jnp.asarray(hu, dtype=jnp.result_type(hu, jnp.float32))
    if float(softness_hu) == 0.0:
        above_lo = (hu > lo).astype(hu.dtype)
        above_hi = (hu > hi).astype(hu.dtype)
    else:
        above_lo = jax.nn.sigmoid((hu - lo) / softness_hu)
        above_hi = jax.nn.sigmoid((hu - hi) / softness_hu)
    return jnp.stack([1.0 - above_lo, above_lo - above_hi, above_hi])


def density_channels(
    hu: jax.Array,
    method: str = DEFAULT_HU_TO_DENSITY,
    thresholds=DEFAULT_THRESHOLDS_HU,
    softness_hu: float = DEFAULT_SOFTNESS_HU,
) -> jax.Array:
    """Per-material density channels: density(HU) times the material fractions.

    Args:
      hu: Hounsfield units [I, J, K].
      method: HU -> density method (key of :data:`HU_TO_DENSITY`), static.
      thresholds: decomposition thresholds (HU), static.
      softness_hu: decomposition softness (HU), static.

    Returns:
      Densities [3, I, J, K] in g/cm^3 for (air, soft tissue, bone); they sum to density(HU).
    """
    return hu_to_density(hu, method)[None] * decompose(hu, thresholds, softness_hu)


@dataclasses.dataclass(frozen=True)
class MaterialConfig:
    """Static material-model choices (hashable, usable as a jit static argument).

    Attributes:
      names: channel names, in channel order.
      table_names: attenuation-table material of each channel (see
        :func:`jaxdrr.physics.available_materials`).
      thresholds_hu: (air/soft tissue, soft tissue/bone) thresholds.
      softness_hu: logistic softness of the thresholds (0 = hard).
      hu_to_density: key of :data:`HU_TO_DENSITY`.
    """

    names: tuple[str, ...] = MATERIAL_NAMES
    table_names: tuple[str, ...] = ("air", "soft_tissue", "cortical_bone")
    thresholds_hu: tuple[float, float] = DEFAULT_THRESHOLDS_HU
    softness_hu: float = DEFAULT_SOFTNESS_HU
    hu_to_density: str = DEFAULT_HU_TO_DENSITY

    def __post_init__(self):
        if len(self.names) != len(self.table_names):
            raise JaxdrrError(f"{len(self.names)} channel names but {len(self.table_names)} table names")
        if len(self.names) != 3:
            raise JaxdrrError(
                "the threshold decomposition defines exactly 3 channels "
                f"(air, soft tissue, bone); got {self.names}"
            )
        if self.hu_to_density not in HU_TO_DENSITY:
            raise JaxdrrError(
                f"unknown HU->density method {self.hu_to_density!r}; choose one of {sorted(HU_TO_DENSITY)}"
            )
        _check_thresholds(self.thresholds_hu, self.softness_hu)
        from jaxdrr.physics.attenuation import available_materials

        unknown = [n for n in self.table_names if n not in available_materials()]
        if unknown:
            raise JaxdrrError(
                f"unknown attenuation-table materials {unknown}; valid: {', '.join(available_materials())}"
            )
        object.__setattr__(self, "thresholds_hu", tuple(float(t) for t in self.thresholds_hu))

    def density_channels(self, hu: jax.Array) -> jax.Array:
        """:func:`density_channels` with this configuration: [M, I, J, K] g/cm^3."""
        return density_channels(hu, self.hu_to_density, self.thresholds_hu, self.softness_hu)

    def mass_attenuation(self, energies) -> np.ndarray:
        """mu/rho [M, E] (cm^2/g) of the channels' table materials at energies (keV)."""
        from jaxdrr.physics.attenuation import mass_attenuation

        return mass_attenuation(self.table_names, energies)
