"""Signed-distance shapes of the anatomical phantom: primitives with world bounding boxes.

A :class:`Prim` is a signed-distance function ``fn(X, Y, Z)`` (mm, negative inside; it broadcasts
float32 coordinate arrays) with a world box ``[lo, hi]`` outside which it need not be evaluated, so a
scene (:mod:`jaxdrr.phantoms.anatomy.scene`) evaluates each primitive only on the grid cells inside
its box. The primitives are ellipsoids, tapered capsules and tubes along (smooth) polylines, elliptic
cylinders (vertebral bodies) and curved plates cut from 2D outlines (:func:`plate`), some fitted
through 3D landmarks (:func:`plate_through`); :func:`smooth_min` and :func:`smooth_max` blend them.
The small numeric helpers every region shares live here too (:func:`axis_rotation`,
:func:`sigmoid`, :func:`interp_f32`, :func:`both_sides`).

Coordinates are the trunk frame of :mod:`jaxdrr.phantoms.anatomy` (world mm, RAS+).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


class Prim:
    """A signed-distance function (mm, negative inside) with a world bounding box."""

    __slots__ = ("lo", "hi", "fn")

    def __init__(self, lo, hi, fn: Callable):
        self.lo = np.asarray(lo, np.float64)
        self.hi = np.asarray(hi, np.float64)
        self.fn = fn

    def mirrored(self) -> Prim:
        """The same shape reflected through x = 0 (patient right <-> left)."""
        fn = self.fn
        return Prim(
            (-self.hi[0], self.lo[1], self.lo[2]),
            (-self.lo[0], self.hi[1], self.hi[2]),
            lambda X, Y, Z: fn(-X, Y, Z),
        )


def smooth_min(a, b, k):
    """Polynomial smooth minimum (blend radius k mm); keeps float32."""
    if k <= 0:
        return np.minimum(a, b)
    d = a - b
    h = d * np.float32(-0.5 / k) + np.float32(0.5)
    np.minimum(np.maximum(h, 0.0, out=h), 1.0, out=h)
    return b + h * (d - np.float32(k) * (1.0 - h))


def smooth_max(a, b, k):
    """Polynomial smooth maximum (blend radius k mm): a smooth intersection or cut."""
    return -smooth_min(-a, -b, k)


def ellipse_sd(x, y, a, b):
    """Approximate signed distance to an axis-aligned ellipse (broadcasting)."""
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    return (k0 - 1.0) * (k0 + 1e-6) / (k1 + 1e-6 / np.minimum(a, b))


def ellipsoid(center, semi, rotation=None) -> Prim:
    """Ellipsoid; ``rotation`` columns are its local axes in world coordinates."""
    c = np.asarray(center, np.float64)
    s = np.asarray(semi, np.float64)
    R = None if rotation is None else np.asarray(rotation, np.float64)
    r = float(s.max()) if R is not None else s

    def fn(X, Y, Z):
        px, py, pz = X - c[0], Y - c[1], Z - c[2]
        if R is not None:
            px, py, pz = (
                px * R[0, 0] + py * R[1, 0] + pz * R[2, 0],
                px * R[0, 1] + py * R[1, 1] + pz * R[2, 1],
                px * R[0, 2] + py * R[1, 2] + pz * R[2, 2],
            )
        k0 = np.sqrt((px / s[0]) ** 2 + (py / s[1]) ** 2 + (pz / s[2]) ** 2)
        k1 = np.sqrt((px / s[0] ** 2) ** 2 + (py / s[1] ** 2) ** 2 + (pz / s[2] ** 2) ** 2)
        return (k0 - 1.0) * (k0 + 1e-6) / (k1 + 1e-6 / s.min())

    return Prim(c - r, c + r, fn)


def capsule(a, b, ra, rb=None, radius_fn=None, s0=0.0) -> Prim:
    """Tapered capsule from ``a`` (radius ``ra``) to ``b`` (radius ``rb``).

    ``radius_fn(s)``, if given, multiplies the radius as a function of the arc length ``s0 + t |b - a|``.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    rb = ra if rb is None else rb
    d = b - a
    L2 = max(float(d @ d), 1e-9)
    L = np.sqrt(L2)
    r = max(ra, rb)

    def fn(X, Y, Z):
        px, py, pz = X - a[0], Y - a[1], Z - a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / L2, 0.0, 1.0)
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        rad = ra + (rb - ra) * t
        if radius_fn is not None:
            rad = rad * radius_fn(s0 + t * L)
        return dist - rad

    return Prim(np.minimum(a, b) - r, np.maximum(a, b) + r, fn)


def tube(points, radii, radius_fn=None) -> list[Prim]:
    """Tapered capsules along a polyline (one radius per point, or one for all)."""
    pts = np.asarray(points, np.float64)
    rad = np.broadcast_to(np.asarray(radii, np.float64), (len(pts),))
    out, s = [], 0.0
    for i in range(len(pts) - 1):
        out.append(capsule(pts[i], pts[i + 1], rad[i], rad[i + 1], radius_fn, s))
        s += float(np.linalg.norm(pts[i + 1] - pts[i]))
    return out


def catmull_rom(points, n=8, closed=False):
    """A smooth curve through control points (Catmull-Rom)."""
    P = np.asarray(points, np.float64)
    m = len(P)
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    out = []
    for i in range(m if closed else m - 1):
        p0, p1 = P[(i - 1) % m if closed else max(i - 1, 0)], P[i]
        p2, p3 = P[(i + 1) % m], P[(i + 2) % m if closed else min(i + 2, m - 1)]
        out.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    if not closed:
        out.append(P[-1:])
    return np.concatenate(out)


def smooth_tube(points, radii, n=6, radius_fn=None) -> list[Prim]:
    """Capsules along a Catmull-Rom curve through ``points`` (radii interpolated)."""
    pts = catmull_rom(points, n)
    rad = np.interp(
        np.linspace(0, len(points) - 1, len(pts)),
        np.arange(len(points)),
        np.broadcast_to(np.asarray(radii, np.float64), (len(points),)),
    )
    return tube(pts, rad, radius_fn)


def elliptic_cylinder(center, a, b, half_height, waist=0.0, rounding=1.5) -> Prim:
    """Vertical elliptic cylinder (a vertebral body); ``waist`` narrows the middle by that fraction."""
    c = np.asarray(center, np.float64)
    r = max(a, b)

    def fn(X, Y, Z):
        zz = (Z - c[2]) / half_height
        shrink = 1.0 - waist * np.clip(1.0 - zz**2, 0.0, 1.0)
        radial = ellipse_sd(X - c[0], Y - c[1], a * shrink, b * shrink) + rounding
        axial = np.abs(Z - c[2]) - half_height + rounding
        outside = np.sqrt(np.maximum(radial, 0.0) ** 2 + np.maximum(axial, 0.0) ** 2)
        return outside + np.minimum(np.maximum(radial, axial), 0.0) - rounding

    return Prim(c - (r, r, half_height), c + (r, r, half_height), fn)


def _point_in_polygon(loops, u, v):
    """Even-odd rule over one or more closed loops (a loop inside another is a hole)."""
    inside = np.zeros(np.broadcast(u, v).shape, bool)
    for poly in loops:
        x1, y1 = poly[:, 0], poly[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        for a, b, c, d in zip(x1, y1, x2, y2):
            if b == d:
                continue
            cross = (b > v) != (d > v)
            inside ^= cross & (u < a + (v - b) * (c - a) / (d - b))
    return inside


def plate(origin, U, V, outline, half_thickness, bend=None, res=0.5, holes=()) -> Prim:
    """A curved plate: a 2D outline in the (U, V) plane through ``origin``, extruded along W = U x V.

    Args:
      outline: closed polygon [(u, v), ...] in mm; ``holes``: closed polygons cut out of it.
      half_thickness: f(u, v, sd2) -> half thickness (mm) on the 2D map; sd2 is the 2D signed
        distance to the outline (negative inside).
      bend: optional f(u, v) -> offset of the mid-surface along W (mm).
    """
    o = np.asarray(origin, np.float64)
    U = np.asarray(U, np.float64) / np.linalg.norm(U)
    V = np.asarray(V, np.float64)
    V = V - (V @ U) * U
    V /= np.linalg.norm(V)
    W = np.cross(U, V)
    poly = np.asarray(outline, np.float64)
    lo_uv, hi_uv = poly.min(0) - 8.0, poly.max(0) + 8.0
    nu, nv = (np.ceil((hi_uv - lo_uv) / res).astype(int) + 1).tolist()
    uu = lo_uv[0] + res * np.arange(nu)[:, None]
    vv = lo_uv[1] + res * np.arange(nv)[None, :]
    inside = _point_in_polygon([poly] + [np.asarray(q, np.float64) for q in holes], uu, vv)
    sd2 = (ndimage.distance_transform_edt(~inside) - ndimage.distance_transform_edt(inside)) * res
    th = np.broadcast_to(half_thickness(uu, vv, sd2), sd2.shape).astype(np.float32)
    sd2 = sd2.astype(np.float32)
    wb = np.zeros_like(sd2) if bend is None else np.broadcast_to(bend(uu, vv), sd2.shape).astype(np.float32)
    wmax = float(th.max() + np.abs(wb).max()) + 2.0
    corners = np.array(
        [
            o + u * U + v * V + w * W
            for u in (lo_uv[0], hi_uv[0])
            for v in (lo_uv[1], hi_uv[1])
            for w in (-wmax, wmax)
        ]
    )

    def fn(X, Y, Z):
        px, py, pz = X - o[0], Y - o[1], Z - o[2]
        u = px * U[0] + py * U[1] + pz * U[2]
        v = px * V[0] + py * V[1] + pz * V[2]
        w = px * W[0] + py * W[1] + pz * W[2]
        u, v, w = np.broadcast_arrays(u, v, w)
        out = (np.abs(w) - wmax).astype(np.float32)  # far from the plate (>= 6 mm): a lower bound
        near = out < 6.0
        coords = np.stack([(u[near] - lo_uv[0]) / res, (v[near] - lo_uv[1]) / res])
        s2 = ndimage.map_coordinates(sd2, coords, order=1, mode="nearest")
        t = ndimage.map_coordinates(th, coords, order=1, mode="nearest")
        wn = w[near]
        if bend is not None:
            wn = wn - ndimage.map_coordinates(wb, coords, order=1, mode="nearest")
        out[near] = np.maximum(s2, np.abs(wn) - t)
        return out

    return Prim(corners.min(0), corners.max(0), fn)


def _seg_dist2(u, v, line):
    """Squared 2D distance from (u, v) to a polyline."""
    best = np.full(np.broadcast(u, v).shape, np.inf)
    for (a0, a1), (b0, b1) in zip(line[:-1], line[1:]):
        d0, d1 = b0 - a0, b1 - a1
        t = np.clip(((u - a0) * d0 + (v - a1) * d1) / max(d0 * d0 + d1 * d1, 1e-9), 0.0, 1.0)
        best = np.minimum(best, (u - a0 - t * d0) ** 2 + (v - a1 - t * d1) ** 2)
    return best


def plate_through(outline, holes=(), base=2.0, rim=(3.0, 5.0), ridges=(), smooth=6) -> Prim:
    """A plate whose mid-surface passes near 3D landmarks (a quadratic surface fitted to them).

    Args:
      outline: closed loop of 3D points (mm) around the plate; ``holes``: loops cut out of it.
      base: half thickness in the middle; ``rim=(extra, decay_mm)`` thickens it near the edges.
      ridges: [(3D polyline, extra half thickness, sigma_mm), ...] thick bands (columns, rami).
      smooth: Catmull-Rom points per outline segment.
    """
    pts = np.asarray(outline, np.float64)
    allp = np.concatenate([pts] + [np.asarray(q, np.float64) for q in holes])
    c = allp.mean(0)
    _, _, vt = np.linalg.svd(allp - c)
    U, V, W = vt[0], vt[1], np.cross(vt[0], vt[1])

    def uvw(p):
        q = np.asarray(p, np.float64) - c
        return q @ U, q @ V, q @ W

    u, v, w = uvw(allp)
    A = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], 1)
    coef = np.linalg.lstsq(A, w, rcond=None)[0]
    loop2d = lambda q: catmull_rom(np.stack(uvw(q)[:2], 1), smooth, closed=True)  # noqa: E731
    lines = [(np.stack(uvw(line)[:2], 1), amp, sig) for line, amp, sig in ridges]

    def thickness(uu, vv, sd2):
        t = base + rim[0] * np.exp(np.minimum(sd2, 0.0) / rim[1])
        for line, amp, sig in lines:
            t = t + amp * np.exp(-_seg_dist2(uu, vv, line) / (2.0 * sig * sig))
        return t

    def bend(uu, vv):
        return (
            coef[0] + coef[1] * uu + coef[2] * vv + coef[3] * uu * uu + coef[4] * uu * vv + coef[5] * vv * vv
        )

    return plate(c, U, V, loop2d(pts), thickness, bend=bend, holes=[loop2d(q) for q in holes])


def axis_rotation(axis, angle_deg):
    """3x3 rotation by ``angle_deg`` about ``axis`` (Rodrigues' formula)."""
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def sigmoid(x):
    """The logistic function 1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + np.exp(-x))


def both_sides(prims) -> list[Prim]:
    """Right-side primitives and their mirror images (left side)."""
    prims = [prims] if isinstance(prims, Prim) else list(prims)
    return prims + [p.mirrored() for p in prims]


def interp_f32(x, xs, ys):
    """``np.interp`` as float32 (profiles along the trunk on float32 grids)."""
    return np.interp(x, xs, ys).astype(np.float32)
