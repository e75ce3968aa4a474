"""Trilinear sampling of a zero-padded, channels-last, flattened volume: the one place for it.

The volume is stored as ``flat[(i * J2 + j) * K2 + k, c]`` over padded shape (I2, J2, K2); positions
are padded index coordinates. Positions outside the support (0, n+1) sample exactly zero and have
zero derivative. One gather of the eight corner rows fetches all C channels at once, which is why
C channels cost little more than one.

Interpolation is evaluated separably (lerp along k, then j, then i) rather than as a weighted sum
of the eight corners: on the CPU the separable form measured about 3x faster (fewer multiplies and
no small-matrix contraction).
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


def gather_corners(flat, base, offsets):
    """[R, 2, 2, 2, C] corner values, axes (di, dj, dk); indices are in bounds by construction."""
    corners = flat.at[base[:, None] + offsets[None, :]].get(mode="promise_in_bounds")
    return corners.reshape(base.shape[0], 2, 2, 2, flat.shape[-1])


def _lerp(a, b, t):
    return a + (b - a) * t


def interpolate(corners, frac):
    """Trilinear value [R, ...] from corners [R, 2, 2, 2, ...] and fractions [R, 3]."""
    extra = (None,) * (corners.ndim - 4)
    fx, fy, fz = (frac[(slice(None), i) + extra] for i in range(3))
    z = _lerp(corners[:, :, :, 0], corners[:, :, :, 1], fz[:, None, None])
    y = _lerp(z[:, :, 0], z[:, :, 1], fy[:, None])
    return _lerp(y[:, 0], y[:, 1], fx)


def interpolate_gradient(corners, frac):
    """d(trilinear)/d(position) [R, 3] of scalar corners [R, 2, 2, 2]."""
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    z = _lerp(corners[:, :, :, 0], corners[:, :, :, 1], fz[:, None, None])   # [R, 2, 2]
    dz = corners[:, :, :, 1] - corners[:, :, :, 0]                           # [R, 2, 2]
    y = _lerp(z[:, :, 0], z[:, :, 1], fy[:, None])                           # [R, 2]
    dy = z[:, :, 1] - z[:, :, 0]                                             # [R, 2]
    dz_y = _lerp(dz[:, :, 0], dz[:, :, 1], fy[:, None])                      # [R, 2]
    return jnp.stack([y[:, 1] - y[:, 0], _lerp(dy[:, 0], dy[:, 1], fx),
                      _lerp(dz_y[:, 0], dz_y[:, 1], fx)], axis=-1)


def corner_weights(frac):
    """[R, 8] trilinear weights in corner order 000..111 (for scattering into the volume)."""
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    return jnp.stack([gx * gy * gz, gx * gy * fz, gx * fy * gz, gx * fy * fz,
                      fx * gy * gz, fx * gy * fz, fx * fy * gz, fx * fy * fz], axis=-1)


def sample(flat, padded_shape, positions):
    """Trilinear samples [R, C] at positions [R, 3]."""
    base, frac, inside = cell_and_fraction(positions, padded_shape)
    corners = gather_corners(flat, base, corner_offsets(padded_shape))
    return interpolate(corners, frac) * inside[:, None].astype(frac.dtype)


def sample_cotangent_gradient(flat, padded_shape, positions, cotangent):
    """Position gradient [R, 3] of ``sum_c cotangent[r, c] * sample[r, c]``, and scatter data.

    Contracting the corners with the cotangent first turns C interpolation gradients into one.

    Returns:
      (gradient [R, 3], base [R], frac [R, 3], inside [R]).
    """
    base, frac, inside = cell_and_fraction(positions, padded_shape)
    corners = gather_corners(flat, base, corner_offsets(padded_shape))
    weighted = jnp.einsum("rijkc,rc->rijk", corners, cotangent)
    grad = interpolate_gradient(weighted, frac) * inside[:, None].astype(frac.dtype)
    return grad, base, frac, inside
