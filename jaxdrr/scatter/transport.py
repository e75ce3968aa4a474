"""The photon transport kernel: a fixed-size batch of photon lanes stepped with ``lax.while_loop``.

A *lane* holds one photon at a time (position, direction, energy, weight, scatter counts). Every
iteration advances all lanes by one event, with masks instead of branches:

1. **spawn**: lanes whose photon has died take a new source photon while the history budget lasts
   (so the batch stays full until the end, instead of waiting for the longest history);
2. **flight** (lanes with no pending interaction): Woodcock (delta) tracking. The free path is
   drawn with the energy's majorant ``mu_max(E)`` (``opts["tracking"] == "global"``, the
   reference) or spent block by block across a grid of local majorants (``"local"``,
   :mod:`jaxdrr.scatter.majorants`); at the landing point the nearest voxel's
   attenuation ``mu(E) = sum_m rho_m (mu/rho)_m(E)`` decides with one uniform number between a
   virtual event (continue) and a real one, and which material and process (photoelectric,
   Compton, Rayleigh). A photon that lands outside the volume box has left it for good (the box
   is convex and the outside is vacuum) and is scored on the detector from its last position;
3. **interaction**: photoelectric absorption deposits the energy locally and ends the history;
   Compton and Rayleigh scattering are sampled by rejection with a fixed number of tries per
   iteration (:data:`TRIES`); a photon whose tries are all rejected keeps its interaction
   *pending* and tries again in the next iteration without moving, so the rejection sampling is
   exact (no truncation bias) while the work per iteration stays fixed.

Compton: Klein-Nishina by Kahn/PENELOPE's two-branch sampling of tau = E'/E, accepted with the
Klein-Nishina remainder times the molecular incoherent scattering function S(x)/Z (no Doppler
broadening; E' is the free-electron Compton energy; the electron's energy E - E' is deposited
locally). Rayleigh: x^2 from the inverse cumulative of the molecular F^2, truncated at x_max(E), then
accepted with the Thomson factor (1 + cos^2)/2. Photons below ``cutoff_keV`` deposit their energy
locally. No fluorescence: tissue elements have K-shell fluorescence yields of at most 0.16 (Ca) and
K lines below 4.1 keV, absorbed within a millimetre; for iodine or metals (K lines of 28-60 keV)
this is a documented approximation.

Tallies: detector images [classes, H*W] (primary, single Compton, single Rayleigh, multiple) for
an energy-integrating and a photon-counting readout, and the deposited energy per voxel. With
forced detection (:mod:`jaxdrr.scatter.forced_detection`) the scatter images come from the
expected contributions of every real scattering, buffered as events and scored in batches, and the
analog tally keeps only unscattered photons. Each is
accumulated in float32 within a segment of :func:`segment_steps` iterations and then added to a
compensated (Kahan) float32 pair, so 1e9 histories lose no precision.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.scatter import interactions as xs_lib
from jaxdrr.scatter import majorants

NUM_CLASSES = 4  # primary, single Compton, single Rayleigh, multiple
TRIES = 2
SEGMENT_STEPS = 32


def segment_steps(num_voxels: int, num_pixels: int, lanes: int) -> int:
    """Iterations between flushes of the float32 partial tallies into the compensated totals.

    A flush costs O(voxels + pixels); a segment adds at most ``lanes * steps`` scores, spread over
    them. Short segments (32) keep every partial sum far below float32's 2^24 resolution limit; large
    volumes with large detectors (where scores per element per segment stay small anyway) flush
    every 256 iterations, which saves ~15 % of the run time on a 512x512x133 CT.
    """
    if num_voxels >= 1 << 20 and num_pixels >= 1 << 12 and lanes <= 1 << 17:
        return 8 * SEGMENT_STEPS
    return SEGMENT_STEPS


NUM_UNIFORMS = 6 + 4 * TRIES


class Photons(NamedTuple):
    """State of the photon lanes (all [N] or [N, 3])."""

    pos: jax.Array  # world mm
    dir: jax.Array  # unit
    energy: jax.Array  # keV
    weight: jax.Array
    alive: jax.Array  # bool
    outside: jax.Array  # bool: never entered the box (goes straight to the detector)
    pending: jax.Array  # int32: 0 none, 1 Compton, 2 Rayleigh
    material: jax.Array  # int32: material of the pending interaction
    n_compton: jax.Array  # int32
    n_rayleigh: jax.Array  # int32


def device_tables(tables: xs_lib.InteractionTables, dtype=jnp.float32) -> dict:
    """JAX arrays for the kernel: cross sections per mm per g/cm^3, sampling tables."""
    xs = np.stack([tables.mu_photo, tables.mu_compton, tables.mu_rayleigh], axis=-1)  # [M, E, 3]
    xs = np.transpose(xs, (1, 0, 2)).reshape(xs_lib.NUM_ENERGIES, -1) * 0.1  # [E, M*3], 1/mm per g/cm^3
    return {
        "xs": jnp.asarray(xs, dtype),
        "s_norm": jnp.asarray(tables.s_norm, dtype),
        "f2_norm": jnp.asarray(tables.f2_norm, dtype),  # forced detection's Rayleigh density
        "rayleigh_cdf": jnp.asarray(tables.rayleigh_cdf, dtype),
        "rayleigh_inverse": jnp.asarray(tables.rayleigh_inverse, dtype),
    }


def _energy_index(energy):
    """Fractional index of energies on the log-uniform grid (clamped to the table)."""
    step = (np.log(xs_lib.E_MAX_KEV) - np.log(xs_lib.E_MIN_KEV)) / (xs_lib.NUM_ENERGIES - 1)
    u = (jnp.log(energy) - np.log(xs_lib.E_MIN_KEV)) / step
    u = jnp.clip(u, 0.0, xs_lib.NUM_ENERGIES - 1.0001)
    i = jnp.floor(u).astype(jnp.int32)
    return i, u - i


def interp_rows(table, energy):
    """Linear interpolation of table rows [E, C] at energies [N] -> [N, C]."""
    i, t = _energy_index(energy)
    return table[i] * (1.0 - t)[:, None] + table[i + 1] * t[:, None]


def interp_x(table, material, x):
    """table [M, X] on the uniform x grid at (material, x) (broadcasting index arrays) -> linear."""
    u = jnp.clip(x / xs_lib.X_MAX_INV_A * (xs_lib.NUM_X - 1), 0.0, xs_lib.NUM_X - 1.0001)
    i = jnp.floor(u).astype(jnp.int32)
    t = u - i
    return table[material, i] * (1.0 - t) + table[material, i + 1] * t


def rotate(direction, cos_theta, phi):
    """New unit directions after deflection by polar angle theta and azimuth phi ([N, 3])."""
    ux, uy, uz = direction[:, 0], direction[:, 1], direction[:, 2]
    sin_theta = jnp.sqrt(jnp.maximum(1.0 - cos_theta**2, 0.0))
    cp, sp = jnp.cos(phi), jnp.sin(phi)
    # Near the z axis the general formula divides by ~0: use the axis-aligned form there.
    rho2 = ux**2 + uy**2
    near_pole = rho2 < 1e-10
    rho = jnp.sqrt(jnp.where(near_pole, 1.0, rho2))
    nx = ux * cos_theta + sin_theta * (ux * uz * cp - uy * sp) / rho
    ny = uy * cos_theta + sin_theta * (uy * uz * cp + ux * sp) / rho
    nz = uz * cos_theta - rho * sin_theta * cp
    sign = jnp.where(uz >= 0, 1.0, -1.0)
    px, py, pz = sin_theta * cp, sin_theta * sp, sign * cos_theta
    out = jnp.stack(
        [jnp.where(near_pole, px, nx), jnp.where(near_pole, py, ny), jnp.where(near_pole, pz, nz)], -1
    )
    return out / jnp.linalg.norm(out, axis=-1, keepdims=True)


def momentum_transfer(energy, cos_theta):
    """x = sin(theta / 2) E / hc (1/Angstrom) of a deflection by theta at energy E (keV)."""
    return energy / xs_lib.HC_KEV_A * jnp.sqrt(jnp.maximum(0.5 * (1.0 - cos_theta), 0.0))


def compton_tau(energy, cos_theta):
    """tau = E'/E of Compton scattering by theta off a free electron at rest."""
    return 1.0 / (1.0 + energy / 510.99895 * (1.0 - cos_theta))


def compton_angular_weight(tau, cos_theta):
    """Klein-Nishina dsigma/dOmega in units of r_e^2 / 2: tau^2 (tau + 1/tau - sin^2 theta).

    Times ``S(x)/Z`` it is (up to the per-energy normalisation of
    :func:`jaxdrr.scatter.forced_detection.angular_normalisation`) the density per steradian that
    :func:`sample_compton` samples.
    """
    return tau**2 * (tau + 1.0 / tau - (1.0 - cos_theta**2))


def rayleigh_angular_weight(cos_theta):
    """Thomson factor (1 + cos^2 theta) / 2: times F^2(x), the density :func:`sample_rayleigh` samples."""
    return 0.5 * (1.0 + cos_theta**2)


def sample_compton(tables, material, energy, u):
    """One Klein-Nishina x S(x)/Z rejection try per lane.

    Args:
      material, energy: [N].
      u: uniforms [N, 3] (branch, tau, accept).

    Returns:
      (accepted [N] bool, cos_theta [N], tau = E'/E [N]).
    """
    kappa = energy / 510.99895
    tau_min = 1.0 / (1.0 + 2.0 * kappa)
    a1 = jnp.log1p(2.0 * kappa)
    a2 = 2.0 * kappa * (1.0 + kappa) * tau_min**2
    branch1 = u[:, 0] * (a1 + a2) < a1
    tau = jnp.where(branch1, jnp.exp(-a1 * u[:, 1]), jnp.sqrt(tau_min**2 + u[:, 1] * (1.0 - tau_min**2)))
    cos_theta = jnp.clip(1.0 - (1.0 - tau) / (kappa * tau), -1.0, 1.0)
    # Remainder of the Klein-Nishina density after the 1/tau + tau mixture (PENELOPE eq. 2.31).
    kn = 1.0 - (1.0 - tau) * ((2.0 * kappa + 1.0) * tau - 1.0) / (kappa**2 * tau * (1.0 + tau**2))
    s = interp_x(tables["s_norm"], material, momentum_transfer(energy, cos_theta))
    return u[:, 2] < kn * s, cos_theta, tau


def sample_rayleigh(tables, material, energy, u):
    """One F^2 x Thomson rejection try per lane. u: uniforms [N, 2]. Returns (accepted, cos_theta)."""
    k = energy / xs_lib.HC_KEV_A  # x at theta = 180 degrees
    c_max = interp_x(tables["rayleigh_cdf"], material, k)
    p = u[:, 0] * c_max * (xs_lib.NUM_INVERSE - 1)
    i = jnp.clip(jnp.floor(p).astype(jnp.int32), 0, xs_lib.NUM_INVERSE - 2)
    t = p - i
    inv = tables["rayleigh_inverse"]
    x2 = inv[material, i] * (1.0 - t) + inv[material, i + 1] * t
    cos_theta = jnp.clip(1.0 - 2.0 * x2 / k**2, -1.0, 1.0)
    return u[:, 1] < rayleigh_angular_weight(cos_theta), cos_theta


def _box_entry(source, direction, inv_a, inv_t, shape):
    """Distance to the volume box [-0.5, n - 0.5]^3 (index coordinates) along rays, and a hit flag."""
    o = inv_a @ source + inv_t
    d = direction @ inv_a.T
    lo = -0.5
    hi = jnp.asarray(shape, d.dtype) - 0.5
    safe = jnp.where(jnp.abs(d) < 1e-12, 1e-12, d)
    t0, t1 = (lo - o) / safe, (hi - o) / safe
    t_near = jnp.maximum(jnp.max(jnp.minimum(t0, t1), axis=-1), 0.0)
    t_far = jnp.min(jnp.maximum(t0, t1), axis=-1)
    return t_near, t_far > t_near


def _voxel(pos, inv_a, inv_t, shape):
    """Nearest voxel of world positions [N, 3]: (flat index [N], inside-the-box flag [N])."""
    idx = jnp.floor(pos @ inv_a.T + inv_t + 0.5).astype(jnp.int32)
    n = jnp.asarray(shape, jnp.int32)
    inside = jnp.all((idx >= 0) & (idx < n), axis=-1)
    idx = jnp.clip(idx, 0, n - 1)
    flat = (idx[:, 0] * shape[1] + idx[:, 1]) * shape[2] + idx[:, 2]
    return flat, inside


def _grid_weight(geo, grid, pos_hit, direction, energy, u):
    """Day & Dance-style transmission of a focused linear grid for photons hitting the detector.

    The septa run along the detector's row direction (image y) and are focused on the source. A
    photon's lateral travel across the septa pattern, relative to the local focal direction, is
    ``a = h |tan(delta)|``; with a uniformly random entry offset x0 in the period (one uniform
    number), the share of its path inside lead is the share of [x0, x0 + a] covered by septa. The
    weight is ``exp(-(mu_lead f + mu_interspace (1 - f)) h / cos)``: unbiased for the analytic
    transmission averaged over the entry offset.
    """
    n, ex = geo["normal"], geo["e_x"]
    focal = pos_hit - geo["source"]
    un = direction @ n
    delta = jnp.arctan2(direction @ ex, un) - jnp.arctan2(focal @ ex, focal @ n)
    h, period, septum = grid["height_mm"], grid["period_mm"], grid["septum_mm"]
    gap = period - septum
    a = h * jnp.abs(jnp.tan(delta))

    def covered(y):  # septum length in [0, y] of the periodic pattern [gap | septum]
        return jnp.floor(y / period) * septum + jnp.clip(jnp.mod(y, period) - gap, 0.0, septum)

    x0 = u * period
    # Below a thousandth of a septum of lateral travel the path stays in the material it entered;
    # the float32 difference of `covered` would be dominated by rounding there.
    a_min = 1e-3 * septum
    frac = jnp.where(
        a > a_min, (covered(x0 + a) - covered(x0)) / jnp.maximum(a, a_min), (x0 >= gap).astype(energy.dtype)
    )
    frac = jnp.clip(frac, 0.0, 1.0)
    mu = interp_rows(geo["grid_mu"], energy)  # [N, 2] (lead, interspace) 1/mm
    path = h / jnp.maximum(un, 1e-6)
    return jnp.exp(-(mu[:, 0] * frac + mu[:, 1] * (1.0 - frac)) * path)


def detector_response(geo, opts, value, hit, direction, energy, u_grid):
    """``value`` times the detector's response to photons crossing the detector plane.

    The one place of the detector model, shared by the analog tally and forced detection: the
    absorbed fraction ``1 - exp(-mu(E) t / cos)`` of :class:`DetectorAbsorption` (if
    ``opts["detector_mu"]``) and the anti-scatter grid's transmission weight (if ``opts["grid"]``,
    :func:`_grid_weight`).

    Args:
      value: [N] weights to multiply.
      hit: [N, 3] crossing points on the detector plane (world mm).
      direction: [N, 3] unit directions; energy: [N] keV; u_grid: [N] uniforms (grid entry offset).
    """
    un = direction @ geo["normal"]
    if opts["detector_mu"]:
        mu = interp_rows(geo["detector_mu"], energy)[:, 0]
        value = value * -jnp.expm1(-mu * geo["detector_thickness_mm"] / jnp.maximum(un, 1e-6))
    if opts["grid"]:
        value = value * _grid_weight(geo, geo["grid"], hit, direction, energy, u_grid)
    return value


def _score(geo, opts, tally, photons: Photons, exiting, u_grid):
    """Adds exiting photons to the detector images (flattened [2 * classes * H * W]).

    With forced detection (``opts["forced_detection"]``) only unscattered photons are scored here:
    the scatter images come from the forced-detection estimator alone.
    """
    height, width = opts["height"], opts["width"]
    hw = height * width
    n = geo["normal"]
    un = photons.dir @ n
    ok = exiting & (un > 1e-6)
    t = (geo["sdd"] - (photons.pos - geo["source"]) @ n) / jnp.where(ok, un, 1.0)
    hit = photons.pos + t[:, None] * photons.dir
    h = hit @ geo["P"][:, :3].T + geo["P"][:, 3]
    x = h[:, 0] / h[:, 2]
    y = h[:, 1] / h[:, 2]
    col = jnp.floor(x + 0.5).astype(jnp.int32)
    row = jnp.floor(y + 0.5).astype(jnp.int32)
    ok &= (col >= 0) & (col < width) & (row >= 0) & (row < height) & (t >= 0)
    value = detector_response(geo, opts, photons.weight, hit, photons.dir, photons.energy, u_grid)
    orders = photons.n_compton + photons.n_rayleigh
    missed = jnp.sum(jnp.where(ok, 0, exiting.astype(jnp.int32)))
    if opts.get("forced_detection", False):
        ok &= orders == 0
    cls = jnp.where(orders == 0, 0, jnp.where(orders >= 2, 3, jnp.where(photons.n_compton == 1, 1, 2)))
    pix = jnp.where(ok, cls * hw + row * width + col, 0)
    value = jnp.where(ok, value, 0.0)
    idx = jnp.concatenate([pix, pix + NUM_CLASSES * hw])
    vals = jnp.concatenate([value * photons.energy, value])
    return tally.at[idx].add(vals), missed


def _spawn(geo, opts, photons: Photons, emitted, budget, u):
    dead = ~photons.alive
    rank = jnp.cumsum(dead.astype(jnp.int32)) - 1
    new = dead & (emitted + rank < budget)
    n_new = jnp.sum(new.astype(jnp.int32))
    e_idx = jnp.clip(
        jnp.searchsorted(geo["spectrum_cdf"], u[:, 0], side="right"), 0, geo["spectrum_cdf"].shape[0] - 1
    )
    energy = geo["energies"][e_idx]
    px = -0.5 + u[:, 1] * opts["width"]
    py = -0.5 + u[:, 2] * opts["height"]
    pts = jnp.stack([px, py, jnp.ones_like(px)], axis=-1)
    d = pts @ geo["M_inv"].T
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    cos = d @ geo["normal"]
    # Uniform points on the detector rectangle, weighted by cos^3 / mean(cos^3), are an isotropic
    # point source collimated to the detector (the solid angle of dA is cos^3 dA / sdd^2).
    weight = cos**3 / geo["mean_cos3"]
    t_near, hits = _box_entry(geo["source"], d, geo["inv_a"], geo["inv_t"], opts["shape"])
    pos = geo["source"] + jnp.where(hits, t_near, 0.0)[:, None] * d
    zero = jnp.zeros_like(photons.pending)
    sel = lambda a, b: jnp.where(new.reshape(new.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
    return Photons(
        pos=sel(pos, photons.pos),
        dir=sel(d, photons.dir),
        energy=sel(energy, photons.energy),
        weight=sel(weight, photons.weight),
        alive=photons.alive | new,
        outside=sel(~hits, photons.outside),
        pending=sel(zero, photons.pending),
        material=sel(zero, photons.material),
        n_compton=sel(zero, photons.n_compton),
        n_rayleigh=sel(zero, photons.n_rayleigh),
    ), emitted + n_new


EVENT_FIELDS = 11  # pos (3), incoming dir (3), energy, weight, material, process, image class
FD_KEY_TAG = 2**31 - 1  # fold_in tag of the forced-detection stream (iterations stay below 2^30)


def event_capacity(lanes: int, batch: int) -> int:
    """Rows of the interaction-event buffer: room for one iteration's events beyond a flush threshold
    of max(lanes, batch), rounded up to whole scoring batches."""
    cap = lanes + max(lanes, batch)
    return -(-cap // batch) * batch


def run(tables, geo, densities, key, *, photons: int, opts: dict):
    """Transports ``photons`` histories through the voxel volume and returns the raw tallies.

    Args:
      tables: :func:`device_tables` output.
      geo: geometry and source arrays (see :func:`jaxdrr.scatter.monte_carlo.prepare`).
      densities: [V, M] voxel densities (g/cm^3), V = I * J * K in C order; or [V, 1] HU when
        ``opts["decompose"]`` maps HU [N] to densities [M, N].
      key: PRNG key.
      photons: number of histories (static).
      opts: static options: height, width, shape (I, J, K), lanes, cutoff_keV, max_iterations,
        detector_mu (bool), grid (bool), segment_steps, decompose (optional); ``tracking``
        ("global": one majorant per energy, ``geo["majorant"]``; "local": block majorants
        ``geo["block_max"]``, see :mod:`jaxdrr.scatter.majorants`, with ``block`` and
        ``dda_steps``); ``forced_detection`` (bool) with ``event_scorer`` (a function
        ``(tables, geo, opts, events [B, EVENT_FIELDS], valid [B], key) -> [2, 3, H * W]``, e.g.
        :func:`jaxdrr.scatter.forced_detection.score_events`) and ``fd_batch`` (B).

    Returns:
      dict: ``images`` [2, classes, H * W] (energy-integrating keV, photon-counting; weights summed),
      ``deposited`` [V] keV, and diagnostics (``iterations``, ``majorant_violations``,
      ``truncated``, ``missed_detector``, ``scatter_events``: real scatterings scored by forced
      detection).

    With forced detection every real Compton or Rayleigh interaction is written as an event row into
    a buffer (compacted: only interacting lanes take rows); when the buffer is nearly full it is
    scored in batches of ``fd_batch`` events by ``event_scorer`` (one dense [B, H * W] evaluation per
    batch instead of a masked evaluation in every lane every iteration). The analog photon then goes
    on as usual; the analog tally keeps only unscattered photons.
    """
    lanes = int(opts["lanes"])
    shape = opts["shape"]
    num_vox = int(np.prod(shape))
    hw = opts["height"] * opts["width"]
    dtype = densities.dtype
    num_mat = tables["s_norm"].shape[0]
    local = opts.get("tracking", "global") == "local"
    forced = bool(opts.get("forced_detection", False))
    f32 = lambda *s: jnp.zeros(s, dtype)  # noqa: E731
    i32 = jnp.zeros((lanes,), jnp.int32)
    state0 = Photons(
        f32(lanes, 3),
        f32(lanes, 3),
        jnp.ones((lanes,), dtype),
        f32(lanes),
        jnp.zeros((lanes,), bool),
        jnp.zeros((lanes,), bool),
        i32,
        i32,
        i32,
        i32,
    )
    # emitted, iterations, violations, missed detector, events in the buffer, flushes, events scored
    counters0 = jnp.zeros((7,), jnp.int32)
    if forced:
        fd_batch = int(opts["fd_batch"])
        capacity = event_capacity(lanes, fd_batch)
        events0 = jnp.zeros((capacity, EVENT_FIELDS), dtype)
        fd_key = jax.random.fold_in(key, FD_KEY_TAG)
    else:
        events0 = jnp.zeros((0, EVENT_FIELDS), dtype)

    def score_buffer(events, count, flush_index):
        """Forced-detection images [2, 3, H * W] of the first ``count`` buffered events."""
        key_f = jax.random.fold_in(fd_key, flush_index)
        n_batches = (count + fd_batch - 1) // fd_batch

        def body(c):
            b, acc = c
            rows = jax.lax.dynamic_slice_in_dim(events, b * fd_batch, fd_batch, axis=0)
            valid = b * fd_batch + jnp.arange(fd_batch) < count
            part = opts["event_scorer"](tables, geo, opts, rows, valid, jax.random.fold_in(key_f, b))
            return b + 1, acc + part

        _, acc = jax.lax.while_loop(
            lambda c: c[0] < n_batches, body, (jnp.int32(0), jnp.zeros((2, 3, hw), dtype))
        )
        return acc

    def add_scatter(tally, images):
        """Adds [2, 3, H * W] scatter images to the flattened tally's classes 1-3."""
        return tally.reshape(2, NUM_CLASSES, hw).at[:, 1:].add(images).reshape(-1)

    def step(carry):
        ph, tally, dose, counters, events = carry
        emitted, it = counters[0], counters[1]
        u = jax.random.uniform(
            jax.random.fold_in(key, it), (lanes, NUM_UNIFORMS), dtype, minval=1e-12, maxval=1.0
        )
        ph, emitted = _spawn(geo, opts, ph, emitted, photons, u[:, 2:5])
        free = ph.alive & (ph.pending == 0)
        xs = interp_rows(tables["xs"], ph.energy).reshape(lanes, num_mat, 3)
        if local:
            # Delta tracking across the block-majorant grid (jaxdrr.scatter.majorants).
            fl = majorants.flight(
                geo, opts, ph.pos, ph.dir, jnp.sum(xs, axis=-1), -jnp.log(u[:, 0]), free & ~ph.outside
            )
            majorant, landing, vox = fl.majorant, fl.pos, fl.voxel
            exiting = free & (ph.outside | fl.exited)
            landed = fl.landed
        else:
            # Woodcock tracking with one global majorant.
            majorant = jnp.maximum(interp_rows(geo["majorant"][:, None], ph.energy)[:, 0], 1e-9)
            s = -jnp.log(u[:, 0]) / majorant
            landing = ph.pos + s[:, None] * ph.dir
            vox, inside = _voxel(landing, geo["inv_a"], geo["inv_t"], shape)
            exiting = free & (ph.outside | ~inside)
            landed = free & ~exiting
        tally, missed = _score(geo, opts, tally, ph, exiting, u[:, 5])
        flying = free & ~exiting
        rho = densities[vox]  # [N, M], or [N, 1] HU decomposed here
        if opts.get("decompose") is not None:
            rho = opts["decompose"](rho[:, 0]).T
        parts = xs * rho[:, :, None]
        cum = jnp.cumsum(parts.reshape(lanes, 3 * num_mat), axis=-1)
        r = u[:, 1] * majorant
        real = landed & (r < cum[:, -1])
        violations = jnp.sum((landed & (cum[:, -1] > majorant * 1.0001)).astype(jnp.int32))
        sel = jnp.sum((cum <= r[:, None]).astype(jnp.int32), axis=-1)
        sel = jnp.minimum(sel, 3 * num_mat - 1)
        mat, process = sel // 3, sel % 3
        pos = jnp.where(flying[:, None], landing, ph.pos)
        photo = real & (process == 0)
        deposit = jnp.where(photo, ph.energy * ph.weight, 0.0)
        alive = ph.alive & ~exiting & ~photo
        pending = jnp.where(real & (process > 0), process, ph.pending)
        material = jnp.where(real, mat, ph.material)
        count, flushes, scored = counters[4], counters[5], counters[6]
        if forced:
            # Record each real scattering (state before it) for forced detection; image class 1
            # (single Compton), 2 (single Rayleigh) or 3 (multiple) by the order this scatter has.
            new = real & (process > 0)
            order_before = ph.n_compton + ph.n_rayleigh
            cls = jnp.where(order_before == 0, process, 3)
            rows = jnp.concatenate(
                [
                    pos,
                    ph.dir,
                    ph.energy[:, None],
                    ph.weight[:, None],
                    jnp.stack([mat, process, cls], -1).astype(dtype),
                ],
                axis=-1,
            )
            slot = jnp.where(new, count + jnp.cumsum(new.astype(jnp.int32)) - 1, events.shape[0])
            events = events.at[slot].set(rows, mode="drop")
            count = count + jnp.sum(new.astype(jnp.int32))

            def flush(args):
                tally, count, flushes, scored = args
                tally = add_scatter(tally, score_buffer(events, count, flushes))
                return tally, jnp.int32(0), flushes + 1, scored + count

            tally, count, flushes, scored = jax.lax.cond(
                count > events.shape[0] - lanes, flush, lambda a: a, (tally, count, flushes, scored)
            )
        # Interaction sampling: TRIES rejection tries per iteration; rejected lanes stay pending.
        interacting = alive & (pending > 0)
        is_c = pending == 1
        done = jnp.zeros((lanes,), bool)
        cos_t = jnp.ones((lanes,), dtype)
        tau = jnp.ones((lanes,), dtype)
        phi = jnp.zeros((lanes,), dtype)
        for t in range(TRIES):
            c = 6 + 4 * t
            acc_c, cos_c, tau_c = sample_compton(tables, material, ph.energy, u[:, c : c + 3])
            acc_r, cos_r = sample_rayleigh(tables, material, ph.energy, u[:, c : c + 2])
            acc = jnp.where(is_c, acc_c, acc_r) & ~done
            cos_t = jnp.where(acc, jnp.where(is_c, cos_c, cos_r), cos_t)
            tau = jnp.where(acc & is_c, tau_c, tau)
            phi = jnp.where(acc, 2.0 * np.pi * u[:, c + 3], phi)
            done = done | acc
        scat = interacting & done
        new_energy = jnp.where(scat & is_c, ph.energy * tau, ph.energy)
        deposit = deposit + jnp.where(scat, (ph.energy - new_energy) * ph.weight, 0.0)
        below = scat & (new_energy < opts["cutoff_keV"])
        deposit = deposit + jnp.where(below, new_energy * ph.weight, 0.0)
        alive = alive & ~below
        direction = jnp.where(scat[:, None], rotate(ph.dir, cos_t, phi), ph.dir)
        here, _ = _voxel(pos, geo["inv_a"], geo["inv_t"], shape)
        dose = dose.at[jnp.where(deposit > 0, here, 0)].add(deposit)
        ph = Photons(
            pos,
            direction,
            new_energy,
            ph.weight,
            alive,
            ph.outside & alive,
            jnp.where(scat, 0, pending),
            material,
            ph.n_compton + (scat & is_c).astype(jnp.int32),
            ph.n_rayleigh + (scat & ~is_c).astype(jnp.int32),
        )
        counters = jnp.stack(
            [emitted, it + 1, counters[2] + violations, counters[3] + missed, count, flushes, scored]
        )
        return ph, tally, dose, counters, events

    def busy(ph, counters):
        return ((counters[0] < photons) | jnp.any(ph.alive)) & (counters[1] < opts["max_iterations"])

    def segment(carry):
        ph, sums, comps, counters, events = carry
        tally0 = jnp.zeros((2 * NUM_CLASSES * hw,), dtype)
        dose0 = jnp.zeros((num_vox,), dtype)
        # At most segment_steps iterations between flushes (float32 partial sums stay small), and
        # none after the last history has ended.
        stop = counters[1] + opts.get("segment_steps", SEGMENT_STEPS)
        ph, tally, dose, counters, events = jax.lax.while_loop(
            lambda c: busy(c[0], c[3]) & (c[3][1] < stop), step, (ph, tally0, dose0, counters, events)
        )
        new_sums, new_comps = [], []
        for total, comp, part in zip(sums, comps, (tally, dose), strict=True):
            y = part - comp  # Kahan: comp carries the low-order bits lost in total
            t = total + y
            new_comps.append((t - total) - y)
            new_sums.append(t)
        return ph, tuple(new_sums), tuple(new_comps), counters, events

    def unfinished(carry):
        return busy(carry[0], carry[3])

    zeros = (jnp.zeros((2 * NUM_CLASSES * hw,), dtype), jnp.zeros((num_vox,), dtype))
    ph, sums, _, counters, events = jax.lax.while_loop(
        unfinished, segment, (state0, zeros, zeros, counters0, events0)
    )
    images = sums[0]
    if forced:
        # The events still in the buffer when the last history ended.
        images = add_scatter(images, score_buffer(events, counters[4], counters[5]))
    return {
        "images": images.reshape(2, NUM_CLASSES, hw),
        "deposited": sums[1],
        "emitted": counters[0],
        "iterations": counters[1],
        "majorant_violations": counters[2],
        "missed_detector": counters[3],
        "scatter_events": counters[6] + counters[4],
        "truncated": jnp.sum(ph.alive.astype(jnp.int32)),
    }
