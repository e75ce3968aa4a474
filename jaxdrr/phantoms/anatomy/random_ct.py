"""Random, exactly labelled CTs of the anatomical phantom: training data for material decomposition.

The abstraction: a **random scan of a random patient**. The adult anatomy of
:mod:`jaxdrr.phantoms.anatomy` (vertebrae with pedicles and processes, hip bones, sacrum, femurs,
twelve pairs of ribs, sternum, clavicles, scapulae, humeri, the knee) is painted on a
:class:`LabelledScene`: a scene whose grid is the *scanner's* grid and whose painting also composites
the **material fractions** (air / soft tissue / bone / metal) with the same anti-aliased coverage as
the HU. A random :class:`Pose` places the subject in the scanner (rotation, anisotropic scale, shift,
a smooth deformation), a random tissue dict changes everything the network must ignore (SynthSeg
style: Billot et al., MedIA 2023), random implants, contrast and a patient table are added, and a
random CT image formation degrades the HU (:class:`RandomScan`). The labels are fixed before the
degradation:

* **bone** is the whole bone: cortex, trabecular struts and marrow, whether red (~+50 HU), fatty
  (~-100 HU), osteoporotic (trabecular mean ~50 HU) or dense (~400 HU);
* **soft tissue**: fat, muscle, organs, blood with or without iodine (150-500 HU), undiluted
  contrast boluses (up to 3071 HU), excreted contrast in the bladder, cartilage, discs, the table shell;
* **air**: outside air, lung, airways, bowel gas, foam, everything outside the reconstruction circle;
* **metal**: implants (pedicle screws and rods, hip stems, nails, plates, wires, clips).

A painted value decides air vs soft tissue (below :data:`AIR_BELOW_HU` is air, so aerated lung is
air and a stool/gas mixture is split where it crosses -500 HU); bones and metal are labelled by the
painter that draws them. Everything is numpy/scipy and deterministic given the seed; a 64^3 CT at
2 mm (painted at 1 mm) takes about a second.

:func:`random_anatomical_ct` is the entry point. The phantom of ``jaxdrr.phantom(kind=...)`` is
unchanged by this module (it paints on a plain :class:`~jaxdrr.phantoms.anatomy.scene.Scene`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxdrr.errors import JaxdrrError
from jaxdrr.phantoms.anatomy.ct import paint_trunk, region_center
from jaxdrr.phantoms.anatomy.knee import paint_knee
from jaxdrr.phantoms.anatomy.scene import Scene
from jaxdrr.phantoms.anatomy.shapes import capsule, ellipsoid, smooth_tube, tube
from jaxdrr.phantoms.anatomy.spine import spine_levels, spine_y
from jaxdrr.phantoms.grid import centered_affine
from jaxdrr.phantoms.synthetic import MATERIAL_CLASSES, metal_streaks, nps_noise

AIR_BELOW_HU = -500.0  # a painted (pre-degradation) value below this is air, above it soft tissue
HU_CLIP = (-1024.0, 3071.0)  # 12-bit CT range
PADDING_HU = (-1024.0, -2048.0, -3024.0, -1000.0)  # values scanners write outside the circle
ANATOMY_REGIONS = ("pelvis", "abdomen", "chest", "limb")
_AIR, _SOFT, _BONE, _METAL = (MATERIAL_CLASSES.index(n) for n in ("air", "soft_tissue", "bone", "metal"))


# ----------------------------------------------------------------------------------------------
# The labelled, posed scene


@dataclasses.dataclass(frozen=True)
class Pose:
    """Where the subject lies in the scanner: subject = center + matrix @ scanner + displacement.

    Attributes:
      center: subject-frame point (mm) at the scanner origin (the isocentre).
      matrix: 3x3 scanner -> subject linear map (rotation and inverse scale), row-major tuples.
      displacement_mm: amplitude (mm, standard deviation) of the smooth random deformation; 0: none.
      displacement_scale_mm: spacing of its random control lattice (mm).
      seed: stream of the deformation's control values.
    """

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    matrix: tuple[tuple[float, ...], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    displacement_mm: float = 0.0
    displacement_scale_mm: float = 60.0
    seed: int = 0


def _interp_matrix(n_fine, n_coarse, pos):
    """[n_fine, n_coarse] linear-interpolation weights from fractional coarse positions ``pos``."""
    pos = np.clip(pos, 0.0, n_coarse - 1.0)
    i0 = np.minimum(np.floor(pos).astype(int), n_coarse - 2) if n_coarse > 1 else np.zeros(n_fine, int)
    w = np.zeros((n_fine, n_coarse), np.float32)
    if n_coarse == 1:
        w[:, 0] = 1.0
        return w
    t = (pos - i0).astype(np.float32)
    w[np.arange(n_fine), i0] = 1.0 - t
    w[np.arange(n_fine), i0 + 1] = t
    return w


def smooth_displacement(axes, pose: Pose) -> list[np.ndarray] | None:
    """A smooth random displacement (3 arrays, mm) on the grid of 1D scanner ``axes``.

    Gaussian control values on a lattice of ``pose.displacement_scale_mm`` in the scanner frame
    (anchored at the origin, so overlapping grids of one pose see the same field), interpolated
    linearly. Its gradient is about ``2 * amplitude / scale``, small enough to keep the warp one-to-one.
    """
    if pose.displacement_mm <= 0:
        return None
    step = float(pose.displacement_scale_mm)
    lo = [int(np.floor(a[0] / step)) - 1 for a in axes]
    hi = [int(np.ceil(a[-1] / step)) + 1 for a in axes]
    # One random value per lattice node, keyed by its integer coordinates: independent of the grid.
    lattice = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
    shape = tuple(len(x) for x in lattice)
    base = np.random.default_rng([pose.seed, 77]).standard_normal((3, 64, 64, 64)).astype(np.float32)
    idx = np.ix_(*[(x % 64) for x in lattice])
    coarse = [pose.displacement_mm * base[d][idx] for d in range(3)]
    mats = [_interp_matrix(len(a), n, a / step - l0) for a, n, l0 in zip(axes, shape, lo)]
    out = []
    for c in coarse:
        v = np.tensordot(mats[0], c, axes=(1, 0))
        v = np.tensordot(v, mats[1], axes=(1, 1)).transpose(0, 2, 1)
        v = np.tensordot(v, mats[2], axes=(2, 1))
        out.append(v.astype(np.float32))
    return out


class LabelledScene(Scene):
    """A :class:`Scene` on a scanner grid that also composites material fractions.

    The grid lives in the scanner frame; :meth:`coords` returns *subject-frame* coordinates of its
    cells (through the :class:`Pose`), so every painter of the anatomy works unchanged. ``fractions``
    [4, I, J, K] (order :data:`jaxdrr.phantoms.synthetic.MATERIAL_CLASSES`, air at first) is
    composited like the HU: ``fractions += alpha * (target - fractions)``, with ``alpha`` the same
    coverage that paints the HU, so fractions sum to one and follow every overpaint.
    """

    def __init__(self, shape, spacing, origin, rng, pose: Pose = Pose()):
        super().__init__(shape, spacing, origin, rng)
        self.pose = pose
        self.matrix = np.asarray(pose.matrix, np.float64)
        self.center = np.asarray(pose.center, np.float64)
        self.inverse = np.linalg.inv(self.matrix)
        gx, gy, gz = (a.astype(np.float64) for a in self.axes)
        disp = smooth_displacement([gx, gy, gz], pose)
        m = self.matrix
        self.subject_coords = []
        for d in range(3):
            c = (
                self.center[d]
                + m[d, 0] * gx[:, None, None]
                + m[d, 1] * gy[None, :, None]
                + m[d, 2] * gz[None, None, :]
            )
            c = np.broadcast_to(c, self.shape).astype(np.float32)
            if disp is not None:
                c = c + disp[d]
            self.subject_coords.append(c)
        self.margin = 0.0 if disp is None else float(max(np.abs(v).max() for v in disp)) + 1.0
        # Subject millimetres per voxel: the coverage ramp of anti-aliasing is one voxel wide.
        self.h = float(np.mean(self.spacing)) * abs(float(np.linalg.det(m))) ** (1.0 / 3.0)
        self.fractions = np.zeros((len(MATERIAL_CLASSES), *self.shape), np.float32)
        self.fractions[_AIR] = 1.0

    def coords(self, i0, i1):
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        return tuple(c[sl] for c in self.subject_coords)

    def box(self, lo, hi):
        """Index box of the grid cells whose subject coordinates may fall in the subject box [lo, hi]."""
        lo = np.asarray(lo, np.float64) - self.margin
        hi = np.asarray(hi, np.float64) + self.margin
        corners = np.array(
            [(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        scanner = (corners - self.center) @ self.inverse.T
        return super().box(scanner.min(0), scanner.max(0))

    def composite(self, sl, alpha, target) -> None:
        """fractions[:, sl] += alpha * (target - fractions[:, sl]); target: 4 scalars or arrays."""
        for k in range(len(MATERIAL_CLASSES)):
            view = self.fractions[k][sl]
            view += alpha * (target[k] - view)

    def fill(self, f, value, where=None, texture=None, material: str | None = None):
        """:meth:`Scene.fill`, labelled: ``material`` by name, or air/soft tissue from the value."""
        if f is None:
            return
        sl = f.slices
        if callable(value):
            value = value(*self.coords(f.i0, f.i1))
        alpha = self.cover(f.sd)
        if where is not None:
            alpha = alpha * where(self.hu[sl])
        if material is None:
            air = (np.asarray(value, np.float32) < AIR_BELOW_HU).astype(np.float32)
            target = (air, 1.0 - air, 0.0, 0.0)
        else:
            target = tuple(float(n == material) for n in MATERIAL_CLASSES)
        super().fill(f, value, where=where, texture=texture)
        self.composite(sl, alpha, target)

    def bone(self, f, cortex=1.2, cortical=1550.0, trabecular=(0.0, 700.0), marrow=None, level=0.0):
        """:meth:`Scene.bone`, labelled bone over the whole bone (cortex, struts and marrow)."""
        if f is None:
            return
        super().bone(f, cortex, cortical, trabecular, marrow, level)
        self.composite(f.slices, self.cover(f.sd), tuple(float(i == _BONE) for i in range(4)))


# ----------------------------------------------------------------------------------------------
# What the network must ignore: tissue values, contrast, implants


@dataclasses.dataclass(frozen=True)
class AnatomyVariation:
    """Probabilities and ranges of the random subject (what varies between training CTs).

    Attributes:
      scale: range of the global size factor; each axis gets another +-``axis_scale``.
      rotation_deg: maximum rotation about (x, y, z) (uniform in +-).
      displacement_mm: range of the deformation amplitude.
      trabecular_hu: range of the mean HU of trabecular bone (osteoporotic .. dense).
      marrow_hu: range of marrow HU (fatty .. red).
      p_contrast: probability of iodinated blood (150-500 HU).
      p_bolus: probability of an undiluted bolus (1500-3071+ HU) in the superior vena cava.
      p_urine_contrast: probability of excreted contrast in the bladder (200-1500 HU).
      p_metal: probability of implants.
      p_table: probability of a patient table.
      implants: the implant kinds to choose from (None: every kind that fits the region; see
        :data:`IMPLANTS`).
    """

    scale: tuple[float, float] = (0.82, 1.2)
    axis_scale: float = 0.08
    rotation_deg: tuple[float, float, float] = (8.0, 6.0, 12.0)
    displacement_mm: tuple[float, float] = (0.0, 6.0)
    trabecular_hu: tuple[float, float] = (40.0, 420.0)
    marrow_hu: tuple[float, float] = (-110.0, 60.0)
    p_contrast: float = 0.5
    p_bolus: float = 0.08
    p_urine_contrast: float = 0.1
    p_metal: float = 0.3
    p_table: float = 0.6
    implants: tuple[str, ...] | None = None


def random_tissues(rng, variation: AnatomyVariation) -> dict:
    """A subject's tissue values: every key of :func:`~jaxdrr.phantoms.anatomy.scene.subject_tissues`
    drawn from wide ranges, plus the contrast, bolus and implant choices.

    Trabecular bone is struts of ``struts`` HU in marrow of ``red_marrow`` HU (the name the painters
    use, whatever the marrow's colour); struts fill about a third of the core
    (:meth:`Scene.bone`: E[exp(-n^2 / 0.25)] = 1/3 for unit normal n), so the struts' HU is set for
    the sampled trabecular mean.
    """
    marrow = float(rng.uniform(*variation.marrow_hu))
    trabecular = float(rng.uniform(*variation.trabecular_hu))
    struts = max(marrow + 3.0 * (trabecular - marrow), marrow + 60.0)
    contrast = bool(rng.random() < variation.p_contrast)
    h = {
        "fat": float(rng.uniform(-130, -60)),
        "visceral_fat": float(rng.uniform(-120, -50)),
        "muscle": float(rng.uniform(20, 70)),
        "organ": float(rng.uniform(30, 90 if contrast else 70)),
        "blood": float(rng.uniform(150, 500)) if contrast else float(rng.uniform(30, 60)),
        "urine": float(rng.uniform(200, 1500))
        if rng.random() < variation.p_urine_contrast
        else float(rng.uniform(-5, 25)),
        "stool": float(rng.uniform(-30, 60)),
        "lung": float(rng.uniform(-950, -700)),
        "cortical": float(rng.uniform(700, 1800)),
        "struts": struts,
        "red_marrow": marrow,
        "disc": float(rng.uniform(60, 130)),
        "cartilage": float(rng.uniform(80, 250)),
        "fat_sc": float(rng.uniform(4, 40)),
        "contrast": contrast,
        "bolus": bool(rng.random() < variation.p_bolus),
        "metal": bool(rng.random() < variation.p_metal),
        "trabecular_mean": trabecular,
    }
    return h


def _paint_bolus(sc: LabelledScene, rng):
    """Undiluted contrast in the superior vena cava and a brachiocephalic vein (soft tissue)."""
    value = float(rng.uniform(1500, 4000))  # above 3071 it saturates: the clinical case
    r = float(rng.uniform(5, 9))
    side = float(rng.choice([-1.0, 1.0]))
    prims = tube([(28, 12, 600), (28, 14, 470 + rng.uniform(0, 80))], r)
    prims += smooth_tube(
        [(28, 12, 600), (28 + side * 35, 8, 625), (side * 95, 2, 640)], [r, r * 0.9, r * 0.8]
    )
    sc.fill(sc.field(prims), value, material="soft_tissue")


def _screw(a, b, r) -> list:
    return [capsule(a, b, r)]


IMPLANTS = {
    "pelvis": ("hip_stem", "pedicle_screws", "clips", "screws"),
    "abdomen": ("pedicle_screws", "clips"),
    "chest": ("sternal_wires", "pedicle_screws", "clips"),
    "limb": ("screws", "nail"),
}


def _paint_metal(sc: LabelledScene, rng, region: str, allowed=None) -> str | None:
    """One random implant of the region, as metal (values far above the 12-bit range: clipped later)."""
    value = float(rng.uniform(6000, 12000))
    kinds = [k for k in IMPLANTS[region] if allowed is None or k in allowed]
    if not kinds:
        return None
    kind = str(rng.choice(kinds))
    prims = []
    if kind == "pedicle_screws":
        levels = [lv for lv in spine_levels() if lv[0][0] in ("L", "T")]
        if region == "chest":
            levels = [lv for lv in levels if lv[0][0] == "T"]
        elif region == "pelvis":
            levels = [lv for lv in levels if lv[0] in ("L3", "L4", "L5")]
        else:
            levels = [lv for lv in levels if lv[0][0] == "L" or lv[0] in ("T11", "T12")]
        n = int(rng.integers(2, min(5, len(levels)) + 1))
        first = int(rng.integers(0, len(levels) - n + 1))
        chosen = levels[first : first + n]
        heads = []
        r = float(rng.uniform(2.5, 3.5))
        for _, zc, _, _, a, b in chosen:
            yb = float(spine_y(zc))
            for s in (-1.0, 1.0):
                head = np.array([s * (0.55 * a + 9), yb - b - 24, zc + 2])
                tip = np.array([s * 0.15 * a, yb + 0.4 * b, zc + 1])
                prims += _screw(head, tip, r)
                heads.append(head)
        heads = np.array(heads)
        for s in (-1.0, 1.0):
            side = heads[np.sign(heads[:, 0]) == s]
            prims += tube(side + (0, -4, 0), float(rng.uniform(2.5, 3.2)))
    elif kind == "hip_stem":
        s = float(rng.choice([-1.0, 1.0]))
        prims += [ellipsoid((s * 88.0, 0.0, 0.0), (float(rng.uniform(13, 16)),) * 3)]
        prims += smooth_tube(
            [(s * 96, -2, -8), (s * 124, -8, -40), (s * 127, -4, -100), (s * 120, 0, -180)], [7, 9, 7, 5]
        )
    elif kind == "sternal_wires":
        for z in np.sort(rng.uniform(450, 590, int(rng.integers(3, 7)))):
            ring = [(24 * np.cos(t), 82 + 12 * np.sin(t), z) for t in np.linspace(0, 2 * np.pi, 13)]
            prims += tube(ring, float(rng.uniform(0.6, 1.0)))
    elif kind == "clips":
        z0 = {"pelvis": 60.0, "abdomen": 250.0, "chest": 450.0}[region]
        for _ in range(int(rng.integers(2, 8))):
            p = np.array([rng.uniform(-90, 90), rng.uniform(-40, 70), z0 + rng.uniform(-80, 80)])
            d = rng.normal(size=3)
            d *= rng.uniform(2.5, 4.5) / np.linalg.norm(d)
            prims += [capsule(p - d, p + d, float(rng.uniform(0.8, 1.5)))]
    elif kind == "screws":  # cannulated screws across a femoral neck or a tibia
        for _ in range(int(rng.integers(2, 4))):
            if region == "pelvis":
                s = float(rng.choice([-1.0, 1.0]))
                a = np.array([s * 140, -10 + rng.uniform(-8, 8), -40 + rng.uniform(-10, 10)])
                b = np.array([s * 92, rng.uniform(-6, 6), rng.uniform(-6, 6)])
            else:
                z = rng.uniform(-120, -30)
                a, b = np.array([-40.0, rng.uniform(-10, 10), z]), np.array([40.0, rng.uniform(-10, 10), z])
            prims += _screw(a, b, float(rng.uniform(2.0, 3.5)))
    else:  # an intramedullary nail down the femur
        prims += tube([(0, 0, 160), (0, 2, 40)], float(rng.uniform(4.5, 6.0)))
    sc.fill(sc.field(prims), value, material="metal")
    return kind


def _paint_table(sc: LabelledScene, rng, pose: Pose, region: str) -> dict:
    """A patient table under the back (scanner frame): a curved carbon shell around a foam core."""
    # The subject's back (trunk: ~125 mm behind the axis; knee: ~60 mm) mapped to the scanner frame.
    back = np.array([0.0, -125.0 if region != "limb" else -62.0, 0.0]) + (0, 0, pose.center[2])
    y0 = float(((back - np.asarray(pose.center)) @ np.linalg.inv(np.asarray(pose.matrix)).T)[1])
    y_top = y0 - float(rng.uniform(0.0, 15.0))
    thickness = float(rng.uniform(25.0, 60.0))
    shell = float(rng.uniform(1.5, 4.0))
    curve = float(rng.uniform(0.0, 0.0012))
    half_width = float(rng.uniform(190.0, 260.0))
    gx, gy = sc.axes[0].astype(np.float64), sc.axes[1].astype(np.float64)
    top = y_top + curve * gx[:, None] ** 2  # the top rises towards the edges
    depth = top - gy[None, :]  # > 0 below the top surface
    outside = np.maximum(np.maximum(-depth, depth - thickness), np.abs(gx)[:, None] - half_width)
    inner = np.maximum(
        np.maximum(-(depth - shell), (depth - thickness + shell)), np.abs(gx)[:, None] - half_width + shell
    )
    h = float(np.mean(sc.spacing[:2]))
    a_out = np.clip(0.5 - outside / h, 0.0, 1.0).astype(np.float32)[:, :, None]
    a_in = np.clip(0.5 - inner / h, 0.0, 1.0).astype(np.float32)[:, :, None]
    shell_hu = float(rng.uniform(-200, 400))
    core_hu = float(rng.uniform(-1000, -850))
    full = (slice(None),) * 3
    if a_out.max() <= 0:
        return {"table": False}
    # Paint only where nothing of the patient is (the table is under the body, never inside it).
    free = sc.fractions[_AIR].copy()  # before the shell is painted: the core goes inside it
    for alpha, value in ((a_out, shell_hu), (a_in, core_hu)):
        a = alpha * free
        sc.hu += a * (value - sc.hu)
        air = float(value < AIR_BELOW_HU)
        sc.composite(full, a, (air, 1.0 - air, 0.0, 0.0))
    return {"table": True, "table_top_mm": y_top, "table_shell_hu": shell_hu}


# ----------------------------------------------------------------------------------------------
# The scan


@dataclasses.dataclass(frozen=True)
class RandomScan:
    """CT image formation; ``None`` fields are sampled per scan from the ranges below.

    Attributes:
      enabled: False returns the painted HU (the truth image, clipped), no table or circle.
      inplane_sigma_mm: Gaussian in-plane blur (MTF) 0.25-0.7 mm.
      sharpen: reconstruction-kernel edge enhancement (unsharp-mask gain) 0-0.8 in 30 % of scans.
      slice_mm: slice thickness (Gaussian slice profile FWHM) 0.5-5 mm.
      noise_hu: noise standard deviation 5-40 HU; nps_peak_per_mm: NPS peak 0.1-0.6 /mm.
      cupping_hu: beam-hardening cupping 0-40 HU; streak_hu: metal streak amplitude 100-800 HU.
      bias_hu: a smooth random offset field (scanner non-uniformity) 0-20 HU.
      slope, offset_hu: calibration hu' = slope * hu + offset; 0.95-1.05 and +-40 HU.
      fov_radius_mm: reconstruction circle radius 150-260 mm (smaller ones truncate the body).
      truncation_hu: brightening of the body at the circle edge 0-200 HU.
      padding_hu: value outside the circle, one of :data:`PADDING_HU`.
    """

    enabled: bool = True
    inplane_sigma_mm: float | None = None
    sharpen: float | None = None
    slice_mm: float | None = None
    noise_hu: float | None = None
    nps_peak_per_mm: float | None = None
    cupping_hu: float | None = None
    streak_hu: float | None = None
    bias_hu: float | None = None
    slope: float | None = None
    offset_hu: float | None = None
    fov_radius_mm: float | None = None
    truncation_hu: float | None = None
    padding_hu: float | None = None

    def sample(self, rng: np.random.Generator) -> dict:
        def pick(value, lo, hi):
            return float(rng.uniform(lo, hi)) if value is None else float(value)

        sharpen = rng.uniform(0.0, 0.8) if rng.random() < 0.3 else 0.0
        return {
            "inplane_sigma_mm": pick(self.inplane_sigma_mm, 0.25, 0.7),
            "sharpen": float(sharpen if self.sharpen is None else self.sharpen),
            "slice_mm": pick(self.slice_mm, 0.5, 5.0),
            "noise_hu": pick(self.noise_hu, 5.0, 40.0),
            "nps_peak_per_mm": pick(self.nps_peak_per_mm, 0.1, 0.6),
            "cupping_hu": pick(self.cupping_hu, 0.0, 40.0),
            "streak_hu": pick(self.streak_hu, 100.0, 800.0),
            "bias_hu": pick(self.bias_hu, 0.0, 20.0),
            "slope": pick(self.slope, 0.95, 1.05),
            "offset_hu": pick(self.offset_hu, -40.0, 40.0),
            "fov_radius_mm": pick(self.fov_radius_mm, 150.0, 260.0),
            "truncation_hu": pick(self.truncation_hu, 0.0, 200.0),
            "padding_hu": float(rng.choice(PADDING_HU) if self.padding_hu is None else self.padding_hu),
        }


def _degrade(rng, sc: LabelledScene, p: dict, body_semi) -> np.ndarray:
    """Scanner image formation on the fine grid (scanner frame); returns HU before clipping."""
    hu = sc.hu
    if p["bias_hu"] > 0:  # smooth (~40 mm) non-uniformity: drawn on a coarse lattice, interpolated
        coarse = rng.standard_normal(
            tuple(int(np.ceil(n * s / 20.0)) + 2 for n, s in zip(sc.shape, sc.spacing))
        )
        coarse = ndimage.gaussian_filter(coarse, 1.0, mode="wrap")
        pos = np.meshgrid(
            *[np.arange(n) * s / 20.0 + 1.0 for n, s in zip(sc.shape, sc.spacing)], indexing="ij", sparse=True
        )
        bias = ndimage.map_coordinates(coarse, np.broadcast_arrays(*pos), order=1, mode="nearest")
        bias = bias.astype(np.float32) / max(float(coarse.std()), 1e-6)
        hu = hu + p["bias_hu"] * bias * (1.0 - sc.fractions[_AIR])
    sigma = np.array([p["inplane_sigma_mm"], p["inplane_sigma_mm"], p["slice_mm"] / 2.355]) / sc.spacing
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest", truncate=3.0)
    if p["sharpen"] > 0:  # sharp (bone) kernels: overshoot at edges
        hu = hu + p["sharpen"] * (
            hu - ndimage.gaussian_filter(hu, 1.0 / sc.spacing, mode="nearest", truncate=2.5)
        )
    x = sc.axes[0][:, None].astype(np.float64)
    y = sc.axes[1][None, :].astype(np.float64)
    rho2 = (x / body_semi[0]) ** 2 + (y / body_semi[1]) ** 2
    hu -= (p["cupping_hu"] * np.clip(1.0 - rho2, 0.0, 1.0))[..., None].astype(np.float32)
    if p["truncation_hu"] > 0:
        edge = p["fov_radius_mm"] - np.sqrt(x**2 + y**2)
        rim = np.where(edge > 0, np.exp(-edge / 15.0), 0.0).astype(np.float32)[..., None]
        hu += p["truncation_hu"] * rim * (1.0 - sc.fractions[_AIR])
    hu = metal_streaks(rng, hu, sc.fractions[_METAL] > 0.5, sc.spacing, p["streak_hu"])
    hu += nps_noise(rng, sc.shape, sc.spacing, p["noise_hu"], p["nps_peak_per_mm"], p["slice_mm"])
    return p["slope"] * hu + p["offset_hu"]


@dataclasses.dataclass(frozen=True)
class AnatomicalCT:
    """A random anatomical CT and its truth.

    Attributes:
      hu: float32 [I, J, K] HU in [-1024, 3071] inside the reconstruction circle, the padding value
        outside it.
      fractions: float32 [4, I, J, K] partial-volume fractions of :data:`MATERIAL_CLASSES` (air
        outside the circle), summing to one.
      affine: 4x4 voxel index -> scanner mm (RAS+ as the patient lies, voxel centres).
      info: region, pose, tissues, implants and scan parameters (JSON-serialisable).
    """

    hu: np.ndarray
    fractions: np.ndarray
    affine: np.ndarray
    info: dict


def _block_mean(a: np.ndarray, factor) -> np.ndarray:
    s = a.shape[-3:]
    f0, f1, f2 = factor
    lead = a.shape[:-3]
    return a.reshape(*lead, s[0] // f0, f0, s[1] // f1, f1, s[2] // f2, f2).mean(axis=(-5, -3, -1))


def random_pose(rng, region: str, variation: AnatomyVariation) -> tuple[Pose, np.ndarray]:
    """The subject's placement (and its per-axis scale) for a region of :data:`ANATOMY_REGIONS`."""
    center = np.asarray(region_center(region), np.float64)
    center[2] += rng.uniform(-80, 80) if region != "limb" else rng.uniform(-50, 50)
    center[:2] += rng.normal(0, 8, 2)
    scale = rng.uniform(*variation.scale) * (
        1.0 + rng.uniform(-variation.axis_scale, variation.axis_scale, 3)
    )
    angles = [rng.uniform(-a, a) for a in variation.rotation_deg]
    rot = np.eye(3)
    for axis, a in zip(np.eye(3), angles):
        rot = rot @ _rotation(axis, a)
    matrix = rot @ np.diag(1.0 / scale)
    pose = Pose(
        center=tuple(float(v) for v in center),
        matrix=tuple(tuple(float(v) for v in row) for row in matrix),
        displacement_mm=float(rng.uniform(*variation.displacement_mm)),
        displacement_scale_mm=float(rng.uniform(45, 90)),
        seed=int(rng.integers(2**31)),
    )
    return pose, scale


def _rotation(axis, angle_deg):
    a = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _interest_point(rng, pose: Pose, region: str, scale) -> np.ndarray:
    """A scanner-frame point worth a patch: the spine, a hip, a rib cage edge or anywhere in the body."""
    c = np.asarray(pose.center)
    u = rng.random()
    if region == "limb":
        subject = c + (rng.normal(0, 20), rng.normal(0, 20), rng.uniform(-100, 100))
    elif u < 0.35:
        z = c[2] + rng.uniform(-100, 100)
        subject = np.array([rng.normal(0, 15), float(spine_y(z)) + rng.normal(-10, 15), z])
    elif u < 0.55 and region == "pelvis":
        subject = np.array(
            [rng.choice([-1, 1]) * 95 + rng.normal(0, 20), rng.normal(0, 20), rng.uniform(-80, 80)]
        )
    elif u < 0.55:
        t = rng.uniform(0, 2 * np.pi)
        subject = c + (120 * np.cos(t), 75 * np.sin(t), rng.uniform(-100, 100))
    else:
        subject = c + (rng.uniform(-120, 120), rng.uniform(-90, 70), rng.uniform(-100, 100))
    return (subject - c) @ np.linalg.inv(np.asarray(pose.matrix)).T


def random_anatomical_ct(
    seed,
    *,
    region: str | None = None,
    shape: Sequence[int] = (64, 64, 64),
    spacing_mm: Sequence[float] = (2.0, 2.0, 2.0),
    center_mm: Sequence[float] | None = None,
    fine_mm: float | None = None,
    variation: AnatomyVariation | None = None,
    scan: RandomScan | None = None,
    pose: Pose | None = None,
) -> AnatomicalCT:
    """A random CT of the anatomical phantom with its exact material fractions.

    Args:
      seed: int, sequence of ints (e.g. ``(run_seed, step, index)``) or ``np.random.Generator``;
        the same seed and arguments give the same CT.
      region: one of :data:`ANATOMY_REGIONS`, or None for a random one.
      shape: output grid [I, J, K] (scanner axes: right, anterior, superior as the patient lies).
      spacing_mm: output voxel spacing (3 numbers).
      center_mm: scanner-frame position of the grid centre (the isocentre is the origin); None
        picks a random point of interest (spine, hip, body edge, anywhere).
      fine_mm: painting grid: each output voxel is ceil(spacing / fine_mm) fine voxels per axis,
        averaged (partial volume); default half the output spacing, at most 1 mm.
      variation: the random subject (:class:`AnatomyVariation`); default ranges.
      scan: image formation (:class:`RandomScan`); default everything sampled.
      pose: the subject's placement; None draws one (:func:`random_pose`). The size factors used
        for the cupping model are then 1 / the matrix's column norms.

    Returns:
      An :class:`AnatomicalCT`.
    """
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_mm, np.float64), (3,)))
    if region is not None and region not in ANATOMY_REGIONS:
        raise JaxdrrError(f"unknown region {region!r}; choose one of {ANATOMY_REGIONS}")
    if len(shape) != 3 or min(shape) < 1:
        raise JaxdrrError(f"shape must be 3 positive integers, got {shape!r}")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise JaxdrrError(f"spacing_mm must be 3 positive numbers, got {spacing_mm!r}")
    if fine_mm is not None and not (np.isfinite(fine_mm) and fine_mm > 0):
        raise JaxdrrError(f"fine_mm must be a positive number, got {fine_mm!r}")
    variation = variation or AnatomyVariation()
    scan = scan or RandomScan()
    if isinstance(seed, np.random.Generator):
        rng, seed_info = seed, None
    else:
        seed_info = [int(s) for s in np.atleast_1d(seed)]
        rng = np.random.default_rng(seed_info)
    region = region or str(rng.choice(ANATOMY_REGIONS))
    drawn_pose, scale = random_pose(rng, region, variation)
    if pose is None:
        pose = drawn_pose
    else:
        scale = 1.0 / np.linalg.norm(np.asarray(pose.matrix, np.float64), axis=0)
    h = random_tissues(rng, variation)
    view_rng = np.random.default_rng(rng.integers(2**63))
    if center_mm is None:
        center = _interest_point(view_rng, pose, region, scale)
    else:
        center = np.asarray(center_mm, np.float64)
    factor = tuple(max(1, int(np.ceil(s / (fine_mm or min(s / 2, 1.0)) - 1e-9))) for s in spacing)
    fine_spacing = np.array([s / f for s, f in zip(spacing, factor)])
    fine_shape = tuple(n * f for n, f in zip(shape, factor))
    origin = center - (np.asarray(fine_shape) - 1) / 2.0 * fine_spacing
    subject_seed = int(rng.integers(2**31))
    sc = LabelledScene(fine_shape, fine_spacing, origin, np.random.default_rng([subject_seed, 1]), pose)
    if region == "limb":
        paint_knee(sc, h)
    else:
        paint_trunk(sc, h, subject_seed)
    if region == "chest" and h["bolus"]:
        _paint_bolus(sc, rng)
    metal = _paint_metal(sc, rng, region, variation.implants) if h["metal"] else None
    table = {"table": False}
    params = scan.sample(rng) if scan.enabled else None
    if params is not None and rng.random() < variation.p_table:
        table = _paint_table(sc, rng, pose, region)
    fractions = sc.fractions
    if params is None:
        hu_fine = sc.hu
        inside = None
    else:
        semi = (170.0 * scale[0], 115.0 * scale[1]) if region != "limb" else (65.0 * scale[0],) * 2
        hu_fine = _degrade(rng, sc, params, semi)
        x, y = sc.axes[0][:, None], sc.axes[1][None, :]
        inside_fine = (x**2 + y**2 <= params["fov_radius_mm"] ** 2)[..., None]
        hu_fine = np.where(inside_fine, hu_fine, HU_CLIP[0])
        fractions = np.where(
            inside_fine[None], fractions, np.eye(4, dtype=np.float32)[_AIR][:, None, None, None]
        )
        ox = center[0] + (np.arange(shape[0]) - (shape[0] - 1) / 2) * spacing[0]
        oy = center[1] + (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing[1]
        inside = (ox[:, None] ** 2 + oy[None, :] ** 2 <= params["fov_radius_mm"] ** 2)[..., None]
    hu = _block_mean(np.clip(hu_fine, *HU_CLIP), factor).astype(np.float32)
    if inside is not None:
        hu = np.where(inside, hu, np.float32(params["padding_hu"])).astype(np.float32)
    fractions = _block_mean(fractions, factor).astype(np.float32)
    fractions = fractions / fractions.sum(0, keepdims=True)
    affine = centered_affine(shape, spacing)
    affine[:3, 3] += center
    info = {
        "generator": "anatomy",
        "region": region,
        "pose": dataclasses.asdict(pose),
        "scale": [float(v) for v in scale],
        "center_mm": [float(v) for v in center],
        "tissues": {k: (bool(v) if isinstance(v, bool) else float(v)) for k, v in h.items()},
        "metal": metal,
        **table,
        "scan": params,
        "fine_mm": [float(v) for v in fine_spacing],
        "seed": seed_info,
    }
    return AnatomicalCT(hu=hu, fractions=fractions, affine=affine, info=info)
