"""Automatic initial poses of long bones from two (or more) calibrated fluoroscopy views.

A gradient-based 2D/3D registration converges only from a pose within roughly a bone's width of
the truth. Real biplanar sequences ship without poses (Autoscoper users place each bone by hand in
the first frame), so this module finds starting poses without a human, in three steps:

1. **Forearm axis in each view** (:func:`limb_axis_2d`). In an image-intensifier frame bone and
   soft tissue are dark on a bright background, with a radial fall-off (vignetting) towards the
   rim of the round field of view. ``-log(image)`` minus its grey-level *opening* with a square
   larger than the limb's width (a white top-hat) keeps the limb and removes the smooth
   background and vignetting; Otsu's threshold gives the limb mask. The limb enters the field of
   view through its rim (or the image border): the patch of limb near that boundary with the
   largest top-hat sum is the entry, and the top-hat-weighted principal axis of the limb within
   half an FOV radius of the entry is the limb's 2D axis, oriented from the entry inwards (towards
   the hand for a forearm). Fingers or a hand can reach the rim too: every patch at least half as
   strong as the strongest (at most two per view) is a hypothesis (:func:`limb_axes_2d`).
2. **3D axis** (:func:`triangulate_line`): each 2D axis back-projects to a plane through its
   source (``P^T l``); the planes of two views meet in the 3D axis line. Every combination of the
   views' hypotheses is one 3D axis hypothesis (:func:`limb_axes_3d`), all searched in step 3.
3. **Search** (:func:`initialize_bone`). The bone's long principal axis (from its own voxels,
   :func:`jaxdrr.io.tiff_stack.principal_axes`) is laid along each 3D axis, both ways round
   (``flip``), tilted by up to ``tilt_deg`` in four directions, and turned about the axis in
   ``angle_step_deg`` steps. For each orientation the bone's DRR (line integrals of its density in
   excess of soft tissue, at ~1/8 resolution) is rendered once per view and its Sobel gradients
   are correlated with the frame's over all 2D shifts at once (normalised cross-correlation by
   FFT, inside the FOV mask): a 3D translation ``delta`` near the axis shifts the bone's image in
   view ``v`` by ``proj_v(c0 + delta) - proj_v(c0)`` (the shape change with depth is < 3 % over
   the search range at ~1 m), so a 3D grid of translations is scored by looking the shifts up in
   every view's correlation map and summing. The ``peaks_per_orientation`` best translations of
   each orientation, ``distinct_mm`` apart, are kept (a long bone's best shift can put it on its
   neighbour's shadow, with its own place the second peak); the ``rescored`` best, mutually
   distinct (``distinct_deg``, ``distinct_mm``) candidates are re-scored with a DRR rendered at
   their exact pose (gradient correlation inside the FOV mask and a band around the bone,
   :func:`jaxdrr.registration.metrics.gradient_ncc`) and the ``top_k`` best returned as
   multi-start seeds for the optimiser.

4. **Joint seeds** (:func:`joint_seeds`). Each bone is searched on its own, and radius and ulna
   lie side by side on the same forearm axis, so a bone's candidate can sit on its neighbour's
   shadow. Every combination of the bones' candidates in which no two bones share space
   (:func:`bone_overlap`) becomes a start of one joint registration, which keeps for each bone the
   start where it matched best in its own footprint.

The search never uses a ground truth; its output is a *seed*, not a registration. On the
Autoscoper wrist (frame 0002) the joint seeds bring both bones to within 0.01 mm (mean over the
bone) of the registration from the stored seed, also with a synthetic strap at the FOV rim of one
or both views (README, "Real X-rays"); at a coarser working size the ulna still lands on the
radius's shadow. On the held-out frames (a second look, after these hypotheses were written
because a single axis had failed there) the radius lands at its best optimum and the ulna ~20 mm
along its own shaft.

**Manual override.** :func:`load_initial_poses` reads per-bone poses from a JSON file, e.g.::

    {"rad": {"matrix": [[r00, r01, r02, tx], [..], [..], [0, 0, 0, 1]]},
     "uln": {"rotvec_deg": [rx, ry, rz], "translation_mm": [tx, ty, tz], "pivot_mm": [0, 0, 0]}}

``matrix`` is the 4x4 object -> world matrix of :meth:`RigidTransform.matrix` (the bone's own
coordinates are its volume's world coordinates as read, i.e. centred on the origin by
:func:`~jaxdrr.io.tiff_stack.read_tiff_volume`); ``rotvec_deg`` is a rotation vector (axis x angle)
in degrees about ``pivot_mm`` (default the origin), as in :class:`RigidTransform`.
:func:`save_initial_poses` writes the same format.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi
import scipy.signal

from jaxdrr.atomic import write_json
from jaxdrr.errors import GeometryError, JaxdrrError, LoadError
from jaxdrr.geometry.projection import rescale_detector
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.io.frames import FOV_MARGIN_FRACTION, FluoroFrame, downsample_image, fov_mask
from jaxdrr.io.tiff_stack import bone_excess_density, principal_axes
from jaxdrr.ops.project import project
from jaxdrr.registration.metrics import gradient_ncc
from jaxdrr.volume import Volume

# Two bones of one limb share at most this fraction of either's voxels (joint seeds, axis choice).
JOINT_MAX_OVERLAP = 0.05


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """Settings of :func:`initialize_bone`.

    Attributes:
      work_size: the frames are block-averaged until their longest side is at most this (1760 ->
        220 px, 1/8, ~1.4 mm per pixel at the wrist).
      angle_step_deg: step of the turn about the bone's long axis (full circle).
      tilt_deg: tilt of the bone's axis away from the triangulated limb axis, tried in 4 directions
        besides 0 (bones are not exactly parallel to the limb's outline); 0 = no tilts.
      axial_range_mm: translations along the axis searched within +-this.
      lateral_range_mm: translations across the axis searched within +-this (each direction).
      translation_step_mm: grid step of the translation search.
      top_k: number of candidates returned.
      peaks_per_orientation: translations kept per orientation (the best ones at least
        ``distinct_mm`` apart): a long bone's best shift can be onto its neighbour's shadow, with its
        own place the second peak.
      rescored: distinct candidates of each limb-axis hypothesis re-scored with an exact DRR (the best
        ``top_k`` of all are returned).
      distinct_deg, distinct_mm: two candidates closer than both of these are the same seed.
      max_entries, entry_fraction: limb-axis hypotheses per view (:func:`limb_axes_2d`): at most
        ``max_entries`` places where the limb may enter the FOV, each at least ``entry_fraction``
        as strong as the strongest; every combination over the views is searched (the cost grows
        with their number: 1 on the Autoscoper wrist's frame 0002).
      threshold_hu: voxels above this define the bone's principal axes.
      step_mm: ray-marching step of the search DRRs.
    """

    work_size: int = 220
    angle_step_deg: float = 15.0
    tilt_deg: float = 8.0
    axial_range_mm: float = 40.0
    lateral_range_mm: float = 30.0
    translation_step_mm: float = 1.5
    top_k: int = 5
    peaks_per_orientation: int = 3
    rescored: int = 40
    distinct_deg: float = 20.0
    distinct_mm: float = 6.0
    max_entries: int = 2
    entry_fraction: float = 0.5
    threshold_hu: float = 200.0
    step_mm: float = 1.0

    def __post_init__(self):
        if self.top_k < 1 or self.peaks_per_orientation < 1 or self.rescored < 1:
            raise JaxdrrError(
                f"top_k, peaks_per_orientation and rescored must be >= 1, got {self.top_k}, "
                f"{self.peaks_per_orientation}, {self.rescored}"
            )
        if self.max_entries < 1 or not 0.0 < self.entry_fraction <= 1.0:
            raise JaxdrrError(
                f"need max_entries >= 1 and 0 < entry_fraction <= 1, got {self.max_entries}, {self.entry_fraction}"
            )


@dataclasses.dataclass(frozen=True)
class LimbAxis2D:
    """A limb's axis in one view (image points, x = column, y = row, at the frame's resolution).

    Attributes:
      entry: where the limb enters the field of view.
      center: top-hat-weighted centroid of the limb near the entry (a point on the axis).
      direction: unit 2D direction from the entry inwards.
    """

    entry: np.ndarray
    center: np.ndarray
    direction: np.ndarray


@dataclasses.dataclass(frozen=True)
class PoseCandidate:
    """One seed pose of a bone.

    Attributes:
      name: the bone.
      pose: object -> world :class:`RigidTransform` (pivot at the bone's centroid).
      score: mean over views of the gradient correlation of its DRR with the frame (higher = better).
      view_scores: the per-view gradient correlations.
      flip, angle_deg, tilt_deg: the search orientation (for reports).
      axis_index: which limb-axis hypothesis it was found along (0 = the strongest entries).
    """

    name: str
    pose: RigidTransform
    score: float
    view_scores: tuple[float, ...]
    flip: bool = False
    angle_deg: float = 0.0
    tilt_deg: tuple[float, float] = (0.0, 0.0)
    axis_index: int = 0

    def matrix(self) -> np.ndarray:
        return np.asarray(self.pose.matrix(), np.float64)


# ----------------------------------------------------------------------------- small geometry


def _rodrigues(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, np.float64)
    axis = axis / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _align(u, v) -> np.ndarray:
    """A rotation taking unit vector u onto unit vector v."""
    u = u / np.linalg.norm(u)
    v = v / np.linalg.norm(v)
    c = float(u @ v)
    axis = np.cross(u, v)
    s = np.linalg.norm(axis)
    if s < 1e-9:
        if c > 0:
            return np.eye(3)
        perp = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
        return _rodrigues(perp, np.pi)
    return _rodrigues(axis, np.arctan2(s, c))


def _perpendiculars(d) -> tuple[np.ndarray, np.ndarray]:
    e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(d, e1)


def _project(P, X) -> np.ndarray:
    h = np.asarray(X, np.float64) @ P[:, :3].T + P[:, 3]
    return h[..., :2] / h[..., 2:3]


def _rescale(P, factor: float) -> np.ndarray:
    """``rescale_detector`` in float64 (its 3x3 resampling matrix applied in NumPy)."""
    S = np.asarray(rescale_detector(np.eye(3, 4), factor), np.float64)[:, :3]
    return S @ np.asarray(P, np.float64)


def triangulate_line(Ps: Sequence[np.ndarray], lines: Sequence[LimbAxis2D]) -> tuple[np.ndarray, np.ndarray]:
    """The 3D line whose projections are the given 2D lines (least squares over >= 2 views).

    Each 2D line ``l`` (homogeneous, through ``center`` along ``direction``) back-projects to the
    plane ``P^T l`` through the view's source; the 3D line lies in all of them.

    Args:
      Ps: [3, 4] projection matrices matching the lines' pixel coordinates.
      lines: one :class:`LimbAxis2D` per view.

    Returns:
      (point [3], unit direction [3]); the point is the line's point closest to the back-projected
      rays of the views' ``center`` points (mean), the direction points the way of view 0's
      ``direction``.
    """
    if len(Ps) < 2 or len(Ps) != len(lines):
        raise GeometryError(f"need >= 2 views with one line each, got {len(Ps)} P and {len(lines)} lines")
    planes = []
    for P, ln in zip(Ps, lines, strict=True):
        a = np.append(ln.center, 1.0)
        b = np.append(ln.center + ln.direction, 1.0)
        pi = np.asarray(P, np.float64).T @ np.cross(a, b)
        planes.append(pi / np.linalg.norm(pi[:3]))
    planes = np.asarray(planes)
    _, s, vt = np.linalg.svd(planes[:, :3])
    if s[1] < 1e-3 * s[0]:
        raise GeometryError("the back-projected planes are parallel: the views see the line edge-on")
    d = vt[-1]
    x0 = np.linalg.lstsq(planes[:, :3], -planes[:, 3], rcond=None)[0]
    # Closest point of the line to each view's ray through its center.
    ts = []
    for P, ln in zip(Ps, lines, strict=True):
        P = np.asarray(P, np.float64)
        src = -np.linalg.solve(P[:, :3], P[:, 3])
        ray = np.linalg.solve(P[:, :3], np.append(ln.center, 1.0))
        ray /= np.linalg.norm(ray)
        w = x0 - src
        b = d @ ray
        den = 1.0 - b * b
        ts.append((b * (ray @ w) - (d @ w)) / max(den, 1e-12))
    point = x0 + np.mean(ts) * d
    # Orient along view 0's 2D direction.
    p0 = _project(np.asarray(Ps[0], np.float64), point)
    p1 = _project(np.asarray(Ps[0], np.float64), point + 10.0 * d)
    if (p1 - p0) @ lines[0].direction < 0:
        d = -d
    return point, d


# ----------------------------------------------------------------------------- 2D limb axis


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=128)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    return float(centers[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _log_image(frame: FluoroFrame) -> np.ndarray:
    """``-log`` of the (un-inverted) grey level: larger where more is absorbed."""
    img = np.asarray(frame.image, np.float64)
    if frame.inverted:
        img = 1.0 - img
    return -np.log(np.clip(img, 1.0 / 255.0, 1.0))


def limb_tophat(frame: FluoroFrame) -> np.ndarray:
    """White top-hat of ``-log(image)`` inside the FOV: the limb, without background or vignetting."""
    r = frame.fov[2]
    m = frame.mask
    if not m.any():
        raise JaxdrrError("the frame's FOV mask is empty")
    L = ndi.gaussian_filter(_log_image(frame), max(1.0, r / 150.0))
    L = np.where(m, L, L[m].min())
    size = max(3, int(round(0.6 * r)))
    return np.where(m, L - ndi.grey_opening(L, size=(size, size)), 0.0)


def limb_axes_2d(frame: FluoroFrame, max_entries: int = 2, min_fraction: float = 0.5) -> list[LimbAxis2D]:
    """Axis hypotheses of the limb entering the field of view, strongest entry first.

    Every place where limb-like (top-hat) absorption touches the FOV rim or the image border is a
    possible entry; its strength is the top-hat sum over that patch (the forearm's two bones and
    thick tissue outweigh fingers, a hand or a strap reaching the rim, which can be wider). The
    entries at least ``min_fraction`` as strong as the strongest, at most ``max_entries``, each give
    one axis (see the module docstring, step 1): :func:`initialize_bone` searches them all and lets
    the bone's own match decide.

    Raises:
      JaxdrrError: no limb found touching the FOV boundary, or bad arguments.
    """
    if max_entries < 1 or not 0.0 < min_fraction <= 1.0:
        raise JaxdrrError(
            f"need max_entries >= 1 and 0 < min_fraction <= 1, got {max_entries}, {min_fraction}"
        )
    r = frame.fov[2]
    m = frame.mask
    top = limb_tophat(frame)
    inner = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]  # distance to the FOV / image boundary
    limb = (inner > 0.03 * r) & (top > _otsu(top[m]))
    limb = ndi.binary_opening(limb, iterations=2)
    band = limb & (inner < 0.10 * r)
    labels, n = ndi.label(band)
    if n == 0:
        raise JaxdrrError("no limb found entering the field of view (nothing dark touches its rim)")
    strength = ndi.sum(top, labels, index=np.arange(1, n + 1))
    order = np.argsort(-strength)
    keep = [int(i) for i in order[:max_entries] if strength[i] >= min_fraction * strength[order[0]]]
    limb_labels, _ = ndi.label(limb)
    rows, cols = np.mgrid[0 : m.shape[0], 0 : m.shape[1]]
    axes = []
    for i in keep:
        ey, ex = np.nonzero(labels == i + 1)
        entry = np.array([ex.mean(), ey.mean()])
        near = (limb_labels == limb_labels[ey[0], ex[0]]) & (
            np.hypot(cols - entry[0], rows - entry[1]) < 0.5 * r
        )
        w = top[near]
        pts = np.stack([cols[near], rows[near]], axis=1).astype(np.float64)
        center = (w[:, None] * pts).sum(0) / w.sum()
        d = pts - center
        cov = (d * w[:, None]).T @ d / w.sum()
        direction = np.linalg.eigh(cov)[1][:, -1]
        if direction @ (center - entry) < 0:
            direction = -direction
        axes.append(LimbAxis2D(entry=entry, center=center, direction=direction))
    return axes


def limb_axis_2d(frame: FluoroFrame) -> LimbAxis2D:
    """The axis of the limb at its strongest entry into the field of view (:func:`limb_axes_2d`)."""
    return limb_axes_2d(frame, max_entries=1)[0]


# ----------------------------------------------------------------------------- scoring


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ndi.sobel(img, axis=1), ndi.sobel(img, axis=0)


def _ncc_map(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of ``template`` at every placement inside ``image`` ('valid')."""
    t = template - template.mean()
    tn = np.sqrt((t * t).sum())
    if tn <= 0:
        return np.zeros((image.shape[0] - t.shape[0] + 1, image.shape[1] - t.shape[1] + 1))
    num = scipy.signal.fftconvolve(image, t[::-1, ::-1], mode="valid")
    ones = np.ones_like(t)
    n = t.size
    s1 = scipy.signal.fftconvolve(image, ones, mode="valid")
    s2 = scipy.signal.fftconvolve(image * image, ones, mode="valid")
    var = np.maximum(s2 - s1 * s1 / n, 0.0)
    return num / (tn * np.sqrt(var) + 1e-12 * tn + 1e-30)


@dataclasses.dataclass(frozen=True)
class _View:
    P: np.ndarray  # at working resolution
    gx: np.ndarray
    gy: np.ndarray
    L: np.ndarray  # -log image, working resolution
    mask: np.ndarray
    shape: tuple[int, int]


def _prepare_views(frames, Ps, work_size) -> list[_View]:
    views = []
    for frame, P in zip(frames, Ps, strict=True):
        P = np.asarray(P, np.float64)
        if P.shape != (3, 4):
            raise GeometryError(f"each P must be 3x4, got {P.shape}")
        H, W = frame.image.shape
        f = max(1, int(np.ceil(max(H, W) / work_size)))
        L = downsample_image(_log_image(frame), f)
        cx, cy, r = frame.fov
        fov = ((cx + 0.5) / f - 0.5, (cy + 0.5) / f - 0.5, r / f)
        # The rim is blurred: keep the frames' default margin plus a working pixel (Sobel support).
        mask = fov_mask(L.shape, fov, FOV_MARGIN_FRACTION * fov[2] + 1.0)
        gx, gy = _sobel(L)
        views.append(
            _View(_rescale(P, f), np.where(mask, gx, 0.0), np.where(mask, gy, 0.0), L, mask, L.shape)
        )
    return views


def _render(density, affine, P, shape, step_mm) -> np.ndarray:
    out = project(density, affine, np.asarray(P, np.float32), shape[0], shape[1], step_mm=step_mm)
    return np.asarray(out[..., 0], np.float64)


def _exact_scores(density, affine, T, views, step_mm) -> list[float]:
    scores = []
    for v in views:
        drr = _render(density, affine, v.P @ T, v.shape, step_mm)
        foot = drr > 0.02 * max(drr.max(), 1e-12)
        if not foot.any():
            scores.append(-1.0)
            continue
        band = ndi.binary_dilation(foot, iterations=4) & v.mask
        scores.append(float(gradient_ncc(drr.astype(np.float32), v.L.astype(np.float32), band)))
    return scores


# ----------------------------------------------------------------------------- the search


def initialize_bone(
    volume: Volume,
    frames: Sequence[FluoroFrame],
    Ps: Sequence[np.ndarray],
    *,
    name: str = "",
    axis: tuple[np.ndarray, np.ndarray] | None = None,
    axes: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    config: InitConfig = InitConfig(),
) -> list[PoseCandidate]:
    """Seed poses of one long bone from calibrated views (see the module docstring).

    Args:
      volume: the bone's CT (``kind="hu"``, e.g. :func:`jaxdrr.io.tiff_stack.read_tiff_volume`).
      frames: the views' frames (:func:`jaxdrr.io.frames.read_fluoro_frame`, any ``downsample``).
      Ps: the views' [3, 4] projection matrices **for the frames' pixel grids** (with
        ``downsample=k``: ``projection_from_mayacam(calib, image_scale=1/k)``).
      name: the bone's name (copied into the candidates).
      axis: (point, unit direction) of the limb's 3D axis, the direction pointing distally (from
        where the limb enters the FOV inwards); searched alone.
      axes: several such axis hypotheses, all searched, the candidates ranked together; default
        (neither given) :func:`limb_axes_3d` of the frames with ``config.max_entries`` and
        ``config.entry_fraction``.
      config: :class:`InitConfig`.

    Returns:
      Up to ``config.top_k`` :class:`PoseCandidate`, best first.
    """
    if len(frames) < 2 or len(frames) != len(Ps):
        raise JaxdrrError(f"need >= 2 frames with one P each, got {len(frames)} frames and {len(Ps)} P")
    if volume.kind != "hu":
        raise JaxdrrError(f"initialize_bone needs a 'hu' volume, got kind={volume.kind!r}")
    if axis is not None and axes is not None:
        raise JaxdrrError("give the limb axis as axis= or as axes=, not both")
    if axis is not None:
        axes = [axis]
    elif axes is None:
        axes = limb_axes_3d(frames, Ps, config.max_entries, config.entry_fraction)
    if len(axes) == 0:
        raise JaxdrrError("axes= is empty: give at least one (point, direction) limb axis")
    views = _prepare_views(frames, Ps, config.work_size)
    density = bone_excess_density(volume)
    affine = volume.affine
    centroid, bone_axes, _ = principal_axes(volume, config.threshold_hu)
    tilts = [(0.0, 0.0)]
    if config.tilt_deg > 0:
        tilts += [(config.tilt_deg, phi) for phi in (0.0, 90.0, 180.0, 270.0)]
    angles = np.arange(0.0, 360.0 - 1e-9, config.angle_step_deg)

    results = []  # (score, R, centroid's world position, flip, angle, tilt, axis index)
    for index, (c0, d) in enumerate(axes):
        c0 = np.asarray(c0, np.float64)
        d = np.asarray(d, np.float64) / np.linalg.norm(d)
        # Translation grid (world offsets) and its image shifts in every view (orientation-independent).
        e1, e2 = _perpendiculars(d)
        ax = np.arange(-config.axial_range_mm, config.axial_range_mm + 1e-9, config.translation_step_mm)
        lat = np.arange(-config.lateral_range_mm, config.lateral_range_mm + 1e-9, config.translation_step_mm)
        A, B, C = np.meshgrid(ax, lat, lat, indexing="ij")
        deltas = A.reshape(-1, 1) * d + B.reshape(-1, 1) * e1 + C.reshape(-1, 1) * e2
        shifts = [_project(v.P, c0 + deltas) - _project(v.P, c0) for v in views]
        for flip in (False, True):
            R_align = _align(-bone_axes[0] if flip else bone_axes[0], d)
            for tilt, phi in tilts:
                tilt_axis = np.cos(np.radians(phi)) * e1 + np.sin(np.radians(phi)) * e2
                R_tilt = _rodrigues(tilt_axis, np.radians(tilt)) if tilt else np.eye(3)
                for ang in angles:
                    R = R_tilt @ _rodrigues(d, np.radians(ang)) @ R_align
                    T = np.eye(4)
                    T[:3, :3] = R
                    T[:3, 3] = c0 - R @ centroid
                    total = np.zeros(len(deltas))
                    for v, sh in zip(views, shifts, strict=True):
                        drr = _render(density, affine, v.P @ T, v.shape, config.step_mm)
                        total += _shift_scores(drr, v, sh)
                    for k in _distinct_peaks(total, deltas, config.peaks_per_orientation, config.distinct_mm):
                        results.append(
                            (total[k] / len(views), R, c0 + deltas[k], flip, ang, (tilt, phi), index)
                        )

    # The distinct best of each axis hypothesis are re-scored: pooled, a wrong axis (through a
    # hand or fingers) can fill the list with coarse matches and crowd a bone's true place out.
    results.sort(key=lambda r: -r[0])
    chosen = []
    for index in range(len(axes)):
        kept = []
        for res in (r for r in results if r[6] == index):
            _, R, position, *_ = res
            same = False
            for other in kept:
                dR = R @ other[1].T
                ang = np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1)))
                if ang < config.distinct_deg and np.linalg.norm(position - other[2]) < config.distinct_mm:
                    same = True
                    break
            if not same:
                kept.append(res)
            if len(kept) >= max(config.rescored, config.top_k):
                break
        chosen += kept

    candidates = []
    for _, R, position, flip, ang, tilt, index in chosen:
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = position - R @ centroid
        view_scores = _exact_scores(density, affine, T, views, config.step_mm)
        pose = RigidTransform.from_matrix(np.asarray(T, np.float64), pivot=tuple(centroid))
        candidates.append(
            PoseCandidate(
                name=name,
                pose=pose,
                score=float(np.mean(view_scores)),
                view_scores=tuple(view_scores),
                flip=flip,
                angle_deg=float(ang),
                tilt_deg=tilt,
                axis_index=index,
            )
        )
    candidates.sort(key=lambda c: -c.score)
    return candidates[: config.top_k]


def _distinct_peaks(scores: np.ndarray, points: np.ndarray, n: int, min_distance: float) -> list[int]:
    """Indices of up to ``n`` highest ``scores`` whose ``points`` [N, 3] are at least
    ``min_distance`` apart, best first (searched among the 64 * n best)."""
    pool = min(len(scores), 64 * n)
    order = np.argpartition(-scores, pool - 1)[:pool]
    order = order[np.argsort(-scores[order])]
    kept: list[int] = []
    for i in order:
        if all(np.linalg.norm(points[i] - points[j]) >= min_distance for j in kept):
            kept.append(int(i))
            if len(kept) == n:
                break
    return kept


def _shift_scores(drr: np.ndarray, view: _View, shifts: np.ndarray) -> np.ndarray:
    """Gradient correlation of the DRR, shifted by each of ``shifts`` [N, 2] (x, y), with the frame."""
    foot = drr > 0.02 * max(drr.max(), 1e-12)
    if not foot.any():
        return np.full(len(shifts), -1.0)
    rows, cols = np.nonzero(ndi.binary_dilation(foot, iterations=3))
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    gx, gy = _sobel(drr)
    maps = [_ncc_map(view.gx, gx[r0:r1, c0:c1]), _ncc_map(view.gy, gy[r0:r1, c0:c1])]
    score_map = 0.5 * (maps[0] + maps[1])
    # The template's top-left corner sits at (c0 + dx, r0 + dy) in the map's coordinates.
    x = c0 + shifts[:, 0]
    y = r0 + shifts[:, 1]
    return ndi.map_coordinates(score_map, [y, x], order=1, mode="constant", cval=-1.0)


def initialize_bones(
    volumes: dict[str, Volume],
    frames: Sequence[FluoroFrame],
    Ps: Sequence[np.ndarray],
    *,
    config: InitConfig = InitConfig(),
) -> dict[str, list[PoseCandidate]]:
    """:func:`initialize_bone` for each bone of a limb, along the limb-axis hypothesis that suits
    all of them best.

    The bones of one limb lie along one axis. With several hypotheses (:func:`limb_axes_3d`, e.g.
    fingers reaching the FOV's rim as well as the forearm) each bone is searched along each; a
    thin bone such as the ulna can match a metacarpal's shadow along a wrong axis about as well as
    its own, and two bones can both match one bar-like shadow. So a hypothesis is judged by its
    best combination of the bones' candidates that keeps the bones apart (the sum of their scores,
    as :func:`joint_seeds` ranks them), and each bone's candidates come from the best-judged one.

    Returns:
      {bone name: its candidates, best first} (``axis_index`` says which hypothesis). Each bone is
      searched on its own, so two bones' best seeds may claim the same shadow: combine them with
      :func:`joint_seeds`.
    """
    axes = limb_axes_3d(frames, Ps, config.max_entries, config.entry_fraction)
    found = [
        {
            name: initialize_bone(vol, frames, Ps, name=name, axis=axis, config=config)
            for name, vol in volumes.items()
        }
        for axis in axes
    ]
    if len(axes) == 1:
        return found[0]
    support = []
    for by_bone in found:
        if any(not cands for cands in by_bone.values()):
            support.append(-np.inf)
            continue
        apart = _apart_combinations(volumes, by_bone, JOINT_MAX_OVERLAP, config.threshold_hu)
        support.append(apart[0][0] if apart else -np.inf)
    best = int(np.argmax(support))
    return {
        name: [dataclasses.replace(c, axis_index=best) for c in cands] for name, cands in found[best].items()
    }


def bone_samples(volume: Volume, threshold_hu: float, n_points: int) -> np.ndarray:
    """Up to ``n_points`` voxel centres (object mm) where the bone's CT exceeds ``threshold_hu``."""
    data = np.asarray(volume.data)
    idx = np.argwhere(data > threshold_hu)
    if len(idx) > n_points:
        idx = idx[np.random.default_rng(0).choice(len(idx), size=n_points, replace=False)]
    return np.c_[idx, np.ones(len(idx))] @ np.asarray(volume.affine, np.float64)[:3].T


def bone_overlap(
    a: Volume,
    pose_a: RigidTransform,
    b: Volume,
    pose_b: RigidTransform,
    *,
    threshold_hu: float = 200.0,
    n_points: int = 2000,
) -> float:
    """Fraction of bone ``a``'s voxels (above ``threshold_hu``) that fall inside bone ``b`` when
    both are placed at their poses (object -> world). Two solid bones cannot share space: a
    pair of seeds with a large overlap has both bones on the same shadow.

    Nearest-voxel lookup on a sample of ``n_points`` of ``a``'s voxels (deterministic).
    """
    pts = bone_samples(a, threshold_hu, n_points)
    if len(pts) == 0:
        return 0.0
    T = np.linalg.inv(np.asarray(pose_b.matrix(), np.float64)) @ np.asarray(pose_a.matrix(), np.float64)
    to_voxel = np.linalg.inv(np.asarray(b.affine, np.float64)) @ T
    ijk = np.rint(np.c_[pts, np.ones(len(pts))] @ to_voxel[:3].T).astype(np.int64)
    data = np.asarray(b.data)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(data.shape)), axis=1)
    hit = np.zeros(len(pts), bool)
    i, j, k = ijk[inside].T
    hit[inside] = data[i, j, k] > threshold_hu
    return float(hit.mean())


def joint_seeds(
    volumes: dict[str, Volume],
    candidates: dict[str, Sequence[PoseCandidate]],
    *,
    max_overlap: float = JOINT_MAX_OVERLAP,
    max_seeds: int = 32,
    threshold_hu: float = 200.0,
) -> list[dict[str, RigidTransform]]:
    """Multi-start seeds for a joint registration: combinations of the bones' candidates.

    Each bone's search (:func:`initialize_bone`) sees only its own DRR, so its best candidate can
    sit on a neighbour's shadow (on the Autoscoper wrist the radius's 3rd candidate lies on the
    ulna), and registering each bone alone from its candidates then prefers the neighbour's
    stronger edges. Here every combination (one candidate per bone) becomes a seed of the joint
    registration, which keeps for each bone the start where it matched best in its own footprint
    (:func:`jaxdrr.registration.multiview.register_multiview`). Combinations in which two bones
    occupy the same space (:func:`bone_overlap` above ``max_overlap``, either way round) are
    dropped; the rest are ordered by the sum of their candidates' scores and cut at ``max_seeds``.

    Args:
      volumes: ``{bone: Volume}`` (``kind="hu"``), the volumes the candidates were searched with.
      candidates: ``{bone: candidates}``, e.g. from :func:`initialize_bones`.
      max_overlap: largest allowed fraction of one bone's voxels inside another.
      max_seeds: at most this many seeds (the best by summed score).
      threshold_hu: voxels above this are bone (for the overlap).

    Returns:
      A list of ``{bone: RigidTransform}``, best first (may be empty if every combination overlaps).

    Raises:
      JaxdrrError: a bone without candidates, or names that do not match.
    """
    if set(volumes) != set(candidates):
        raise JaxdrrError(
            f"volumes {sorted(volumes)} and candidates {sorted(candidates)} must name the same bones"
        )
    names = list(volumes)
    for n in names:
        if not candidates[n]:
            raise JaxdrrError(f"bone {n!r} has no candidate pose; give its pose by hand (load_initial_poses)")
    combos = _apart_combinations(volumes, candidates, max_overlap, threshold_hu)
    return [
        {n: candidates[n][k].pose for n, k in zip(names, choice, strict=True)}
        for _, choice in combos[:max_seeds]
    ]


def search_seeds(
    volumes: dict[str, Volume],
    frames: Sequence[FluoroFrame],
    Ps: Sequence[np.ndarray],
    *,
    config: InitConfig = InitConfig(),
    max_seeds: int = 32,
) -> list[dict[str, RigidTransform]]:
    """Multi-start seeds of a joint registration from the automatic search alone:
    :func:`initialize_bones`, then :func:`joint_seeds` (what ``jaxdrr register`` does without
    ``--init``, and what :func:`jaxdrr.registration.multiview.track_sequence` can re-seed a lost
    frame with).

    Args:
      volumes: ``{bone: Volume}`` (``kind="hu"``).
      frames: one :class:`FluoroFrame` per view, at the search's size (e.g. ``read_fluoro_frame(...,
        downsample=8)`` for 1760 px frames: :attr:`InitConfig.work_size` is 220 px).
      Ps: the frames' projection matrices (at the frames' size).
      config: :class:`InitConfig`.
      max_seeds: at most this many seeds.

    Returns:
      A non-empty list of ``{bone: RigidTransform}``, best first.

    Raises:
      JaxdrrError: a bone without any candidate, or every combination puts two bones in one place
        (give the poses by hand: :func:`load_initial_poses`).
    """
    candidates = initialize_bones(volumes, frames, Ps, config=config)
    empty = sorted(n for n, c in candidates.items() if not c)
    if empty:
        raise JaxdrrError(
            f"the automatic initial-pose search found no candidate for {empty}; give them by hand"
        )
    seeds = joint_seeds(volumes, candidates, max_seeds=max_seeds, threshold_hu=config.threshold_hu)
    if not seeds:
        raise JaxdrrError(
            "every combination of the automatic candidates puts two bones in the same place; give them by hand"
        )
    return seeds


def _apart_combinations(
    volumes, candidates, max_overlap: float, threshold_hu: float
) -> list[tuple[float, tuple]]:
    """(summed score, one candidate index per bone) of every combination of the bones' candidates
    in which no two bones overlap by more than ``max_overlap``, best first."""
    names = list(volumes)
    # Pairwise overlaps once per pair of candidates (not once per combination).
    overlap = {}
    for ia, a in enumerate(names):
        for b in names[ia + 1 :]:
            for i, ca in enumerate(candidates[a]):
                for j, cb in enumerate(candidates[b]):
                    o = max(
                        bone_overlap(volumes[a], ca.pose, volumes[b], cb.pose, threshold_hu=threshold_hu),
                        bone_overlap(volumes[b], cb.pose, volumes[a], ca.pose, threshold_hu=threshold_hu),
                    )
                    overlap[a, i, b, j] = o
    combos = []
    for choice in itertools.product(*(range(len(candidates[n])) for n in names)):
        pairs = [
            (a, choice[ia], b, choice[ib])
            for ia, a in enumerate(names)
            for ib, b in enumerate(names)
            if ia < ib
        ]
        if any(overlap[p] > max_overlap for p in pairs):
            continue
        score = sum(candidates[n][k].score for n, k in zip(names, choice, strict=True))
        combos.append((score, choice))
    combos.sort(key=lambda c: -c[0])
    return combos


def limb_axis_3d(frames: Sequence[FluoroFrame], Ps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """3D axis (point, unit direction pointing distally) of the limb seen in all frames, from
    each view's strongest entry."""
    return triangulate_line(Ps, [limb_axis_2d(f) for f in frames])


def limb_axes_3d(
    frames: Sequence[FluoroFrame], Ps: Sequence[np.ndarray], max_entries: int = 2, min_fraction: float = 0.5
) -> list[tuple[np.ndarray, np.ndarray]]:
    """3D axis hypotheses (point, unit direction): every combination of the views' entry
    hypotheses (:func:`limb_axes_2d`), the combination of the strongest entries first.

    Raises:
      GeometryError: no combination triangulates (every pair of planes parallel).
    """
    per_view = [limb_axes_2d(f, max_entries, min_fraction) for f in frames]
    axes, failures = [], []
    for combination in sorted(itertools.product(*(range(len(h)) for h in per_view)), key=sum):
        try:
            axes.append(triangulate_line(Ps, [h[i] for h, i in zip(per_view, combination, strict=True)]))
        except GeometryError as error:
            failures.append(str(error))
    if not axes:
        raise GeometryError(f"no limb axis hypothesis triangulates: {failures[0]}")
    return axes


# ----------------------------------------------------------------------------- manual override


def _pose_from_entry(name: str, entry, path: str) -> RigidTransform:
    if not isinstance(entry, dict):
        raise LoadError(f"{path}: pose of {name!r} must be an object with 'matrix' or 'rotvec_deg'")
    pivot = entry.get("pivot_mm", [0.0, 0.0, 0.0])
    try:
        if "matrix" in entry:
            T = np.asarray(entry["matrix"], np.float64)
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise LoadError(f"{path}: {name!r}: 'matrix' must be 4x4 finite numbers")
            R = T[:3, :3]
            if np.abs(R.T @ R - np.eye(3)).max() > 1e-4 or abs(np.linalg.det(R) - 1) > 1e-4:
                raise LoadError(f"{path}: {name!r}: the 3x3 block of 'matrix' is not a proper rotation")
            if not np.allclose(T[3], [0, 0, 0, 1]):
                raise LoadError(f"{path}: {name!r}: the last row of 'matrix' must be [0, 0, 0, 1]")
            return RigidTransform.from_matrix(T, pivot=tuple(float(p) for p in pivot))
        if "rotvec_deg" in entry:
            rv = np.radians(np.asarray(entry["rotvec_deg"], np.float64))
            t = np.asarray(entry.get("translation_mm", [0.0, 0.0, 0.0]), np.float64)
            if rv.shape != (3,) or t.shape != (3,) or not (np.isfinite(rv).all() and np.isfinite(t).all()):
                raise LoadError(
                    f"{path}: {name!r}: 'rotvec_deg' and 'translation_mm' must be 3 finite numbers"
                )
            return RigidTransform.create(rv, t, pivot=tuple(float(p) for p in pivot))
    except (TypeError, ValueError) as err:
        if isinstance(err, LoadError):
            raise
        raise LoadError(f"{path}: {name!r}: {err}") from None
    raise LoadError(f"{path}: pose of {name!r} needs 'matrix' or 'rotvec_deg'")


def load_initial_poses(path: str | os.PathLike) -> dict[str, RigidTransform]:
    """Reads per-bone poses (the manual override; format in the module docstring).

    Returns:
      {bone name: RigidTransform (float32 leaves unless x64 is on)}.

    Raises:
      FileNotFoundError: no such file.
      LoadError: not JSON, or a pose that is not a rigid transform.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"initial pose file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise LoadError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected an object {{bone name: pose}}")
    return {str(name): _pose_from_entry(str(name), entry, path) for name, entry in data.items()}


def save_initial_poses(path: str | os.PathLike, poses: dict[str, RigidTransform]) -> None:
    """Writes {bone name: pose} as 4x4 matrices (with pivots) in :func:`load_initial_poses`' format."""
    data = {
        name: {"matrix": np.asarray(p.matrix(), np.float64).tolist(), "pivot_mm": list(p.pivot)}
        for name, p in poses.items()
    }
    write_json(path, data, indent=2)


__all__: Sequence[str] = (
    "InitConfig",
    "LimbAxis2D",
    "PoseCandidate",
    "limb_tophat",
    "limb_axis_2d",
    "limb_axis_3d",
    "triangulate_line",
    "initialize_bone",
    "initialize_bones",
    "bone_samples",
    "bone_overlap",
    "joint_seeds",
    "search_seeds",
    "load_initial_poses",
    "save_initial_poses",
)
