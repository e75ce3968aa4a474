"""The threshold route: soft HU thresholds between an ordered list of materials.

M materials ordered by HU (air < soft tissue < bone [< metal]) are separated by M - 1 increasing
thresholds t_1 < ... < t_{M-1}. Each threshold is a logistic step with one shared softness s::

    S_k = sigmoid((HU - t_k) / s)          (k = 1 .. M-1; S_0 = 1, S_M = 0)
    fraction_m = S_m - S_{m+1}              (m = 0 .. M-1)

Because the thresholds increase and the softness is shared, S_k decreases with k, so every
fraction is in [0, 1], and the sum telescopes to S_0 - S_M = 1. The fractions are smooth in HU
(gradients flow through a band of about +-4 s around each threshold). ``softness_hu = 0`` gives
hard steps ``S_k = [HU > t_k]``: DeepDRR's segmentation (air <= -800 HU < soft tissue <= 350 HU
< bone), with zero gradient almost everywhere.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdrr.errors import JaxdrrError

DEFAULT_THRESHOLDS_HU = (-800.0, 350.0)
# Bone/metal boundary. Dense cortical bone reaches ~2000 HU and CT numbers saturate at 3071 HU
# (12-bit storage), so metal implants sit between 2500 and 3071 HU after the usual clipping.
METAL_THRESHOLD_HU = 2500.0
# 10 HU: fractions are one-hot to 1e-4 at +-100 HU from a threshold while gradients still flow
# through the ~+-40 HU transition band.
DEFAULT_SOFTNESS_HU = 10.0


def check_thresholds(thresholds, softness_hu, num_materials: int | None = None) -> tuple[float, ...]:
    """Validates thresholds (HU) and softness; returns the thresholds as a tuple of floats.

    Args:
      thresholds: increasing HU boundaries, one fewer than the materials.
      softness_hu: logistic scale (>= 0).
      num_materials: if given, the number of materials M (then exactly M - 1 thresholds are needed).
    """
    try:
        ts = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise JaxdrrError(f"thresholds must be a sequence of HU numbers, got {thresholds!r}") from None
    if num_materials is not None and len(ts) != num_materials - 1:
        raise JaxdrrError(
            f"{num_materials} materials need {num_materials - 1} increasing thresholds (HU), "
            f"got {len(ts)}: {thresholds!r}"
        )
    if not ts:
        raise JaxdrrError("at least one threshold (two materials) is needed")
    if not all(math.isfinite(t) for t in ts):
        raise JaxdrrError(f"thresholds must be finite, got {thresholds!r}")
    if any(not a < b for a, b in zip(ts, ts[1:], strict=False)):
        raise JaxdrrError(
            f"thresholds must increase strictly (e.g. air/soft < soft/bone), got {thresholds!r}"
        )
    try:
        ok = float(softness_hu) >= 0 and math.isfinite(float(softness_hu))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise JaxdrrError(f"softness_hu must be a finite number >= 0, got {softness_hu!r}")
    return ts


def threshold_fractions(
    hu: jax.Array, thresholds=DEFAULT_THRESHOLDS_HU, softness_hu: float = DEFAULT_SOFTNESS_HU
) -> jax.Array:
    """Soft-threshold decomposition into ``len(thresholds) + 1`` material fractions.

    With logistic steps ``S_k = sigmoid((HU - t_k) / softness)``: fraction_0 = 1 - S_1,
    fraction_m = S_m - S_{m+1}, fraction_{M-1} = S_{M-1}. With increasing thresholds and a shared
    softness, S_k decreases with k, so all fractions are in [0, 1] and sum to 1 by construction.
    The defaults give DeepDRR's (air, soft tissue, bone) split.

    Args:
      hu: Hounsfield units [I, J, K] (any shape).
      thresholds: M - 1 increasing boundaries in HU (static), e.g. (air/soft tissue,
        soft tissue/bone) or (-800, 350, 2500) with metal.
      softness_hu: logistic scale in HU (static); 0 gives hard thresholds
        (material m where t_m < HU <= t_{m+1}), as DeepDRR.

    Returns:
      Fractions [M, *hu.shape], in order of increasing HU.
    """
    ts = check_thresholds(thresholds, softness_hu)
    hu = jnp.asarray(hu, dtype=jnp.result_type(hu, jnp.float32))
    if float(softness_hu) == 0.0:
        steps = [(hu > t).astype(hu.dtype) for t in ts]
    else:
        steps = [jax.nn.sigmoid((hu - t) / softness_hu) for t in ts]
    middle = [steps[k] - steps[k + 1] for k in range(len(steps) - 1)]
    return jnp.stack([1.0 - steps[0], *middle, steps[-1]])
