"""The GPU projector: Pallas (Triton backend) ray-marching kernels with a hand-written backward pass.

Same contract and same math as the pure-JAX marcher (:mod:`jaxdrr.ops.march`): the rays come from
the one shared ray set-up (:func:`jaxdrr.ops.rays.detector_rays`, computed in XLA and differentiated
there), and each kernel evaluates the trilinear field of the zero-padded volume exactly as
:mod:`jaxdrr.ops.trilinear` does (same support mask, same clipping of the cell, same corner weights).

Kernels (one program per tile of ``tile`` neighbouring rays; the tile's loop runs to its longest ray):

* forward: ``out[c, r] = step_r * sum_k f_c(e_r + (k + 1/2) step_r d_r)``; eight gathers of the
  flat channels-last volume per channel and step, accumulators in registers, one store per ray
  and channel.
* geometry backward (gather only): re-marches each ray and accumulates ``step * g . df/dx`` into
  ``g_entry`` and ``s_k`` times it into ``g_direction``; ``g_step`` follows in XLA from the same
  formula as ``march._march_bwd`` (no extra pass).
* volume backward (scatter only, reads no volume data): ``step * g_c * w_corner`` added into the
  flat volume gradient. On GPU with ``atomic_add``. Pallas interpret mode executes ``atomic_add``
  wrongly when one vector holds an index twice (jax issue 24117: eight adds to one index give one),
  so the interpret form of the same kernel first sums, inside the vector, the values of all lanes
  that share an index and then does a plain read-modify-write: duplicate lanes then all write the
  same, complete total. That is exact whenever programs run one after another, which interpret
  mode guarantees; everything else in the kernel (positions, masks, weights, indices) is shared.

Batching: ``pallas_call``'s batching rule adds a leading grid axis for the batched operands; the
volume is not batched when only the pose is, so ``vmap`` over poses is one launch reading one
volume. ``jit``, ``grad``, ``vmap(grad)`` compose (``jax.custom_vjp`` with ``symbolic_zeros``: the
volume kernel runs only when the volume is differentiated, the geometry kernel only when the rays
are).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxdrr._compat import pallas_triton
from jaxdrr.ops import march as _march
from jaxdrr.ops.kernel_vjp import ProjectorKernels, kernel_projector
from jaxdrr.ops.rays import VolumeGrid, detector_rays

plgpu = pallas_triton()  # the Triton backend: compiler parameters, masked loads, atomics

DEFAULT_TILE = 128
DEFAULT_NUM_WARPS = 4

# Flat offsets of the 8 corners are built per call from the padded shape; corner order 000..111
# (di, dj, dk), as trilinear.corner_offsets.
_CORNERS = tuple((di, dj, dk) for di in (0, 1) for dj in (0, 1) for dk in (0, 1))


class KernelConfig(NamedTuple):
    """Static kernel parameters (hashable: a ``nondiff_argnums`` of the custom VJP)."""

    padded_shape: tuple[int, int, int]
    channels: int
    tile: int
    interpret: bool
    num_warps: int = DEFAULT_NUM_WARPS


# ---------------------------------------------------------------------------------------------
# Shared per-sample math (runs inside the kernels on [tile] vectors)


def _sample_setup(cfg: KernelConfig, geom, k, num_steps):
    """Positions of sample k of every ray in the tile and its trilinear cell.

    Returns (s, base, weights[8], dweights[8][3] factors, valid) where ``valid`` = inside the
    support and k < num_steps; weights are already multiplied by ``valid``.
    """
    ex, ey, ez, dx, dy, dz, h = geom
    dtype = h.dtype
    s = (k.astype(dtype) + 0.5) * h
    pos = (ex + s * dx, ey + s * dy, ez + s * dz)
    I2, J2, K2 = cfg.padded_shape
    uppers = (float(I2 - 1), float(J2 - 1), float(K2 - 1))
    inside = k < num_steps
    cells, fracs = [], []
    for p, up in zip(pos, uppers):
        inside = inside & (p > 0.0) & (p < up)
        pc = jnp.clip(p, 0.0, up)
        cell = jnp.clip(jnp.floor(pc), 0.0, up - 1.0)
        fracs.append(pc - cell)
        cells.append(cell.astype(jnp.int32))
    base = (cells[0] * J2 + cells[1]) * K2 + cells[2]
    base = jnp.where(inside, base, 0)  # NaN/garbage positions of inactive lanes stay in bounds
    return s, base, fracs, inside


def _corner_weights(fracs, mask):
    fx, fy, fz = fracs
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    m = mask.astype(fx.dtype)
    return [
        w * m
        for w in (
            gx * gy * gz,
            gx * gy * fz,
            gx * fy * gz,
            gx * fy * fz,
            fx * gy * gz,
            fx * gy * fz,
            fx * fy * gz,
            fx * fy * fz,
        )
    ]


def _corner_weight_gradients(fracs, mask):
    """8 triples (d/dx, d/dy, d/dz) of the corner weights (same formulas as trilinear.py)."""
    fx, fy, fz = fracs
    gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
    m = mask.astype(fx.dtype)
    dx = (-gy * gz, -gy * fz, -fy * gz, -fy * fz, gy * gz, gy * fz, fy * gz, fy * fz)
    dy = (-gx * gz, -gx * fz, gx * gz, gx * fz, -fx * gz, -fx * fz, fx * gz, fx * fz)
    dz = (-gx * gy, gx * gy, -gx * fy, gx * fy, -fx * gy, fx * gy, -fx * fy, fx * fy)
    return [(a * m, b * m, c * m) for a, b, c in zip(dx, dy, dz)]


def _corner_offsets(cfg: KernelConfig):
    _, J2, K2 = cfg.padded_shape
    return [di * J2 * K2 + dj * K2 + dk for di, dj, dk in _CORNERS]


def _gather(flat_ref, idx, mask):
    """A masked gather from the flat volume (pl.load with computed indices)."""
    if plgpu is not None:
        return plgpu.load(flat_ref.at[idx], mask=mask, other=0.0)
    return flat_ref[idx]  # pragma: no cover


def _load_geometry(geom_ref):
    return tuple(geom_ref[i, :] for i in range(7))


# ---------------------------------------------------------------------------------------------
# Kernels


def _forward_kernel(geom_ref, nsteps_ref, flat_ref, out_ref, *, cfg: KernelConfig):
    geom = _load_geometry(geom_ref)
    num_steps = nsteps_ref[...]
    C = cfg.channels
    offsets = _corner_offsets(cfg)
    dtype = geom[0].dtype

    def body(k, acc):
        _, base, fracs, valid = _sample_setup(cfg, geom, k, num_steps)
        w = _corner_weights(fracs, valid)
        acc = list(acc)
        for corner, off in enumerate(offsets):
            row = (base + off) * C
            for c in range(C):
                acc[c] = acc[c] + w[corner] * _gather(flat_ref, row + c, valid)
        return tuple(acc)

    total = jnp.max(num_steps)
    zeros = tuple(jnp.zeros(num_steps.shape, dtype) for _ in range(C))
    acc = jax.lax.fori_loop(0, total, body, zeros)
    h = geom[6]
    for c in range(C):
        out_ref[c, :] = acc[c] * h


def _geometry_kernel(geom_ref, nsteps_ref, g_ref, flat_ref, gout_ref, *, cfg: KernelConfig):
    """Gather-only: g_entry (rows 0-2) and g_direction (rows 3-5) of every ray in the tile."""
    geom = _load_geometry(geom_ref)
    num_steps = nsteps_ref[...]
    C = cfg.channels
    offsets = _corner_offsets(cfg)
    h = geom[6]
    dtype = h.dtype
    g_step = [g_ref[c, :] * h for c in range(C)]

    def body(k, carry):
        ge, gd = carry
        s, base, fracs, valid = _sample_setup(cfg, geom, k, num_steps)
        dw = _corner_weight_gradients(fracs, valid)
        # gpos = sum_c g_step[c] * sum_corner dw_corner * v_corner,c
        gpos = [jnp.zeros_like(h) for _ in range(3)]
        for corner, off in enumerate(offsets):
            row = (base + off) * C
            gv = jnp.zeros_like(h)
            for c in range(C):
                gv = gv + g_step[c] * _gather(flat_ref, row + c, valid)
            gpos = [gp + dwa * gv for gp, dwa in zip(gpos, dw[corner])]
        ge = tuple(a + b for a, b in zip(ge, gpos))
        gd = tuple(a + s * b for a, b in zip(gd, gpos))
        return ge, gd

    total = jnp.max(num_steps)
    z = tuple(jnp.zeros(num_steps.shape, dtype) for _ in range(3))
    ge, gd = jax.lax.fori_loop(0, total, body, (z, z))
    for i in range(3):
        gout_ref[i, :] = ge[i]
        gout_ref[3 + i, :] = gd[i]


def _scatter_add(ref, idx, val, mask, interpret: bool):
    """ref[idx] += val for the lanes in mask, duplicates within the vector included."""
    if not interpret:
        plgpu.atomic_add(ref, idx, val, mask=mask)
        return
    # Interpret-mode form (see the module docstring, jax issue 24117): pre-reduce duplicates.
    val = jnp.where(mask, val, 0.0)
    idx = jnp.where(mask, idx, 0)
    same = idx[:, None] == idx[None, :]
    total = jnp.sum(jnp.where(same, val[None, :], 0.0), axis=1)
    ref[idx] = ref[idx] + total


def _volume_kernel(geom_ref, nsteps_ref, g_ref, gflat_in_ref, gflat_ref, *, cfg: KernelConfig):
    """Scatter-only: g_flat[(base + corner) * C + c] += step * g_c * w_corner (reads no volume)."""
    del gflat_in_ref  # aliased to gflat_ref (the zero-initialised accumulator)
    geom = _load_geometry(geom_ref)
    num_steps = nsteps_ref[...]
    C = cfg.channels
    offsets = _corner_offsets(cfg)
    h = geom[6]
    g_step = [g_ref[c, :] * h for c in range(C)]

    def body(k, carry):
        _, base, fracs, valid = _sample_setup(cfg, geom, k, num_steps)
        w = _corner_weights(fracs, valid)
        for corner, off in enumerate(offsets):
            row = (base + off) * C
            for c in range(C):
                _scatter_add(gflat_ref, row + c, w[corner] * g_step[c], valid, cfg.interpret)
        return carry

    total = jnp.max(num_steps)
    jax.lax.fori_loop(0, total, body, jnp.int32(0))


# ---------------------------------------------------------------------------------------------
# pallas_call wrappers (operate on [7, R_pad] geometry, [R_pad] num_steps, R_pad % tile == 0)


def _compiler_params(cfg: KernelConfig):
    if cfg.interpret or plgpu is None:
        return None
    return plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=1)


def _tile_spec(rows, tile):
    return pl.BlockSpec((rows, tile), lambda i: (0, i))


def _whole_spec(n):
    return pl.BlockSpec((n,), lambda i: (0,))


def _forward_call(cfg: KernelConfig, flat1d, geom, num_steps):
    rays = geom.shape[1]
    T = cfg.tile
    return pl.pallas_call(
        functools.partial(_forward_kernel, cfg=cfg),
        grid=(rays // T,),
        in_specs=[_tile_spec(7, T), pl.BlockSpec((T,), lambda i: (i,)), _whole_spec(flat1d.shape[0])],
        out_specs=_tile_spec(cfg.channels, T),
        out_shape=jax.ShapeDtypeStruct((cfg.channels, rays), flat1d.dtype),
        interpret=cfg.interpret,
        compiler_params=_compiler_params(cfg),
        name="jaxdrr_project_fwd",
    )(geom, num_steps, flat1d)


def _geometry_call(cfg: KernelConfig, flat1d, geom, num_steps, g):
    rays = geom.shape[1]
    T = cfg.tile
    return pl.pallas_call(
        functools.partial(_geometry_kernel, cfg=cfg),
        grid=(rays // T,),
        in_specs=[
            _tile_spec(7, T),
            pl.BlockSpec((T,), lambda i: (i,)),
            _tile_spec(cfg.channels, T),
            _whole_spec(flat1d.shape[0]),
        ],
        out_specs=_tile_spec(6, T),
        out_shape=jax.ShapeDtypeStruct((6, rays), geom.dtype),
        interpret=cfg.interpret,
        compiler_params=_compiler_params(cfg),
        name="jaxdrr_project_bwd_geometry",
    )(geom, num_steps, g, flat1d)


def _volume_call(cfg: KernelConfig, n_flat, dtype, geom, num_steps, g):
    rays = geom.shape[1]
    T = cfg.tile
    zeros = jnp.zeros((n_flat,), dtype)
    return pl.pallas_call(
        functools.partial(_volume_kernel, cfg=cfg),
        grid=(rays // T,),
        in_specs=[
            _tile_spec(7, T),
            pl.BlockSpec((T,), lambda i: (i,)),
            _tile_spec(cfg.channels, T),
            _whole_spec(n_flat),
        ],
        out_specs=_whole_spec(n_flat),
        out_shape=jax.ShapeDtypeStruct((n_flat,), dtype),
        input_output_aliases={3: 0},
        interpret=cfg.interpret,
        compiler_params=_compiler_params(cfg),
        name="jaxdrr_project_bwd_volume",
    )(geom, num_steps, g, zeros)


# ---------------------------------------------------------------------------------------------
# custom VJP over (flat [N, C], entry [R, 3], direction [R, 3], step [R], num_steps [R])


def _pack(cfg: KernelConfig, entry, direction, step, num_steps):
    """Rays -> [7, R_pad] geometry (entry, direction, step) and [R_pad] num_steps (0 = padding)."""
    geom = jnp.concatenate([entry.T, direction.T, step[None, :]], axis=0)
    pad = (-geom.shape[1]) % cfg.tile
    geom = jnp.pad(geom, ((0, 0), (0, pad)))
    return geom, jnp.pad(num_steps.astype(jnp.int32), (0, pad))


def _forward(cfg, flat, entry, direction, step, num_steps):
    geom, ns = _pack(cfg, entry, direction, step, num_steps)
    out = _forward_call(cfg, flat.reshape(-1), geom, ns)
    return out[:, : entry.shape[0]].T


def _pad_cotangent(g, geom):
    return jnp.pad(g.T, ((0, 0), (0, geom.shape[1] - g.shape[0])))


def _volume_backward(cfg, flat, entry, direction, step, num_steps, g):
    geom, ns = _pack(cfg, entry, direction, step, num_steps)
    return _volume_call(cfg, flat.size, flat.dtype, geom, ns, _pad_cotangent(g, geom)).reshape(flat.shape)


def _geometry_backward(cfg, flat, entry, direction, step, num_steps, g):
    geom, ns = _pack(cfg, entry, direction, step, num_steps)
    gg = _geometry_call(cfg, flat.reshape(-1), geom, ns, _pad_cotangent(g, geom))[:, : entry.shape[0]]
    return gg[:3].T, gg[3:].T


_project = kernel_projector(ProjectorKernels(_forward, _volume_backward, _geometry_backward))


def march_pallas(
    flat, padded_shape, rays, *, interpret: bool, tile: int = DEFAULT_TILE, num_warps: int = DEFAULT_NUM_WARPS
) -> jax.Array:
    """Line integrals [R, C] of a padded flat volume [N, C] along rays: ``march.march`` on Pallas."""
    if tile <= 0 or tile & (tile - 1):
        raise ValueError(f"tile must be a power of two (Triton block sizes), got {tile}")
    cfg = KernelConfig(
        tuple(int(n) for n in padded_shape), int(flat.shape[1]), int(tile), bool(interpret), int(num_warps)
    )
    return _project(cfg, flat, rays.entry, rays.direction, rays.step, rays.num_steps)


def project_pallas(
    volume,
    grid: VolumeGrid,
    P,
    height: int,
    width: int,
    step: float,
    *,
    interpret: bool,
    tile: int = DEFAULT_TILE,
) -> jax.Array:
    """Per-channel line integrals [height * width, C] of ``volume`` [C, I, J, K] (row-major pixels).

    The Pallas counterpart of the ``"xla"`` branch of :func:`jaxdrr.ops.project`: the same rays
    (:func:`jaxdrr.ops.rays.detector_rays`), the same padded channels-last volume
    (:func:`jaxdrr.ops.march.pad_channels_last`), the same field.
    """
    rays = detector_rays(P, grid, height, width, step)
    flat = _march.pad_channels_last(volume)
    return march_pallas(flat, grid.padded_shape, rays, interpret=interpret, tile=tile)
