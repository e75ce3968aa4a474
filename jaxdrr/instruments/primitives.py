"""Watertight triangulated building blocks for instrument meshes (NumPy, millimetres).

Every builder returns ``(vertices [V, 3] float64, faces [F, 3] int32)``: a closed surface whose
triangles are wound counter-clockwise seen from outside (outward normals, positive signed volume),
with every edge shared by exactly two triangles and no degenerate (zero-area) triangle.

Most instruments are a *ring stack*: a sequence of closed rings of ``segments`` vertices each, with
consecutive rings joined by quads, closed either by a single vertex at each end (a pole: a fan of
triangles; the solid is a topological ball) or by joining the last ring back to the first (a loop:
the solid is a thick-walled tube, genus 1). The builders differ only in where the rings are:

* :func:`revolve`: rings of a 2-D profile ``(r, z)`` turned about the z axis (pins, screws with a
  thread envelope, cones, hemispheres); with ``bore_radius`` the profile is closed by a coaxial bore
  (cannulated screws). Because the quads between two coaxial regular polygons are planar trapezoids,
  the mesh is exactly the solid whose cross-section at height z is the regular ``segments``-gon
  inscribed in the circle of radius r(z) (r piecewise linear between profile points); its volume is
  the ideal volume times :func:`polygon_area_ratio`.
* :func:`sweep_tube`: rings perpendicular to a smooth centreline (rotation-minimising frames), for
  guidewires and catheters.
* :func:`perforated_slab`: a rounded rectangle with circular holes, triangulated in 2-D and extruded
  (bone plates); not a ring stack.

The functions are plain NumPy (mesh construction is a one-off, not a differentiable operation); the
instruments wrap their output in :class:`jaxdrr.mesh.TriangleMesh`.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.errors import MeshError


class InstrumentError(MeshError):
    """An instrument's parameters describe no valid solid (non-positive sizes, a thread narrower
    than its core, a bore wider than the wall around it, a centreline that folds onto itself)."""


def polygon_area_ratio(segments: int) -> float:
    """Area of a regular ``segments``-gon over the area of its circumscribed circle.

    ``n / (2 pi) * sin(2 pi / n)``: the factor by which a revolved or swept mesh with ``n`` segments
    per ring under-estimates the volume of the ideal round solid (0.9886 for n = 24, 0.9549 for n = 12).
    """
    n = int(segments)
    return n / (2.0 * np.pi) * np.sin(2.0 * np.pi / n)


def check_positive(**values) -> None:
    """Raises InstrumentError unless every keyword value is a finite number > 0."""
    for name, value in values.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InstrumentError(f"{name} must be a number, got {value!r}") from None
        if not np.isfinite(v) or v <= 0.0:
            raise InstrumentError(f"{name} must be a finite number > 0, got {value!r}")


def check_segments(segments, minimum: int = 3) -> int:
    """Validates a ring resolution: an integer >= ``minimum``."""
    ok = isinstance(segments, (int, np.integer)) and not isinstance(segments, bool) and segments >= minimum
    if not ok:
        raise InstrumentError(f"segments must be an integer >= {minimum}, got {segments!r}")
    return int(segments)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flips a consistently wound closed surface so that its signed volume is positive."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    signed_volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    return faces if signed_volume > 0 else faces[:, ::-1]


def ring_stack(rings: list[np.ndarray], *, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Triangulates a stack of rings into a closed surface.

    Args:
      rings: each either a ring ``[n, 3]`` (the same ``n`` for all, vertices in the same rotational
        order) or a single point ``[3]`` (a pole, allowed only as the first and last entry of an open
        stack).
      closed: False: an open stack ``pole, ring, ..., ring, pole`` (a ball); True: a loop of rings, the
        last joined back to the first (a tube with walls, genus 1).

    Returns:
      (vertices [V, 3] float64, faces [F, 3] int32), outward wound.
    """
    blocks, starts, offset = [], [], 0
    for ring in rings:
        ring = np.asarray(ring, np.float64)
        ring = ring[None] if ring.ndim == 1 else ring
        blocks.append(ring)
        starts.append(offset)
        offset += len(ring)
    n = max(len(b) for b in blocks)
    index = [s + (np.arange(n) % len(b)) for s, b in zip(starts, blocks, strict=True)]
    pairs = list(zip(range(len(rings) - 1), range(1, len(rings)), strict=True))
    if closed:
        pairs.append((len(rings) - 1, 0))
    faces = []
    for ia, ib in pairs:
        a, b = index[ia], index[ib]
        a1, b1 = np.roll(a, -1), np.roll(b, -1)
        if len(blocks[ia]) > 1:  # (a_j, a_j+1, b_j+1) collapses when ring a is a pole
            faces.append(np.stack([a, a1, b1], 1))
        if len(blocks[ib]) > 1:  # (a_j, b_j+1, b_j) collapses when ring b is a pole
            faces.append(np.stack([a, b1, b], 1))
    vertices = np.concatenate(blocks)
    faces = np.concatenate(faces).astype(np.int32)
    return vertices, _outward(vertices, faces)


def _check_profile(profile: np.ndarray, *, solid: bool, bore_radius: float) -> None:
    if profile.ndim != 2 or profile.shape[1] != 2 or len(profile) < (3 if solid else 2):
        raise InstrumentError(f"a profile is [K, 2] (r, z) points, K >= 3; got shape {profile.shape}")
    if not np.all(np.isfinite(profile)):
        raise InstrumentError("profile points must be finite")
    r, z = profile[:, 0], profile[:, 1]
    step = np.diff(profile, axis=0)
    if np.any(np.all(step == 0.0, axis=1)):
        raise InstrumentError("consecutive profile points coincide")
    if np.any(np.diff(z) < 0.0) or z[-1] <= z[0]:
        raise InstrumentError("profile z must be non-decreasing from the first to the last point")
    flat = step[:, 1] == 0.0
    # A z-monotone profile can only overlap itself where two consecutive flat runs reverse in r.
    if np.any(flat[1:] & flat[:-1] & (np.sign(step[1:, 0]) != np.sign(step[:-1, 0]))):
        raise InstrumentError("profile folds back on itself along a flat step")
    if solid:
        if r[0] != 0.0 or r[-1] != 0.0 or np.any(r[1:-1] <= 0.0):
            raise InstrumentError("a solid profile starts and ends on the axis (r = 0) and has r > 0 between")
    elif np.any(r <= bore_radius):
        raise InstrumentError(f"the profile must stay outside the bore (r > {bore_radius} mm)")


def revolve(profile, segments: int, *, bore_radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A solid of revolution about the z axis.

    Args:
      profile: [K, 2] points ``(r, z)`` (mm), z non-decreasing. Without a bore it runs from the axis
        to the axis (``r[0] = r[-1] = 0``, every other ``r > 0``); with a bore every ``r`` exceeds
        the bore radius and the profile is closed by the bore wall from its last to its first z.
      segments: vertices per ring (ring vertex j at angle ``2 pi j / segments`` from +x).
      bore_radius: radius (mm) of a coaxial through-hole, or None for a solid.

    Returns:
      (vertices, faces) of the outward-wound closed surface.

    Raises:
      InstrumentError: the profile does not bound a valid solid.
    """
    segments = check_segments(segments)
    profile = np.asarray(profile, np.float64)
    solid = bore_radius is None
    if not solid:
        check_positive(bore_radius=bore_radius)
    _check_profile(profile, solid=solid, bore_radius=0.0 if solid else float(bore_radius))
    angle = 2.0 * np.pi * np.arange(segments) / segments
    cos, sin = np.cos(angle), np.sin(angle)

    def ring(r, z):
        if r == 0.0:
            return np.array([0.0, 0.0, z])
        return np.stack([r * cos, r * sin, np.full(segments, z)], 1)

    points = list(profile)
    if not solid:
        points += [(bore_radius, profile[-1, 1]), (bore_radius, profile[0, 1])]
    return ring_stack([ring(float(r), float(z)) for r, z in points], closed=not solid)


# --- swept tubes -------------------------------------------------------------------------------


def _rotation_minimising_normals(points: np.ndarray, tangents: np.ndarray) -> np.ndarray:
    """Normals of the double-reflection rotation-minimising frame (Wang et al., ACM TOG 27(1), 2008)."""
    t0 = tangents[0]
    helper = np.eye(3)[np.argmin(np.abs(t0))]  # the axis least aligned with the first tangent
    r = np.cross(t0, helper)
    normals = [r / np.linalg.norm(r)]
    for i in range(len(points) - 1):
        v1 = points[i + 1] - points[i]
        c1 = v1 @ v1
        r_l = normals[i] - (2.0 / c1) * (v1 @ normals[i]) * v1
        t_l = tangents[i] - (2.0 / c1) * (v1 @ tangents[i]) * v1
        v2 = tangents[i + 1] - t_l
        c2 = v2 @ v2
        r_next = r_l - (2.0 / c2) * (v2 @ r_l) * v2 if c2 > 1e-30 else r_l
        # Re-orthogonalise against rounding drift along long centrelines.
        r_next = r_next - (r_next @ tangents[i + 1]) * tangents[i + 1]
        normals.append(r_next / np.linalg.norm(r_next))
    return np.stack(normals)


def smooth_centreline(control_points, step_mm: float, *, dense: int = 64):
    """A C2 curve through control points, resampled at (near) uniform arc length.

    The curve is a cubic spline (:class:`scipy.interpolate.CubicSpline`, not-a-knot ends: a straight
    line through 2 points, a parabola through 3) in the chord-length parameter; it passes through
    every control point.

    Args:
      control_points: [N, 3] mm, N >= 2, consecutive points distinct.
      step_mm: target spacing of the samples along the curve.
      dense: evaluations per control-point interval used to measure arc length and curvature.

    Returns:
      (points [S, 3], unit tangents [S, 3], arc length (mm), max curvature (1/mm)).

    Raises:
      InstrumentError: fewer than 2 points, non-finite or repeated consecutive points.
    """
    from scipy.interpolate import CubicSpline

    pts = np.asarray(control_points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2:
        raise InstrumentError(f"control points must be [N, 3] with N >= 2, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InstrumentError("control points must be finite")
    chords = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    if np.any(chords <= 1e-9 * max(1.0, float(np.max(np.abs(pts))))):
        raise InstrumentError("consecutive control points coincide")
    u = np.concatenate([[0.0], np.cumsum(chords)])
    spline = CubicSpline(u, pts, bc_type="not-a-knot")
    uu = np.linspace(0.0, u[-1], dense * (len(pts) - 1) + 1)
    d1, d2 = spline(uu, 1), spline(uu, 2)
    speed = np.linalg.norm(d1, axis=1)
    curvature = np.linalg.norm(np.cross(d1, d2), axis=1) / np.maximum(speed, 1e-300) ** 3
    # Arc length by the trapezoid rule on the speed, then samples at uniform arc length.
    s = np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) * np.diff(uu))])
    count = max(2, int(np.ceil(s[-1] / step_mm)) + 1)
    u_samples = np.interp(np.linspace(0.0, s[-1], count), s, uu)
    u_samples[0], u_samples[-1] = 0.0, u[-1]  # the ends exactly at the first and last control points
    points = spline(u_samples)
    tangents = spline(u_samples, 1)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    return points, tangents, float(s[-1]), float(np.max(curvature))


def sweep_tube(
    points, tangents, radius: float, segments: int, *, bore_radius: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A round tube swept along a sampled centreline, capped flat at both ends.

    Args:
      points: [S, 3] centreline samples (mm), S >= 2.
      tangents: [S, 3] unit tangents at the samples; each ring lies in the plane normal to its tangent,
        oriented by rotation-minimising frames (no twist about the centreline).
      radius: outer radius (mm).
      segments: vertices per ring.
      bore_radius: inner radius (mm) of a hollow tube (catheter), or None for a solid wire.

    Returns:
      (vertices, faces) of the outward-wound closed surface.
    """
    points = np.asarray(points, np.float64)
    tangents = np.asarray(tangents, np.float64)
    normals = _rotation_minimising_normals(points, tangents)
    binormals = np.cross(tangents, normals)
    angle = 2.0 * np.pi * np.arange(segments) / segments
    circle = (
        np.cos(angle)[None, :, None] * normals[:, None] + np.sin(angle)[None, :, None] * binormals[:, None]
    )
    outer = list(points[:, None] + radius * circle)
    if bore_radius is None:
        return ring_stack([points[0], *outer, points[-1]], closed=False)
    inner = list(points[:, None] + bore_radius * circle)
    return ring_stack(outer + inner[::-1], closed=True)


# --- perforated slab (bone plate) --------------------------------------------------------------


def _subdivide(a: np.ndarray, b: np.ndarray, max_step: float) -> np.ndarray:
    """Points from a (included) to b (excluded), at most max_step apart."""
    count = max(1, int(np.ceil(np.linalg.norm(b - a) / max_step)))
    t = np.arange(count)[:, None] / count
    return a + t * (b - a)


def _arc(centre, radius: float, start: float, stop: float, max_step: float) -> np.ndarray:
    """Points on a circular arc from angle start (included) to stop (excluded), chords <= max_step."""
    count = max(2, int(np.ceil(abs(stop - start) * radius / max_step)))
    t = start + (stop - start) * np.arange(count) / count
    return np.asarray(centre) + radius * np.stack([np.cos(t), np.sin(t)], 1)


def _zip_annulus(outer: np.ndarray, inner: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Triangles [T, 3] (indices: outer first, then inner) filling the region between two loops.

    Both loops are counter-clockwise and star-shaped about ``centre``; the triangles are made by
    merging the two loops by polar angle about the centre. The triangulation is valid when the inner
    loop is a convex polygon strictly inside the outer one and no gap in angle between consecutive
    outer points exceeds the inner loop's angular step (callers guarantee both; the result is
    checked by :func:`_check_triangulation`).
    """

    def ordered(loop):
        ang = np.mod(np.arctan2(loop[:, 1] - centre[1], loop[:, 0] - centre[0]), 2.0 * np.pi)
        order = np.roll(np.arange(len(loop)), -int(np.argmin(ang)))
        ang = np.unwrap(ang[order])
        return order, np.append(ang, ang[0] + 2.0 * np.pi)

    o_idx, o_ang = ordered(outer)
    i_idx, i_ang = ordered(inner)
    n_o, n_i = len(outer), len(inner)

    def o_of(j):  # index of the j-th outer point in angular order (wrapping once)
        return o_idx[j % n_o]

    def i_of(i):  # index of the i-th inner point, after the outer points
        return n_o + i_idx[i % n_i]

    tris, i, j = [], 0, 0
    while i < n_i or j < n_o:
        if j == n_o or (i < n_i and i_ang[i + 1] <= o_ang[j + 1]):
            tris.append((o_of(j), i_of(i + 1), i_of(i)))
            i += 1
        else:
            tris.append((o_of(j), o_of(j + 1), i_of(i)))
            j += 1
    return np.asarray(tris)


def _signed_areas(points2d: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a, b, c = (points2d[tris[:, k]] for k in range(3))
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def _directed_boundary(tris: np.ndarray) -> set[tuple[int, int]]:
    """Directed edges of a triangulation that no other triangle traverses the other way."""
    edges = {(int(a), int(b)) for t in tris for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    return {e for e in edges if (e[1], e[0]) not in edges}


def _check_triangulation(points2d, tris, loops) -> None:
    """Checks that triangles tile a region exactly once.

    ``loops`` are the region's boundary loops as vertex-index arrays, the outer one counter-clockwise
    and holes clockwise. If every triangle is counter-clockwise and the triangulation's boundary is
    exactly those loops, every point of the region is covered by exactly one triangle (the number of
    triangles over a point is the winding number of the boundary around it: 1 inside, 0 outside).
    """
    expected = {(int(a), int(b)) for loop in loops for a, b in zip(loop, np.roll(loop, -1), strict=True)}
    if np.any(_signed_areas(points2d, tris) <= 0.0) or _directed_boundary(tris) != expected:
        raise InstrumentError("internal error: the plate outline could not be triangulated")


def _point_segment_distance(p, a, b) -> np.ndarray:
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.einsum("ij,ij->i", ab, ab), 0.0, 1.0)
    return np.linalg.norm(a + t[:, None] * ab - p, axis=1)


def _extrude(points2d: np.ndarray, tris: np.ndarray, thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """Extrudes a counter-clockwise 2-D triangulation in the (x, z) plane along y, centred on y = 0."""
    v = len(points2d)
    bottom = np.stack([points2d[:, 0], np.full(v, -thickness / 2), points2d[:, 1]], 1)
    top = bottom + np.array([0.0, thickness, 0.0])
    # Boundary edges are the directed edges whose reverse is not an edge of another triangle.
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    key = edges[:, 0].astype(np.int64) * v + edges[:, 1]
    reverse = edges[:, 1].astype(np.int64) * v + edges[:, 0]
    boundary = edges[~np.isin(key, reverse)]
    a, b = boundary[:, 0], boundary[:, 1]
    walls = np.concatenate([np.stack([b, a, a + v], 1), np.stack([b, a + v, b + v], 1)])
    faces = np.concatenate([tris, tris[:, ::-1] + v, walls]).astype(np.int32)
    vertices = np.concatenate([bottom, top])
    return vertices, _outward(vertices, faces)


def perforated_slab(
    length: float,
    width: float,
    thickness: float,
    corner_radius: float,
    hole_centres,
    hole_radius: float,
    hole_segments: int,
) -> tuple[np.ndarray, np.ndarray]:
    """A flat plate: a rounded rectangle with round through-holes on its long axis, extruded.

    The outline lies in the (x, z) plane, x in [-width/2, width/2], z in [0, length], corners
    rounded with ``corner_radius``; the plate spans y in [-thickness/2, thickness/2]. The 2-D region
    is cut into one convex cell per hole by lines z = const half-way between neighbouring holes; each
    cell is triangulated by zipping its outline to its hole polygon by polar angle, with the outline
    sampled finely enough that the zipper cannot cross the hole. The cells share their cut-line
    vertices, so the extruded surface is closed.

    Args:
      length, width, thickness, corner_radius: mm (corner_radius <= width / 2).
      hole_centres: z of each hole centre (mm), increasing.
      hole_radius: mm (ignored without holes).
      hole_segments: vertices per hole polygon.

    Returns:
      (vertices, faces) of the outward-wound closed surface.

    Raises:
      InstrumentError: a hole does not fit inside its cell with a wall around it.
    """
    hw, rc = width / 2.0, corner_radius
    centres = np.asarray(hole_centres, np.float64).reshape(-1)
    cuts = 0.5 * (centres[1:] + centres[:-1])
    if np.any(cuts <= rc) or np.any(cuts >= length - rc):
        raise InstrumentError("holes are too close to the rounded ends of the plate")
    h = hole_radius * 2.0 * np.pi / hole_segments if len(centres) else min(width, length) / 8.0
    pi = np.pi
    z_side = np.unique(np.concatenate([[rc, length - rc], cuts]))

    def side(x, zs):  # straight side x = const through the listed z (each piece subdivided)
        pieces = [_subdivide(np.array([x, a]), np.array([x, b]), h) for a, b in zip(zs[:-1], zs[1:])]
        return np.concatenate(pieces) if pieces else np.zeros((0, 2))  # none: round ends meet

    def cut_line(z, sign):  # -1: from +x to -x (top of a cell), +1: from -x to +x (bottom of a cell)
        # Both cells take the same points (computed left to right), so their shared vertices are equal.
        left, right = np.array([-hw, z]), np.array([hw, z])
        full = np.concatenate([_subdivide(left, right, h), [right]])
        return full[:-1] if sign > 0 else full[::-1][:-1]

    def bottom_end():  # from (-hw, rc) round the z = 0 end to (hw, rc), end excluded
        parts = [_arc((-hw + rc, rc), rc, pi, 1.5 * pi, h)]
        if hw - rc > 0:
            parts.append(_subdivide(np.array([-hw + rc, 0.0]), np.array([hw - rc, 0.0]), h))
        parts.append(_arc((hw - rc, rc), rc, 1.5 * pi, 2.0 * pi, h))
        return np.concatenate(parts)

    def top_end():  # from (hw, length - rc) round the z = length end to (-hw, length - rc), end excluded
        parts = [_arc((hw - rc, length - rc), rc, 0.0, 0.5 * pi, h)]
        if hw - rc > 0:
            parts.append(_subdivide(np.array([hw - rc, length]), np.array([-hw + rc, length]), h))
        parts.append(_arc((-hw + rc, length - rc), rc, 0.5 * pi, pi, h))
        return np.concatenate(parts)

    bounds = np.concatenate([[None], cuts, [None]])
    cells = []
    for k in range(max(1, len(centres))):
        lo, hi = bounds[k], bounds[k + 1]
        z_lo = rc if lo is None else lo
        z_hi = length - rc if hi is None else hi
        zs = z_side[(z_side >= z_lo) & (z_side <= z_hi)]
        loop = [bottom_end() if lo is None else cut_line(lo, +1)]
        loop.append(side(hw, zs))
        loop.append(top_end() if hi is None else cut_line(hi, -1))
        loop.append(side(-hw, zs[::-1]))
        cells.append(np.concatenate(loop))

    points, tris = [], []
    offset = 0
    for k, outline in enumerate(cells):
        if len(centres):
            centre = np.array([0.0, centres[k]])
            nxt = np.roll(outline, -1, axis=0)
            wall = _point_segment_distance(np.broadcast_to(centre, outline.shape), outline, nxt)
            if np.min(wall) <= hole_radius:
                raise InstrumentError(
                    f"hole {k} (radius {hole_radius} mm at z = {centres[k]} mm) does not fit inside the plate "
                    "with a wall around it: reduce the hole diameter or the spacing, or widen the plate"
                )
            angle = 2.0 * pi * np.arange(hole_segments) / hole_segments
            hole = centre + hole_radius * np.stack([np.cos(angle), np.sin(angle)], 1)
            cell_tris = _zip_annulus(outline, hole, centre)
            cell_points = np.concatenate([outline, hole])
            n_out = len(outline)
            hole_cw = n_out + np.arange(hole_segments)[::-1]
            _check_triangulation(cell_points, cell_tris, [np.arange(n_out), hole_cw])
        else:  # no hole: the (convex) outline fanned from its centre
            cell_points = np.concatenate([outline, [[0.0, length / 2.0]]])
            m = len(outline)
            cell_tris = np.stack([np.full(m, m), np.arange(m), (np.arange(m) + 1) % m], 1)
            _check_triangulation(cell_points, cell_tris, [np.arange(m)])
        points.append(cell_points)
        tris.append(cell_tris + offset)
        offset += len(cell_points)
    points2d = np.concatenate(points)
    tris = np.concatenate(tris)
    # Cells share the vertices of their cut lines: computed by the same expression, so bit-identical.
    unique, inverse = np.unique(points2d, axis=0, return_inverse=True)
    tris = inverse.reshape(-1)[tris]
    return _extrude(unique, tris, thickness)
