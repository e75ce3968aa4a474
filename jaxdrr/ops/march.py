"""The pure-JAX ray marcher with a hand-written backward pass.

``march(flat, padded_shape, rays)`` integrates every channel of the zero-padded trilinear field
along every ray of :class:`jaxdrr.ops.rays.Rays`. Rays are processed in chunks of
neighbouring pixels (``lax.map``); each chunk is a ``lax.while_loop`` over sample index whose trip
count is that chunk's longest ray (not the box diagonal), carrying only the [chunk, C] accumulator:
memory is independent of the number of samples and of the detector size.

The backward pass (``jax.custom_vjp``) re-marches the rays instead of storing samples, using the
analytic derivative of trilinear interpolation:

* geometry: with S = h sum_k f(e + s_k d), s_k = (k + 1/2) h: dS/de = h sum_k grad f_k,
  dS/dd = h sum_k s_k grad f_k, dS/dh = S/h + (dS/dd . d)/h (no extra pass needed);
* volume: the cotangent times the trilinear weights, scatter-added to the eight corners (only when
  the volume is being differentiated: ``symbolic_zeros`` tells us).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdrr.ops import trilinear
from jaxdrr.ops.rays import Rays


def _positions(entry, direction, step, k):
    s = (k.astype(step.dtype) + 0.5) * step
    return entry + s[:, None] * direction, s


def _chunk_forward(flat, padded_shape, planes, entry, direction, step, num_steps):
    num_rays, channels = entry.shape[0], flat.shape[1]
    total = jnp.max(num_steps, initial=0)
    axis = trilinear.plane_axis(direction) if planes else None

    def body(state):
        k, acc = state
        pos, _ = _positions(entry, direction, step, k)
        active = (k < num_steps).astype(acc.dtype)[:, None]
        if planes:
            value = trilinear.sample_planes(flat, padded_shape, pos, axis)
        else:
            value = trilinear.sample(flat, padded_shape, pos)
        return k + 1, acc + active * value

    _, acc = jax.lax.while_loop(
        lambda s: s[0] < total, body, (jnp.int32(0), jnp.zeros((num_rays, channels), flat.dtype))
    )
    return acc * step[:, None]


def _chunk_backward(flat, padded_shape, planes, entry, direction, step, num_steps, g, g_flat):
    """Re-marches one chunk of rays; returns (g_entry, g_direction, g_flat or None)."""
    want_volume = g_flat is not None
    axis = trilinear.plane_axis(direction) if planes else None
    offsets = trilinear.corner_offsets(padded_shape)
    g_step = g * step[:, None]  # [R, C]
    total = jnp.max(num_steps, initial=0)

    def body(state):
        k, g_entry, g_direction, g_flat = state
        pos, s = _positions(entry, direction, step, k)
        active = (k < num_steps).astype(g.dtype)
        if planes:
            gpos, base, frac, inside = trilinear.sample_planes_cotangent_gradient(
                flat, padded_shape, pos, axis, g_step * active[:, None]
            )
        else:
            gpos, base, frac, inside = trilinear.sample_cotangent_gradient(
                flat, padded_shape, pos, g_step * active[:, None]
            )
        g_entry = g_entry + gpos
        g_direction = g_direction + s[:, None] * gpos
        if want_volume:
            w = trilinear.corner_weights(frac) * (inside.astype(g.dtype) * active)[:, None]
            contrib = w[:, :, None] * g_step[:, None, :]  # [R, 8, C]
            idx = (base[:, None] + offsets[None, :]).reshape(-1)
            g_flat = g_flat.at[idx].add(contrib.reshape(-1, contrib.shape[-1]), mode="promise_in_bounds")
        return k + 1, g_entry, g_direction, g_flat

    init = (
        jnp.int32(0),
        jnp.zeros_like(entry),
        jnp.zeros_like(direction),
        g_flat if want_volume else jnp.zeros((), flat.dtype),
    )
    _, g_entry, g_direction, g_flat = jax.lax.while_loop(lambda s: s[0] < total, body, init)
    return g_entry, g_direction, (g_flat if want_volume else None)


def step_cotangent(g, out, direction, g_direction, step, num_steps):
    """The cotangent of the step length h from those of the output and the direction.

    S = h sum_k f(e + (k + 1/2) h d) gives dS/dh = S/h + (dS/dd . d)/h: no extra pass over the
    samples. Every backend's backward pass uses this one formula. Rays with no samples get 0.
    """
    safe_step = jnp.where(num_steps > 0, step, 1.0)
    g_h = (jnp.sum(g * out, axis=-1) + jnp.sum(g_direction * direction, axis=-1)) / safe_step
    return jnp.where(num_steps > 0, g_h, 0.0)


def _to_chunks(x, chunk):
    """[R, ...] -> [R_pad / chunk, chunk, ...], zero-padded (zero steps = empty rays)."""
    pad = (-x.shape[0]) % chunk
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape((-1, chunk) + x.shape[1:])


def _from_chunks(x, num_rays):
    return x.reshape((-1,) + x.shape[2:])[:num_rays]


def _forward(flat, padded_shape, chunk, planes, entry, direction, step, num_steps):
    chunks = [_to_chunks(a, chunk) for a in (entry, direction, step, num_steps)]
    out = jax.lax.map(lambda c: _chunk_forward(flat, padded_shape, planes, *c), chunks)
    return _from_chunks(out, entry.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _march(flat, padded_shape, chunk, planes, entry, direction, step, num_steps):
    return _forward(flat, padded_shape, chunk, planes, entry, direction, step, num_steps)


def _march_fwd(flat, padded_shape, chunk, planes, entry, direction, step, num_steps):
    out = _forward(
        flat.value, padded_shape, chunk, planes, entry.value, direction.value, step.value, num_steps.value
    )
    # The residual's tree structure records (statically) whether the volume needs a gradient.
    wants = {"volume": ()} if flat.perturbed else {}
    return out, (flat.value, entry.value, direction.value, step.value, num_steps.value, out, wants)


def _march_bwd(padded_shape, chunk, planes, residuals, g):
    flat, entry, direction, step, num_steps, out, wants = residuals
    want_volume = "volume" in wants
    chunks = [_to_chunks(a, chunk) for a in (entry, direction, step, num_steps, g)]

    def scan_body(g_flat, c):
        g_e, g_d, g_flat = _chunk_backward(flat, padded_shape, planes, *c, g_flat)
        return g_flat, (g_e, g_d)

    g_flat, (g_entry, g_direction) = jax.lax.scan(
        scan_body, jnp.zeros_like(flat) if want_volume else None, chunks
    )
    g_entry = _from_chunks(g_entry, entry.shape[0])
    g_direction = _from_chunks(g_direction, entry.shape[0])
    g_h = step_cotangent(g, out, direction, g_direction, step, num_steps)
    # None = a zero cotangent (the volume is not being differentiated).
    return (g_flat if want_volume else None), g_entry, g_direction, g_h, None


_march.defvjp(_march_fwd, _march_bwd, symbolic_zeros=True)


DEFAULT_CHUNK = 16384


def march(flat, padded_shape, rays: Rays, chunk: int = DEFAULT_CHUNK, planes: bool = False) -> jax.Array:
    """Line integrals [R, C] (channel units x mm) of a padded flat volume [N, C] along rays.

    Rays are processed ``chunk`` at a time (in order, so neighbouring pixels share a chunk): each
    chunk's loop stops at its own longest ray, and temporaries stay O(chunk).

    ``planes``: the rays come from :func:`jaxdrr.ops.rays.clip_rays_to_planes` (samples on
    voxel-centre planes, 4 voxels read per sample).
    """
    chunk = max(1, min(int(chunk), rays.entry.shape[0]))
    return _march(
        flat, tuple(padded_shape), chunk, bool(planes), rays.entry, rays.direction, rays.step, rays.num_steps
    )


def pad_channels_last(volume) -> jax.Array:
    """[C, I, J, K] -> zero-padded, channels-last, flattened [(I+2)(J+2)(K+2), C]."""
    v = jnp.moveaxis(volume, 0, -1)
    v = jnp.pad(v, ((1, 1), (1, 1), (1, 1), (0, 0)))
    return v.reshape(-1, v.shape[-1])
