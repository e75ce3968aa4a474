"""Trilinear sampling of a zero-padded, channels-last, flattened volume: the one place for it.

The volume is stored as ``flat[(i * J2 + j) * K2 + k, c]`` over padded shape (I2, J2, K2); positions
are padded index coordinates. Positions outside the support (0, n+1) sample exactly zero and have
zero derivative. One gather of the eight corner rows fetches all C channels at once, which is why
C channels cost little more than one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def corner_offsets(padded_shape) -> jax.Array:
    """Flat offsets of the 8 cell corners, ordered (di, dj, dk) in binary 000..111."""
    _, J2, K2 = padded_shape
    return jnp.array([di * J2 * K2 + dj * K2 + dk
                      for di in (0, 1) for dj in (0, 1) for dk in (0, 1)], dtype=jnp.int32)


def cell_and_fraction(positions, padded_shape):
    """Base flat index [R], fractional offsets [R, 3] and inside-support mask [R]."""
    upper = jnp.asarray(padded_shape, dtype=positions.dtype) - 1.0
    inside = jnp.all((positions > 0.0) & (positions < upper), axis=-1)
    p = jnp.clip(positions, 0.0, upper)
    cell = jnp.clip(jnp.floor(p), 0.0, upper - 1.0)
    frac = p - cell
    cell = cell.astype(jnp.int32)
    _, J2, K2 = padded_shape
    base = (cell[:, 0] * J2 + cell[:, 1]) * K2 + cell[:, 2]
    return base, frac, inside


def _corner_weights(frac):
    """[R, 8] trilinear weights in corner order 000..111."""
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    return jnp.stack([gx * gy * gz, gx * gy * fz, gx * fy * gz, gx * fy * fz,
                      fx * gy * gz, fx * gy * fz, fx * fy * gz, fx * fy * fz], axis=-1)


def _corner_weight_gradients(frac):
    """[R, 8, 3] derivatives of the corner weights w.r.t. the position."""
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    dx = jnp.stack([-gy * gz, -gy * fz, -fy * gz, -fy * fz, gy * gz, gy * fz, fy * gz, fy * fz], -1)
    dy = jnp.stack([-gx * gz, -gx * fz, gx * gz, gx * fz, -fx * gz, -fx * fz, fx * gz, fx * fz], -1)
    dz = jnp.stack([-gx * gy, gx * gy, -gx * fy, gx * fy, -fx * gy, fx * gy, -fx * fy, fx * fy], -1)
    return jnp.stack([dx, dy, dz], axis=-1)


def gather_corners(flat, base, offsets):
    """[R, 8, C] corner values (indices are in bounds by construction)."""
    return flat.at[base[:, None] + offsets[None, :]].get(mode="promise_in_bounds")


def sample(flat, padded_shape, positions):
    """Trilinear samples [R, C] at positions [R, 3]."""
    base, frac, inside = cell_and_fraction(positions, padded_shape)
    corners = gather_corners(flat, base, corner_offsets(padded_shape))
    w = _corner_weights(frac) * inside[:, None].astype(frac.dtype)
    return jnp.einsum("rk,rkc->rc", w, corners)


def sample_with_position_gradient(flat, padded_shape, positions):
    """Samples [R, C], their position gradients [R, C, 3], and the corner data for scattering.

    Returns:
      (values, d_values_d_position, base [R], weights [R, 8]) where weights are zero outside the
      support.
    """
    base, frac, inside = cell_and_fraction(positions, padded_shape)
    corners = gather_corners(flat, base, corner_offsets(padded_shape))
    mask = inside[:, None].astype(frac.dtype)
    w = _corner_weights(frac) * mask
    dw = _corner_weight_gradients(frac) * mask[:, :, None]
    values = jnp.einsum("rk,rkc->rc", w, corners)
    grads = jnp.einsum("rkd,rkc->rcd", dw, corners)
    return values, grads, base, w
