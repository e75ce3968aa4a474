"""Exact ray path lengths through closed triangle meshes, and volume integrals over their inside.

For a closed, outward-oriented mesh (:class:`jaxdrr.mesh.TriangleMesh`) the length of a ray
``o + t d`` (|d| = 1) inside the solid is the signed sum of its surface hits,
``L = sum_i sign(n_i . d) t_i``: exits (+) minus entries (-). The same identity integrates any
field over the inside: ``sum_i sign_i F(t_i)`` with ``F`` the cumulative integral along the ray.

**Intersection test (watertight).** All rays share the source ``o``, and each pixel ray is the set
of points whose homogeneous image coordinates ``(x, y, w) = P X`` satisfy ``x = p_x w``,
``y = p_y w``. For a vertex, ``(alpha, beta) = (x - p_x w, y - p_y w)`` are its coordinates in a
plane perpendicular to the ray (the ray-space projection of Woop, Benthin and Wald, "Watertight
ray/triangle intersection", JCGT 2013, with the basis that ``P`` provides). Each vertex is
projected once per ray (so shared vertices get identical ray-space coordinates and a ray through
a vertex gives exact zeros), and an edge's function ``E(A, B) = alpha_A beta_B - beta_A alpha_B`` (a 2-D
orientation, = det(M) q . (a x b) with q the ray direction, a, b the vertices relative to ``o``) is
evaluated with its endpoints in a canonical order (lexicographic on the world coordinates) and
negated for the other order, so the two faces sharing an edge see exactly opposite values even when
the compiler contracts ``a b - c d`` into a fused multiply-add (XLA on the CPU does). The
ray's line meets the triangle when the three edge functions have one sign; their sum ``S`` is
det(M) q . n (its sign gives entry/exit) and ``(E_BC, E_CA, E_AB) / S`` are the barycentric
coordinates of the hit, from which its depth ``w`` (linear in space) and ``t`` follow. This is
Moller-Trumbore's answer with a consistent rule at shared edges and vertices.

**Ties.** An edge function that is exactly zero (the ray passes through the edge's line) is
resolved by a symbolic perturbation of the pixel, ``p + eps (1, eta)``: the sign of its first
non-zero derivative decides: ``y_A w_B - w_A y_B``, then ``w_A x_B - x_A w_B`` (both independent
of the pixel, so computed once per edge). The rule is the same for both faces of an edge (with
opposite signs), so a ray through a shared edge or vertex counts as a ray an infinitesimal step
away: once, never twice or zero times (tested: a ray down a prism's axis through both caps' fan
centres). What remains: (1) a triangle seen exactly edge-on (``S = 0``) is skipped (its neighbours
carry the perturbed answer); (2) the products in ``E`` are rounded, so when a ray passes within
rounding of an edge's line without hitting it exactly, a vertex's fan of edges may be judged
inconsistently (two faces count it, or none): an error of one hit's depth at that pixel, for rays
within ~eps (relative to the vertices' distances from the ray) of a vertex - a set of pixels of
measure ~eps^2 that generic geometry does not hit.

**Depths.** Only hits in front of the source (``w > 0``, ``t > 0``) count. ``t`` is measured from a
reference depth (the mesh's vertex centroid) and the constant restored as ``t_ref * sum_i sign_i``,
which is zero for a source outside the mesh: the float32 error then scales with the mesh size, not
the source distance. A source inside the mesh is unsupported (the path length is then the length
from the source to the exits, but it is not tested; the inside integrals are wrong there).

**Culling.** Two passes, each triangle in exactly one (so the signed sums are unchanged):

* *window pass* (path lengths only): a triangle whose projected pixel centres fit in a
  ``SMALL_WINDOW`` x ``SMALL_WINDOW`` window (``SMALL_MARGIN`` px of margin for rounding) is
  tested against those pixels only and scatter-added: O(F x 16) work, the case of dense meshes
  whose triangles are a few pixels or less (a static ``lax.scan`` over chunks of triangles);
* *tile pass*: the detector is split into ``tile x tile`` pixel tiles. Each remaining triangle's
  projected bounding box (one pixel margin; the whole detector if a vertex is at or behind the
  source plane) gives the tiles it may cover. A ``lax.while_loop`` visits only the covered tiles,
  and for each tile only the triangles that overlap it (box test plus a separating-edge test: the
  exact 2-D triangle/rectangle test, with the margin), ``TRIANGLE_CHUNK`` at a time: the work is
  sum over covered tiles of tile^2 x (triangles overlapping the tile), memory O(tile^2 x chunk + F).

The tile loop's trip counts are data-dependent, so there is no capacity that could overflow and the
answer never depends on the culling (``cull=False``: every tile against every triangle, the dense
reference). Under ``vmap`` the loops run until the slowest batch member is done. Because reverse
mode cannot differentiate a while loop, both functions have a custom VJP that re-runs the passes and
differentiates one chunk at a time (no residuals are stored).

**Gradients** are those of the piecewise-smooth computed result: w.r.t. the triangle corners (so
the pose) and ``P`` through the hit depths and the ray directions (and, for the inside integrals,
the volume samples and the ends of each ray's sample grid); hit/miss decisions are piecewise
constant. ``jax.jvp`` / ``jacfwd`` are not available (custom VJP).

**Cost** (2-core CPU, loaded machine, CPU seconds, path lengths): a 2,048 + 96 triangle screw and
K-wire on a 512 x 512 detector ~0.1 s; a 100,000-triangle torus covering ~300 tiles ~0.25 s (1.7 s
before the window pass). A tile x triangle ray test costs ~20 ns; long thin triangles crossing many
tiles are the expensive case.

The inside integrals loop over *ray chunks* instead of tiles: the pixels of nonzero path length
(one path-length pass), ``RAY_CHUNK`` at a time in raster order, each chunk tested against the
triangles that may meet its pixel box (every triangle, small or not: each ray needs all its hits).
Volume samples are taken only along rays that cross the mesh. Measured (``benchmarks/bench_tools.py
--pelvis``, quiet 2-core CPU): screw (1,760 triangles, sphere range, 41 samples) ~40 ms, K-wire
(96 triangles, hit range, 48 samples) ~28 ms, from ~75 ms and ~220 ms with the tile loop (a wire's
box spans hundreds of mostly empty tiles) and a padded copy of the volume per object.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import GeometryError, MeshError, VolumeError
from jaxdrr.geometry.projection import (
    check_detector,
    check_projection_matrix,
    is_concrete,
    pixel_grid,
    ray_directions,
    source_position,
)
from jaxdrr.ops import trilinear
from jaxdrr.ops.rays import VolumeGrid

TRIANGLE_CHUNK = 64  # triangles tested against a tile's rays per loop step
RAY_CHUNK = 256  # rays per loop step of the inside integrals (the pixels that see the mesh, in order)
SMALL_WINDOW = 4  # a triangle whose pixel centres fit in 4 x 4 is tested against those 16 pixels only
SMALL_MARGIN = 0.05  # px: far above the rounding of projected corners (~1e-4 px in float32)
SMALL_CHUNK = 1024  # triangles per step of the window pass
DEFAULT_TILE = 16
_EDGE_START = (0, 1, 2)  # edges AB, BC, CA
_EDGE_END = (1, 2, 0)


# ---- One chunk: rays of a tile x a chunk of triangles --------------------------------------


def _lexicographic_less(a, b):
    """a < b lexicographically on the last axis (3 coordinates); exact comparisons."""
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return (ax < bx) | ((ax == bx) & ((ay < by) | ((ay == by) & (az < bz))))


def _hits(triangles, P, ref, points):
    """Hits of the rays of image points [R, 3] with triangles [B, 3, 3] (world mm).

    Returns:
      (hit [R, B] bool (front of the source only), facing [R, B] (+1 exit, -1 entry),
       depth [R, B] hit depth w minus the reference depth, in units of w).
    """
    homog = triangles @ P[:, :3].T + P[:, 3]  # [B, 3, 3]: (x, y, w) per vertex
    w = homog[..., 2]
    w_rel = (triangles - ref) @ P[2, :3]  # precise depth relative to the reference point
    start, end = triangles[:, _EDGE_START], triangles[:, _EDGE_END]
    keep = _lexicographic_less(start, end)[..., None]  # [B, 3, 1]: canonical edge direction
    first = jnp.where(keep, homog[:, _EDGE_START], homog[:, _EDGE_END])  # [B, 3 edges, 3]
    second = jnp.where(keep, homog[:, _EDGE_END], homog[:, _EDGE_START])
    sigma = jnp.where(keep[..., 0], 1.0, -1.0).astype(homog.dtype)
    x1, y1, w1 = first[..., 0], first[..., 1], first[..., 2]
    x2, y2, w2 = second[..., 0], second[..., 1], second[..., 2]
    # Ties: d(edge)/d(p_x) = y1 w2 - w1 y2, then d(edge)/d(p_y) = w1 x2 - x1 w2 (pixel-independent).
    tie1, tie2 = sigma * (y1 * w2 - w1 * y2), sigma * (w1 * x2 - x1 * w2)
    tie = jnp.sign(jnp.where(tie1 != 0, tie1, tie2))  # [B, 3]
    # Front-facing or not, a hit lies in front of the source iff its depth w (a convex combination
    # of the corners' depths) is positive: decided per ray only for triangles straddling w = 0.
    all_front = jnp.all(w > 0, axis=1)

    # Edges are unrolled: a trailing axis of 3 would defeat vectorisation over the triangles.
    px, py = points[:, 0:1], points[:, 1:2]  # [R, 1]
    edges, sides = [], []
    for e in range(3):
        a1, b1 = x1[None, :, e] - px * w1[None, :, e], y1[None, :, e] - py * w1[None, :, e]
        a2, b2 = x2[None, :, e] - px * w2[None, :, e], y2[None, :, e] - py * w2[None, :, e]
        edge = sigma[None, :, e] * (a1 * b2 - b1 * a2)  # [R, B]
        edges.append(edge)
        sides.append(jnp.where(edge != 0, edge, tie[None, :, e]))  # only the sign matters
    e_ab, e_bc, e_ca = edges
    total = e_ab + e_bc + e_ca
    inside_pos = (sides[0] > 0) & (sides[1] > 0) & (sides[2] > 0)
    inside_neg = (sides[0] < 0) & (sides[1] < 0) & (sides[2] < 0)
    hit = (inside_pos | inside_neg) & (total != 0)
    # (E_BC, E_CA, E_AB) are the barycentric weights of the corners A, B, C.
    depth_abs = e_bc * w[None, :, 0] + e_ca * w[None, :, 1] + e_ab * w[None, :, 2]
    hit = hit & (all_front[None, :] | (depth_abs * total > 0))
    safe_total = jnp.where(hit, total, 1.0)
    depth_rel = (e_bc * w_rel[None, :, 0] + e_ca * w_rel[None, :, 1] + e_ab * w_rel[None, :, 2]) / safe_total
    facing = jnp.sign(total) * jnp.sign(jnp.linalg.det(P[:, :3]))
    return hit, facing, depth_rel


def _ray_scale(P, points):
    """mm of ray per unit of depth w, [R]: t = w / (m3 . d) with d the unit direction."""
    return 1.0 / (ray_directions(P, points) @ P[2, :3])


def _reference_depth(P, ref):
    return P[2, :3] @ ref + P[2, 3]


def _chunk_path(triangles, valid, P, ref, points):
    """Path length [R] (mm) contributed by one chunk of triangles (``valid`` [B] masks padding)."""
    hit, facing, depth_rel = _hits(triangles, P, ref, points)
    weight = jnp.where(hit & valid[None, :], facing, 0.0)
    signed_depth = jnp.sum(weight * depth_rel, axis=1)
    count = jnp.sum(weight, axis=1)  # 0 for a source outside the mesh
    return _ray_scale(P, points) * (signed_depth + _reference_depth(P, ref) * count)


# ---- Tiles and culling ---------------------------------------------------------------------


class _Schedule(NamedTuple):
    tiles: jax.Array  # [n_tiles] int32 covered tiles first
    num_tiles: jax.Array  # scalar int32: how many of them to visit
    ranges: jax.Array  # [4, F] int32 (tx0, tx1, ty0, ty1) per triangle; empty when tx0 > tx1
    corners: jax.Array  # [F, 3, 2] projected corners (pixels), for the edge test
    orientation: jax.Array  # [F] sign of the projected area; 0: no edge test (unbounded or degenerate)
    small: jax.Array  # [F] bool: handled by the per-triangle window pass, not by the tiles
    window: jax.Array  # [F, 2] int32 (x, y) of the first pixel of a small triangle's window


def _tile_counts(height, width, tile):
    return -(-height // tile), -(-width // tile)


def _schedule(triangles, P, height, width, tile, cull, split_small=False) -> _Schedule:
    nty, ntx = _tile_counts(height, width, tile)
    n_tiles = nty * ntx
    num_faces = triangles.shape[0]
    if not cull:
        full = jnp.stack(
            [jnp.zeros(num_faces, jnp.int32), jnp.full(num_faces, ntx - 1, jnp.int32)]
            + [jnp.zeros(num_faces, jnp.int32), jnp.full(num_faces, nty - 1, jnp.int32)]
        )
        return _Schedule(
            jnp.arange(n_tiles, dtype=jnp.int32),
            jnp.int32(n_tiles),
            full,
            jnp.zeros((num_faces, 3, 2), triangles.dtype),
            jnp.zeros(num_faces, triangles.dtype),
            jnp.zeros(num_faces, bool),
            jnp.zeros((num_faces, 2), jnp.int32),
        )
    tri = jax.lax.stop_gradient(triangles)
    P = jax.lax.stop_gradient(P)
    homog = tri @ P[:, :3].T + P[:, 3]
    w = homog[..., 2]
    straddles = jnp.any(w <= 0, axis=1)  # projected box unbounded: assume every tile
    behind = jnp.all(w <= 0, axis=1)  # entirely behind the source: no hit with t > 0
    safe_w = jnp.where(w > 0, w, 1.0)
    limit = jnp.asarray([width, height], tri.dtype) + 2.0 * tile
    projected = homog[..., :2] / safe_w[..., None]  # [F, 3, 2] pixels (finite: w > 0 or replaced)
    # Clipped for the tile indices only: clipping corners one by one changes the triangle's shape,
    # so the separating-edge test below uses the unclipped corners.
    xy = jnp.clip(projected, -2.0 * tile, limit)
    lo = jnp.floor(jnp.min(xy, axis=1)) - 1.0  # one pixel margin: rounding and ties
    hi = jnp.ceil(jnp.max(xy, axis=1)) + 1.0
    size = jnp.asarray([width, height], tri.dtype)
    off_screen = jnp.any((hi < 0) | (lo > size - 1), axis=1)
    num = jnp.asarray([ntx, nty], jnp.int32)
    t_lo = jnp.clip(jnp.floor(lo / tile).astype(jnp.int32), 0, num - 1)
    t_hi = jnp.clip(jnp.floor(hi / tile).astype(jnp.int32), 0, num - 1)
    t_lo = jnp.where(straddles[:, None], 0, t_lo)
    t_hi = jnp.where(straddles[:, None], num - 1, t_hi)
    # Small triangles (pixel centres within SMALL_WINDOW^2 of their box, SMALL_MARGIN px of rounding
    # margin) are tested only against those pixels, in the window pass; the tiles skip them.
    first = jnp.ceil(jnp.min(xy, axis=1) - SMALL_MARGIN)
    last = jnp.floor(jnp.max(xy, axis=1) + SMALL_MARGIN)
    small = ~straddles & jnp.all(last - first < SMALL_WINDOW, axis=1) & split_small
    empty = behind | (off_screen & ~straddles) | small
    t_lo = jnp.where(empty[:, None], num, t_lo)  # lo > hi: overlaps nothing
    t_hi = jnp.where(empty[:, None], -1, t_hi)
    ranges = jnp.stack([t_lo[:, 0], t_hi[:, 0], t_lo[:, 1], t_hi[:, 1]])
    # Covered tiles: a 2-D difference array of the boxes, integrated by two cumulative sums.
    one = jnp.where(empty, 0, 1).astype(jnp.int32)
    diff = jnp.zeros((nty + 1, ntx + 1), jnp.int32)
    tx0, tx1, ty0, ty1 = (jnp.clip(r, 0, n) for r, n in zip(ranges, (ntx, ntx, nty, nty)))
    diff = diff.at[ty0, tx0].add(one).at[ty0, tx1 + 1].add(-one)
    diff = diff.at[ty1 + 1, tx0].add(-one).at[ty1 + 1, tx1 + 1].add(one)
    covered = (jnp.cumsum(jnp.cumsum(diff, axis=0), axis=1)[:nty, :ntx] > 0).reshape(-1)
    tiles = jnp.nonzero(covered, size=n_tiles, fill_value=0)[0].astype(jnp.int32)
    e1, e2 = projected[:, 1] - projected[:, 0], projected[:, 2] - projected[:, 0]
    cross = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    # The separating-edge test needs the projected winding. For a face seen (almost) exactly edge-on
    # the sign of the cross product of the divided corners is lost to rounding, while the
    # homogeneous hit test may still count the face: culled from tiles it hits, it would leave its
    # partner's hit unpaired (an error of the whole ray depth). The rounding of the corners is
    # <= eps |xy| each, so that of the cross product is <= ~4 eps (|e1| + |e2|) max|xy|; below 8x
    # that bound the face keeps the box test only.
    eps = jnp.finfo(projected.dtype).eps
    scale = jnp.max(jnp.abs(projected), axis=(1, 2)) + 1.0
    lengths = jnp.linalg.norm(e1, axis=-1) + jnp.linalg.norm(e2, axis=-1)
    reliable = jnp.abs(cross) > 32.0 * eps * lengths * scale
    orientation = jnp.where(straddles | ~reliable, 0.0, jnp.sign(cross))
    window = jnp.clip(first, -2 * tile - SMALL_WINDOW, limit).astype(jnp.int32)
    return _Schedule(tiles, jnp.sum(covered).astype(jnp.int32), ranges, projected, orientation, small, window)


def _box_triangles(schedule: _Schedule, tiles, box, chunk):
    """Indices of the triangles that may meet the pixel box (padded to a multiple of chunk), count.

    ``tiles`` = (tx_lo, tx_hi, ty_lo, ty_hi): the box's span in the schedule's tiles (the triangles'
    box test); ``box`` = (x0, y0, x1, y1): its corners in pixel coordinates, grown by a margin.
    """
    tx_lo, tx_hi, ty_lo, ty_hi = tiles
    tx0, tx1, ty0, ty1 = schedule.ranges
    overlap = (tx0 <= tx_hi) & (tx_lo <= tx1) & (ty0 <= ty_hi) & (ty_lo <= ty1)
    # Separating edge: all four corners of the box outside one edge of the projected triangle.
    # With the box test above this is the exact 2-D separating-axis test.
    dtype = schedule.corners.dtype
    x0, y0, x1, y1 = (jnp.asarray(c, dtype) for c in box)
    corners = jnp.stack([jnp.stack([x0, y0]), jnp.stack([x1, y0]), jnp.stack([x0, y1]), jnp.stack([x1, y1])])
    start = schedule.corners  # [F, 3, 2]
    edge = jnp.roll(start, -1, axis=1) - start
    rel = corners[None, None, :, :] - start[:, :, None, :]  # [F, 3 edges, 4 corners, 2]
    side = edge[:, :, None, 0] * rel[..., 1] - edge[:, :, None, 1] * rel[..., 0]
    outside = jnp.all(side * schedule.orientation[:, None, None] < 0, axis=2)  # [F, 3]
    overlap = overlap & ~jnp.any(outside, axis=1)
    padded = -(-overlap.shape[0] // chunk) * chunk
    idx = jnp.nonzero(overlap, size=padded, fill_value=0)[0].astype(jnp.int32)
    return idx, jnp.sum(overlap).astype(jnp.int32)


def _tile_triangles(schedule: _Schedule, t, ntx, tile, chunk):
    """Indices of the triangles whose box overlaps tile ``t`` (padded to a multiple of chunk), count."""
    ty, tx = t // ntx, t % ntx
    x0, y0 = tx * tile - 1, ty * tile - 1  # the tile grown by a 1 px margin
    return _box_triangles(schedule, (tx, tx, ty, ty), (x0, y0, x0 + tile + 1, y0 + tile + 1), chunk)


def _tile_points(t, ntx, tile, dtype):
    """Homogeneous image points [tile^2, 3] of tile ``t`` (the pixel grid's convention)."""
    grid = pixel_grid(tile, tile, dtype)
    ty, tx = t // ntx, t % ntx
    offset = jnp.stack([tx * tile, ty * tile, 0]).astype(dtype)
    return (grid + offset).reshape(-1, 3)


def _over_chunks(idx, count, chunk, body, init):
    """carry = body(carry, ids [chunk], valid [chunk]) for each chunk of ``idx[:count]``."""

    def step(state):
        j, carry = state
        ids = jax.lax.dynamic_slice(idx, (j * chunk,), (chunk,))
        valid = j * chunk + jnp.arange(chunk) < count
        return j + 1, body(carry, ids, valid)

    _, carry = jax.lax.while_loop(lambda s: s[0] * chunk < count, step, (jnp.int32(0), init))
    return carry


def _over_tiles(schedule: _Schedule, body, init):
    """carry = body(carry, t) for each tile to visit."""

    def step(state):
        i, carry = state
        return i + 1, body(carry, schedule.tiles[i])

    _, carry = jax.lax.while_loop(lambda s: s[0] < schedule.num_tiles, step, (jnp.int32(0), init))
    return carry


def _untile(tiles_out, height, width, tile):
    """[n_tiles, tile^2, ...] -> [height, width, ...]."""
    nty, ntx = _tile_counts(height, width, tile)
    rest = tiles_out.shape[2:]
    image = tiles_out.reshape((nty, ntx, tile, tile) + rest)
    image = jnp.moveaxis(image, 2, 1).reshape((nty * tile, ntx * tile) + rest)
    return image[:height, :width]


def _tile(image, tile):
    """[height, width, ...] -> [n_tiles, tile^2, ...] (zero-padded): the inverse of :func:`_untile`."""
    height, width = image.shape[:2]
    nty, ntx = _tile_counts(height, width, tile)
    rest = image.shape[2:]
    pad = [(0, nty * tile - height), (0, ntx * tile - width)] + [(0, 0)] * len(rest)
    image = jnp.pad(image, pad).reshape((nty, tile, ntx, tile) + rest)
    return jnp.moveaxis(image, 1, 2).reshape((nty * ntx, tile * tile) + rest)


def _reference_point(triangles):
    return jax.lax.stop_gradient(jnp.mean(triangles.reshape(-1, 3), axis=0))


# ---- Window pass: small triangles against the pixels of their own window --------------------


def _window_pixels(window, height, width, dtype):
    """Image points [B, S^2, 3], flat pixel index [B, S^2] and on-detector mask of the windows."""
    offsets = jnp.arange(SMALL_WINDOW, dtype=jnp.int32)
    xs = window[:, 0, None, None] + offsets[None, None, :]
    ys = window[:, 1, None, None] + offsets[None, :, None]
    xs, ys = (
        jnp.broadcast_to(a, (window.shape[0], SMALL_WINDOW, SMALL_WINDOW)).reshape(window.shape[0], -1)
        for a in (xs, ys)
    )
    on_detector = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    points = jnp.stack([xs, ys, jnp.ones_like(xs)], axis=-1).astype(dtype)
    return points, jnp.where(on_detector, ys * width + xs, 0), on_detector


def _window_chunk(triangles, P, ref, points, use):
    """Path length contributions [B, S^2] of each triangle at the pixels of its own window."""

    def one(triangle, pts):
        hit, facing, depth_rel = _hits(triangle[None], P, ref, pts)
        return hit[:, 0], facing[:, 0], depth_rel[:, 0]

    hit, facing, depth_rel = jax.vmap(one)(triangles, points)
    weight = jnp.where(hit & use, facing, 0.0)
    scale = _ray_scale(P, points.reshape(-1, 3)).reshape(weight.shape)
    return scale * weight * (depth_rel + _reference_depth(P, ref))


def _window_chunks(triangles, schedule: _Schedule, height, width):
    num = triangles.shape[0]
    chunk = min(SMALL_CHUNK, num)
    pad = (-num) % chunk

    def split(x):
        x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((-1, chunk) + x.shape[1:])

    return split(triangles), split(schedule.small), split(schedule.window)


def _window_forward(triangles, P, ref, schedule, height, width):
    def body(image, c):
        tri, small, window = c
        points, flat, on_detector = _window_pixels(window, height, width, P.dtype)
        use = on_detector & small[:, None]
        return image.at[flat].add(_window_chunk(tri, P, ref, points, use)), None

    image, _ = jax.lax.scan(
        body, jnp.zeros(height * width, P.dtype), _window_chunks(triangles, schedule, height, width)
    )
    return image.reshape(height, width)


def _window_backward(triangles, P, ref, schedule, height, width, g):
    g_flat = g.reshape(-1)

    def body(g_P, c):
        tri, small, window = c
        points, flat, on_detector = _window_pixels(window, height, width, P.dtype)
        use = on_detector & small[:, None]
        _, vjp = jax.vjp(lambda t, P_: _window_chunk(t, P_, ref, points, use), tri, P)
        d_tri, d_P = vjp(jnp.where(use, g_flat[flat], 0.0))
        return g_P + d_P, d_tri

    g_P, d_tri = jax.lax.scan(body, jnp.zeros_like(P), _window_chunks(triangles, schedule, height, width))
    return d_tri.reshape(-1, 3, 3)[: triangles.shape[0]], g_P


# ---- Path lengths --------------------------------------------------------------------------


def _paths_forward(triangles, P, height, width, tile, cull):
    schedule = _schedule(triangles, P, height, width, tile, cull, split_small=True)
    _, ntx = _tile_counts(height, width, tile)
    ref = _reference_point(triangles)
    chunk = min(TRIANGLE_CHUNK, triangles.shape[0])

    def per_tile(out, t):
        points = _tile_points(t, ntx, tile, P.dtype)
        idx, count = _tile_triangles(schedule, t, ntx, tile, chunk)

        def per_chunk(acc, ids, valid):
            return acc + _chunk_path(triangles[ids], valid, P, ref, points)

        acc = _over_chunks(idx, count, chunk, per_chunk, jnp.zeros(tile * tile, P.dtype))
        return out.at[t].set(acc)

    nty, ntx = _tile_counts(height, width, tile)
    out = _over_tiles(schedule, per_tile, jnp.zeros((nty * ntx, tile * tile), P.dtype))
    image = _untile(out, height, width, tile)
    if cull:
        image = image + _window_forward(triangles, P, ref, schedule, height, width)
    return image


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _paths(triangles, P, height, width, tile, cull):
    return _paths_forward(triangles, P, height, width, tile, cull)


def _paths_fwd(triangles, P, height, width, tile, cull):
    return _paths_forward(triangles, P, height, width, tile, cull), (triangles, P)


def _paths_bwd(height, width, tile, cull, residuals, g):
    triangles, P = residuals
    schedule = _schedule(triangles, P, height, width, tile, cull, split_small=True)
    _, ntx = _tile_counts(height, width, tile)
    ref = _reference_point(triangles)
    chunk = min(TRIANGLE_CHUNK, triangles.shape[0])
    g_tiles = _tile(g, tile)

    def per_tile(grads, t):
        points = _tile_points(t, ntx, tile, P.dtype)
        idx, count = _tile_triangles(schedule, t, ntx, tile, chunk)
        cotangent = g_tiles[t]

        def per_chunk(grads, ids, valid):
            g_tri, g_P = grads
            _, vjp = jax.vjp(lambda tri, P_: _chunk_path(tri, valid, P_, ref, points), triangles[ids], P)
            d_tri, d_P = vjp(cotangent)
            d_tri = d_tri * valid[:, None, None].astype(d_tri.dtype)
            return g_tri.at[ids].add(d_tri), g_P + d_P

        return _over_chunks(idx, count, chunk, per_chunk, grads)

    g_tri, g_P = _over_tiles(schedule, per_tile, (jnp.zeros_like(triangles), jnp.zeros_like(P)))
    if cull:
        d_tri, d_P = _window_backward(triangles, P, ref, schedule, height, width, g)
        g_tri, g_P = g_tri + d_tri, g_P + d_P
    return g_tri, g_P


_paths.defvjp(_paths_fwd, _paths_bwd)
_paths_jit = jax.jit(_paths, static_argnums=(2, 3, 4, 5))  # one compiled program, also when called eagerly


# ---- Input checks --------------------------------------------------------------------------


def _check_inputs(triangles, P, height, width, tile, max_tiles, extra_dtype=None):
    height, width = check_detector(height, width)
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or tile < 1:
        raise GeometryError(f"tile must be a positive int (pixels), got {tile!r}")
    if max_tiles is not None and (
        not isinstance(max_tiles, (int, np.integer)) or isinstance(max_tiles, bool) or max_tiles < 1
    ):
        raise GeometryError(f"max_tiles must be None or a positive int, got {max_tiles!r}")
    if np.ndim(triangles) != 3 or np.shape(triangles)[1:] != (3, 3) or np.shape(triangles)[0] < 1:
        raise MeshError(f"triangles must have shape [F, 3, 3] with F >= 1, got {np.shape(triangles)}")
    if is_concrete(triangles):
        with jax.ensure_compile_time_eval():
            finite = bool(jnp.all(jnp.isfinite(jnp.asarray(triangles))))
        if not finite:
            raise MeshError("triangles contain non-finite values (NaN/Inf)")
    if is_concrete(P):
        check_projection_matrix(P)
    elif np.shape(P)[-2:] != (3, 4):
        raise GeometryError(f"P must be 3x4, got shape {np.shape(P)}")
    dtypes = [jnp.asarray(triangles).dtype, jnp.asarray(P).dtype] + ([extra_dtype] if extra_dtype else [])
    dtype = jnp.result_type(*dtypes)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return jnp.asarray(triangles, dtype), jnp.asarray(P, dtype), height, width, int(tile)


def mesh_path_lengths(
    triangles, P, height: int, width: int, *, tile: int = DEFAULT_TILE, max_tiles=None, cull: bool = True
) -> jax.Array:
    """Length (mm) of each detector pixel's ray inside a closed triangle mesh.

    Args:
      triangles: [F, 3, 3] corners (world mm) of a closed, outward-oriented mesh
        (:meth:`jaxdrr.mesh.TriangleMesh.triangles`); may be traced. Object-frame triangles with
        ``P @ T`` instead of ``P`` give the same image (:func:`jaxdrr.geometry.rigid.object_projection`).
      P: [3, 4] projection matrix (the source is its null space); may be traced.
      height: detector rows.
      width: detector columns.
      tile: culling tile size in pixels (static).
      max_tiles: accepted for compatibility with capacity-based callers; the tile loop has a
        data-dependent trip count, so there is no capacity to overflow: ``None`` or any positive
        int give the same result and cost.
      cull: ``False`` evaluates every ray against every triangle (the dense reference).

    Returns:
      [height, width] path lengths in mm (0 for rays that miss). Pixel rays follow
      :func:`jaxdrr.geometry.projection.pixel_grid` / ``ray_directions`` (the renderer's
      convention). Works under ``jit``, ``vmap`` and ``grad`` (w.r.t. triangles and ``P``).

    Raises:
      MeshError, GeometryError: wrongly shaped or non-finite triangles, a degenerate P, a bad
        detector size or tile.
    """
    triangles, P, height, width, tile = _check_inputs(triangles, P, height, width, tile, max_tiles)
    return _paths_jit(triangles, P, height, width, tile, bool(cull))


# ---- Integrals of a volume over the inside of the mesh --------------------------------------


class _Volume(NamedTuple):
    grid: VolumeGrid
    num_samples: int
    sphere: bool  # sample over the ray's chord of the mesh's bounding sphere (no depth pass)


def _chunk_depths(triangles, valid, P, ref, points):
    """(near, far) over the chunk's hits: relative depth (mm) range per ray [R] (+inf, -inf: none)."""
    hit, _, depth_rel = _hits(triangles, P, ref, points)
    hit = hit & valid[None, :]
    t = depth_rel * _ray_scale(P, points)[:, None]
    near = jnp.min(jnp.where(hit, t, jnp.inf), axis=1)
    far = jnp.max(jnp.where(hit, t, -jnp.inf), axis=1)
    return near, far


def _tile_depth_range(triangles, P, ref, points, idx, count, chunk):
    def per_chunk(acc, ids, valid):
        near, far = _chunk_depths(triangles[ids], valid, P, ref, points)
        return jnp.minimum(acc[0], near), jnp.maximum(acc[1], far)

    rays = points.shape[0]
    init = (jnp.full(rays, jnp.inf, P.dtype), jnp.full(rays, -jnp.inf, P.dtype))
    near, far = _over_chunks(idx, count, chunk, per_chunk, init)
    hit = near <= far
    return jnp.where(hit, near, 0.0), jnp.where(hit, far, 0.0)


def _sphere_depth_range(triangles, P, ref, points):
    """(near, far) relative depths (mm) of each ray's chord of a sphere that holds the mesh.

    The sphere: centre the mean corner, radius the farthest corner (grown by a rounding margin).
    Differentiable like the hit-defined range: the sample grid moves with the mesh.
    """
    corners = triangles.reshape(-1, 3)
    centre = jnp.mean(corners, axis=0)
    radius = jnp.sqrt(jnp.max(jnp.sum((corners - centre) ** 2, axis=-1)))
    directions = ray_directions(P, points)
    to_centre = centre - source_position(P)
    along = directions @ to_centre  # [R] mm from the source to the closest approach
    miss2 = jnp.sum(to_centre**2) - along**2
    half = jnp.sqrt(jnp.maximum(radius**2 - miss2, 0.0) + 1e-6) * (1.0 + 1e-4)  # rounding margin
    origin = _reference_depth(P, ref) * _ray_scale(P, points)  # mm where relative depth is 0
    return along - half - origin, along + half - origin


def _depth_range(triangles, P, ref, points, tri_idx, tri_count, chunk, volume: _Volume):
    if volume.sphere:
        return _sphere_depth_range(triangles, P, ref, points)
    return _tile_depth_range(triangles, P, ref, points, tri_idx, tri_count, chunk)


def _samples(channels, P, ref, points, near, far, volume: _Volume):
    """Field samples [R, n, C] on n equal steps from ``near`` to ``far`` (relative mm) per ray."""
    n = volume.num_samples
    spacing = (far - near) / (n - 1)
    t_rel = near[:, None] + spacing[:, None] * jnp.arange(n, dtype=P.dtype)[None, :]
    scale = _ray_scale(P, points)
    t = t_rel + (_reference_depth(P, ref) * scale)[:, None]  # mm from the source
    directions = ray_directions(P, points)
    world = source_position(P)[None, None, :] + t[..., None] * directions[:, None, :]
    to_index = jnp.asarray(volume.grid.world_to_padded_index(), P.dtype)
    positions = world @ to_index[:3, :3].T + to_index[:3, 3]
    # A tool reaches a small part of the volume: gather from it unpadded (padding costs a full copy).
    values = trilinear.sample_unpadded(channels, positions.reshape(-1, 3))
    return values.reshape(points.shape[0], n, channels.shape[0])


def _chunk_inside(triangles, valid, P, ref, points, samples, near, far):
    """Sum over the chunk's hits of sign * F(t) [R, C], F the cumulative integral from ``near``."""
    n = samples.shape[1]
    spacing = (far - near) / (n - 1)
    safe = jnp.where(spacing > 0, spacing, 1.0)
    cumulative = jnp.concatenate(
        [
            jnp.zeros_like(samples[:, :1]),
            jnp.cumsum(0.5 * spacing[:, None, None] * (samples[:, 1:] + samples[:, :-1]), axis=1),
        ],
        axis=1,
    )
    hit, facing, depth_rel = _hits(triangles, P, ref, points)
    weight = jnp.where(hit & valid[None, :], facing, 0.0)  # [R, B]
    t = depth_rel * _ray_scale(P, points)[:, None]
    s = (t - near[:, None]) / safe[:, None]
    k = jnp.clip(jnp.floor(jax.lax.stop_gradient(s)), 0, max(n - 2, 0)).astype(jnp.int32)
    frac = s - k
    rows = jnp.arange(points.shape[0])[:, None]
    f0, f1, F0 = samples[rows, k], samples[rows, jnp.minimum(k + 1, n - 1)], cumulative[rows, k]
    # Exact for a field linear between samples: F(t) = F_k + h (u f_k + u^2 (f_k+1 - f_k) / 2).
    h = spacing[:, None, None]
    u = frac[..., None]
    value = F0 + h * (u * f0 + 0.5 * u * u * (f1 - f0))
    return jnp.sum(weight[..., None] * value, axis=1)


def _hit_rays(triangles, P, height, width, tile, cull):
    """Flat indices of the pixels whose ray crosses the mesh (padded to RAY_CHUNK), and their count.

    The path-length image (cheap: small triangles go through the window pass) says exactly which
    rays cross the mesh; a ray of zero path length has an inside integral of zero (its hits pair at
    equal depths). The inside integrals then sample the volume along these rays only: a long,
    oblique wire covers few pixels of the many tiles its box spans.
    """
    n = height * width
    padded = -(-n // RAY_CHUNK) * RAY_CHUNK
    if not cull:
        return jnp.arange(padded, dtype=jnp.int32) % n, jnp.int32(n)
    triangles, P = jax.lax.stop_gradient(triangles), jax.lax.stop_gradient(P)
    mask = (_paths_forward(triangles, P, height, width, tile, cull) != 0).reshape(-1)
    idx = jnp.nonzero(mask, size=padded, fill_value=0)[0].astype(jnp.int32)
    return idx, jnp.sum(mask).astype(jnp.int32)


def _ray_chunk(schedule: _Schedule, idx, count, j, width, tile, chunk, dtype):
    """Chunk ``j`` of the hit rays: pixel indices, validity, image points and candidate triangles."""
    ids = jax.lax.dynamic_slice(idx, (j * RAY_CHUNK,), (RAY_CHUNK,))
    valid = j * RAY_CHUNK + jnp.arange(RAY_CHUNK) < count
    px, py = ids % width, ids // width
    points = pixel_grid(1, 1, dtype)[0, 0] + jnp.stack([px, py, jnp.zeros_like(px)], -1).astype(dtype)
    # The chunk's pixel box (valid rays only; consecutive hit pixels in raster order are close).
    big = jnp.iinfo(jnp.int32).max
    x_lo, x_hi = jnp.min(jnp.where(valid, px, big)), jnp.max(jnp.where(valid, px, -1))
    y_lo, y_hi = jnp.min(jnp.where(valid, py, big)), jnp.max(jnp.where(valid, py, -1))
    tiles = (x_lo // tile, x_hi // tile, y_lo // tile, y_hi // tile)
    tri_idx, tri_count = _box_triangles(schedule, tiles, (x_lo - 1, y_lo - 1, x_hi + 1, y_hi + 1), chunk)
    return ids, valid, points, tri_idx, tri_count


def _over_ray_chunks(count, body, init):
    """carry = body(carry, j) for each chunk j of the ``count`` hit rays."""

    def step(state):
        j, carry = state
        return j + 1, body(carry, j)

    _, carry = jax.lax.while_loop(lambda s: s[0] * RAY_CHUNK < count, step, (jnp.int32(0), init))
    return carry


def _inside_forward(channels, triangles, P, height, width, tile, cull, volume):
    schedule = _schedule(triangles, P, height, width, tile, cull)
    idx, count = _hit_rays(triangles, P, height, width, tile, cull)
    ref = _reference_point(triangles)
    chunk = min(TRIANGLE_CHUNK, triangles.shape[0])

    def per_ray_chunk(out, j):
        ids, valid, points, tri_idx, tri_count = _ray_chunk(
            schedule, idx, count, j, width, tile, chunk, P.dtype
        )
        near, far = _depth_range(triangles, P, ref, points, tri_idx, tri_count, chunk, volume)
        samples = _samples(channels, P, ref, points, near, far, volume)

        def per_chunk(acc, tri_ids, tri_valid):
            return acc + _chunk_inside(triangles[tri_ids], tri_valid, P, ref, points, samples, near, far)

        acc = _over_chunks(
            tri_idx, tri_count, chunk, per_chunk, jnp.zeros((RAY_CHUNK, channels.shape[0]), P.dtype)
        )
        return out.at[ids].add(jnp.where(valid[:, None], acc, 0.0))

    out = _over_ray_chunks(count, per_ray_chunk, jnp.zeros((height * width, channels.shape[0]), P.dtype))
    return out.reshape(height, width, channels.shape[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _inside(channels, triangles, P, height, width, tile, cull, volume):
    return _inside_forward(channels, triangles, P, height, width, tile, cull, volume)


def _inside_fwd(channels, triangles, P, height, width, tile, cull, volume):
    out = _inside_forward(channels, triangles, P, height, width, tile, cull, volume)
    return out, (channels, triangles, P)


def _inside_bwd(height, width, tile, cull, volume, residuals, g):
    channels, triangles, P = residuals
    schedule = _schedule(triangles, P, height, width, tile, cull)
    idx, count = _hit_rays(triangles, P, height, width, tile, cull)
    ref = _reference_point(triangles)
    chunk = min(TRIANGLE_CHUNK, triangles.shape[0])
    g_flat = g.reshape(height * width, -1)

    def per_ray_chunk(grads, j):
        g_channels, g_tri, g_P = grads
        ids, valid, points, tri_idx, tri_count = _ray_chunk(
            schedule, idx, count, j, width, tile, chunk, P.dtype
        )
        if volume.sphere:
            (near, far), range_vjp = jax.vjp(
                lambda tri, P_: _sphere_depth_range(tri, P_, ref, points), triangles, P
            )
        else:
            near, far = _tile_depth_range(triangles, P, ref, points, tri_idx, tri_count, chunk)
        samples, samples_vjp = jax.vjp(
            lambda f, P_, a, b: _samples(f, P_, ref, points, a, b, volume), channels, P, near, far
        )
        cotangent = jnp.where(valid[:, None], g_flat[ids], 0.0)

        def per_chunk(state, tri_ids, tri_valid):
            g_tri, g_P, g_samples, g_near, g_far = state
            _, vjp = jax.vjp(
                lambda tri, P_, s, a, b: _chunk_inside(tri, tri_valid, P_, ref, points, s, a, b),
                triangles[tri_ids],
                P,
                samples,
                near,
                far,
            )
            d_tri, d_P, d_samples, d_near, d_far = vjp(cotangent)
            d_tri = d_tri * tri_valid[:, None, None].astype(d_tri.dtype)
            return (
                g_tri.at[tri_ids].add(d_tri),
                g_P + d_P,
                g_samples + d_samples,
                g_near + d_near,
                g_far + d_far,
            )

        zeros = jnp.zeros_like(near)
        state = (g_tri, g_P, jnp.zeros_like(samples), zeros, zeros)
        g_tri, g_P, g_samples, g_near, g_far = _over_chunks(tri_idx, tri_count, chunk, per_chunk, state)
        d_channels, d_P, d_near, d_far = samples_vjp(g_samples)
        g_near, g_far = g_near + d_near, g_far + d_far

        # The sample grid runs from the first to the last hit: send the cotangents of its ends to
        # the hits that define them (the same arithmetic as pass 1).
        def ends_chunk(state, tri_ids, tri_valid):
            g_tri, g_P = state

            def ends(tri, P_):
                hit, _, depth_rel = _hits(tri, P_, ref, points)
                t_rel = depth_rel * _ray_scale(P_, points)[:, None]
                hit = jax.lax.stop_gradient(hit & tri_valid[None, :])
                fixed = jax.lax.stop_gradient(t_rel)
                # Recomputed in another program, the depths may differ from pass 1 by a few ulps
                # (XLA fuses differently across jax versions): match within 64 eps.
                eps = jnp.finfo(fixed.dtype).eps
                first = hit & (jnp.abs(fixed - near[:, None]) <= 64 * eps * (jnp.abs(near[:, None]) + 1.0))
                last = hit & (jnp.abs(fixed - far[:, None]) <= 64 * eps * (jnp.abs(far[:, None]) + 1.0))
                return jnp.sum(jnp.where(first, t_rel, 0.0), 1), jnp.sum(jnp.where(last, t_rel, 0.0), 1)

            _, vjp = jax.vjp(ends, triangles[tri_ids], P)
            d_tri, d_P = vjp((g_near, g_far))
            d_tri = d_tri * tri_valid[:, None, None].astype(d_tri.dtype)
            return g_tri.at[tri_ids].add(d_tri), g_P + d_P

        if volume.sphere:
            d_tri, d_P_range = range_vjp((g_near, g_far))
            g_tri, g_P = g_tri + d_tri, g_P + d_P_range
        else:
            g_tri, g_P = _over_chunks(tri_idx, tri_count, chunk, ends_chunk, (g_tri, g_P))
        return g_channels + d_channels, g_tri, g_P + d_P

    init = (jnp.zeros_like(channels), jnp.zeros_like(triangles), jnp.zeros_like(P))
    return _over_ray_chunks(count, per_ray_chunk, init)


_inside.defvjp(_inside_fwd, _inside_bwd)
_inside_jit = jax.jit(_inside, static_argnums=(3, 4, 5, 6, 7))


def mesh_inside_integrals(
    channels,
    affine,
    triangles,
    P,
    height: int,
    width: int,
    *,
    step_mm: float,
    depth_range_mm: float,
    max_samples: int | None = None,
    tile: int = DEFAULT_TILE,
    max_tiles=None,
    cull: bool = True,
) -> jax.Array:
    """Integral of each channel of a volume over the part of each pixel's ray inside a closed mesh.

    For a closed mesh, ``integral over the inside = sum_i sign_i F(t_i)`` over the ray's hits, ``F``
    any antiderivative along the ray (constants cancel because ``sum_i sign_i = 0``). Only the rays
    that cross the mesh are sampled (those of nonzero :func:`mesh_path_lengths`), at ``n``
    equally spaced points; ``F`` is accumulated by the trapezoid rule and evaluated at every hit
    with the field linear between samples: exact for a field that is linear along the ray,
    otherwise O(step^2). With ``n = ceil(depth_range_mm / step_mm) + 1`` within ``max_samples``,
    the samples span the ray's chord of a sphere holding the mesh (no pass over the triangles to
    find the range); otherwise ``n = max_samples`` samples span the ray's first to last hit (a
    thin, long tool: most chords are short), the steps stretching on chords longer than
    ``(n - 1) x step_mm``. Coverage is never lost; accuracy degrades gracefully. The field is the
    trilinear interpolation of the zero-padded volume, zero outside it, as
    :func:`jaxdrr.ops.project` (same helpers, :mod:`jaxdrr.ops.trilinear`), gathered from the
    unpadded volume (no copy of it is made).

    Args:
      channels: [C, I, J, K] float volume (e.g. material densities); may be traced.
      affine: static 4x4 voxel-centre index -> world mm matrix (NumPy).
      triangles: [F, 3, 3] closed, outward-oriented mesh corners (world mm); may be traced.
      P: [3, 4] projection matrix; may be traced.
      height: detector rows.
      width: detector columns.
      step_mm: largest sample spacing along a ray (mm, static).
      depth_range_mm: static bound on the mesh's extent along any ray (e.g. 2 x
        ``TriangleMesh.bounding_radius``).
      max_samples: static cap on ``n`` (None: no cap, the sphere's chord at ``step_mm``). Most
        rays cross a thin tool over a few mm (a K-wire's diameter), far less than its length: a
        cap of a few tens keeps the cost proportional to the covered pixels.
      tile: culling tile size (pixels).
      max_tiles: accepted for compatibility; no effect (see :func:`mesh_path_lengths`).
      cull: ``False`` evaluates every ray against every triangle.

    Returns:
      [height, width, C] in channel units x mm (as ``ops.project``). Differentiable w.r.t.
      ``channels``, ``triangles`` and ``P``: the gradient of the computed (discrete) result, the
      sample grid's ends moving with the hits or the sphere that define them (as ``ops.project``
      anchors its grid). A source inside the mesh is unsupported.

    Raises:
      VolumeError, MeshError, GeometryError: bad volume, mesh, geometry or step sizes.
    """
    if np.ndim(channels) != 4:
        raise VolumeError(f"channels must have shape [C, I, J, K], got {np.shape(channels)}")
    grid = VolumeGrid.create(np.shape(channels)[1:], affine)
    try:
        step, depth = float(step_mm), float(depth_range_mm)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise GeometryError("step_mm and depth_range_mm must be static Python numbers") from e
    if not (np.isfinite(step) and step > 0 and np.isfinite(depth) and depth > 0):
        raise GeometryError(f"step_mm and depth_range_mm must be positive, got {step_mm}, {depth_range_mm}")
    channels = jnp.asarray(channels)
    triangles, P, height, width, tile = _check_inputs(
        triangles, P, height, width, tile, max_tiles, extra_dtype=channels.dtype
    )
    num_samples = max(2, math.ceil(depth / step) + 1)
    if max_samples is not None:
        if not isinstance(max_samples, (int, np.integer)) or isinstance(max_samples, bool) or max_samples < 2:
            raise GeometryError(f"max_samples must be None or an int >= 2, got {max_samples!r}")
    if max_samples is None or num_samples <= max_samples:
        # Compact mesh: sampling the whole chord of its bounding sphere (diameter depth_range_mm)
        # at step_mm costs no pass over the triangles to find each ray's first and last hit.
        volume = _Volume(grid, num_samples, True)
    else:
        volume = _Volume(grid, int(max_samples), False)
    return _inside_jit(channels.astype(P.dtype), triangles, P, height, width, tile, bool(cull), volume)


__all__ = ["mesh_path_lengths", "mesh_inside_integrals", "TRIANGLE_CHUNK", "DEFAULT_TILE"]
