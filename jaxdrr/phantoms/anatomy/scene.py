"""The canvas of the anatomical phantom: an HU grid, shape fields on it, and the subject's tissue values.

A :class:`Scene` holds the HU grid (float32, trunk-frame coordinates, air at first) and paints on it:
:meth:`Scene.field` evaluates a union of :class:`~jaxdrr.phantoms.anatomy.shapes.Prim` on the grid
cells inside their boxes (a :class:`Field`), :meth:`Scene.fill` paints a value over a field with
anti-aliased edges (coverage from the signed distance) and :meth:`Scene.bone` paints a cortical shell
around a trabecular core. Paint covers what is under it, so the painting order is part of the anatomy.

:func:`subject_tissues` draws one subject's tissue HU values: the ``h`` dict every painter takes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jaxdrr.phantoms.anatomy.shapes import Prim, smooth_max, smooth_min

_BIG = np.float32(1e4)  # signed distance (mm) of cells no primitive reaches: far outside


class Field:
    """Signed distances of a shape on the index box [i0, i1) of the grid."""

    __slots__ = ("i0", "i1", "sd")

    def __init__(self, i0, i1, sd):
        self.i0, self.i1, self.sd = i0, i1, sd

    @property
    def slices(self):
        return tuple(slice(a, b) for a, b in zip(self.i0, self.i1))


class Scene:
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

    def field(self, prims, k=0.0) -> Field | None:
        """Smooth union (blend radius ``k`` mm) of primitives, on the union of their boxes."""
        prims = [prims] if isinstance(prims, Prim) else list(prims)
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
            sd[sl] = smooth_min(sd[sl], np.broadcast_to(d, tuple(b - a)), k)
        return Field(i0, i1, sd)

    def cut(self, f: Field | None, prims, k=0.0, offset=0.0):
        """Removes primitives (grown by ``offset`` mm) from a field."""
        if f is None:
            return None
        prims = [prims] if isinstance(prims, Prim) else list(prims)
        for p in prims:
            box = self.box(p.lo - k - offset - 2 * self.h, p.hi + k + offset + 2 * self.h)
            if box is None:
                continue
            a, b = np.maximum(box[0], f.i0), np.minimum(box[1], f.i1)
            if np.any(b <= a):
                continue
            d = np.broadcast_to(p.fn(*self.coords(a, b)), tuple(b - a)) - offset
            sl = tuple(slice(x - y, z - y) for x, y, z in zip(a, f.i0, b))
            f.sd[sl] = smooth_max(f.sd[sl], -d, k)
        return f

    def cut_field(self, f: Field | None, g: Field | None, offset=0.0):
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

    def merge(self, f: Field | None, g: Field | None, k=0.0) -> Field | None:
        """Smooth union of two fields."""
        if f is None or g is None:
            return g if f is None else f
        if np.all(g.i0 >= f.i0) and np.all(g.i1 <= f.i1):  # in place
            sl = tuple(slice(a - b, c - b) for a, b, c in zip(g.i0, f.i0, g.i1))
            f.sd[sl] = smooth_min(f.sd[sl], g.sd, k)
            return f
        i0, i1 = np.minimum(f.i0, g.i0), np.maximum(f.i1, g.i1)
        sd = np.full(tuple(i1 - i0), _BIG, np.float32)
        for x in (f, g):
            sl = tuple(slice(a - b, c - b) for a, b, c in zip(x.i0, i0, x.i1))
            sd[sl] = smooth_min(sd[sl], x.sd, k)
        return Field(i0, i1, sd)

    def clip(self, f: Field | None, fn):
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

    def fill(self, f: Field | None, value, where=None, texture=None):
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
        self, f: Field | None, cortex=1.2, cortical=1550.0, trabecular=(0.0, 700.0), marrow=None, level=0.0
    ):
        """A bone: a cortical shell of thickness ``cortex`` (mm, or callable(X, Y, Z)) around a core.

        The core is trabecular: struts of ``trabecular[1]`` HU in marrow of ``trabecular[0]`` HU,
        from the zero set of a smooth random field (``level`` shifts it: higher, sparser).
        ``marrow(X, Y, Z)`` -> [0, 1] turns the core into fatty marrow (a long bone's medullary canal).
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


def subject_tissues(rng) -> dict:
    """One subject's tissue HU values (the ``h`` dict of every painter), drawn from ``rng``."""
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


def trabecular_hu(h, dense=1.0):
    """(marrow, strut) HU of trabecular bone for :meth:`Scene.bone`; ``dense`` scales the struts."""
    return (h["red_marrow"], h["red_marrow"] + dense * (h["struts"] - h["red_marrow"]))
