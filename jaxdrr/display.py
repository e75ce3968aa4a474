"""Display windowing: mapping physical images to [0, 1] or integer pixel values, explicitly.

Physics outputs (transmission, -ln T) keep their physical scale; nothing in jaxdrr normalises an
image per image by default (DeepDRR's min-max normalisation hid the physics and was a common
complaint). Call :func:`window` when you want a picture, then :func:`to_uint8` / :func:`to_uint16`
to save it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdrr.errors import JaxdrrError


def window(
    image: jax.Array,
    low: float | None = None,
    high: float | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> jax.Array:
    """Linearly maps [low, high] to [0, 1] and clips.

    Args:
      image: any-shape array.
      low: value mapped to 0; default: the ``percentiles[0]`` percentile of ``image``.
      high: value mapped to 1; default: the ``percentiles[1]`` percentile of ``image``.
      percentiles: (lower, upper) percentiles (0..100) used for missing bounds.

    Returns:
      Float array in [0, 1], same shape; all zeros if ``high <= low`` (a constant image).
    """
    image = jnp.asarray(image)
    image = image.astype(jnp.result_type(image, jnp.float32))
    p_lo, p_hi = percentiles
    if not 0.0 <= p_lo <= p_hi <= 100.0:
        raise JaxdrrError(f"percentiles must satisfy 0 <= lower <= upper <= 100, got {percentiles}")
    lo = jnp.percentile(image, p_lo) if low is None else jnp.asarray(low, image.dtype)
    hi = jnp.percentile(image, p_hi) if high is None else jnp.asarray(high, image.dtype)
    span = hi - lo
    safe_span = jnp.where(span > 0, span, 1.0)
    return jnp.where(span > 0, jnp.clip((image - lo) / safe_span, 0.0, 1.0), jnp.zeros_like(image))


def _to_uint(image01: jax.Array, max_value: int, dtype) -> jax.Array:
    return jnp.round(jnp.clip(jnp.asarray(image01), 0.0, 1.0) * max_value).astype(dtype)


def to_uint8(image01: jax.Array) -> jax.Array:
    """[0, 1] -> uint8 0..255 (rounded; values outside [0, 1] are clipped)."""
    return _to_uint(image01, 255, jnp.uint8)


def to_uint16(image01: jax.Array) -> jax.Array:
    """[0, 1] -> uint16 0..65535 (rounded; values outside [0, 1] are clipped)."""
    return _to_uint(image01, 65535, jnp.uint16)
