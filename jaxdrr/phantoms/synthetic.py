"""Procedural CTs with exact labels: random anatomy + simulated CT image formation.

The abstraction: a **random subject** is a list of painted primitives (ellipsoids, tubes along
polylines, boxes, elliptic body sections; bones as a cortical shell around a textured trabecular
core) in world millimetres; a **scan** paints them on a fine grid, keeps the pre-degradation truth
(partial-volume class fractions and a fine tissue label map), and degrades the HU the way a CT
scanner does (slice profile, in-plane blur, non-white noise, beam-hardening cupping, metal streaks,
calibration offsets, 12-bit clipping). It is the training data of the material-decomposition
V-Net (:mod:`jaxdrr.models.vnet`), so the hard cases are deliberately common:

* trabecular bone and marrow at 50-350 HU and yellow marrow near fat (-100..0 HU), all labelled
  **bone**: whole-bone labels are the target (thresholds at 350 HU miss them);
* iodinated blood at 150-500 HU and rare undiluted boluses near 3071 HU, labelled **soft tissue**
  (thresholds call them bone);
* costal cartilage with calcified spots, intervertebral discs: soft tissue;
* lung parenchyma, airways and bowel gas: **air**; metal implants: **metal** (clipped at 3071 HU).

HU sources (see ../shared VNET.md for the table): Schneider, Bortfeld & Schlegel, Phys Med Biol
45:459 (2000) tissue bins (lung -950..-120, adipose -120..19, soft 19..80, connective 80..120,
bone mixtures 120..1500, implants >= 2300); Pickhardt et al., Ann Intern Med 158:588 (2013) and
Insights Imaging 2023 (L1 trabecular 118/143/178 HU for osteoporosis/osteopenia/normal); iodinated
aorta 137-459 HU and a 3071 HU bolus measured on a clinical chest CT. Image formation: in-plane
pixels 0.5-1 mm, slices 0.6-5 mm, noise 5-40 HU, NPS of filtered back-projection ~ |f| times an
apodisation roll-off (Kijewski & Judy, Phys Med Biol 32:565, 1987; two-parameter peak/roll-off
model, J Med Imaging 11:035501, 2024).

Everything is numpy/scipy and deterministic given the seed. The noise texture and streaks are
models, not a simulated scan (forward projection + FBP), which would cost ~10 s per slice pair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxdrr.errors import JaxdrrError
from jaxdrr.phantoms.grid import centered_affine

MATERIAL_CLASSES = ("air", "soft_tissue", "bone", "metal")
TISSUES = (
    "outside_air",
    "lung",
    "airway",
    "bowel_gas",
    "fat",
    "muscle",
    "organ",
    "blood",
    "contrast_blood",
    "bowel_content",
    "cartilage",
    "disc",
    "cortical_bone",
    "trabecular_bone",
    "marrow_fat",
    "metal",
    "csf",
)
TISSUE_TO_CLASS = {
    "outside_air": "air",
    "lung": "air",
    "airway": "air",
    "bowel_gas": "air",
    "fat": "soft_tissue",
    "muscle": "soft_tissue",
    "organ": "soft_tissue",
    "blood": "soft_tissue",
    "contrast_blood": "soft_tissue",
    "bowel_content": "soft_tissue",
    "cartilage": "soft_tissue",
    "disc": "soft_tissue",
    "csf": "soft_tissue",
    "cortical_bone": "bone",
    "trabecular_bone": "bone",
    "marrow_fat": "bone",
    "metal": "metal",
}
REGIONS = ("chest", "abdomen", "pelvis", "spine", "limb")
HU_CLIP = (-1024.0, 3071.0)
_T = {name: i for i, name in enumerate(TISSUES)}
_CLASS_OF_TISSUE = np.array([MATERIAL_CLASSES.index(TISSUE_TO_CLASS[t]) for t in TISSUES], np.int8)


@dataclasses.dataclass(frozen=True)
class ScannerConfig:
    """CT image formation. ``None`` fields are sampled per scan from the ranges in the docstring.

    Attributes:
      enabled: False returns the noise-free, blur-free painted HU (the truth image).
      inplane_sigma_mm: in-plane Gaussian blur (MTF); 0.25-0.65 mm (f50 0.3-0.7 lp/mm).
      slice_mm: slice thickness (FWHM of a Gaussian slice profile); 0.6-5 mm.
      noise_hu: noise standard deviation at the fine grid; 5-40 HU.
      nps_peak_per_mm: peak frequency of the noise power spectrum; 0.1-0.5 /mm.
      cupping_hu: beam-hardening cupping depth at the body centre; 0-40 HU.
      streak_hu: metal streak amplitude; 100-600 HU.
      slope, offset_hu: calibration error hu' = slope * hu + offset; 0.95-1.05 and +-30 HU.
    """

    enabled: bool = True
    inplane_sigma_mm: float | None = None
    slice_mm: float | None = None
    noise_hu: float | None = None
    nps_peak_per_mm: float | None = None
    cupping_hu: float | None = None
    streak_hu: float | None = None
    slope: float | None = None
    offset_hu: float | None = None

    def sample(self, rng: np.random.Generator) -> dict:
        def pick(value, lo, hi):
            return float(rng.uniform(lo, hi)) if value is None else float(value)

        return {
            "inplane_sigma_mm": pick(self.inplane_sigma_mm, 0.25, 0.65),
            "slice_mm": pick(self.slice_mm, 0.6, 5.0),
            "noise_hu": pick(self.noise_hu, 5.0, 40.0),
            "nps_peak_per_mm": pick(self.nps_peak_per_mm, 0.1, 0.5),
            "cupping_hu": pick(self.cupping_hu, 0.0, 40.0),
            "streak_hu": pick(self.streak_hu, 100.0, 600.0),
            "slope": pick(self.slope, 0.95, 1.05),
            "offset_hu": pick(self.offset_hu, -30.0, 30.0),
        }


@dataclasses.dataclass(frozen=True)
class SyntheticCT:
    """A generated CT and its truth.

    Attributes:
      hu: float32 [I, J, K] HU, clipped to [-1024, 3071].
      fractions: float32 [4, I, J, K] partial-volume fractions of :data:`MATERIAL_CLASSES`
        (before image degradation), summing to 1 per voxel.
      tissue: uint8 [I, J, K] majority fine tissue (index into :data:`TISSUES`).
      affine: 4x4 voxel index -> world mm (RAS+, voxel centres).
      info: region, sampled anatomy/scanner parameters and seed (JSON-serialisable).
    """

    hu: np.ndarray
    fractions: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    info: dict


# ----------------------------------------------------------------------------------------------
# The canvas: a fine grid over the field of view, painted primitive by primitive.


class _Canvas:
    def __init__(self, shape, spacing, center, rng, texture_rng):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, np.float64)
        self.origin = np.asarray(center, np.float64) - (np.asarray(self.shape) - 1) / 2.0 * self.spacing
        self.tissue = np.full(self.shape, _T["outside_air"], np.uint8)
        self.hu = np.full(self.shape, -1000.0, np.float32)
        self.rng = rng
        # Texture fields have one random number per fine voxel; a separate stream keeps the subject's
        # anatomy independent of the field of view and grid size.
        self.texture_rng = texture_rng
        self._noise: dict[float, np.ndarray] = {}

    def axes(self, lo, hi):
        return [self.origin[d] + np.arange(lo[d], hi[d]) * self.spacing[d] for d in range(3)]

    def bbox(self, lo_mm, hi_mm):
        lo = np.floor((np.asarray(lo_mm) - self.origin) / self.spacing).astype(int)
        hi = np.ceil((np.asarray(hi_mm) - self.origin) / self.spacing).astype(int) + 1
        lo = np.clip(lo, 0, self.shape)
        hi = np.clip(hi, 0, self.shape)
        return (lo, hi) if np.all(hi > lo) else None

    def noise(self, sigma_mm: float) -> np.ndarray:
        """A smooth unit-variance random field (cached per correlation length)."""
        if sigma_mm not in self._noise:
            n = self.texture_rng.standard_normal(self.shape).astype(np.float32)
            n = ndimage.gaussian_filter(n, sigma_mm / self.spacing, mode="wrap")
            self._noise[sigma_mm] = n / max(float(n.std()), 1e-6)
        return self._noise[sigma_mm]

    def paint(self, box, inside, tissue: str, hu: float, texture: tuple[float, float] | None = None):
        lo, hi = box
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        self.tissue[sl][inside] = _T[tissue]
        value = np.float32(hu)
        if texture is not None:
            sigma_mm, amplitude = texture
            value = hu + amplitude * self.noise(sigma_mm)[sl][inside]
        self.hu[sl][inside] = value

    # Primitives ------------------------------------------------------------------------------

    def ellipsoid(self, center, semi, tissue, hu, rotation=None, texture=None, shrink=0.0):
        semi = np.asarray(semi, np.float64) - shrink
        if np.any(semi <= 0):
            return
        r = float(np.max(semi))
        box = self.bbox(np.asarray(center) - r, np.asarray(center) + r)
        if box is None:
            return
        x, y, z = self.axes(*box)
        p = np.stack(np.meshgrid(x, y, z, indexing="ij"), -1) - np.asarray(center)
        if rotation is not None:
            p = p @ np.asarray(rotation)  # world -> local
        inside = np.sum((p / semi) ** 2, -1) <= 1.0
        self.paint(box, inside, tissue, hu, texture)

    def box(self, center, half, tissue, hu, rotation=None, texture=None, shrink=0.0):
        half = np.asarray(half, np.float64) - shrink
        if np.any(half <= 0):
            return
        r = float(np.linalg.norm(half))
        bb = self.bbox(np.asarray(center) - r, np.asarray(center) + r)
        if bb is None:
            return
        x, y, z = self.axes(*bb)
        p = np.stack(np.meshgrid(x, y, z, indexing="ij"), -1) - np.asarray(center)
        if rotation is not None:
            p = p @ np.asarray(rotation)
        inside = np.all(np.abs(p) <= half, -1)
        self.paint(bb, inside, tissue, hu, texture)

    def tube(self, points, radius, tissue, hu, texture=None, shrink=0.0):
        """Capsules along a polyline; ``radius`` scalar or one per point (linearly varying)."""
        pts = np.asarray(points, np.float64)
        rad = np.broadcast_to(np.asarray(radius, np.float64), (len(pts),)) - shrink
        for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:], strict=True):
            if max(ra, rb) <= 0:
                continue
            r = max(ra, rb)
            box = self.bbox(np.minimum(a, b) - r, np.maximum(a, b) + r)
            if box is None:
                continue
            x, y, z = self.axes(*box)
            p = np.stack(np.meshgrid(x, y, z, indexing="ij"), -1) - a
            ab = b - a
            t = np.clip((p @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
            d = np.linalg.norm(p - t[..., None] * ab, axis=-1)
            inside = d <= ra + (rb - ra) * t
            self.paint(box, inside, tissue, hu, texture)

    def body_section(self, z_range, semi_fn, tissue, hu, center_xy=(0.0, 0.0), shrink=0.0, texture=None):
        """Elliptic cylinder along z whose semi-axes vary with z: semi_fn(z) -> (a, b)."""
        big = 400.0
        box = self.bbox(
            (center_xy[0] - big, center_xy[1] - big, z_range[0]),
            (center_xy[0] + big, center_xy[1] + big, z_range[1]),
        )
        if box is None:
            return
        x, y, z = self.axes(*box)
        a, b = semi_fn(z)
        a, b = np.maximum(a - shrink, 1e-3), np.maximum(b - shrink, 1e-3)
        u = (x[:, None, None] - center_xy[0]) / a[None, None, :]
        v = (y[None, :, None] - center_xy[1]) / b[None, None, :]
        self.paint(box, u**2 + v**2 <= 1.0, tissue, hu, texture)

    def bone(self, kind, *args, cortex=1.0, cortical_hu=1200.0, trabecular_hu=200.0, marrow=None, **kw):
        """A bone: cortical shell of thickness ``cortex`` (mm) around a textured trabecular core."""
        base = kw.pop("shrink", 0.0)
        getattr(self, kind)(
            *args, "cortical_bone", cortical_hu, texture=(0.8, 0.12 * cortical_hu), shrink=base, **kw
        )
        getattr(self, kind)(
            *args, "trabecular_bone", trabecular_hu, texture=(0.6, 60.0), shrink=base + cortex, **kw
        )
        if marrow is not None:  # yellow-marrow canal of a long-bone shaft
            thickness, marrow_hu = marrow
            getattr(self, kind)(
                *args, "marrow_fat", marrow_hu, texture=(1.0, 15.0), shrink=base + thickness, **kw
            )


# ----------------------------------------------------------------------------------------------
# Subjects: per-subject tissue HU and region anatomies (world mm, RAS+: +x patient right,
# +y anterior, +z superior; the body axis is z).


def _subject_hu(rng) -> dict:
    osteoporotic = rng.random() < 0.25
    contrast = rng.random() < 0.6
    return {
        "lung": rng.uniform(-900, -780),
        "fat": rng.uniform(-120, -70),
        "muscle": rng.uniform(30, 65),
        "organ": rng.uniform(40, 75),
        "blood": rng.uniform(30, 55),
        "contrast": rng.uniform(150, 500) if contrast else None,
        "bolus": bool(rng.random() < 0.04),
        "cortical": rng.uniform(700, 1800),
        "trabecular": rng.uniform(50, 120) if osteoporotic else rng.uniform(100, 350),
        "marrow": rng.uniform(-110, 0),
        "cartilage": rng.uniform(80, 250),
        "disc": rng.uniform(70, 120),
        "bowel": rng.uniform(0, 45),
        "metal": rng.uniform(6000, 12000),  # true attenuation far above the 12-bit range: clipped later
    }


def _rot(axis, angle_rad):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


def _blood(c: _Canvas, h, bolus_ok=False):
    if bolus_ok and h["bolus"]:
        return "contrast_blood", 3071.0
    if h["contrast"] is not None:
        return "contrast_blood", h["contrast"]
    return "blood", h["blood"]


def _body(c: _Canvas, h, rng, z_range, a0, b0, taper=0.0):
    fat = rng.uniform(3, 40)
    muscle = rng.uniform(6, 20)

    def semi(z):
        s = 1.0 + taper * (z - np.mean(z_range)) / 300.0 + 0.03 * np.sin(z / 57.0)
        return a0 * s, b0 * s

    c.body_section(z_range, semi, "fat", h["fat"], texture=(2.0, 8.0))
    c.body_section(z_range, semi, "muscle", h["muscle"], shrink=fat, texture=(1.5, 10.0))
    c.body_section(z_range, semi, "fat", h["fat"] + 10, shrink=fat + muscle, texture=(3.0, 12.0))
    return fat, muscle


def _vertebra(c, h, rng, z, y_body, r_body, height, lumbar, y_back):
    cort = rng.uniform(0.4, 1.4)
    c.bone(
        "tube",
        [(0, y_body, z - height / 2), (0, y_body, z + height / 2)],
        r_body,
        cortex=cort,
        cortical_hu=h["cortical"] * rng.uniform(0.7, 1.0),
        trabecular_hu=h["trabecular"],
    )
    y_canal = y_body - r_body - 9
    arch = rng.uniform(9, 12)
    # Pedicles, lamina ring, spinous and transverse processes.
    for s in (-1, 1):
        c.bone(
            "tube",
            [(s * 8, y_body - r_body + 3, z), (s * 9, y_canal - 4, z)],
            rng.uniform(3.5, 5),
            cortex=cort,
            cortical_hu=h["cortical"],
            trabecular_hu=h["trabecular"],
        )
        c.bone(
            "tube",
            [(s * 9, y_canal - 4, z), (0, y_canal - arch, z)],
            rng.uniform(3, 4.5),
            cortex=cort,
            cortical_hu=h["cortical"],
            trabecular_hu=h["trabecular"],
        )
        tp = rng.uniform(25, 45) if lumbar else rng.uniform(22, 32)
        c.bone(
            "tube",
            [(s * 9, y_canal - 4, z), (s * tp, y_canal - 8, z + 2)],
            rng.uniform(3, 5),
            cortex=cort,
            cortical_hu=h["cortical"],
            trabecular_hu=h["trabecular"],
        )
    # The spinous process points backwards and down but stays inside the back muscles (y_back).
    tip_y = max(y_canal - arch - rng.uniform(18, 32), min(y_back, y_canal - arch - 4))
    c.bone(
        "tube",
        [(0, y_canal - arch, z), (0, tip_y, z - rng.uniform(5, 20))],
        rng.uniform(3, 5),
        cortex=cort,
        cortical_hu=h["cortical"],
        trabecular_hu=h["trabecular"],
    )
    c.ellipsoid((0, y_canal, z), (8, 7, height), "csf", rng.uniform(0, 20))


def _spine(c, h, rng, z_range, y_body, lumbar, y_back):
    r_body = rng.uniform(19, 25) if lumbar else rng.uniform(13, 17)
    height = rng.uniform(24, 30) if lumbar else rng.uniform(17, 22)
    disc = rng.uniform(6, 11) if lumbar else rng.uniform(4, 7)
    z = z_range[0] + rng.uniform(0, height)
    levels = []
    while z < z_range[1]:
        c.tube(
            [(0, y_body, z - disc / 2), (0, y_body, z + disc / 2)],
            r_body - 0.5,
            "disc",
            h["disc"],
            texture=(1, 8),
        )
        zc = z + disc / 2 + height / 2
        _vertebra(c, h, rng, zc, y_body, r_body, height, lumbar, y_back)
        levels.append(zc)
        z += disc + height
    return levels, r_body


def _rib(c, h, rng, side, z0, a, b, y_spine, cartilage=True):
    """A rib: tube from the spine around the body wall, descending anteriorly, then cartilage."""
    angles = np.linspace(-np.pi / 2 + 0.25, rng.uniform(0.7, 1.2), 14)  # -pi/2: posterior
    drop = rng.uniform(25, 55)
    pts = [
        (side * a * np.cos(t), b * np.sin(t) + 0.15 * b, z0 - drop * (t - angles[0]) / np.ptp(angles))
        for t in angles
    ]
    pts[0] = (side * 22.0, y_spine - 5, z0)
    c.bone(
        "tube",
        pts,
        rng.uniform(4, 6),
        cortex=rng.uniform(0.6, 1.6),
        cortical_hu=h["cortical"],
        trabecular_hu=h["trabecular"],
    )
    if cartilage:
        end = np.asarray(pts[-1])
        sternum = np.array([side * 12.0, b * 0.95, end[2] + rng.uniform(-5, 25)])
        c.tube(
            [end, (end + sternum) / 2 + (0, 8, 0), sternum],
            rng.uniform(4, 6),
            "cartilage",
            h["cartilage"],
            texture=(1.0, 25),
        )
        if rng.random() < 0.3:  # calcified spots in costal cartilage (up to ~800 HU)
            spot = end + rng.uniform(0.2, 0.8) * (sternum - end)
            c.ellipsoid(spot, rng.uniform(1.5, 3.5, 3), "cartilage", rng.uniform(300, 800))


def _long_bone(c, h, rng, top, bottom, radius, cortex, head=None):
    c.bone(
        "tube",
        [top, bottom],
        radius,
        cortex=cortex,
        cortical_hu=h["cortical"] * rng.uniform(0.9, 1.1),
        trabecular_hu=h["trabecular"],
        marrow=(cortex + rng.uniform(0.5, 2.5), h["marrow"]),
    )
    if head is not None:
        center, r = head
        c.bone(
            "ellipsoid",
            center,
            (r, r, r * rng.uniform(0.9, 1.1)),
            cortex=rng.uniform(0.6, 1.5),
            cortical_hu=h["cortical"],
            trabecular_hu=h["trabecular"],
        )


def _lung_vessels(c, h, rng, root, direction, radius, depth):
    if depth == 0 or radius < 0.8:
        return
    length = rng.uniform(20, 45) * (radius / 4) ** 0.5
    end = np.asarray(root) + length * direction
    c.tube([root, end], [radius, radius * 0.85], "blood", h["blood"] + 5)
    for _ in range(2):
        d = direction + rng.normal(0, 0.5, 3)
        _lung_vessels(c, h, rng, end, d / np.linalg.norm(d), radius * rng.uniform(0.6, 0.8), depth - 1)


def _metal(c, h, rng, bones: list, levels=None, y_spine=None):
    kinds = (["screws", "plate", "kwire", "stem"] if bones else []) + (["rods"] if levels else [])
    kind = rng.choice(kinds)
    hu = h["metal"]
    if kind == "rods" and levels:
        for s in (-1, 1):
            c.tube([(s * 22, y_spine - 32, levels[0]), (s * 22, y_spine - 34, levels[-1])], 2.75, "metal", hu)
        for z in levels[: rng.integers(2, 5)]:
            for s in (-1, 1):
                c.tube(
                    [(s * 22, y_spine - 32, z), (s * 8, y_spine + 10, z)], rng.uniform(2.5, 3.5), "metal", hu
                )
        return kind
    top, bottom, radius = bones[rng.integers(len(bones))]
    top, bottom = np.asarray(top, float), np.asarray(bottom, float)
    axis = (bottom - top) / np.linalg.norm(bottom - top)
    normal = np.cross(axis, rng.normal(size=3))
    normal /= np.linalg.norm(normal)
    if kind == "stem":
        c.tube(
            [top, top + rng.uniform(0.3, 0.6) * (bottom - top)], radius * rng.uniform(0.4, 0.6), "metal", hu
        )
    elif kind == "kwire":
        p = top + rng.uniform(0.1, 0.9) * (bottom - top)
        d = normal + 0.5 * axis
        c.tube([p - 40 * d, p + 40 * d], rng.uniform(0.8, 1.25), "metal", hu)
    else:
        n_screws = int(rng.integers(2, 6))
        ts = np.sort(rng.uniform(0.1, 0.9, n_screws))
        for t in ts:
            p = top + t * (bottom - top)
            c.tube([p + (radius + 3) * normal, p - (radius + 4) * normal], rng.uniform(1.5, 3.5), "metal", hu)
        if kind == "plate":
            p0, p1 = top + ts[0] * (bottom - top), top + ts[-1] * (bottom - top)
            mid = (p0 + p1) / 2 + (radius + 2) * normal
            frame = np.stack([axis, normal, np.cross(axis, normal)], 1)
            half = (np.linalg.norm(p1 - p0) / 2 + 8, rng.uniform(1.5, 2.5), rng.uniform(5, 8))
            c.box(mid, half, "metal", hu, rotation=frame)
    return kind


def _inside_cavity(points, ai, bi, z_range, margin=0.75):
    """Pulls points inside the ellipse (ai, bi) * margin and the z range (bowel stays in the body)."""
    p = np.array(points, np.float64)
    r = np.sqrt((p[:, 0] / (margin * ai)) ** 2 + (p[:, 1] / (margin * bi)) ** 2)
    p[:, :2] /= np.maximum(r, 1.0)[:, None]
    p[:, 2] = np.clip(p[:, 2], z_range[0] + 20, z_range[1] - 20)
    return p


def _chest(c, h, rng, s):
    a, b = rng.uniform(140, 180) * s, rng.uniform(95, 125) * s
    zr = (-200.0, 200.0)
    fat, muscle = _body(c, h, rng, zr, a, b, taper=0.1)
    ai, bi = a - fat - muscle, b - fat - muscle
    y_spine = -bi + rng.uniform(20, 30)
    for side in (-1, 1):  # lungs (patient left = -x)
        c.ellipsoid(
            (side * ai * 0.47, -0.05 * bi, 30),
            (ai * 0.42, bi * 0.76, 150),
            "lung",
            h["lung"],
            texture=(1.5, 35),
        )
    heart_tissue, heart_hu = _blood(c, h)
    hc = np.array([-0.18 * ai, 0.25 * bi, -40.0])
    c.ellipsoid(hc, (ai * 0.38, bi * 0.45, 60), "muscle", h["muscle"] + 10, rotation=_rot((0, 0, 1), 0.5))
    c.ellipsoid(
        hc, (ai * 0.38, bi * 0.45, 60), heart_tissue, heart_hu, rotation=_rot((0, 0, 1), 0.5), shrink=8
    )
    tissue, hu = _blood(c, h, bolus_ok=True)
    arch = [
        (2, 0.1 * bi, 20),
        (0, 0.1 * bi, 70),
        (-15, -0.2 * bi, 85),
        (-20, y_spine + 25, 60),
        (-22, y_spine + 22, -200),
    ]
    c.tube(arch, rng.uniform(10, 15), tissue, hu if tissue != "contrast_blood" else h["contrast"] or hu)
    c.tube([(22, 0.2 * bi, 200), (22, 0.2 * bi, 0)], rng.uniform(8, 11), tissue, hu)  # SVC (bolus inflow)
    c.tube([(0, 0.05 * bi, 200), (0, 0.0, 80)], rng.uniform(7, 10), "muscle", h["muscle"])  # trachea wall
    c.tube([(0, 0.05 * bi, 200), (0, 0.0, 80)], 6.5, "airway", -1000.0)
    for side in (-1, 1):
        c.tube([(0, 0.0, 80), (side * 30, -0.05 * bi, 55)], 5.0, "airway", -1000.0)
        for _ in range(4):
            d = np.array([side * rng.uniform(0.3, 1), rng.uniform(-0.6, 0.6), rng.uniform(-1, 1)])
            _lung_vessels(
                c, h, rng, np.array([side * 35.0, 0.0, 50.0]), d / np.linalg.norm(d), rng.uniform(3, 5), 4
            )
    levels, _ = _spine(c, h, rng, zr, y_spine, lumbar=False, y_back=-b + fat + 4)
    for z0 in levels:
        for side in (-1, 1):
            _rib(c, h, rng, side, z0, ai * rng.uniform(0.9, 1.0), bi * rng.uniform(0.9, 1.0), y_spine)
    c.bone(
        "box",
        (0, b - fat - 5, 0),
        (rng.uniform(10, 15), 6, 100),
        cortex=rng.uniform(0.8, 1.5),
        cortical_hu=h["cortical"],
        trabecular_hu=h["trabecular"],
    )
    bones = []
    for side in (-1, 1):  # scapulae, clavicles, humeri
        frame = _rot((0, 0, 1), side * rng.uniform(0.3, 0.6))
        c.bone(
            "box",
            (side * 0.7 * a, -0.7 * b, 120),
            (40, 4, 60),
            rotation=frame,
            cortex=1.0,
            cortical_hu=h["cortical"],
            trabecular_hu=h["trabecular"],
        )
        c.bone(
            "tube",
            [(side * 15, 0.8 * b, 190), (side * 0.8 * a, 0.3 * b, 200)],
            rng.uniform(5, 8),
            cortex=1.5,
            cortical_hu=h["cortical"],
            trabecular_hu=h["trabecular"],
        )
        top, bottom = (side * (a + 20), 0.0, 170), (side * (a + 40), 0.0, -120)
        arm = rng.uniform(35, 50)  # the upper arm: fat and muscle around the humerus
        c.tube([np.add(top, (0, 0, 30)), bottom], arm, "fat", h["fat"], texture=(2.0, 8.0))
        c.tube(
            [np.add(top, (0, 0, 30)), bottom],
            arm - rng.uniform(3, 15),
            "muscle",
            h["muscle"],
            texture=(1.5, 10.0),
        )
        _long_bone(
            c, h, rng, top, bottom, rng.uniform(10, 13), rng.uniform(2.5, 5), head=(top, rng.uniform(20, 25))
        )
        bones.append((top, bottom, 12.0))
    return levels, y_spine, bones


def _abdomen(c, h, rng, s):
    a, b = rng.uniform(130, 180) * s, rng.uniform(95, 135) * s
    zr = (-200.0, 200.0)
    fat, muscle = _body(c, h, rng, zr, a, b)
    ai, bi = a - fat - muscle, b - fat - muscle
    y_spine = -bi + rng.uniform(20, 35)
    ctis, chu = _blood(c, h)
    c.ellipsoid(
        (0.45 * ai, 0.1 * bi, 110), (ai * 0.55, bi * 0.75, 90), "organ", h["organ"], texture=(2, 8)
    )  # liver
    c.ellipsoid((-0.55 * ai, -0.2 * bi, 120), (45, 35, 55), "organ", h["organ"] - 5, texture=(2, 8))  # spleen
    for side in (-1, 1):  # kidneys with an enhanced cortex
        kc = (side * 60, y_spine + 10, 30 + side * 10)
        c.ellipsoid(kc, (28, 22, 55), "organ", chu if ctis == "contrast_blood" else h["organ"] - 20)
        c.ellipsoid(kc, (28, 22, 55), "organ", h["organ"] - 25, shrink=7)
        c.ellipsoid((side * 45, y_spine + 10, -60), (18, 20, 120), "muscle", h["muscle"])  # psoas
    c.ellipsoid(
        (-0.35 * ai, 0.35 * bi, 140), (45, 35, 50), "bowel_content", h["bowel"], texture=(2, 15)
    )  # stomach
    c.ellipsoid((-0.35 * ai, 0.45 * bi, 170), (35, 20, 18), "bowel_gas", -1000.0)
    for _ in range(rng.integers(8, 20)):  # bowel loops with gas
        p0 = np.array([rng.uniform(-0.7, 0.7) * ai, rng.uniform(-0.1, 0.8) * bi, rng.uniform(-190, 80)])
        pts = _inside_cavity(
            np.cumsum([p0] + [rng.normal(0, 15, 3) for _ in range(4)], 0), ai, bi, (-190, 190)
        )
        c.tube(pts, rng.uniform(10, 20), "bowel_content", h["bowel"], texture=(2, 20))
        if rng.random() < 0.5:
            c.tube(pts[:2], rng.uniform(4, 14), "bowel_gas", -1000.0)
    c.tube([(-15, y_spine + 30, 200), (-15, y_spine + 28, -200)], rng.uniform(9, 13), ctis, chu)  # aorta
    c.tube(
        [(20, y_spine + 30, 200), (20, y_spine + 30, -200)], rng.uniform(9, 14), "blood", h["blood"]
    )  # IVC
    levels, _ = _spine(c, h, rng, zr, y_spine, lumbar=True, y_back=-b + fat + 4)
    for z0 in (160.0, 190.0):
        for side in (-1, 1):
            _rib(c, h, rng, side, z0, ai * 0.95, bi * 0.9, y_spine, cartilage=rng.random() < 0.5)
    return levels, y_spine, []


def _pelvis(c, h, rng, s):
    a, b = rng.uniform(150, 200) * s, rng.uniform(100, 130) * s
    zr = (-250.0, 150.0)
    fat, muscle = _body(c, h, rng, zr, a, b)
    ai, bi = a - fat - muscle, b - fat - muscle
    y_spine = -bi + rng.uniform(25, 40)
    cort, trab = h["cortical"], h["trabecular"]
    femora = []
    for side in (-1, 1):
        frame = _rot((0, 1, 0), side * 0.35) @ _rot((0, 0, 1), side * 0.6)
        c.bone(
            "ellipsoid",
            (side * 0.55 * ai, y_spine + 25, 60),
            (60, 12, 55),
            rotation=frame,
            cortex=rng.uniform(0.8, 2.0),
            cortical_hu=cort,
            trabecular_hu=trab,
        )  # iliac wing
        head = np.array([side * rng.uniform(80, 95) * s, 0.0, -40.0])
        c.bone(
            "ellipsoid",
            head + (side * -8, 5, 5),
            (28, 25, 30),
            cortex=1.5,
            cortical_hu=cort,
            trabecular_hu=trab,
        )
        c.ellipsoid(head, (26, 26, 26), "cartilage", h["cartilage"] - 40)  # joint space / cartilage
        r_head = rng.uniform(21, 26)
        troch = head + (side * 45, -10, -25)
        c.bone(
            "ellipsoid",
            head,
            (r_head,) * 3,
            cortex=rng.uniform(0.8, 1.6),
            cortical_hu=cort,
            trabecular_hu=trab,
        )
        c.bone(
            "tube",
            [head, troch],
            rng.uniform(14, 17),
            cortex=rng.uniform(1.5, 3.0),
            cortical_hu=cort,
            trabecular_hu=trab,
        )
        c.bone("ellipsoid", troch, (15, 15, 20), cortex=1.2, cortical_hu=cort, trabecular_hu=trab)
        shaft_end = troch + (side * -15, 5, -260)
        r_shaft = rng.uniform(12, 15)
        _long_bone(c, h, rng, troch, shaft_end, r_shaft, rng.uniform(3, 6))
        femora.append((troch, shaft_end, r_shaft))
        c.bone(
            "tube",
            [head + (side * -10, 25, -20), (side * 15, 0.35 * bi, -45)],
            rng.uniform(7, 10),
            cortex=1.2,
            cortical_hu=cort,
            trabecular_hu=trab,
        )  # pubic ramus
        c.bone(
            "tube",
            [head + (side * -5, -20, -30), (side * 35, -0.1 * bi, -75)],
            rng.uniform(9, 13),
            cortex=1.2,
            cortical_hu=cort,
            trabecular_hu=trab,
        )  # ischium
    c.bone(
        "box",
        (0, y_spine + 10, 30),
        (45, 14, 55),
        rotation=_rot((1, 0, 0), -0.5),
        cortex=1.2,
        cortical_hu=cort,
        trabecular_hu=trab,
    )  # sacrum
    btis, bhu = (
        ("contrast_blood", rng.uniform(300, 900)) if rng.random() < 0.2 else ("organ", rng.uniform(0, 20))
    )
    c.ellipsoid(
        (0, 0.5 * bi, -30), (45, 35, 40) * np.array([s, s, rng.uniform(0.5, 1.2)]), btis, bhu
    )  # bladder
    for _ in range(rng.integers(4, 12)):
        p0 = np.array([rng.uniform(-0.6, 0.6) * ai, rng.uniform(-0.3, 0.5) * bi, rng.uniform(30, 140)])
        pts = _inside_cavity(
            np.cumsum([p0] + [rng.normal(0, 15, 3) for _ in range(3)], 0), ai, bi, (-240, 140)
        )
        c.tube(pts, rng.uniform(10, 18), "bowel_content", h["bowel"], texture=(2, 20))
        if rng.random() < 0.6:
            c.tube(pts[:2], rng.uniform(4, 12), "bowel_gas", -1000.0)
    levels, _ = _spine(c, h, rng, (80.0, 150.0), y_spine, lumbar=True, y_back=-b + fat + 4)
    return levels, y_spine, femora


def _limb(c, h, rng, s):
    r = rng.uniform(45, 90) * s
    zr = (-250.0, 250.0)
    _body(c, h, rng, zr, r * rng.uniform(0.9, 1.1), r, taper=0.3)
    joint = rng.uniform(-60, 60)
    r_bone = rng.uniform(10, 16) * s
    cortex = rng.uniform(2.5, 7.0)
    bones = []
    _long_bone(c, h, rng, (0, 0, 250), (0, 0, joint + 40), r_bone, cortex)
    c.bone(
        "ellipsoid",
        (0, 0, joint + 25),
        (2.6 * r_bone, 2.2 * r_bone, 30),
        cortex=rng.uniform(0.6, 1.5),
        cortical_hu=h["cortical"],
        trabecular_hu=h["trabecular"],
    )
    c.ellipsoid((0, 0, joint), (2.4 * r_bone, 2.0 * r_bone, 4.0), "cartilage", h["cartilage"] - 60)
    c.bone(
        "ellipsoid",
        (0, 0, joint - 25),
        (2.4 * r_bone, 2.0 * r_bone, 28),
        cortex=rng.uniform(0.6, 1.5),
        cortical_hu=h["cortical"],
        trabecular_hu=h["trabecular"],
    )
    _long_bone(c, h, rng, (0, 0, joint - 40), (0, 0, -250), r_bone * 0.9, cortex)
    bones += [((0, 0, 240), (0, 0, joint + 40), r_bone), ((0, 0, joint - 40), (0, 0, -240), r_bone)]
    if rng.random() < 0.6:  # fibula / ulna
        off = (1.8 * r_bone + 5, -5, 0)
        _long_bone(
            c, h, rng, np.add((0, 0, joint - 30), off), np.add((0, 0, -250), off), r_bone * 0.45, cortex * 0.5
        )
    if rng.random() < 0.5:  # patella
        c.bone(
            "ellipsoid",
            (0, 2.4 * r_bone + 8, joint + 15),
            (20, 9, 22),
            cortex=1.0,
            cortical_hu=h["cortical"],
            trabecular_hu=h["trabecular"],
        )
    return None, None, bones


_BUILDERS = {"chest": _chest, "abdomen": _abdomen, "pelvis": _pelvis, "limb": _limb}


# ----------------------------------------------------------------------------------------------
# CT image formation on the fine grid (HU only; the truth was fixed before).


def nps_noise(rng, shape, spacing, sigma_hu, peak, slice_mm):
    """CT noise [I, J, K] of standard deviation ``sigma_hu``: white noise filtered in-plane by the
    square root of an FBP-like noise power spectrum (peak at ``peak`` /mm), correlated along z over
    the slice thickness."""
    white = rng.standard_normal(shape).astype(np.float32)
    fx = np.fft.fftfreq(shape[0], spacing[0])[:, None]
    fy = np.fft.rfftfreq(shape[1], spacing[1])[None, :]
    f = np.sqrt(fx**2 + fy**2)
    # |f| ramp times a Gaussian apodisation: NPS peaks at f = peak, the FBP shape (Kijewski & Judy).
    amplitude = np.sqrt(f * np.exp(-(f**2) / (2 * peak**2))).astype(np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white, axes=(0, 1)) * amplitude[..., None], s=shape[:2], axes=(0, 1))
    # Noise is correlated over the reconstructed slice thickness along z.
    noise = ndimage.gaussian_filter1d(noise, max(slice_mm / 2.355 / spacing[2], 1e-3), axis=2)
    return (noise * (sigma_hu / max(float(noise.std()), 1e-6))).astype(np.float32)


def metal_streaks(rng, hu, metal, spacing, amplitude):
    """Adds bright and dark streaks (in place, per slice) radiating from the ``metal`` mask [I, J, K]."""
    if not metal.any():
        return hu
    x = np.arange(hu.shape[0])[:, None] * spacing[0]
    y = np.arange(hu.shape[1])[None, :] * spacing[1]
    angles = rng.uniform(0, np.pi, int(rng.integers(4, 10)))
    signs = rng.choice([-1.0, 1.0], len(angles)) * rng.uniform(0.4, 1.0, len(angles))
    for k in np.nonzero(metal.any(axis=(0, 1)))[0]:
        ij = np.argwhere(metal[:, :, k])
        cx, cy = ij.mean(0) * spacing[:2]
        weight = min(len(ij) * spacing[0] * spacing[1] / 50.0, 1.0)  # bigger metal, stronger streaks
        for theta, sgn in zip(angles, signs, strict=True):
            u = np.cos(theta), np.sin(theta)
            along = (x - cx) * u[0] + (y - cy) * u[1]
            across = -(x - cx) * u[1] + (y - cy) * u[0]
            hu[:, :, k] += (
                sgn * amplitude * weight * np.exp(-((across / 1.5) ** 2)) * np.exp(-np.abs(along) / 60.0)
            )
    return hu


def _degrade(rng, c: _Canvas, params: dict, body_center, body_semi):
    hu = c.hu
    sigma = [
        params["inplane_sigma_mm"] / c.spacing[0],
        params["inplane_sigma_mm"] / c.spacing[1],
        params["slice_mm"] / 2.355 / c.spacing[2],
    ]
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    x = c.origin[0] + np.arange(c.shape[0])[:, None] * c.spacing[0] - body_center[0]
    y = c.origin[1] + np.arange(c.shape[1])[None, :] * c.spacing[1] - body_center[1]
    rho2 = (x / body_semi[0]) ** 2 + (y / body_semi[1]) ** 2
    hu -= (params["cupping_hu"] * np.clip(1.0 - rho2, 0.0, 1.0))[..., None].astype(np.float32)
    hu = metal_streaks(rng, hu, c.tissue == _T["metal"], c.spacing, params["streak_hu"])
    hu += nps_noise(
        rng, c.shape, c.spacing, params["noise_hu"], params["nps_peak_per_mm"], params["slice_mm"]
    )
    return params["slope"] * hu + params["offset_hu"]


# ----------------------------------------------------------------------------------------------
# Public API


def _block_mean(a: np.ndarray, factor) -> np.ndarray:
    s = a.shape
    f0, f1, f2 = factor
    return a.reshape(s[0] // f0, f0, s[1] // f1, f1, s[2] // f2, f2).mean(axis=(1, 3, 5))


def _check(shape, spacing_mm, region, fine_mm):
    if region is not None and region not in REGIONS:
        raise JaxdrrError(f"unknown region {region!r}; choose one of {REGIONS}")
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise JaxdrrError(f"shape must be 3 positive integers, got {shape!r}")
    if len(spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_mm):
        raise JaxdrrError(f"spacing_mm must be 3 positive numbers, got {spacing_mm!r}")
    if fine_mm is not None and not (np.isfinite(fine_mm) and fine_mm > 0):
        raise JaxdrrError(f"fine_mm must be a positive number, got {fine_mm!r}")


def synthetic_ct(
    seed,
    *,
    region: str | None = None,
    shape: Sequence[int] = (64, 64, 64),
    spacing_mm: Sequence[float] = (2.0, 2.0, 2.0),
    center_mm: Sequence[float] | None = None,
    fine_mm: float | None = None,
    scanner: ScannerConfig | None = None,
) -> SyntheticCT:
    """A random CT of a body region with its exact material fractions.

    Args:
      seed: int or ``np.random.Generator``; the same seed gives the same CT.
      region: one of :data:`REGIONS`, or None for a random one. "spine" is a chest or abdomen
        with the field of view centred near the spine.
      shape: output grid [I, J, K] (axes: patient right, anterior, superior).
      spacing_mm: output voxel spacing.
      center_mm: world position (mm) of the grid centre; None picks a random point of interest
        (a bone, an organ, the body outline) of the region.
      fine_mm: target spacing of the painting grid: each output voxel is split into
        ceil(spacing / fine_mm) fine voxels per axis and averages them (partial volume).
        Default: half the output spacing, at most 1 mm.
      scanner: image formation (:class:`ScannerConfig`); default: everything sampled.

    Returns:
      A :class:`SyntheticCT`.
    """
    _check(shape, spacing_mm, region, fine_mm)
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing_mm)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    scanner = scanner or ScannerConfig()
    region = region or str(rng.choice(REGIONS))
    anatomy = region if region != "spine" else str(rng.choice(["chest", "abdomen"]))
    # Integer subdivision of each output voxel, so that the fine spacing is at most the target.
    factor = tuple(max(1, int(np.ceil(s / (fine_mm or min(s / 2, 1.0)) - 1e-9))) for s in spacing)
    fine_spacing = tuple(s / f for s, f in zip(spacing, factor, strict=True))
    fine_shape = tuple(n * f for n, f in zip(shape, factor, strict=True))
    scale = float(rng.uniform(0.8, 1.25))
    h = _subject_hu(rng)
    # Separate streams for textures and the field of view: the subject's anatomy does not depend on
    # the grid size or on whether a centre was given.
    texture_rng = np.random.default_rng(rng.integers(2**63))
    view_rng = np.random.default_rng(rng.integers(2**63))
    if center_mm is None:
        center = _interest_point(view_rng, anatomy, region, scale)
    else:
        center = np.asarray(center_mm, np.float64)
    canvas = _Canvas(fine_shape, fine_spacing, center, rng, texture_rng)
    levels, y_spine, bones = _BUILDERS[anatomy](canvas, h, rng, scale)
    metal = None
    if rng.random() < 0.25 and (bones or levels):
        metal = str(_metal(canvas, h, rng, bones, levels, y_spine))
    params = scanner.sample(rng) if scanner.enabled else None
    one_hot_class = _CLASS_OF_TISSUE[canvas.tissue]
    fractions = np.stack([_block_mean((one_hot_class == k).astype(np.float32), factor) for k in range(4)])
    # Majority tissue per output voxel (mode over the block, via counts of the few tissues present).
    tissue = _block_mode(canvas.tissue, factor)
    if params is not None:
        semi = (scale * 160.0, scale * 115.0) if anatomy != "limb" else (scale * 70.0, scale * 70.0)
        hu_fine = _degrade(rng, canvas, params, (0.0, 0.0), semi)
    else:
        hu_fine = canvas.hu
    hu = np.clip(_block_mean(hu_fine, factor), *HU_CLIP).astype(np.float32)
    affine = centered_affine(shape, spacing)
    affine[:3, 3] += center
    info = {
        "region": region,
        "anatomy": anatomy,
        "scale": scale,
        "center_mm": [float(v) for v in center],
        "metal": metal,
        "subject_hu": {
            k: (bool(v) if isinstance(v, (bool, np.bool_)) else float(v) if v is not None else None)
            for k, v in h.items()
        },
        "scanner": params,
        "fine_mm": list(fine_spacing),
        "seed": None if isinstance(seed, np.random.Generator) else int(seed),
    }
    return SyntheticCT(hu=hu, fractions=fractions.astype(np.float32), tissue=tissue, affine=affine, info=info)


def _block_mode(tissue: np.ndarray, factor) -> np.ndarray:
    if factor == (1, 1, 1):
        return tissue.copy()
    s = tissue.shape
    blocks = tissue.reshape(
        s[0] // factor[0], factor[0], s[1] // factor[1], factor[1], s[2] // factor[2], factor[2]
    )
    blocks = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(
        s[0] // factor[0], s[1] // factor[1], s[2] // factor[2], -1
    )
    counts = np.stack([(blocks == t).sum(-1) for t in np.unique(tissue)], -1)
    return np.unique(tissue)[np.argmax(counts, -1)].astype(np.uint8)


def _interest_point(rng, anatomy, region, scale):
    if region == "spine":  # the vertebral bodies sit about 55 mm x scale behind the centre
        return np.array([rng.normal(0, 12), -55.0 * scale + rng.normal(0, 12), rng.uniform(-150, 150)])
    u = rng.random()
    z = rng.uniform(-150, 150)
    if anatomy == "limb":
        return np.array([rng.normal(0, 25), rng.normal(0, 25), z])
    if u < 0.15:  # the body outline
        t = rng.uniform(0, 2 * np.pi)
        return np.array([165 * scale * np.cos(t), 115 * scale * np.sin(t), z])
    if u < 0.4 and anatomy == "pelvis":
        return np.array([rng.choice([-1, 1]) * 90 * scale, 0.0, rng.uniform(-120, 20)])
    return np.array([rng.uniform(-120, 120) * scale, rng.uniform(-90, 80) * scale, z])


def synthetic_volume(seed, **kwargs):
    """:func:`synthetic_ct` as a :class:`jaxdrr.Volume` of HU."""
    from jaxdrr.volume import Volume

    ct = synthetic_ct(seed, **kwargs)
    return Volume.create(ct.hu, ct.affine)


def demo_ct(
    seed: int = 0,
    *,
    region: str = "pelvis",
    shape: Sequence[int] = (256, 256, 200),
    spacing_mm: Sequence[float] = (1.4, 1.4, 2.0),
) -> SyntheticCT:
    """A whole-body-width CT of one region (the field of view centred on the body), e.g. for demos."""
    rng = np.random.default_rng(seed)
    return synthetic_ct(rng, region=region, shape=shape, spacing_mm=spacing_mm, center_mm=(0.0, 0.0, 0.0))
