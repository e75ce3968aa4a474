"""A detailed, deterministic adult trunk (and knee) CT for demos: the CLI's built-in image.

:func:`demo_volume` paints one adult anatomy in a fixed "trunk frame" (world mm, RAS+: +x patient
right, +y anterior, +z superior; the origin is midway between the femoral head centres) and cuts a
region out of it:

* ``pelvis``: lumbar spine L3-L5 with pedicles, laminae, spinous and transverse processes; a curved
  sacrum with its alae, foramina and the sacro-iliac joints; iliac wings (thin fossa, thick crest,
  pelvic brim), acetabula, ischia, pubic rami around the obturator foramina, the symphysis; femoral
  heads in the acetabula, necks, trochanters and shafts with a medullary canal; gluteal, psoas and
  thigh muscles, bladder, colon with haustra and mottled stool and gas, small bowel.
* ``chest``: thoracic spine, twelve pairs of ribs with costal cartilages, sternum, clavicles,
  scapulae, humeral heads; lungs with branching vessels, hila, trachea and bronchi; heart, aortic arch,
  diaphragm domes with the liver and the gastric air bubble below.
* ``abdomen``: lower ribs, T12-L5, liver, spleen, kidneys in perirenal fat, psoas, stomach, colon and
  small bowel, iliac crests.
* ``limb``: a knee (distal femur with condyles, patella, tibial plateau and spines, fibular head).

Every bone is a signed-distance shape (smooth unions of ellipsoids, tapered capsules and curved
plates cut from 2D outlines, some fitted through 3D landmarks) painted as a cortical shell around a
trabecular core: thin sheets along the zero set of a smooth random field stretched along z (plates and
rods in marrow), so the cortex is brighter than the interior in a radiograph.
Surfaces are anti-aliased (coverage from the signed distance), and the result goes through a light
CT image formation (in-plane/slice blur, noise). It is a model for pictures, not training data: the
random training generator is :mod:`jaxdrr.phantoms.synthetic` (whose output this module never
changes). Everything is numpy/scipy and deterministic given the seed; the pelvis at the default
1.6 mm takes a few seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from jaxdrr.errors import JaxdrrError
from jaxdrr.phantoms.analytic import centered_affine

DEMO_REGIONS = ("pelvis", "chest", "abdomen", "limb")
_BIG = np.float32(1e4)


@dataclasses.dataclass(frozen=True)
class _Region:
    center: tuple[float, float, float]  # trunk frame, mm
    fov: tuple[float, float, float]  # mm
    spacing: tuple[float, float, float]  # default voxel spacing, mm


_REGIONS = {
    "pelvis": _Region((0.0, -5.0, 25.0), (390.0, 280.0, 380.0), (1.6, 1.6, 1.6)),
    "abdomen": _Region((0.0, -5.0, 200.0), (380.0, 280.0, 400.0), (1.75, 1.75, 1.75)),
    "chest": _Region((0.0, -10.0, 490.0), (430.0, 270.0, 390.0), (1.75, 1.75, 1.75)),
    "limb": _Region((0.0, 0.0, 0.0), (170.0, 150.0, 300.0), (1.0, 1.0, 1.0)),
}


# ----------------------------------------------------------------------------------------------
# Signed-distance engine: primitives with world bounding boxes, evaluated on the grid inside them.


class _Prim:
    """A signed-distance function (mm, negative inside) with a world bounding box."""

    __slots__ = ("lo", "hi", "fn")

    def __init__(self, lo, hi, fn: Callable):
        self.lo = np.asarray(lo, np.float64)
        self.hi = np.asarray(hi, np.float64)
        self.fn = fn

    def mirrored(self) -> _Prim:
        """The same shape reflected through x = 0 (patient right <-> left)."""
        fn = self.fn
        return _Prim(
            (-self.hi[0], self.lo[1], self.lo[2]),
            (-self.lo[0], self.hi[1], self.hi[2]),
            lambda X, Y, Z: fn(-X, Y, Z),
        )


def _smin(a, b, k):
    """Polynomial smooth minimum (blend radius k mm); keeps float32."""
    if k <= 0:
        return np.minimum(a, b)
    d = a - b
    h = d * np.float32(-0.5 / k) + np.float32(0.5)
    np.minimum(np.maximum(h, 0.0, out=h), 1.0, out=h)
    return b + h * (d - np.float32(k) * (1.0 - h))


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _ellipse_sd(x, y, a, b):
    """Approximate signed distance to an axis-aligned ellipse (broadcasting)."""
    k0 = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = np.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    return (k0 - 1.0) * (k0 + 1e-6) / (k1 + 1e-6 / np.minimum(a, b))


def ellipsoid(center, semi, rotation=None) -> _Prim:
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

    return _Prim(c - r, c + r, fn)


def capsule(a, b, ra, rb=None, radius_fn=None, s0=0.0) -> _Prim:
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

    return _Prim(np.minimum(a, b) - r, np.maximum(a, b) + r, fn)


def tube(points, radii, radius_fn=None) -> list[_Prim]:
    """Tapered capsules along a polyline (one radius per point, or one for all)."""
    pts = np.asarray(points, np.float64)
    rad = np.broadcast_to(np.asarray(radii, np.float64), (len(pts),))
    out, s = [], 0.0
    for i in range(len(pts) - 1):
        out.append(capsule(pts[i], pts[i + 1], rad[i], rad[i + 1], radius_fn, s))
        s += float(np.linalg.norm(pts[i + 1] - pts[i]))
    return out


def _catmull_rom(points, n=8, closed=False):
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


def smooth_tube(points, radii, n=6, radius_fn=None) -> list[_Prim]:
    """Capsules along a Catmull-Rom curve through ``points`` (radii interpolated)."""
    pts = _catmull_rom(points, n)
    rad = np.interp(
        np.linspace(0, len(points) - 1, len(pts)),
        np.arange(len(points)),
        np.broadcast_to(np.asarray(radii, np.float64), (len(points),)),
    )
    return tube(pts, rad, radius_fn)


def elliptic_cylinder(center, a, b, half_height, waist=0.0, rounding=1.5) -> _Prim:
    """Vertical elliptic cylinder (a vertebral body); ``waist`` narrows the middle by that fraction."""
    c = np.asarray(center, np.float64)
    r = max(a, b)

    def fn(X, Y, Z):
        zz = (Z - c[2]) / half_height
        shrink = 1.0 - waist * np.clip(1.0 - zz**2, 0.0, 1.0)
        radial = _ellipse_sd(X - c[0], Y - c[1], a * shrink, b * shrink) + rounding
        axial = np.abs(Z - c[2]) - half_height + rounding
        outside = np.sqrt(np.maximum(radial, 0.0) ** 2 + np.maximum(axial, 0.0) ** 2)
        return outside + np.minimum(np.maximum(radial, axial), 0.0) - rounding

    return _Prim(c - (r, r, half_height), c + (r, r, half_height), fn)


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


def plate(origin, U, V, outline, half_thickness, bend=None, res=0.5, holes=()) -> _Prim:
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

    return _Prim(corners.min(0), corners.max(0), fn)


def _seg_dist2(u, v, line):
    """Squared 2D distance from (u, v) to a polyline."""
    best = np.full(np.broadcast(u, v).shape, np.inf)
    for (a0, a1), (b0, b1) in zip(line[:-1], line[1:]):
        d0, d1 = b0 - a0, b1 - a1
        t = np.clip(((u - a0) * d0 + (v - a1) * d1) / max(d0 * d0 + d1 * d1, 1e-9), 0.0, 1.0)
        best = np.minimum(best, (u - a0 - t * d0) ** 2 + (v - a1 - t * d1) ** 2)
    return best


def plate_through(outline, holes=(), base=2.0, rim=(3.0, 5.0), ridges=(), smooth=6) -> _Prim:
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
    loop2d = lambda q: _catmull_rom(np.stack(uvw(q)[:2], 1), smooth, closed=True)  # noqa: E731
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


class _Field:
    """Signed distances of a shape on the index box [i0, i1) of the grid."""

    __slots__ = ("i0", "i1", "sd")

    def __init__(self, i0, i1, sd):
        self.i0, self.i1, self.sd = i0, i1, sd

    @property
    def slices(self):
        return tuple(slice(a, b) for a, b in zip(self.i0, self.i1))


class _Scene:
    """The HU grid (trunk-frame coordinates) and the painting operations."""

    def __init__(self, shape, spacing, origin, rng):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, np.float64)
        self.origin = np.asarray(origin, np.float64)
        self.axes = [
            (self.origin[d] + self.spacing[d] * np.arange(self.shape[d])).astype(np.float32) for d in range(3)
        ]
        self.h = float(np.mean(self.spacing))
        self.hu = np.full(self.shape, -1000.0, np.float32)
        self.rng = rng
        self._noise: dict = {}

    # geometry --------------------------------------------------------------------------------
    def box(self, lo, hi):
        i0 = np.floor((np.asarray(lo) - self.origin) / self.spacing).astype(int)
        i1 = np.ceil((np.asarray(hi) - self.origin) / self.spacing).astype(int) + 1
        i0 = np.clip(i0, 0, self.shape)
        i1 = np.clip(i1, 0, self.shape)
        return (i0, i1) if np.all(i1 > i0) else None

    def coords(self, i0, i1):
        return (
            self.axes[0][i0[0] : i1[0], None, None],
            self.axes[1][None, i0[1] : i1[1], None],
            self.axes[2][None, None, i0[2] : i1[2]],
        )

    def field(self, prims, k=0.0) -> _Field | None:
        """Smooth union (blend radius ``k`` mm) of primitives, on the union of their boxes."""
        prims = [prims] if isinstance(prims, _Prim) else list(prims)
        m = k + 2.0 * self.h
        boxes = [(p, self.box(p.lo - m, p.hi + m)) for p in prims]
        boxes = [(p, b) for p, b in boxes if b is not None]
        if not boxes:
            return None
        i0 = np.min([b[0] for _, b in boxes], 0)
        i1 = np.max([b[1] for _, b in boxes], 0)
        sd = np.full(tuple(i1 - i0), _BIG, np.float32)
        for p, (a, b) in boxes:
            d = p.fn(*self.coords(a, b))
            sl = tuple(slice(x - y, z - y) for x, y, z in zip(a, i0, b))
            sd[sl] = _smin(sd[sl], np.broadcast_to(d, tuple(b - a)), k)
        return _Field(i0, i1, sd)

    def cut(self, f: _Field | None, prims, k=0.0, offset=0.0):
        """Removes primitives (grown by ``offset`` mm) from a field."""
        if f is None:
            return None
        prims = [prims] if isinstance(prims, _Prim) else list(prims)
        for p in prims:
            box = self.box(p.lo - k - offset - 2 * self.h, p.hi + k + offset + 2 * self.h)
            if box is None:
                continue
            a, b = np.maximum(box[0], f.i0), np.minimum(box[1], f.i1)
            if np.any(b <= a):
                continue
            d = np.broadcast_to(p.fn(*self.coords(a, b)), tuple(b - a)) - offset
            sl = tuple(slice(x - y, z - y) for x, y, z in zip(a, f.i0, b))
            f.sd[sl] = _smax(f.sd[sl], -d, k)
        return f

    def cut_field(self, f: _Field | None, g: _Field | None, offset=0.0):
        """Removes field ``g`` (grown by ``offset`` mm) from ``f``."""
        if f is None or g is None:
            return f
        a, b = np.maximum(g.i0, f.i0), np.minimum(g.i1, f.i1)
        if np.any(b <= a):
            return f
        sf = tuple(slice(x - y, z - y) for x, y, z in zip(a, f.i0, b))
        sg = tuple(slice(x - y, z - y) for x, y, z in zip(a, g.i0, b))
        f.sd[sf] = np.maximum(f.sd[sf], offset - g.sd[sg])
        return f

    def merge(self, f: _Field | None, g: _Field | None, k=0.0) -> _Field | None:
        """Smooth union of two fields."""
        if f is None or g is None:
            return g if f is None else f
        if np.all(g.i0 >= f.i0) and np.all(g.i1 <= f.i1):  # in place
            sl = tuple(slice(a - b, c - b) for a, b, c in zip(g.i0, f.i0, g.i1))
            f.sd[sl] = _smin(f.sd[sl], g.sd, k)
            return f
        i0, i1 = np.minimum(f.i0, g.i0), np.maximum(f.i1, g.i1)
        sd = np.full(tuple(i1 - i0), _BIG, np.float32)
        for x in (f, g):
            sl = tuple(slice(a - b, c - b) for a, b, c in zip(x.i0, i0, x.i1))
            sd[sl] = _smin(sd[sl], x.sd, k)
        return _Field(i0, i1, sd)

    def clip(self, f: _Field | None, fn):
        """Intersects a field with the region fn(X, Y, Z) <= 0."""
        if f is not None:
            f.sd = np.maximum(f.sd, fn(*self.coords(f.i0, f.i1)))
        return f

    # textures --------------------------------------------------------------------------------
    def noise(self, sigma_mm) -> np.ndarray:
        """A unit-variance Gaussian random field on the grid (cached per correlation length)."""
        key = tuple(np.broadcast_to(np.asarray(sigma_mm, np.float64), (3,)))
        if key not in self._noise:
            n = self.rng.standard_normal(self.shape, dtype=np.float32)
            n = ndimage.gaussian_filter(n, np.asarray(key) / self.spacing, mode="wrap", truncate=3.0)
            self._noise[key] = n / max(float(n.std()), 1e-6)
        return self._noise[key]

    # painting --------------------------------------------------------------------------------
    def cover(self, sd):
        return np.clip(0.5 - sd / self.h, 0.0, 1.0)

    def fill(self, f: _Field | None, value, where=None, texture=None):
        """Paints ``value`` (HU, scalar or callable(X, Y, Z) -> array) over the shape, anti-aliased.

        ``where(hu)`` -> [0, 1] restricts painting to what is already there (e.g. only inside lung);
        ``texture=(sigma_mm, amplitude_hu)`` adds a smooth random variation.
        """
        if f is None:
            return
        sl = f.slices
        hu = self.hu[sl]
        alpha = self.cover(f.sd)
        if where is not None:
            alpha = alpha * where(hu)
        if callable(value):
            value = value(*self.coords(f.i0, f.i1))
        if texture is not None:
            value = value + texture[1] * self.noise(texture[0])[sl]
        hu += alpha * (value - hu)

    def bone(
        self, f: _Field | None, cortex=1.2, cortical=1550.0, trabecular=(0.0, 700.0), marrow=None, level=0.0
    ):
        """A bone: a cortical shell of thickness ``cortex`` (mm, or callable(X, Y, Z)) around a core.

        The core is trabecular: struts of ``trabecular[1]`` HU in marrow of ``trabecular[0]`` HU,
        from the zero set of a smooth random field (``level`` shifts it: higher, sparser). ``marrow(X, Y, Z)`` -> [0, 1]
        turns the core into fatty marrow (a long bone's medullary canal).
        """
        if f is None:
            return
        sl = f.slices
        X, Y, Z = self.coords(f.i0, f.i1)
        t = cortex(X, Y, Z) if callable(cortex) else cortex
        hu = self.hu[sl]
        a_out = self.cover(f.sd)
        a_in = self.cover(f.sd + t)
        n = self.noise((1.0, 1.0, 2.4))[sl]
        # Trabecular plates and rods: thin sheets along the zero set of a smooth random field,
        # stretched along z (the main load direction of the spine, pelvis and femoral neck).
        struts = np.exp(-((n - level) ** 2) / 0.25)
        core = trabecular[0] + (trabecular[1] - trabecular[0]) * struts
        if marrow is not None:
            w = marrow(X, Y, Z)
            core = core + w * (-60.0 - core)
        cort = cortical * (1.0 + 0.03 * n)
        hu += a_out * (cort - hu)
        hu += a_in * (core - hu)


# ----------------------------------------------------------------------------------------------
# The subject: tissue values and small per-seed variations.


def _subject(rng) -> dict:
    return {
        "fat": float(rng.uniform(-110, -90)),
        "visceral_fat": float(rng.uniform(-100, -80)),
        "muscle": float(rng.uniform(45, 58)),
        "organ": float(rng.uniform(50, 62)),
        "blood": float(rng.uniform(38, 48)),
        "urine": float(rng.uniform(2, 12)),
        "stool": float(rng.uniform(0, 30)),
        "lung": float(rng.uniform(-870, -830)),
        "cortical": float(rng.uniform(1450, 1650)),
        "struts": float(rng.uniform(620, 760)),
        "red_marrow": float(rng.uniform(0, 30)),
        "disc": float(rng.uniform(80, 100)),
        "cartilage": float(rng.uniform(90, 130)),
        "fat_sc": float(rng.uniform(16, 24)),
    }


def _rot(axis, angle_deg):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _both(prims) -> list[_Prim]:
    """Right-side primitives and their mirror images (left side)."""
    prims = [prims] if isinstance(prims, _Prim) else list(prims)
    return prims + [p.mirrored() for p in prims]


# Spine: (name, body centre z, half height, disc below (mm), body semi-axes a (x) and b (y), centre y).
def _spine_levels():
    levels = []
    z = 100.0  # top of S1
    spec = [("L5", 27, 10), ("L4", 27, 10), ("L3", 27, 10), ("L2", 26, 9), ("L1", 25, 9)]
    spec += [(f"T{i}", 24 - (12 - i) * 0.6, 7 if i > 8 else 6) for i in range(12, 0, -1)]
    spec += [("C7", 14, 5), ("C6", 13, 5), ("C5", 13, 5)]
    for name, height, disc in spec:
        z += disc
        zc = z + height / 2
        z += height
        if name[0] == "L":
            a, b = 24.0, 17.0
        elif name[0] == "T":
            i = int(name[1:])
            a, b = 16.0 + 0.6 * i, 12.5 + 0.4 * i
        else:
            a, b = 15.0, 11.0
        levels.append((name, zc, height / 2, disc, a, b))
    return levels


_SPINE_Y = (
    [60, 120, 200, 270, 330, 420, 500, 580, 640, 700],
    [-50, -40, -30, -34, -44, -62, -64, -52, -38, -30],
)


def _spine_y(z):
    """Centre (y) of the vertebral bodies along the trunk: lumbar lordosis, thoracic kyphosis."""
    return np.interp(z, *_SPINE_Y)


# ----------------------------------------------------------------------------------------------
# Soft tissue of the trunk.


def _interp(x, xs, ys):
    return np.interp(x, xs, ys).astype(np.float32)


def _body(sc: _Scene) -> _Field:
    """Skin surface of the trunk, buttocks, thighs, shoulders, arms and neck (signed distance, mm)."""
    X, Y, Z = sc.coords((0, 0, 0), sc.shape)
    zs = [-175, -150, -120, -80, -40, 0, 60, 110, 160, 240, 320, 420, 520, 580, 615, 640, 700]
    As = [1, 55, 125, 162, 176, 178, 170, 156, 150, 150, 155, 162, 166, 162, 120, 62, 58]
    Bs = [1, 45, 98, 112, 116, 116, 114, 110, 108, 108, 110, 114, 112, 100, 80, 56, 54]
    yc = _interp(Z, [-100, 100, 600, 640], [-2, -4, -12, -20])
    body = _Field(
        np.zeros(3, int), np.asarray(sc.shape), _ellipse_sd(X, Y - yc, _interp(Z, zs, As), _interp(Z, zs, Bs))
    )

    def thigh(s):
        def fn(X, Y, Z):
            cx, r = (
                _interp(Z, [-400, -150, -60], [86, 92, 92]),
                _interp(Z, [-400, -200, -100, -60], [70, 78, 84, 84]),
            )
            return _smax(np.sqrt((X - s * cx) ** 2 + (Y - 2.0) ** 2) - r, Z + 20.0, 30.0)

        return _Prim((s * 90 - 100, -100, -500), (s * 90 + 100, 100, 20), fn)

    for s in (-1.0, 1.0):
        sc.merge(body, sc.field(thigh(s)), 25.0)
        sc.merge(body, sc.field(ellipsoid((s * 68, -62, -45), (82, 72, 95))), 20.0)  # buttocks
        sc.merge(body, sc.field(ellipsoid((s * 172, -25, 570), (52, 58, 62))), 30.0)  # shoulders
        sc.merge(body, sc.field(capsule((s * 188, -25, 560), (s * 205, -20, 250), 46, 40)))  # upper arms
    return body


def _soft_trunk(sc: _Scene, h):
    body = _body(sc)
    sc.fill(body, h["fat"], texture=(3.0, 6.0))
    # Subcutaneous fat, thicker over the buttocks and the lower back.
    _, Y, Z = sc.coords((0, 0, 0), sc.shape)
    fat_sc = h["fat_sc"] + 12.0 * _sigmoid(-(Y + 75.0) / 15.0) + 6.0 * _sigmoid((Z - 480.0) / 30.0)
    muscle = _Field(body.i0, body.i1, body.sd + fat_sc.astype(np.float32))
    sc.fill(muscle, h["muscle"], texture=(3.0, 8.0))
    # Intermuscular fat planes in the hips and thighs (thin sheets around the muscle groups).
    planes = []
    for s in (1.0, -1.0):
        planes += [
            ellipsoid((s * 120, -45, -10), (48, 62, 110), _rot((0, 1, 0), s * 10)),  # glutei
            ellipsoid((s * 95, 30, -150), (45, 40, 160)),  # quadriceps / adductors
            ellipsoid((s * 110, -40, -180), (40, 35, 150)),
        ]  # hamstrings
    for p in planes:
        f = sc.field(p)
        if f is not None:
            f.sd = np.abs(f.sd) - 1.2
            sc.fill(f, h["fat"] + 20, where=lambda hu: np.clip(hu / 30.0, 0, 1))
    # The abdominal cavity (inside the wall muscles, in front of the paraspinal muscles) and the pelvis.
    box = sc.box((-170, -120, -80), (170, 130, 420))
    if box is None:
        return
    X, Y, Z = sc.coords(*box)
    sub = tuple(slice(a, b) for a, b in zip(*box))
    ysp = _interp(Z, *_SPINE_Y) - 52.0
    para = np.minimum(_ellipse_sd(X - 38.0, Y - ysp, 34.0, 34.0), _ellipse_sd(X + 38.0, Y - ysp, 34.0, 34.0))
    cav = _smax(muscle.sd[sub] + 14.0, -para, 6.0)
    cav = _smax(cav, 100.0 - Z, 20.0)
    cav = _smax(cav, Z - _diaphragm_z(X, Y) + 5.0, 4.0)
    cavity = _Field(box[0], box[1], cav)
    for p in (ellipsoid((0, -5, -15), (56, 52, 58)), ellipsoid((0, 12, 92), (108, 78, 58))):
        sc.merge(cavity, sc.field(p), 20.0)
    sc.fill(cavity, h["visceral_fat"], texture=(3.0, 6.0))


def _diaphragm_z(X, Y):
    """Height of the diaphragm surface: right dome higher than the left, lower posteriorly."""
    right = 395.0 - 0.011 * (X - 62.0) ** 2 - 0.0045 * (Y - 5.0) ** 2
    left = 378.0 - 0.011 * (X + 62.0) ** 2 - 0.0045 * (Y - 5.0) ** 2
    return np.maximum(np.maximum(right, left), 350.0 - 0.004 * (Y - 10.0) ** 2).astype(np.float32)


def _colon(sc: _Scene, h, path, radius, gas, wall=3.0, haustra=28.0):
    """A colon segment: a wall and a lumen with haustral folds, holding mottled stool and gas."""

    def folds(s):
        if haustra <= 0:
            return 1.0
        return 1.0 - 0.22 * np.exp(-(((s % haustra) - haustra / 2) ** 2) / 8.0)

    sc.fill(sc.field(smooth_tube(path, radius), 3.0), h["muscle"] - 5)
    lumen = sc.field(smooth_tube(path, np.asarray(radius) - wall, radius_fn=folds), 2.0)
    if lumen is None:
        return
    n = sc.noise(3.0)[lumen.slices]
    thr = float(np.sqrt(2.0) * _erfinv(1.0 - 2.0 * gas))
    g = _sigmoid(2.5 * (n - thr))
    content = h["stool"] + (-1000.0 - h["stool"]) * g
    sc.fill(lumen, content)


def _erfinv(y):
    # Winitzki's approximation: good to ~1e-3, plenty for choosing a threshold.
    a = 0.147
    ln = np.log(1.0 - y * y)
    t = 2.0 / (np.pi * a) + ln / 2.0
    return float(np.sign(y) * np.sqrt(np.sqrt(t * t - ln / a) - t))


def _bowel(sc: _Scene, h, rng):
    """Colon frame (cecum to rectum) and small-bowel loops."""
    j = lambda p, s=6.0: np.asarray(p, np.float64) + rng.normal(0, s, 3)  # noqa: E731
    cecum = [j((70, 25, 55)), j((80, 20, 100)), j((86, 5, 180)), j((84, 0, 260)), j((78, 10, 330))]
    transverse = [cecum[-1], j((40, 55, 290)), j((0, 70, 255), 12), j((-50, 55, 285)), j((-88, 5, 365))]
    descending = [transverse[-1], j((-98, -15, 280)), j((-95, -10, 170)), j((-80, 5, 100))]
    sigmoid = [
        descending[-1],
        j((-55, 35, 60)),
        j((-15, 45, 40)),
        j((15, 30, 55)),
        j((8, -20, 50)),
        (0, -58, 35),
    ]
    rectum = [(0, -58, 35), (0, -66, 5), (0, -55, -35), (0, -35, -65)]
    gas = rng.uniform(0.2, 0.45, 5)
    _colon(sc, h, cecum, [32, 28, 26, 25, 25], gas[0])
    _colon(sc, h, transverse, [25, 24, 24, 24, 25], min(gas[1] + 0.3, 0.85))
    _colon(sc, h, descending, [22, 20, 19, 18], gas[2])
    _colon(sc, h, sigmoid, [18, 18, 18, 18, 18, 19], gas[3] + 0.1)
    _colon(sc, h, rectum, [19, 23, 22, 14], gas[4] + 0.15, haustra=0.0)
    # Small bowel: fluid-filled loops in the mid abdomen, a few with gas.
    for i in range(7):
        p = np.array([rng.uniform(-60, 55), rng.uniform(0, 50), rng.uniform(70, 230)])
        pts = [p]
        for _ in range(6):
            step = rng.normal(0, 1, 3) * (24, 18, 24)
            p = np.clip(p + step, (-75, -15, 60), (70, 70, 250))
            pts.append(p)
        r = rng.uniform(11, 14)
        f = sc.field(smooth_tube(pts, r), 3.0)
        sc.fill(f, h["muscle"] - 5)
        lumen = sc.field(smooth_tube(pts, r - 2.5), 2.0)
        if lumen is not None:
            gas_hu = -1000.0 if i < 2 else h["stool"] - 10
            n = sc.noise(3.0)[lumen.slices]
            sc.fill(lumen, h["stool"] - 10 + (gas_hu - h["stool"] + 10) * _sigmoid(3.0 * (n - 0.3)))


def _pelvic_organs(sc: _Scene, h):
    sc.fill(sc.field(ellipsoid((0, 45, -28), (50, 38, 36))), h["muscle"])  # bladder wall
    sc.fill(sc.field(ellipsoid((0, 45, -28), (47, 35, 33))), h["urine"])
    sc.fill(sc.field(ellipsoid((0, 32, -72), (20, 16, 17))), h["organ"] - 10)  # prostate
    for s in (1.0, -1.0):
        # Psoas descending beside the spine, over the pelvic brim to the lesser trochanter.
        pts = [
            (s * 26, -22, 290),
            (s * 38, -20, 210),
            (s * 48, -12, 130),
            (s * 60, 8, 65),
            (s * 74, 32, 18),
            (s * 84, 36, -20),
            (s * 100, 0, -62),
        ]
        sc.fill(sc.field(smooth_tube(pts, [9, 17, 23, 22, 18, 14, 9]), 4.0), h["muscle"])
        # Iliacus in the iliac fossa.
        U, V, W = _ilium_frame(s)
        o = np.array([s * 42, -60, 70]) + 60 * U + 28 * V - 16 * W
        sc.fill(sc.field(ellipsoid(o, (55, 42, 14), np.stack([U, V, W], 1))), h["muscle"])
        sc.fill(sc.field(ellipsoid((s * 52, -5, -35), (9, 34, 32))), h["muscle"])  # obturator internus


# ----------------------------------------------------------------------------------------------
# Bones of the pelvis, lumbar spine and hips.


def _trabecular(h, dense=1.0):
    return (h["red_marrow"], h["red_marrow"] + dense * (h["struts"] - h["red_marrow"]))


def _ilium_frame(s):
    """Axes of the iliac wing: U along the wing (posterior -> anterior), V up it, W lateral."""
    U = np.array([s * 83.0, 105.0, 5.0])
    U /= np.linalg.norm(U)
    V = np.array([s * 63.0, 35.0, 70.0])
    V -= (V @ U) * U
    V /= np.linalg.norm(V)
    W = np.cross(U, V) * s
    return U, V, W


def _hip_bone(sc: _Scene, h):
    """Both hip bones (ilium, ischium, pubis around the acetabulum) as one field."""
    prims = []
    U, V, W = _ilium_frame(1.0)
    # Traced in AP (x, z): PSIS (40, 115), crest summit (85, 146), lateral crest (137, 95), ASIS (128, 62),
    # AIIS (115, 32), then the acetabulum, the greater sciatic notch and the PIIS.
    outline = _catmull_rom(
        [
            (-20, 50),
            (-3, 70),
            (33, 81),
            (76, 76),
            (120, 49),
            (144, 21),
            (145, -15),
            (136, -32),
            (139, -47),
            (118, -64),
            (88, -72),
            (55, -72),
            (25, -58),
            (7, -36),
            (-9, -8),
            (-21, 22),
        ],
        8,
        closed=True,
    )

    def thickness(u, v, sd2):
        rim = 5.0 * np.exp(np.minimum(sd2, 0.0) / 8.0)
        post = 10.0 * _sigmoid((-u + 10.0) / 7.0)
        low = 10.0 * _sigmoid((-v - 36.0) / 7.0)
        # The iliac pillar: a thick column from the acetabular roof up to the iliac tubercle.
        t = np.clip(((u - 85.0) * 20.0 + (v + 50.0) * 105.0) / (20.0**2 + 105.0**2), 0.0, 1.0)
        dist2 = (u - 85.0 - 20.0 * t) ** 2 + (v + 50.0 - 105.0 * t) ** 2
        pillar = 3.5 * np.exp(-dist2 / (2 * 9.0**2))
        return 2.0 + rim + post + low + pillar

    bend = lambda u, v: -0.0022 * (u - 60.0) ** 2  # noqa: E731
    prims.append(plate((42, -60, 70), U, V, outline, thickness, bend=bend))
    # Pelvic brim (arcuate / iliopectineal line), ischium, rami, pubic body, acetabulum.
    prims += smooth_tube(
        [(38, -52, 72), (55, -26, 42), (62, 4, 18), (56, 30, 0), (40, 47, -12), (22, 55, -20)],
        [5.5, 5.5, 5.5, 5, 5, 5],
    )
    # Ischium and pubis: one plate around the obturator foramen, thick at the ischial tuberosity,
    # the superior pubic ramus and the pubic body.
    prims.append(
        plate_through(
            [
                (3, 56, -20),
                (18, 54, -16),
                (38, 44, -6),
                (56, 30, 2),
                (66, 14, -12),
                (72, -16, -26),
                (74, -40, -40),
                (70, -44, -58),
                (64, -38, -80),
                (52, -22, -88),
                (38, 2, -86),
                (24, 30, -78),
                (8, 50, -66),
                (3, 54, -62),
            ],
            holes=[
                [
                    (30, 44, -26),
                    (48, 32, -22),
                    (62, 12, -30),
                    (64, -8, -46),
                    (56, -14, -64),
                    (44, 2, -72),
                    (30, 28, -64),
                    (24, 40, -46),
                ]
            ],
            base=2.0,
            rim=(2.2, 3.0),
            ridges=[
                ([(20, 52, -22), (40, 40, -14), (62, 20, -8)], 5.0, 6.0),
                ([(76, -30, -28), (68, -34, -60), (58, -28, -80)], 11.0, 10.0),
                ([(6, 54, -28), (6, 52, -58)], 5.0, 5.0),
            ],
        )
    )
    prims += tube([(62, -46, -12), (48, -54, -18)], [5, 3])  # ischial spine
    f = sc.field(prims + [p.mirrored() for p in prims], 6.0)
    n_open = np.array([0.665, 0.342, -0.665])
    for s in (1.0, -1.0):
        # The acetabulum: a ball whose lateral-inferior-anterior part is cut off along the opening plane.
        H = np.array([s * 88.0, 0.0, 0.0])
        ball = ellipsoid((s * 84, -4, 6), (33, 33, 36))
        acetabulum = sc.field(ball)
        n = n_open * (s, 1, 1)
        opening = _Prim(
            ball.lo - 5,
            ball.hi + 5,
            lambda X, Y, Z, H=H, n=n: -((X - H[0]) * n[0] + (Y - H[1]) * n[1] + (Z - H[2]) * n[2] - 2.0),
        )
        f = sc.merge(f, sc.cut(acetabulum, opening), 6.0)
        sc.cut(f, ellipsoid(H, (27.5, 27.5, 27.5)))  # the cup
    return f


def _sacrum(sc: _Scene, h, hip: _Field | None):
    R = np.array([[1.0, 0, 0], [0, 0.84, 0.54], [0, -0.54, 0.84]])
    R2 = np.array([[1.0, 0, 0], [0, 0.96, 0.28], [0, -0.28, 0.96]])
    prims = [
        elliptic_cylinder((0, -40, 88), 26, 18, 11, rounding=2.5),  # S1 body
        ellipsoid((0, -52, 80), (40, 18, 20), R),
        ellipsoid((0, -62, 62), (40, 17, 18), R),
        ellipsoid((0, -74, 38), (34, 15, 16), R2),
        ellipsoid((0, -80, 16), (24, 10, 14), R2),
        ellipsoid((0, -82, -4), (14, 8, 12)),
        ellipsoid((32, -52, 80), (24, 18, 17), _rot((0, 1, 0), -25)).mirrored(),
        ellipsoid((32, -52, 80), (24, 18, 17), _rot((0, 1, 0), -25)),
    ]
    prims += _both(ellipsoid((30, -64, 58), (20, 16, 22), R))  # lateral masses
    prims += smooth_tube(
        [(0, -80, 90), (0, -94, 58), (0, -99, 28), (0, -97, 6)], [6, 6, 5, 4]
    )  # median crest
    prims += tube([(0, -81, -14), (0, -77, -30), (0, -69, -44)], [7, 5.5, 4])  # coccyx
    f = sc.field(prims, 7.0)
    sc.cut_field(f, hip, offset=2.5)  # sacro-iliac joints
    d = np.array([0.0, 0.95, -0.3]) * 40
    for x, c, r in [(27, (-50, 74), 5.5), (23, (-66, 51), 5.0), (20, (-76, 28), 4.3), (16, (-81, 8), 3.6)]:
        for s in (1, -1):
            p = np.array([s * x, c[0], c[1]])
            sc.cut(f, capsule(p - d, p + d, r), 1.0)
    sc.cut(f, smooth_tube([(0, -60, 100), (0, -76, 62), (0, -86, 30), (0, -88, 5)], [9, 8, 6, 4]), 1.5)
    return f


def _vertebra(sc: _Scene, h, name, zc, hh, a, b):
    yb = float(_spine_y(zc))
    lumbar = name[0] == "L"
    prims = [elliptic_cylinder((0, yb, zc), a, b, hh, waist=0.07, rounding=2.0)]
    if lumbar:
        tp = {"L1": 36, "L2": 44, "L3": 52, "L4": 47, "L5": 48}[name]
        tr = 7.0 if name == "L5" else 4.6
        right = [ellipsoid((13.5, yb - b - 6, zc + 3), (5.0, 11.0, 7.5))]  # pedicle
        right += tube([(14, yb - b - 14, zc + 1), (5, yb - b - 27, zc - 4)], [5.0, 4.5])  # lamina
        right += tube(
            [(15, yb - b - 12, zc + 3), (tp, yb - b - 13, zc + 6 + (6 if name == "L5" else 0))],
            [tr, tr * 0.7],
        )  # transverse process
        right += tube([(17, yb - b - 18, zc + hh + 7), (16, yb - b - 21, zc - hh + 1)], [5.5, 5.0])  # facets
        spin = tube([(0, yb - b - 26, zc - 2), (0, yb - b - 55, zc - 6)], [5.0, 4.0])
        spin += tube([(0, yb - b - 26, zc - 12), (0, yb - b - 52, zc - 15)], [4.0, 3.5])
    else:
        right = [ellipsoid((0.55 * a, yb - b - 4, zc + 2), (3.8, 8.0, 6.0))]
        right += tube([(0.55 * a, yb - b - 10, zc), (5, yb - b - 20, zc - 4)], [4.0, 3.5])
        right += tube([(0.6 * a, yb - b - 8, zc + 3), (a + 14, yb - b - 20, zc + 3)], [4.5, 4.0])
        right += tube([(0.7 * a, yb - b - 12, zc + hh + 4), (0.7 * a, yb - b - 14, zc - hh + 1)], [4.0, 3.5])
        spin = tube([(0, yb - b - 20, zc - 2), (0, yb - b - 45, zc - 24)], [4.0, 3.0])
    prims += _both(right) + spin
    f = sc.field(prims, 2.5)
    sc.cut(f, ellipsoid((0, yb - b - 12, zc), (9.0, 8.0, hh + 8)), 1.0)  # spinal canal
    sc.bone(f, 1.4, h["cortical"], _trabecular(h, 1.0), level=0.0)
    # Pedicles seen end-on in an AP view: rings of thick cortex.
    sc.bone(sc.field(_both(right[0])), 1.8, h["cortical"], _trabecular(h, 0.6), level=0.6)


def _spine(sc: _Scene, h, names=None):
    for name, zc, hh, disc, a, b in _spine_levels():
        if names is not None and name not in names:
            continue
        yb = float(_spine_y(zc - hh - disc / 2))
        sc.fill(
            sc.field(elliptic_cylinder((0, yb, zc - hh - disc / 2), a - 1, b - 1, disc / 2 + 1.5)), h["disc"]
        )
    for name, zc, hh, _, a, b in _spine_levels():
        if names is None or name in names:
            _vertebra(sc, h, name, zc, hh, a, b)


def _femur(sc: _Scene, h, s):
    H = np.array([s * 88.0, 0.0, 0.0])
    head = sc.field(ellipsoid(H, (24, 24, 24)))
    prims = tube([H + (s * 14, -3, -12), (s * 128, -10, -34)], [14, 16.5])  # neck
    prims += [ellipsoid((s * 142, -16, -18), (13, 20, 22))]  # greater trochanter
    prims += tube([(s * 138, -22, -22), (s * 114, -20, -68)], [9, 9])  # intertrochanteric crest
    prims += [ellipsoid((s * 108, -22, -70), (10, 10, 13))]  # lesser trochanter
    prims += smooth_tube(
        [(s * 132, -8, -48), (s * 127, -4, -100), (s * 116, 2, -220), (s * 106, 6, -330)], [17, 15, 14, 14]
    )
    f = sc.merge(sc.field(prims, 5.0), head, 3.0)
    calcar = np.array([s * 112.0, -8.0, -34.0])  # the thick cortex under the neck (calcar femorale)

    def cortex(X, Y, Z):
        d2 = (X - calcar[0]) ** 2 + (Y - calcar[1]) ** 2 + (Z - calcar[2]) ** 2
        return 1.3 + 2.5 * np.exp(-d2 / (2 * 12.0**2)) + 5.0 * np.clip((-85.0 - Z) / 55.0, 0.0, 1.0)

    marrow = lambda X, Y, Z: np.clip((-95.0 - Z) / 45.0, 0.0, 1.0)  # noqa: E731
    sc.bone(f, cortex, h["cortical"], _trabecular(h, 1.1), marrow=marrow, level=-0.15)


def _pelvis_bones(sc: _Scene, h):
    hip = _hip_bone(sc, h)
    sacrum = _sacrum(sc, h, hip)
    for s in (1.0, -1.0):  # hip joint cartilage and capsule around the heads
        sc.fill(sc.field(ellipsoid((s * 88.0, 0.0, 0.0), (27.5, 27.5, 27.5))), h["cartilage"])
        _femur(sc, h, s)
    sc.bone(hip, 1.4, h["cortical"], _trabecular(h, 0.9), level=0.1)
    sc.bone(sacrum, 1.6, h["cortical"], _trabecular(h, 0.9), level=0.0)
    # The iliac crests: thick rounded rims of dense bone along the top of the wings.
    U, V, W = _ilium_frame(1.0)
    uv = np.array([(-16, 47), (-1, 64), (33, 75), (74, 70), (114, 46), (137, 19), (138, -12)], np.float64)
    crest = [np.array([42.0, -60.0, 70.0]) + u * U + v * V - 0.0022 * (u - 60.0) ** 2 * W for u, v in uv]
    sc.bone(
        sc.field(_both(smooth_tube(crest, [7, 6.5, 6, 6, 5.5, 5, 5.5]))),
        2.2,
        h["cortical"],
        _trabecular(h, 0.9),
        level=0.1,
    )
    # Lines of cortex seen tangentially: the pelvic brim (iliopectineal line) and the teardrops.
    brim = [(40, -50, 70), (55, -26, 42), (61, 2, 18), (55, 28, 0), (40, 45, -12), (22, 53, -20)]
    sc.bone(sc.field(_both(smooth_tube(brim, 3.0))), 3.0, h["cortical"])
    sc.bone(
        sc.field(_both(smooth_tube([(57, -8, -8), (56, -4, -22), (60, -2, -30)], 2.5))), 2.5, h["cortical"]
    )


# ----------------------------------------------------------------------------------------------
# Chest and upper abdomen.


def _thoracic_cavity(sc: _Scene, X, Y, Z):
    """Inside of the rib cage above the diaphragm (signed distance, mm)."""
    zs = [300, 380, 450, 520, 570, 600, 625, 645]
    a = _interp(Z, zs, [128, 134, 137, 131, 114, 92, 58, 15])
    b = _interp(Z, zs, [86, 90, 90, 84, 72, 60, 42, 12])
    yc = _interp(Z, zs, [-8, -8, -10, -14, -18, -22, -26, -28])
    d = _ellipse_sd(X, Y - yc, a, b)
    return _smax(d, _diaphragm_z(X, Y) - Z, 3.0)


def _lungs(sc: _Scene, h, rng):
    box = sc.box((-150, -110, 300), (150, 90, 650))
    if box is None:
        return
    X, Y, Z = sc.coords(*box)
    cav = _thoracic_cavity(sc, X, Y, Z)
    ysp = _interp(Z, *_SPINE_Y)
    mediastinum = np.minimum(
        ellipsoid((2, 10, 530), (24, 75, 120)).fn(X, Y, Z),
        _ellipse_sd(X, Y - ysp, np.float32(27.0), np.float32(26.0)),
    )
    lung = _Field(box[0], box[1], _smax(cav, -mediastinum, 8.0).astype(np.float32))
    sc.fill(lung, h["lung"], texture=(3.0, 18.0))
    # Pulmonary vessels: trees from the hila, painted only inside the lungs.
    tubes = []

    def branch(p, d, r, depth):
        length = rng.uniform(20, 32) * (r / 5.0) ** 0.4
        q = p + length * d
        tubes.append(capsule(p, q, r, r * 0.9))
        if depth == 0 or r < 0.9:
            return
        for _ in range(2):
            nd = d + rng.normal(0, 0.42, 3)
            nd /= np.linalg.norm(nd)
            branch(q, nd, r * rng.uniform(0.7, 0.82), depth - 1)

    for s, hilum in ((1.0, (50.0, 2.0, 470.0)), (-1.0, (-52.0, 0.0, 484.0))):
        for d0 in [
            (s * 0.4, 0.1, 0.9),
            (s * 0.8, 0.1, 0.5),
            (s * 0.9, 0.3, 0.1),
            (s * 0.8, -0.2, -0.55),
            (s * 0.45, -0.6, -0.65),
            (s * 0.6, 0.5, -0.6),
            (s * 0.7, -0.5, 0.3),
            (s * 0.3, 0.6, 0.2),
            (s * 0.6, 0.0, -0.9),
        ]:
            d0 = np.asarray(d0) / np.linalg.norm(d0)
            branch(np.asarray(hilum), d0, rng.uniform(6.0, 7.5), 7)
    vessels = sc.field(tubes)
    # Vessels with their bronchial walls and interstitium: a little denser than blood.
    sc.fill(vessels, h["blood"] + 30, where=lambda hu: np.clip((-300.0 - hu) / 300.0, 0.0, 1.0))


def _mediastinum(sc: _Scene, h):
    R = _rot((0, 1, 0), -35) @ _rot((0, 0, 1), -15)
    sc.fill(sc.field(ellipsoid((-16, 30, 414), (79, 56, 64), R)), h["fat"] + 10)  # epicardial fat
    sc.fill(sc.field(ellipsoid((-16, 30, 414), (75, 52, 60), R)), h["blood"] + 4)  # heart
    aorta = [
        (24, 32, 440),
        (16, 22, 515),
        (0, 2, 547),
        (-30, -20, 532),
        (-30, -46, 480),
        (-22, -54, 390),
        (-15, -42, 330),
        (-12, -22, 280),
        (-10, -16, 170),
    ]
    sc.fill(sc.field(smooth_tube(aorta, [15, 14, 13, 13, 12, 12, 11, 10, 10]), 2.0), h["blood"])
    for s in (1.0, -1.0):
        sc.fill(
            sc.field(smooth_tube([(-10, -16, 170), (s * 35, -5, 110), (s * 55, 10, 40)], [9, 7, 6])),
            h["blood"],
        )
    sc.fill(sc.field(tube([(28, 12, 610), (28, 16, 450)], 10)), h["blood"])  # superior vena cava
    sc.fill(
        sc.field(smooth_tube([(-18, 36, 452), (-12, 20, 490), (-50, 0, 496)], [13, 12, 10]), 2.0), h["blood"]
    )
    sc.fill(
        sc.field(smooth_tube([(-12, 20, 490), (10, 10, 486), (48, 4, 474)], [12, 11, 9]), 2.0), h["blood"]
    )
    # Trachea (with its wall) and the main bronchi.
    airway = [(2, -2, 700), (1, 4, 560), (0, 6, 503)]
    sc.fill(sc.field(smooth_tube(airway, 12)), h["muscle"] + 40)
    sc.fill(
        sc.field(
            smooth_tube(airway, 9.0)
            + smooth_tube([(0, 6, 506), (30, 2, 480), (44, 0, 466)], [7, 6.5, 5])
            + smooth_tube([(0, 6, 506), (-36, -1, 486), (-52, -4, 470)], [6.5, 6, 5]),
            2.0,
        ),
        -1000.0,
    )


def _upper_abdomen(sc: _Scene, h):
    below = lambda gap: lambda X, Y, Z: Z - _diaphragm_z(X, Y) + gap  # noqa: E731
    liver = sc.field(
        [
            ellipsoid((55, 8, 330), (105, 92, 82), _rot((0, 1, 0), 12)),
            ellipsoid((-20, 35, 345), (55, 45, 40)),
        ],
        15.0,
    )
    sc.fill(sc.clip(liver, below(6.0)), h["organ"] + 5, texture=(3.0, 5.0))
    sc.fill(
        sc.clip(sc.field(ellipsoid((-98, -48, 330), (30, 40, 52), _rot((0, 0, 1), 30))), below(6.0)),
        h["organ"],
    )  # spleen
    stomach = sc.clip(sc.field(ellipsoid((-62, 22, 330), (50, 44, 58), _rot((0, 1, 0), -20))), below(6.0))
    sc.fill(stomach, h["muscle"])
    if stomach is not None:
        stomach.sd = stomach.sd + 3.0
        sc.fill(stomach, lambda X, Y, Z: np.where(Z > _diaphragm_z(X, Y) - 38.0, -1000.0, h["stool"] + 5))
    for s, z in ((1.0, 238.0), (-1.0, 254.0)):  # kidneys in perirenal fat, upper poles tilted medially
        R = _rot((0, 1, 0), -s * 14) @ _rot((0, 0, 1), s * 30)
        sc.fill(sc.field(ellipsoid((s * 66, -48, z), (40, 34, 68), R)), h["visceral_fat"] - 10)
        sc.fill(sc.field(ellipsoid((s * 66, -48, z), (28, 22, 55), R)), h["organ"] - 15)


def _rib(sc: _Scene, h, i, zc):
    """Rib i (1..12) of the vertebra at height zc, both sides, with its costal cartilage."""
    yb = float(_spine_y(zc))
    A = [60, 86, 106, 119, 128, 134, 137, 138, 137, 133, 124, 108][i - 1]
    y_front = [70, 80, 84, 86, 86, 84, 80, 76, 70, 62, 40, 10][i - 1]
    y_back = yb - 32.0
    B = (y_front - y_back) / 2.0
    y0 = y_back + B
    drop = [22, 38, 52, 64, 74, 84, 90, 90, 84, 74, 52, 36][i - 1]
    end = np.deg2rad([70, 68, 66, 64, 62, 60, 56, 48, 40, 30, 5, -20][i - 1])
    start = -np.arccos(min(42.0 / A, 0.99))
    phi = np.linspace(start, end, 14)
    t = (phi - start) / (end - start)
    pts = [(12.0, yb - 6.0, zc + 2.0), (28.0, yb - 26.0, zc + 4.0)]
    pts += [(A * np.cos(p), y0 + B * np.sin(p), zc + 2.0 - drop * tt**1.15) for p, tt in zip(phi, t)]
    r = 4.8 if i > 1 else 6.0
    radii = r * np.concatenate([[0.8, 0.95], np.interp(t, [0, 0.35, 0.6, 1], [1.0, 0.92, 0.68, 0.5])])
    right = smooth_tube(pts, radii, n=3)
    y_mid = y0 + 0.3 * B  # anterior ribs: thinner cortex

    def cortex(X, Y, Z):
        return 1.1 - 0.8 * np.clip((Y - y_mid) / 30.0, 0.0, 1.0)

    sc.bone(sc.field(_both(right), 1.5), cortex, h["cortical"], _trabecular(h, 0.8), level=0.2)
    if i <= 10:  # costal cartilage to the sternum (ribs 8-10: to the cartilage above)
        e = np.asarray(pts[-1])
        target = (12.0, 82.0, e[2] + 14.0 * min(i, 7) - 10) if i <= 7 else (38.0, 78.0, e[2] + 40.0)
        cart = smooth_tube(
            [e, (e + np.asarray(target)) / 2 + (0, 4, 0), target], [r * 0.9, r * 0.85, r * 0.8]
        )
        sc.fill(sc.field(_both(cart), 1.5), h["cartilage"], texture=(1.2, 30.0))


def _chest_bones(sc: _Scene, h):
    thoracic = [lv for lv in _spine_levels() if lv[0][0] == "T"]
    for name, zc, *_ in thoracic:
        _rib(sc, h, int(name[1:]), zc)
    sternum = sc.field(
        [
            ellipsoid((0, 80, 578), (26, 7, 24)),
            ellipsoid((0, 84, 505), (15, 7, 52)),
            ellipsoid((0, 84, 448), (8, 5, 12)),
        ],
        6.0,
    )
    sc.bone(sternum, 1.0, h["cortical"], _trabecular(h, 0.8), level=0.2)
    clavicle = smooth_tube(
        [(20, 70, 598), (60, 74, 605), (105, 52, 614), (145, 12, 624), (165, -8, 624)], [9, 7.5, 6.5, 7, 8.5]
    )
    sc.bone(sc.field(_both(clavicle), 2.0), 2.0, h["cortical"], _trabecular(h, 0.8), level=0.2)
    scapula = plate_through(
        [
            (75, -95, 615),
            (110, -78, 622),
            (132, -58, 612),
            (148, -42, 598),
            (150, -42, 556),
            (126, -64, 510),
            (96, -90, 455),
            (80, -98, 480),
            (70, -100, 540),
            (68, -100, 590),
        ],
        base=1.4,
        rim=(2.0, 3.0),
        ridges=[
            ([(148, -42, 562), (126, -64, 512), (98, -90, 462)], 4.0, 4.0),
            ([(132, -50, 578), (148, -42, 578)], 9.0, 9.0),
            ([(76, -100, 586), (115, -82, 598), (150, -58, 610)], 4.0, 5.0),
        ],
    )
    acromion = smooth_tube([(140, -64, 606), (162, -44, 620), (172, -20, 624)], [7, 7, 6])
    coracoid = smooth_tube([(132, -52, 600), (136, -14, 602), (142, 4, 590)], [7, 6, 5])
    sc.bone(sc.field(_both([scapula] + acromion + coracoid), 4.0), 1.3, h["cortical"], _trabecular(h, 0.8))
    H = np.array([170.0, -32.0, 572.0])
    humerus = [ellipsoid(H, (23, 23, 24)), ellipsoid((188, -16, 570), (12, 14, 16))]
    humerus += smooth_tube([(178, -30, 552), (188, -28, 480), (198, -24, 300)], [20, 13, 12])
    sc.bone(
        sc.field(_both(humerus), 6.0),
        lambda X, Y, Z: 1.2 + 3.0 * np.clip((530.0 - Z) / 50.0, 0, 1),
        h["cortical"],
        _trabecular(h, 1.0),
        marrow=lambda X, Y, Z: np.clip((520.0 - Z) / 40.0, 0, 1),
    )


def _knee(sc: _Scene, h):
    """A right knee in extension (joint line at z = 0, +x lateral) for an AP view."""
    X, Y, Z = sc.coords((0, 0, 0), sc.shape)
    r = _interp(Z, [-150, -60, 0, 60, 150], [54, 58, 60, 62, 70])
    leg = _Field(np.zeros(3, int), np.asarray(sc.shape), _ellipse_sd(X - 2.0, Y - 6.0, r, r * 0.92))
    sc.fill(leg, h["fat"], texture=(3.0, 6.0))
    leg.sd = leg.sd + 9.0
    sc.fill(leg, h["muscle"], texture=(3.0, 8.0))
    sc.fill(sc.field(ellipsoid((0, -38, 5), (26, 16, 45))), h["fat"])  # popliteal fat
    sc.fill(sc.field(ellipsoid((0, 34, -8), (20, 12, 16))), h["fat"])  # infrapatellar (Hoffa) fat pad
    sc.fill(sc.field(ellipsoid((0, 28, 62), (26, 10, 22))), h["fat"])  # suprapatellar fat
    sc.fill(sc.field(tube([(0, 44, 8), (0, 36, -40)], 5.0)), h["muscle"] + 20)  # patellar tendon
    cort, trab = h["cortical"], _trabecular(h, 1.0)
    femur = sc.field(
        [
            ellipsoid((-21, -8, 24), (18, 30, 21)),
            ellipsoid((21, -6, 25), (18, 28, 22)),
            ellipsoid((0, -6, 36), (36, 28, 24)),
        ]
        + smooth_tube([(0, -4, 50), (0, 2, 110), (0, 4, 170)], [24, 15.5, 15]),
        10.0,
    )
    sc.cut(femur, ellipsoid((0, -24, 2), (7.5, 24, 12)), 3.0)  # intercondylar notch
    shaft = lambda X, Y, Z, z0=70.0, s=1.0: np.clip(s * (Z - z0) / 40.0, 0.0, 1.0)  # noqa: E731
    sc.bone(
        femur,
        lambda X, Y, Z: 1.2 + 3.5 * shaft(X, Y, Z),
        cort,
        trab,
        marrow=lambda X, Y, Z: shaft(X, Y, Z, 90.0),
    )
    sc.fill(
        sc.field([ellipsoid((-22, -8, 24), (19, 32, 23)), ellipsoid((22, -6, 25), (19, 30, 24))]),
        h["cartilage"],
        where=lambda hu: np.clip((300.0 - hu) / 200.0, 0, 1),
    )
    tibia = sc.field(
        [
            elliptic_cylinder((0, -4, -11), 38, 28, 8, rounding=5.0),
            ellipsoid((0, -2, -28), (35, 26, 24)),
            ellipsoid((0, 24, -46), (11, 8, 16)),
        ]
        + smooth_tube([(0, 0, -40), (0, 3, -90), (0, 5, -170)], [20, 14.5, 13])
        + tube([(6, -2, -6), (5, -3, 5)], [4.5, 2.5])
        + tube([(-7, -2, -6), (-6, -3, 6)], [4.5, 2.5]),
        14.0,
    )
    sc.bone(
        tibia,
        lambda X, Y, Z: 1.2 + 3.0 * shaft(X, Y, Z, -50.0, -1.0),
        cort,
        trab,
        marrow=lambda X, Y, Z: shaft(X, Y, Z, -70.0, -1.0),
    )
    fibula = sc.field(
        [ellipsoid((31, -20, -32), (11, 11, 13))] + tube([(31, -19, -40), (34, -15, -170)], [7.5, 6.5]), 4.0
    )
    sc.bone(fibula, lambda X, Y, Z: 1.0 + 2.0 * shaft(X, Y, Z, -60.0, -1.0), cort, trab)
    sc.bone(sc.field(ellipsoid((2, 44, 30), (21, 10, 24))), 1.5, cort, trab)  # patella


# ----------------------------------------------------------------------------------------------
# Public API


def _trunk(sc: _Scene, h, seed: int):
    """The whole adult trunk; parts outside the grid cost nothing. Random parts (lung vessels,
    bowel) have their own streams, so every region of one seed shows the same subject."""
    _soft_trunk(sc, h)
    _lungs(sc, h, np.random.default_rng([seed, 10]))
    _mediastinum(sc, h)
    _upper_abdomen(sc, h)
    _pelvic_organs(sc, h)
    _bowel(sc, h, np.random.default_rng([seed, 11]))
    _spine(sc, h)
    _chest_bones(sc, h)
    _pelvis_bones(sc, h)


def _ct_image(sc: _Scene, rng, blur_mm=0.7, noise_hu=6.0):
    """Light CT image formation: a Gaussian MTF and slightly correlated noise."""
    hu = ndimage.gaussian_filter(sc.hu, blur_mm / sc.spacing, mode="nearest", truncate=3.0)
    if noise_hu > 0:
        hu += noise_hu * rng.standard_normal(hu.shape, dtype=np.float32)
    return np.clip(hu, -1024.0, 3071.0)


def _grid(region: str, shape, spacing_mm):
    r = _REGIONS[region]
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise JaxdrrError(f"shape must be 3 positive integers, got {shape!r}")
    if spacing_mm is not None:
        spacing = np.broadcast_to(np.asarray(spacing_mm, np.float64), (3,)).copy()
        if not np.all(np.isfinite(spacing) & (spacing > 0)):
            raise JaxdrrError(f"spacing_mm must be positive, got {spacing_mm!r}")
    elif shape is None:
        spacing = np.asarray(r.spacing, np.float64)
    else:
        spacing = np.asarray(r.fov, np.float64) / np.asarray(shape, np.float64)
    if shape is None:
        shape = tuple(int(np.ceil(f / s - 1e-6)) for f, s in zip(r.fov, spacing))
    origin = np.asarray(r.center) - (np.asarray(shape) - 1) / 2.0 * spacing
    return shape, spacing, origin


def demo_hu(
    region: str = "pelvis",
    *,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | float | None = None,
    ct_blur_mm: float = 0.7,
    ct_noise_hu: float = 6.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The demo CT of a region as (HU [I, J, K] float32, 4x4 affine); see :func:`demo_volume`."""
    if region not in DEMO_REGIONS:
        raise JaxdrrError(f"unknown demo region {region!r}; choose one of {DEMO_REGIONS}")
    shape, spacing, origin = _grid(region, shape, spacing_mm)
    seed = int(seed)
    h = _subject(np.random.default_rng(seed))
    sc = _Scene(shape, spacing, origin, np.random.default_rng([seed, 1]))
    if region == "limb":
        _knee(sc, h)
    else:
        _trunk(sc, h, seed)
    hu = _ct_image(sc, np.random.default_rng([seed, 2]), ct_blur_mm, ct_noise_hu)
    return hu.astype(np.float32), centered_affine(shape, spacing)


def demo_volume(
    region: str = "pelvis",
    *,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | float | None = None,
    ct_blur_mm: float = 0.7,
    ct_noise_hu: float = 6.0,
):
    """A detailed, deterministic adult CT of a body region as a HU :class:`jaxdrr.Volume`.

    Args:
      region: "pelvis" (lumbar spine to the proximal femurs), "chest", "abdomen" or "limb" (a knee).
      seed: the subject (small variations of size, tissue values, bowel gas and vessels); the same
        arguments always give the same volume.
      shape: voxels (I, J, K) along (right, anterior, superior); default: the region's field of
        view at the region's default spacing (pelvis: 244 x 175 x 238 at 1.6 mm).
      spacing_mm: voxel spacing; with ``shape`` alone the field of view is divided by ``shape``.
      ct_blur_mm, ct_noise_hu: CT image formation (Gaussian MTF sigma and noise); 0 turns them off.

    Returns:
      A ``Volume`` (``kind="hu"``) centred at the world origin with a diagonal RAS+ affine.
    """
    from jaxdrr.volume import Volume

    hu, affine = demo_hu(
        region, seed=seed, shape=shape, spacing_mm=spacing_mm, ct_blur_mm=ct_blur_mm, ct_noise_hu=ct_noise_hu
    )
    return Volume.create(hu, affine)
