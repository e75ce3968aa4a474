"""Local Woodcock majorants: a coarse grid of per-block maximum densities, and delta tracking across it.

With one global majorant per energy (:func:`jaxdrr.scatter.monte_carlo.woodcock_majorant`) the densest
voxel of the volume sets the free-path sampling rate everywhere, so in soft tissue most Woodcock
events are virtual. Here the volume is split into *blocks* of ``b x b x b`` voxels aligned with voxel
faces (block k along an axis holds voxels ``[k b, (k + 1) b)``, i.e. index coordinates
``[k b - 1/2, (k + 1) b - 1/2)``, so every voxel lies in exactly one block). For each block and
material channel the maximum density ``max_rho[block, m]`` over its voxels gives, at every energy,

    mu_block(E) = sum_m max_rho[block, m] mu_m(E)  >=  sum_m rho_m(v) mu_m(E)   for each voxel v of the block,

exactly, because the mass attenuation coefficients ``mu_m(E) >= 0`` are the same interpolated table
rows the transport uses: no per-energy voxel scan and no safety margin are needed. (This bound is
looser than the true per-block maximum of the mixture where one block holds voxels of different
materials, e.g. soft tissue next to bone; it is still tight inside homogeneous regions.)

Tracking (:func:`flight`) is delta tracking with a piecewise-constant majorant along the ray: the
optical-depth budget ``tau = -ln U`` is spent block by block, Amanatides-Woo style, for at most
``steps`` blocks per lane iteration; the photon lands where the budget runs out (then a real or
virtual event is decided with that block's majorant), leaves the volume box, or, if the budget lasts
beyond ``steps`` blocks, stops on the last block face and draws a fresh budget in the next iteration
(the exponential distribution is memoryless, so this is exact). The landing voxel is clamped into
the landing block, so float rounding at a block face can never pair a voxel with a neighbouring
block's majorant.

For HU volumes the per-block maxima are those of the decomposed channels, computed one slab of blocks
at a time (memory bounded by one slab).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Relative headroom of the block majorant over the voxel attenuation: both are float32 sums of the
# same products in different orders.
MARGIN = 1.0 + 2.0**-13
MOVING, LANDED, EXITED, INACTIVE = 0, 1, 2, 3  # lane states of a flight


def block_shape(shape, block: int) -> tuple[int, int, int]:
    """Number of blocks of ``block`` voxels along each axis (the last block may be partial)."""
    return tuple(-(-int(n) // int(block)) for n in shape)


def block_statistics(densities, shape, block: int, decompose=None):
    """Per-block maximum and mean of each density channel of a voxel volume.

    Args:
      densities: [V, C] voxel values in C order of ``shape`` = (I, J, K): densities [V, M] (g/cm^3),
        or HU [V, 1] when ``decompose`` maps HU [...] to channel densities [M, ...].
      shape: (I, J, K).
      block: block edge in voxels.
      decompose: optional HU -> densities map (e.g. ``MaterialConfig.density_channels``).

    Returns:
      (maximum [Nb, M], mean [Nb, M]) per block in C order of :func:`block_shape`; the mean is over
      the block's voxels inside the volume (partial blocks at the far faces).
    """
    shape = tuple(int(n) for n in shape)
    nb = block_shape(shape, block)
    vol = densities.reshape(*shape, densities.shape[-1])
    pad = [(0, n_b * block - n) for n_b, n in zip(nb, shape, strict=True)] + [(0, 0)]
    if any(p[1] for p in pad):
        # Edge padding repeats voxels of the same (last) block: maxima are unchanged; sums are masked.
        vol = jnp.pad(vol, pad, mode="edge")
    valid_j = jnp.asarray(np.arange(nb[1] * block) < shape[1])
    valid_k = jnp.asarray(np.arange(nb[2] * block) < shape[2])
    counts = [np.minimum(block, n - block * np.arange(n_b)) for n_b, n in zip(nb, shape, strict=True)]
    count = (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]).reshape(-1)

    def slab_stats(i):
        slab = jax.lax.dynamic_slice_in_dim(vol, i * block, block, axis=0)  # [b, Jp, Kp, C]
        if decompose is not None:
            slab = jnp.moveaxis(decompose(slab[..., 0]), 0, -1)  # [b, Jp, Kp, M]
        m = slab.shape[-1]
        valid_i = (i * block + jnp.arange(block)) < shape[0]
        mask = valid_i[:, None, None] & valid_j[None, :, None] & valid_k[None, None, :]
        blocks = slab.reshape(block, nb[1], block, nb[2], block, m)
        masked = jnp.where(mask[..., None], slab, 0).reshape(block, nb[1], block, nb[2], block, m)
        return jnp.max(blocks, axis=(0, 2, 4)), jnp.sum(masked, axis=(0, 2, 4))

    maxima, sums = jax.lax.map(slab_stats, jnp.arange(nb[0]))  # [nbI, nbJ, nbK, M] each
    m = maxima.shape[-1]
    maxima = maxima.reshape(-1, m)
    mean = sums.reshape(-1, m) / jnp.asarray(count, sums.dtype)[:, None]
    return maxima, mean


class Flight(NamedTuple):
    """Outcome of one lane iteration of local-majorant tracking (all [N] or [N, 3])."""

    landed: jax.Array  # bool: a tentative collision site was reached (real or virtual: decide next)
    exited: jax.Array  # bool: the ray left the volume box before the budget ran out
    pos: jax.Array  # world mm: the landing point, else the last block face reached, else unchanged
    voxel: jax.Array  # int32 flat index of the landing voxel (clamped into the landing block)
    majorant: jax.Array  # 1/mm: the landing block's majorant (the one that sampled the landing)


def flight(geo, opts, pos, direction, mu_channels, tau, active) -> Flight:
    """Delta tracking of lanes through the block-majorant grid for at most ``opts["dda_steps"]`` blocks.

    Args:
      geo: needs ``inv_a``, ``inv_t`` (world -> voxel index) and ``block_max`` [Nb, M].
      opts: static ``shape``, ``block``, ``dda_steps``.
      pos, direction: [N, 3] world position (inside or on the volume box) and unit direction.
      mu_channels: [N, M] mass attenuation of each channel at the lane's energy (1/mm per g/cm^3),
        the rows the transport uses for the voxel attenuation.
      tau: [N] optical-depth budget (-ln U).
      active: [N] lanes to track; the others get ``landed = exited = False`` and keep ``pos``.
    """
    # Structure of arrays (one [N] array per axis): XLA's CPU code is several times slower on
    # [N, 3] arrays with their reductions over the minor axis.
    shape = opts["shape"]
    block = int(opts["block"])
    nb = block_shape(shape, block)
    dtype = pos.dtype
    inv_a, inv_t = geo["inv_a"], geo["inv_t"]
    o = [sum(inv_a[k, j] * pos[:, j] for j in range(3)) + inv_t[k] for k in range(3)]  # voxel index coords
    d = [sum(inv_a[k, j] * direction[:, j] for j in range(3)) for k in range(3)]  # index units per mm
    big = jnp.asarray(np.finfo(np.float32).max / 4, dtype)
    t_max, t_delta, cell, step = [], [], [], []
    t_box = big
    for k in range(3):
        qk = (o[k] + 0.5) / block  # block coordinates: block c covers [c, c + 1)
        dk = d[k] / block
        up, down = dk > 0, dk < 0
        ik = 1.0 / jnp.where(up | down, dk, 1.0)
        hi = float(shape[k]) / block
        t_box = jnp.minimum(t_box, jnp.where(up, (hi - qk) * ik, jnp.where(down, -qk * ik, big)))
        # The block the ray is about to cross: nudged along the ray so a point on a face picks the
        # block ahead.
        ck = jnp.clip(jnp.floor(qk + 1e-4 * jnp.sign(dk)).astype(jnp.int32), 0, nb[k] - 1)
        t_max.append(
            jnp.maximum(jnp.where(up, (ck + 1 - qk) * ik, jnp.where(down, (ck - qk) * ik, big)), 0.0)
        )
        t_delta.append(jnp.where(up | down, jnp.abs(ik), big))
        step.append(jnp.where(up, 1, -1).astype(jnp.int32))
        cell.append(ck)
    t_box = jnp.maximum(t_box, 0.0)  # distance to the box exit
    block_max = geo["block_max"].T  # [M, Nb]: one gather per channel
    mu = [mu_channels[:, m] for m in range(block_max.shape[0])]
    n = pos.shape[0]
    moving0 = jnp.where(active, MOVING, INACTIVE).astype(jnp.int32)

    def body(_, c):
        # A lane that lands or leaves stops: its cell is then the landing cell and t, budget stay.
        t, budget, cx, cy, cz, tx, ty, tz, state, maj_land = c
        moving = state == MOVING
        flat = (cx * nb[1] + cy) * nb[2] + cz
        maj = sum(block_max[m][flat] * mu[m] for m in range(len(mu))) * MARGIN
        t_face = jnp.minimum(jnp.minimum(tx, ty), tz)
        t_end = jnp.minimum(t_face, t_box)
        depth = maj * jnp.maximum(t_end - t, 0.0)
        hit = moving & (budget < depth)
        out = moving & ~hit & (t_end >= t_box)
        adv = moving & ~hit & ~out
        ax = adv & (tx == t_face)
        ay = adv & ~ax & (ty == t_face)
        az = adv & ~ax & ~ay
        # Materialise the shared values once: XLA's CPU backend emits one loop per carried output
        # and would recompute them (gathers included) in each.
        maj, t_end, depth, hit, out, adv, ax, ay, az = jax.lax.optimization_barrier(
            (maj, t_end, depth, hit, out, adv, ax, ay, az)
        )
        state = jnp.where(hit, LANDED, jnp.where(out, EXITED, state))
        maj_land = jnp.where(hit, maj, maj_land)
        budget = jnp.where(adv, budget - depth, budget)
        t = jnp.where(adv | out, t_end, t)
        # Step into the next block across the nearest face (x first on ties, then y).
        cx = jnp.clip(jnp.where(ax, cx + step[0], cx), 0, nb[0] - 1)
        cy = jnp.clip(jnp.where(ay, cy + step[1], cy), 0, nb[1] - 1)
        cz = jnp.clip(jnp.where(az, cz + step[2], cz), 0, nb[2] - 1)
        tx = jnp.where(ax, tx + t_delta[0], tx)
        ty = jnp.where(ay, ty + t_delta[1], ty)
        tz = jnp.where(az, tz + t_delta[2], tz)
        return t, budget, cx, cy, cz, tx, ty, tz, state, maj_land

    init = (jnp.zeros((n,), dtype), tau, *cell, *t_max, moving0, jnp.ones((n,), dtype))
    c = jax.lax.fori_loop(0, int(opts["dda_steps"]), body, init)
    t, budget, land_cell, state, maj_land = c[0], c[1], c[2:5], c[8], c[9]
    landed, exited = state == LANDED, state == EXITED
    t_final = jnp.where(landed, t + budget / maj_land, jnp.where(state == MOVING, t, 0.0))
    new_pos = pos + t_final[:, None] * direction
    # The landing voxel, clamped into the landing block.
    idx = []
    for k in range(3):
        ik = jnp.floor(o[k] + t_final * d[k] + 0.5).astype(jnp.int32)
        lo = land_cell[k] * block
        idx.append(jnp.clip(ik, lo, jnp.minimum(lo + block, shape[k]) - 1))
    flat = (idx[0] * shape[1] + idx[1]) * shape[2] + idx[2]
    return Flight(landed, exited, new_pos, flat, maj_land)
