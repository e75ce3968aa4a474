"""Forced detection (next-event estimation) of the Monte Carlo scatter images.

At every real Compton or Rayleigh interaction of the analog transport (position r, incoming
direction u, energy E, weight w, material m, process p, all chosen by the analog kernel) the
*expected* contribution of the scattered photon to every detector pixel j is scored analytically:

    s_j = w  f_p,m(E, cos theta_j)  A cos(beta_j) / D_j^2  T_j(E'_j)  R(E'_j, direction_j)  [x E'_j]

* ``f_p,m`` is the angular density per steradian that the analog sampler draws from:
  Klein-Nishina x S(x)/Z (Compton) or Thomson x F^2(x) (Rayleigh) with the material's tables,
  divided by its integral over the sphere (:func:`angular_normalisation`, computed once per table with
  the same formulas, :mod:`jaxdrr.scatter.transport`), so forced detection and the analog sampler
  score the same physics. The process was already chosen with probability ``mu_p / mu``, so using
  only p's density is unbiased (the analog kernel's choice does the mixing).
* ``A cos(beta) / D^2`` is the solid angle of the pixel seen from r, towards a uniformly random point
  of the pixel (one random offset per event, shared by its pixels): unbiased for the pixel integral,
  where a pixel-centre rule would be biased for forward-peaked Rayleigh scattering.
* ``T_j(E') = exp(-sum_m mu_m(E') L_m(r -> j))``: transmission to the pixel centre at the scattered
  energy (E' from the angle to the pixel for Compton). The per-channel line integrals ``L_m`` come
  from a table of exact line integrals from a grid of *sites* to every pixel centre through a coarse
  density grid (per-block mean densities, :func:`jaxdrr.scatter.majorants.block_statistics`),
  interpolated trilinearly at r (Poludniowski et al., PMB 54:3847, 2009, use the same idea of a
  coarse volume and sparse detection points). The table costs ``sites x pixels x channels`` floats
  (bounded by :attr:`ForcedDetection.table_mb`) and one exact 3D-DDA ray cast per entry; it is the
  one approximation of the estimator (a smooth interpolant of a line integral), and it vanishes for
  layered (slab) objects.
* ``R`` is the detector absorption and anti-scatter grid weight of the analog tally
  (:func:`jaxdrr.scatter.transport.detector_response`, one place for the formulas).
* The score goes to the image of the scatter order this interaction makes: single Compton, single
  Rayleigh (first scattering) or multiple (later ones); energy-integrating images weight it by E'.

The analog photon then continues unchanged; with forced detection the analog tally keeps only the
unscattered (primary) photons, so the images keep the renderer's units and flat-field normalisation
(Mainegra-Hing & Kawrakow, PMB 55:4495, 2010; Sisniega et al., Med Phys 40:051915, 2013; GATE's
fixed forced detection actor). Events are buffered and scored in dense batches
(:func:`jaxdrr.scatter.transport.run`); the cost per event is proportional to the number of pixels, so
forced detection is meant for low-resolution scatter detectors (e.g. 32 x 32).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.scatter import interactions as xs_lib
from jaxdrr.scatter import majorants, transport

NUM_PANELS, PANEL_NODES = 512, 8  # composite Gauss-Legendre rule of the normalisation integrals
GOLDEN = 0.6180339887498949  # decorrelates the grid entry offsets of one event's pixels


@dataclasses.dataclass(frozen=True)
class ForcedDetection:
    """Settings of the forced-detection scatter estimator (:mod:`jaxdrr.scatter.forced_detection`).

    Attributes:
      site_spacing_mm: spacing of the grid of sites from which line integrals to every pixel are
        tabulated (finer: less interpolation bias, more memory and set-up time).
      table_mb: memory cap of the site table (sites x pixels x channels float32); the spacing is
        widened to fit.
      cell_voxels: edge (voxels) of the cells of the coarse density grid the line integrals cross
        (mean density per cell); 1 uses the voxels themselves (exact for the nearest-voxel model).
      batch: events scored together (memory ~ batch x pixels x 40 bytes).
    """

    site_spacing_mm: float = 25.0
    table_mb: float = 64.0
    cell_voxels: int = 8
    batch: int = 256

    def __post_init__(self):
        if not (np.isfinite(self.site_spacing_mm) and self.site_spacing_mm > 0):
            raise JaxdrrError(f"site_spacing_mm must be > 0, got {self.site_spacing_mm}")
        if not self.table_mb > 0:
            raise JaxdrrError(f"table_mb must be > 0, got {self.table_mb}")
        if int(self.cell_voxels) < 1 or int(self.batch) < 1:
            raise JaxdrrError(f"cell_voxels and batch must be >= 1, got {self.cell_voxels}, {self.batch}")


# --------------------------------------------------------------------------------------------------
# Angular densities


def _panel_rule():
    g, w = np.polynomial.legendre.leggauss(PANEL_NODES)
    edges = np.linspace(0.0, 1.0, NUM_PANELS + 1)
    half = 0.5 * np.diff(edges)
    t = (edges[:-1, None] + half[:, None] * (g[None, :] + 1.0)).reshape(-1)
    wt = (half[:, None] * w[None, :]).reshape(-1)
    return t, wt


def angular_weights(tables, material, process, energy, cos_theta):
    """Unnormalised angular densities of the analog samplers, and the scattered energy.

    Args:
      tables: :func:`jaxdrr.scatter.transport.device_tables` output (``s_norm``, ``f2_norm``).
      material, process: int arrays (process 1 Compton, 2 Rayleigh), broadcasting with ``energy``
        and ``cos_theta``.

    Returns:
      (weight, scattered energy): Klein-Nishina x S(x)/Z or Thomson x F^2(x) / F^2(0), and E' (E for
      Rayleigh).
    """
    is_c = process == 1
    tau = transport.compton_tau(energy, cos_theta)
    x = transport.momentum_transfer(energy, cos_theta)
    # One lookup in the stacked [S/Z of each material; F^2 of each material] table.
    num_mat = tables["s_norm"].shape[0]
    lookup = jnp.concatenate([tables["s_norm"], tables["f2_norm"]])
    factor = transport.interp_x(lookup, material + num_mat * (process - 1), x)
    kinematic = jnp.where(
        is_c, transport.compton_angular_weight(tau, cos_theta), transport.rayleigh_angular_weight(cos_theta)
    )
    return kinematic * factor, jnp.where(is_c, tau * energy, energy)


@jax.jit
def angular_normalisation(tables):
    """Integrals over the sphere of :func:`angular_weights` on the energy grid: [E, 2 M].

    Columns 0..M-1: Compton of each material; M..2M-1: Rayleigh. The integral in
    ``mu = cos(theta) = 1 - 2 t^2`` (``t = x / x_max``, so the form-factor structure at small
    momentum transfer is resolved at every energy) uses a composite Gauss-Legendre rule of
    NUM_PANELS x PANEL_NODES nodes.
    """
    t, wt = _panel_rule()
    mu = jnp.asarray(1.0 - 2.0 * t**2, jnp.float32)
    jac = jnp.asarray(2.0 * np.pi * 4.0 * t * wt, jnp.float32)  # 2 pi dmu = 2 pi 4 t dt
    energies = jnp.asarray(xs_lib.energy_grid(), jnp.float32)
    num_mat = tables["s_norm"].shape[0]

    def column(args):
        material, process = args

        def per_energy(e):
            w, _ = angular_weights(tables, material, process, e, mu)
            return jnp.sum((w * jac).reshape(NUM_PANELS, PANEL_NODES).sum(-1))

        return jax.lax.map(per_energy, energies, batch_size=64)

    mats = jnp.tile(jnp.arange(num_mat), 2)
    procs = jnp.repeat(jnp.asarray([1, 2]), num_mat)
    return jax.lax.map(column, (mats, procs)).T  # [E, 2M]


# --------------------------------------------------------------------------------------------------
# Line integrals through a coarse grid


def segment_line_integrals(coarse, coarse_shape, cell: int, shape, inv_a, inv_t, start, end):
    """Exact per-channel line integrals of a piecewise-constant coarse grid along segments.

    The coarse grid has cells of ``cell`` voxels (cell k along an axis covers voxels
    ``[k cell, (k + 1) cell)``) and is vacuum outside the volume box ``[-1/2, n - 1/2]`` (voxel index
    coordinates). A 3D DDA (Amanatides & Woo) visits every crossed cell.

    Args:
      coarse: [Nc, M] cell densities in C order of ``coarse_shape``.
      shape: the voxel grid (I, J, K); inv_a, inv_t: world -> voxel index.
      start, end: [R, 3] world points (mm).

    Returns:
      [R, M] integrals of density along the segments (g/cm^3 x mm).
    """
    dtype = start.dtype
    q0 = ((start @ inv_a.T + inv_t) + 0.5) / cell
    q1 = ((end @ inv_a.T + inv_t) + 0.5) / cell
    seg = end - start
    length = jnp.linalg.norm(seg, axis=-1)
    dq = (q1 - q0) / jnp.maximum(length, 1e-12)[:, None]  # coarse units per mm
    pos_dir, neg_dir = dq > 0, dq < 0
    inv = 1.0 / jnp.where(pos_dir | neg_dir, dq, 1.0)
    big = jnp.asarray(np.finfo(np.float32).max / 4, dtype)
    hi = jnp.asarray(np.asarray(shape, np.float64) / cell, dtype)
    ta = jnp.where(pos_dir | neg_dir, (0.0 - q0) * inv, -big)
    tb = jnp.where(pos_dir | neg_dir, (hi - q0) * inv, big)
    t_lo = jnp.maximum(jnp.max(jnp.minimum(ta, tb), axis=-1), 0.0)
    t_hi = jnp.minimum(jnp.min(jnp.maximum(ta, tb), axis=-1), length)
    # Rays parallel to an axis and outside the box's slab on it never enter.
    outside_parallel = jnp.any(~(pos_dir | neg_dir) & ((q0 < 0) | (q0 > hi)), axis=-1)
    enters = (t_hi > t_lo) & ~outside_parallel
    nc = jnp.asarray(coarse_shape, jnp.int32)
    q = q0 + t_lo[:, None] * dq
    cell_idx = jnp.clip(jnp.floor(q + 1e-4 * jnp.sign(dq)).astype(jnp.int32), 0, nc - 1)
    step = jnp.where(pos_dir, 1, -1).astype(jnp.int32)
    t_max = jnp.where(pos_dir, (cell_idx + 1 - q0) * inv, jnp.where(neg_dir, (cell_idx - q0) * inv, big))
    t_max = jnp.maximum(t_max, t_lo[:, None])
    t_delta = jnp.where(pos_dir | neg_dir, jnp.abs(inv), big)
    num = coarse.shape[-1]

    def body(_, c):
        t, cell_idx, t_max, acc, active = c
        flat = (cell_idx[:, 0] * coarse_shape[1] + cell_idx[:, 1]) * coarse_shape[2] + cell_idx[:, 2]
        t_face = jnp.min(t_max, axis=-1)
        t_end = jnp.minimum(t_face, t_hi)
        length_in = jnp.where(active, jnp.maximum(t_end - t, 0.0), 0.0)
        acc = acc + length_in[:, None] * coarse[flat]
        active = active & (t_end < t_hi)
        first = jnp.argmin(t_max, axis=-1)
        adv = active[:, None] & (jnp.arange(3)[None, :] == first[:, None])
        cell_idx = jnp.clip(jnp.where(adv, cell_idx + step, cell_idx), 0, nc - 1)
        t_max = jnp.where(adv, t_max + t_delta, t_max)
        return jnp.where(active, t_end, t), cell_idx, t_max, acc, active

    n_steps = int(sum(coarse_shape)) + 3
    init = (t_lo, cell_idx, t_max, jnp.zeros((start.shape[0], num), dtype), enters)
    return jax.lax.fori_loop(0, n_steps, body, init)[3]


def site_shape(shape, spacing_mm, site_spacing_mm: float, pixels: int, channels: int, table_mb: float):
    """Sites per axis: about ``site_spacing_mm`` apart (at least 2), widened to fit ``table_mb``."""
    extent = np.asarray(shape, float) * np.asarray(spacing_mm, float)
    spacing = float(site_spacing_mm)
    while True:
        sites = np.maximum(2, np.ceil(extent / spacing).astype(int) + 1)
        if np.prod(sites) * pixels * channels * 4 <= table_mb * 2**20 or np.all(sites == 2):
            return tuple(int(s) for s in sites)
        spacing *= 1.1


def pixel_plane(geo, height: int, width: int):
    """Detector-plane mapping of image coordinates: world point = origin + x e_x + y e_y (affine,
    because the plane is perpendicular to P's principal axis), and the pixel area (mm^2)."""
    m_inv, n = geo["M_inv"], geo["normal"]
    scale = geo["sdd"] / (m_inv[:, 2] @ n)  # d . n is the same for every pixel
    ex, ey = scale * m_inv[:, 0], scale * m_inv[:, 1]
    origin = geo["source"] + scale * m_inv[:, 2]
    return origin, ex, ey, jnp.linalg.norm(jnp.cross(ex, ey))


@dataclasses.dataclass(frozen=True)
class _SiteGrid:
    sites: tuple[int, int, int]
    coarse_shape: tuple[int, int, int]
    cell: int
    shape: tuple[int, int, int]
    chunk: int


def site_positions(shape, sites, affine) -> np.ndarray:
    """World positions [S, 3] of the site grid: ``sites`` nodes per axis spanning the volume box
    ``[-1/2, n - 1/2]`` (voxel index coordinates), C order."""
    axes = [np.linspace(-0.5, n - 0.5, s) for n, s in zip(shape, sites, strict=True)]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    affine = np.asarray(affine, np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _site_table(coarse, targets, sites, inv_a, inv_t, grid: _SiteGrid):
    """[S, M, P] line integrals from every site [S, 3] to every target (pixel centre) [P, 3]
    (pixels last: the scoring works on per-channel [events, pixels] planes)."""
    n_sites = sites.shape[0]
    padded = -(-n_sites // grid.chunk) * grid.chunk
    sites = jnp.concatenate([sites, jnp.broadcast_to(sites[:1], (padded - n_sites, 3))])
    p = targets.shape[0]

    def chunk_table(site_chunk):
        start = jnp.repeat(site_chunk, p, axis=0)
        end = jnp.tile(targets, (site_chunk.shape[0], 1))
        line = segment_line_integrals(
            coarse, grid.coarse_shape, grid.cell, grid.shape, inv_a, inv_t, start, end
        )
        return jnp.swapaxes(line.reshape(site_chunk.shape[0], p, -1), 1, 2)

    table = jax.lax.map(chunk_table, sites.reshape(-1, grid.chunk, 3))
    return table.reshape(padded, -1, p)[:n_sites]


_site_table_jit = jax.jit(_site_table, static_argnames=("grid",))


def prepare(
    tables, geo, densities, *, shape, spacing_mm, affine, height, width, config, decompose=None, coarse=None
):
    """Forced-detection arrays for ``geo["fd"]`` and static options.

    Args:
      tables: device tables (:func:`jaxdrr.scatter.transport.device_tables`).
      geo: the transport geometry (``source``, ``M_inv``, ``normal``, ``sdd``, ``inv_a``, ``inv_t``).
      densities: [V, M] densities or [V, 1] HU (with ``decompose``), as the transport gets them.
      shape, spacing_mm, affine: the volume grid.
      height, width: detector pixels.
      config: :class:`ForcedDetection`.
      coarse: optional precomputed per-cell mean densities [Nc, M] with ``config.cell_voxels``.

    Returns:
      (fd arrays dict, static opts dict).
    """
    cell = int(config.cell_voxels)
    coarse_shape = majorants.block_shape(shape, cell)
    if coarse is None:
        coarse = majorants.block_statistics(densities, shape, cell, decompose)[1]
    num_mat = coarse.shape[-1]
    p = height * width
    sites = site_shape(shape, spacing_mm, config.site_spacing_mm, p, num_mat, config.table_mb)
    grid = _SiteGrid(sites, coarse_shape, cell, tuple(int(n) for n in shape), max(1, (1 << 16) // p))
    origin, ex, ey, area = pixel_plane(geo, height, width)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    px = jnp.asarray(cols.reshape(-1), origin.dtype)
    py = jnp.asarray(rows.reshape(-1), origin.dtype)
    targets = origin + px[:, None] * ex + py[:, None] * ey
    site_pos = jnp.asarray(site_positions(shape, sites, affine), origin.dtype)
    table = _site_table_jit(coarse, targets, site_pos, geo["inv_a"], geo["inv_t"], grid)
    xs = tables["xs"]
    fd = {
        "plane_origin": origin,
        "plane_ex": ex,
        "plane_ey": ey,
        "pixel_area": area,
        "pixel_x": px,
        "pixel_y": py,
        "site_scale": jnp.asarray((np.asarray(sites) - 1) / np.asarray(shape, float), origin.dtype),
        "site_table": table,
        "angular_norm": angular_normalisation(tables),
        "mu_channels": xs.reshape(xs.shape[0], num_mat, 3).sum(-1),
    }
    return fd, {"fd_sites": sites, "fd_batch": int(config.batch)}


# --------------------------------------------------------------------------------------------------
# Scoring


def _site_interpolate(fd, opts, inv_a, inv_t, pos):
    """Trilinear interpolation of the site table at event positions [B, 3] -> [B, M, P]."""
    sites = opts["fd_sites"]
    s = (pos @ inv_a.T + inv_t + 0.5) * fd["site_scale"]
    hi = jnp.asarray(sites, jnp.int32) - 2
    i0 = jnp.clip(jnp.floor(s).astype(jnp.int32), 0, hi)
    f = jnp.clip(s - i0, 0.0, 1.0)
    table = fd["site_table"]
    out = 0.0
    for corner in range(8):
        bits = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        idx = i0 + bits
        w = jnp.prod(jnp.where(bits == 1, f, 1.0 - f), axis=-1)
        flat = (idx[:, 0] * sites[1] + idx[:, 1]) * sites[2] + idx[:, 2]
        out = out + w[:, None, None] * table[flat]
    return out


def score_events(tables, geo, opts, rows, valid, key):
    """Forced-detection scores of a batch of interaction events.

    Args:
      tables, geo, opts: as :func:`jaxdrr.scatter.transport.run` (``geo["fd"]`` from :func:`prepare`).
      rows: [B, EVENT_FIELDS] events (position, incoming direction, energy, weight, material,
        process, image class; see :func:`jaxdrr.scatter.transport.run`).
      valid: [B] bool: rows beyond the buffer's fill are ignored.
      key: PRNG key of this batch (pixel target points, grid entry offsets).

    Returns:
      [2, 3, H * W]: energy-integrating and photon-counting scores of the images single Compton,
      single Rayleigh and multiple scatter (raw tallies, as the analog ones).
    """
    # Structure of arrays: every per-pair quantity is an [events, pixels] plane (XLA's CPU code
    # vectorises those; reductions over a minor axis of 3 vector components are several times slower).
    fd = geo["fd"]
    energy = rows[:, 6]
    weight = jnp.where(valid, rows[:, 7], 0.0)
    material = rows[:, 8].astype(jnp.int32)
    process = rows[:, 9].astype(jnp.int32)
    cls = rows[:, 10].astype(jnp.int32)
    b = rows.shape[0]
    p = fd["pixel_x"].shape[0]
    u = jax.random.uniform(key, (b, 3), rows.dtype)
    tx = fd["pixel_x"][None, :] - 0.5 + u[:, 0:1]
    ty = fd["pixel_y"][None, :] - 0.5 + u[:, 1:2]
    origin, ex, ey, normal = fd["plane_origin"], fd["plane_ex"], fd["plane_ey"], geo["normal"]
    target = [origin[k] + tx * ex[k] + ty * ey[k] for k in range(3)]  # 3 x [B, P]
    v = [target[k] - rows[:, k : k + 1] for k in range(3)]
    dist2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
    inv_dist = jax.lax.rsqrt(dist2)
    direction = [c * inv_dist for c in v]
    cos_beta = sum(direction[k] * normal[k] for k in range(3))
    solid = fd["pixel_area"] * cos_beta / dist2
    cos_theta = jnp.clip(sum(direction[k] * rows[:, 3 + k : 4 + k] for k in range(3)), -1.0, 1.0)
    w_ang, e_out = angular_weights(tables, material[:, None], process[:, None], energy[:, None], cos_theta)
    # Materialise shared intermediates: XLA would otherwise fuse (and recompute) the table lookups
    # into every consumer.
    w_ang, e_out, solid = jax.lax.optimization_barrier((w_ang, e_out, solid))
    num_mat = tables["s_norm"].shape[0]
    norm = jnp.take_along_axis(
        transport.interp_rows(fd["angular_norm"], energy),
        (material + num_mat * (process - 1))[:, None],
        axis=1,
    )
    lines = _site_interpolate(fd, opts, geo["inv_a"], geo["inv_t"], rows[:, 0:3])  # [B, M, P]
    mu = transport.interp_rows(fd["mu_channels"], e_out.reshape(-1))  # [B * P, M]
    mu, lines = jax.lax.optimization_barrier((mu.T.reshape(num_mat, b, p), lines))
    depth = sum(mu[m] * lines[:, m, :] for m in range(num_mat))
    value = (weight / jnp.maximum(norm[:, 0], 1e-30))[:, None] * w_ang * solid * jnp.exp(-depth)
    value = jnp.where(e_out >= opts["cutoff_keV"], value, 0.0)
    if opts["detector_mu"] or opts["grid"]:
        u_grid = jnp.mod(u[:, 2:3] + GOLDEN * jnp.arange(p, dtype=rows.dtype)[None, :], 1.0)
        value = transport.detector_response(
            geo,
            opts,
            value.reshape(-1),
            jnp.stack(target, -1).reshape(-1, 3),
            jnp.stack(direction, -1).reshape(-1, 3),
            e_out.reshape(-1),
            u_grid.reshape(-1),
        ).reshape(b, p)
    onehot = (cls[:, None] == jnp.arange(1, 4)[None, :]).astype(value.dtype)  # [B, 3]
    return jnp.stack([onehot.T @ (value * e_out), onehot.T @ value])
