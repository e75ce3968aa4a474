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
    return jnp.array(
        [di * J2 * K2 + dj * K2 + dk for di in (0, 1) for dj in (0, 1) for dk in (0, 1)], dtype=jnp.int32
    )


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
    z = _lerp(corners[:, :, :, 0], corners[:, :, :, 1], fz[:, None, None])  # [R, 2, 2]
    dz = corners[:, :, :, 1] - corners[:, :, :, 0]  # [R, 2, 2]
    y = _lerp(z[:, :, 0], z[:, :, 1], fy[:, None])  # [R, 2]
    dy = z[:, :, 1] - z[:, :, 0]  # [R, 2]
    dz_y = _lerp(dz[:, :, 0], dz[:, :, 1], fy[:, None])  # [R, 2]
    return jnp.stack(
        [y[:, 1] - y[:, 0], _lerp(dy[:, 0], dy[:, 1], fx), _lerp(dz_y[:, 0], dz_y[:, 1], fx)], axis=-1
    )


def corner_weights(frac):
    """[R, 8] trilinear weights in corner order 000..111 (for scattering into the volume)."""
    fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    return jnp.stack(
        [
            gx * gy * gz,
            gx * gy * fz,
            gx * fy * gz,
            gx * fy * fz,
            fx * gy * gz,
            fx * gy * fz,
            fx * fy * gz,
            fx * fy * fz,
        ],
        axis=-1,
    )


def sample(flat, padded_shape, positions):
    """Trilinear samples [R, C] at positions [R, 3]."""
    base, frac, inside = cell_and_fraction(positions, padded_shape)
    corners = gather_corners(flat, base, corner_offsets(padded_shape))
    return interpolate(corners, frac) * inside[:, None].astype(frac.dtype)


def sample_unpadded(volume, positions):
    """:func:`sample` of the zero-padded copy of ``volume`` [C, I, J, K], without building the copy.

    ``positions`` [R, 3] are padded index coordinates, as for :func:`sample`. Padding a clinical
    volume reads and writes all of it (about 50 ms for a 244x175x238x3 CT on two CPU cores); a
    caller that samples a small part of the volume (the inside of a tool) gathers the corners from
    the unpadded channels-first array instead, treating corners outside it as zero.

    Returns:
      [R, C] samples, equal to ``sample(pad_channels_last(volume), padded_shape, positions)``.
    """
    C, ni, nj, nk = volume.shape
    base_shape = (ni + 2, nj + 2, nk + 2)
    upper = jnp.asarray(base_shape, dtype=positions.dtype) - 1.0
    inside = jnp.all((positions > 0.0) & (positions < upper), axis=-1)
    p = jnp.clip(positions, 0.0, upper)
    cell = jnp.clip(jnp.floor(p), 0.0, upper - 1.0)
    frac = p - cell
    # Unpadded index of each of the 8 corners (order 000..111): padded index - 1.
    offsets = jnp.array([[di, dj, dk] for di in (0, 1) for dj in (0, 1) for dk in (0, 1)], jnp.int32)
    corner = cell.astype(jnp.int32)[:, None, :] + offsets[None] - 1  # [R, 8, 3]
    sizes = jnp.array([ni, nj, nk], jnp.int32)
    valid = jnp.all((corner >= 0) & (corner < sizes), axis=-1)  # [R, 8]: outside = the zero padding
    corner = jnp.clip(corner, 0, sizes - 1)
    index = (corner[..., 0] * nj + corner[..., 1]) * nk + corner[..., 2]
    values = volume.reshape(C, -1).at[:, index.reshape(-1)].get(mode="promise_in_bounds")  # [C, R*8]
    values = values.reshape(C, -1, 8) * valid[None].astype(values.dtype)
    corners = jnp.moveaxis(values, 0, -1).reshape(positions.shape[0], 2, 2, 2, C)
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


# ---- Samples on voxel-centre planes (Joseph's method, see rays.clip_rays_to_planes) ----------
# The ray's dominant axis a is recomputed from its direction (the same rule as the ray set-up).
# On the plane the axial fraction is 0: the field is bilinear in the two other axes, so only the
# 4 voxels of the plane are read, and the axial derivative (which pose gradients never need: the
# plane-locked samples do not move along a) is reported as 0.


def plane_axis(direction):
    """[R] int32 dominant axis of each ray."""
    return jnp.argmax(jnp.abs(jax.lax.stop_gradient(direction)), axis=-1).astype(jnp.int32)


def plane_cell_and_fraction(positions, padded_shape, axis):
    """Like :func:`cell_and_fraction`, with the axial coordinate snapped to its plane."""
    upper = jnp.asarray(padded_shape, dtype=positions.dtype) - 1.0
    inside = jnp.all((positions > 0.0) & (positions < upper), axis=-1)
    hot = jax.nn.one_hot(axis, 3, dtype=jnp.bool_)
    p = jnp.clip(positions, 0.0, upper)
    cell = jnp.where(hot, jnp.round(p), jnp.clip(jnp.floor(p), 0.0, upper - 1.0))
    frac = jnp.where(hot, 0.0, p - cell)
    cell = cell.astype(jnp.int32)
    _, J2, K2 = padded_shape
    base = (cell[:, 0] * J2 + cell[:, 1]) * K2 + cell[:, 2]
    return base, frac, inside


def _plane_corners(flat, padded_shape, base, frac, axis):
    """[R, 2, 2, C] in-plane corners (axes b, c = the two non-dominant axes in order) and their
    fractions [R], [R]."""
    _, J2, K2 = padded_shape
    # In-plane axes (b, c): (1, 2) for axis 0, (0, 2) for axis 1, (0, 1) for axis 2. Selected
    # elementwise: indexing per ray would cost extra gathers in the hottest loop.
    b = jnp.where(axis == 0, 1, 0)
    c = jnp.where(axis == 2, 1, 2)
    sb = jnp.where(axis == 0, K2, J2 * K2).astype(jnp.int32)
    sc = jnp.where(axis == 2, K2, 1).astype(jnp.int32)
    idx = base[:, None] + jnp.stack([jnp.zeros_like(sb), sc, sb, sb + sc], axis=-1)
    corners = flat.at[idx].get(mode="promise_in_bounds").reshape(base.shape[0], 2, 2, flat.shape[-1])
    fb = jnp.where(axis == 0, frac[:, 1], frac[:, 0])
    fc = jnp.where(axis == 2, frac[:, 1], frac[:, 2])
    return corners, fb, fc, b, c


def sample_planes(flat, padded_shape, positions, axis):
    """Bilinear samples [R, C] at positions lying on voxel-centre planes of ``axis`` [R]."""
    base, frac, inside = plane_cell_and_fraction(positions, padded_shape, axis)
    corners, fb, fc, _, _ = _plane_corners(flat, padded_shape, base, frac, axis)
    z = _lerp(corners[:, :, 0], corners[:, :, 1], fc[:, None, None])
    value = _lerp(z[:, 0], z[:, 1], fb[:, None])
    return value * inside[:, None].astype(frac.dtype)


def sample_planes_cotangent_gradient(flat, padded_shape, positions, axis, cotangent):
    """:func:`sample_cotangent_gradient` for plane samples (axial component 0)."""
    base, frac, inside = plane_cell_and_fraction(positions, padded_shape, axis)
    corners, fb, fc, b, c = _plane_corners(flat, padded_shape, base, frac, axis)
    w = jnp.einsum("rijc,rc->rij", corners, cotangent)
    d_c = _lerp(w[:, 0, 1] - w[:, 0, 0], w[:, 1, 1] - w[:, 1, 0], fb)
    d_b = _lerp(w[:, 1, 0] - w[:, 0, 0], w[:, 1, 1] - w[:, 0, 1], fc)
    grad = (
        jax.nn.one_hot(b, 3, dtype=frac.dtype) * d_b[:, None]
        + jax.nn.one_hot(c, 3, dtype=frac.dtype) * d_c[:, None]
    )
    return grad * inside[:, None].astype(frac.dtype), base, frac, inside
