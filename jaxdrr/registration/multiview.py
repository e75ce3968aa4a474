"""Multi-view, multi-object 2D/3D registration and tracking (biplanar fluoroscopy of several bones).

The problem: ``V`` calibrated views (a projection matrix ``P_v`` [3, 4] each, in jaxdrr's pixel
convention, and a measured image) show ``B`` rigid objects (bones), each with its own CT volume.
Find one :class:`~jaxdrr.geometry.rigid.RigidTransform` ``T_b`` (object -> world) per bone so that,
in every view at once, the DRR matches the image.

Model (one place for each step):

* **DRR.** The DRR of view ``v`` is the sum over bones of each bone's line integrals, each bone
  rendered from its own volume in ``P_v @ T_b`` (:func:`jaxdrr.geometry.rigid.object_projection`,
  :func:`jaxdrr.ops.project`). A bone's attenuation is its voxel values above the volume's minimum,
  scaled to a maximum of 1 (:func:`attenuation_volume`): for a bone-only crop (zero outside) that
  is the bone, for a HU CT it is proportional to HU + 1024. The scale does not matter: the metrics
  are invariant to a per-view linear intensity map ``a L + b`` (``a > 0``), which stands in for
  the unknown spectrum, intensifier gain and video processing of a real frame.
* **Target.** A real intensifier frame is an intensity (bright = transmitted): with
  ``config.target="intensity"`` it is compared as ``-ln(max(image, eps))``, a line-integral-like
  image; ``"attenuation"`` uses the image as it is.
* **Cut bones.** A CT crop that cuts a bone (voxels on a face of the volume) would render a sharp
  end that the real image does not have; the attenuation fades to zero over ``taper_mm`` towards
  such faces.
* **Similarity.** Gradient correlation (``"gncc"``, default) or ``"mncc"``/``"ncc"``
  (:mod:`jaxdrr.registration.metrics`), per view **and per bone**: the DRR of the view (all bones)
  against the image inside the bone's mask, the projected bone (line integral above
  ``mask_threshold`` of its maximum) dilated by ``mask_margin_mm``, times the view's field-of-view
  mask. So soft tissue and bones that are not modelled weigh only where they overlap a modelled
  bone. The loss is the mean of ``1 - similarity`` over views and bones. The masks are computed
  from the current poses (not differentiated) at the start of each level and, at Adam levels,
  every ``mask_update_every`` iterations (an L-BFGS level keeps one function).
* **Region of interest and pyramid.** Each view is cropped to the bones' projected boxes plus
  ``roi_margin_mm`` (a crop is a shift of the principal point), and each level renders that crop
  with pixels ``factor`` times larger (:func:`jaxdrr.geometry.rescale_detector`) against the
  block-averaged image; the volumes are block-averaged (:func:`downsample_volume`) where a level's
  pixels are much coarser than the voxels.
* **Pose parameters.** Each level starts from the current poses (the chart is centred there: no
  rotation-vector singularity near 180 deg) and optimises, per bone, a turn about the volume's
  centre and a translation (world mm). At Adam levels a turn's parameters are radians about the
  world's axes times ``radius_mm`` (one unit ~ 1 mm at that radius); at L-BFGS levels they are
  radians about the bone's principal axes times its radius of gyration about each, so one unit moves the
  bone's mass about 1 mm whichever the axis: a thin bone's turn about its own shaft (a tiny motion
  per degree, a flat valley) is then as well conditioned as the rest (``rotation_scale``).
* **Optimiser.** All bones' parameters jointly, Adam or L-BFGS per level (optax).
  Several starts (the given seeds plus ``n_starts - 1`` deterministic random perturbations each)
  run the first level; each bone continues from the start where it matched best (its own mean
  similarity over the views), so the bones need not be found in the same start. Compiled steps are cached across calls with the same
  shapes (repeated registrations and tracking compile once).

:func:`track_sequence` registers a sequence frame by frame, each warm-started from the previous
frame's poses, and flags frames whose similarity drops, whose pose jumps, whose optimiser did
not converge or (``min_similarity``) in which a bone matches poorly. A warm start reaches about
10 deg / 10 mm; with ``reseed`` (e.g. the automatic search of :mod:`jaxdrr.registration.initialize`
on that frame) a flagged frame is registered again from fresh seeds and the better result kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdrr.errors import GeometryError, JaxdrrError, VolumeError
from jaxdrr.geometry.projection import check_projection_matrix, rescale_detector
from jaxdrr.geometry.rigid import RigidTransform, object_projection
from jaxdrr.geometry.rotations import so3_exp
from jaxdrr.ops.project import project
from jaxdrr.registration import metrics as metrics_lib
from jaxdrr.registration.optimize import downsample_image, downsample_volume
from jaxdrr.volume import Volume

__all__ = [
    "View",
    "MultiViewConfig",
    "MultiViewResult",
    "TrackingResult",
    "register_multiview",
    "track_sequence",
    "TRACKING_FLAGS",
    "attenuation_volume",
    "render_views",
    "view_similarities",
    "pose_difference",
    "TARGETS",
    "MULTIVIEW_METRICS",
]

TARGETS = ("intensity", "attenuation")
MULTIVIEW_METRICS = ("gncc", "mncc", "ncc")
OPTIMIZERS = ("adam", "lbfgs")
ROTATION_SCALES = ("auto", "gyration", "uniform")
MIN_GYRATION_MM = 1.0  # floor of a radius of gyration (a bone thinner than this turns like one that thick)
SWITCH_MARGIN = 0.05  # similarity a bone must gain to continue from another start than the best
ROI_QUANTUM = 8  # crop sizes are multiples of 8 blocks of the coarsest level
_INTENSITY_FLOOR = 1.0 / 512.0  # below half an 8-bit step: -ln stays finite on black pixels


@dataclasses.dataclass(frozen=True, eq=False)
class View:
    """One calibrated view: projection matrix, image, optional field-of-view mask, name.

    Attributes:
      P: [3, 4] projection matrix (world mm -> image (column, row), jaxdrr's convention).
      image: [H, W] measured image (an intensity in (0, 1] for ``target="intensity"``).
      mask: [H, W] weights in [0, 1] (e.g. the intensifier's circular field), or None (all pixels).
      name: the view's name (unique within a registration).
    """

    P: np.ndarray
    image: np.ndarray
    mask: np.ndarray | None = None
    name: str = "view"

    def __post_init__(self):
        P = check_projection_matrix(np.asarray(self.P, np.float64), f"view {self.name!r} P")
        image = np.asarray(self.image, np.float64)
        if image.ndim != 2 or min(image.shape) < 8:
            raise JaxdrrError(
                f"view {self.name!r}: image must be 2D [H, W] of at least 8x8, got {image.shape}"
            )
        if not np.all(np.isfinite(image)):
            raise JaxdrrError(f"view {self.name!r}: image has non-finite pixels")
        mask = None
        if self.mask is not None:
            mask = np.asarray(self.mask, np.float64)
            if mask.shape != image.shape:
                raise JaxdrrError(
                    f"view {self.name!r}: mask shape {mask.shape} does not match image shape {image.shape}"
                )
            if not np.all(np.isfinite(mask)) or mask.min() < 0 or mask.sum() <= 0:
                raise JaxdrrError(f"view {self.name!r}: mask must be finite weights >= 0, not all zero")
        object.__setattr__(self, "P", np.asarray(P, np.float64))
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "name", str(self.name))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)

    def replace(self, **changes) -> View:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class MultiViewConfig:
    """Static settings of :func:`register_multiview` (hashable).

    Attributes:
      metric: ``"gncc"`` (gradient correlation), ``"mncc"`` (global + patch NCC) or ``"ncc"``.
      target: ``"intensity"`` (images are transmitted intensities: compared as ``-ln``) or
        ``"attenuation"`` (images are line-integral-like: compared as given).
      levels: ``((factor, iterations[, optimizer]), ...)`` coarse to fine; ``factor`` is the pixel
        size relative to the images' pixels.
      optimizer: default optimizer of levels that name none (``"adam"`` or ``"lbfgs"``).
      learning_rate: Adam's step at factor 1 (scaled pose units ~ mm); a level uses
        ``learning_rate * sqrt(factor)``, decayed (cosine) to 10 % over the level.
      rotation_scale: ``"gyration"`` (one unit of a turn about a principal axis of the bone is
        ``1 / g`` rad, ``g`` the bone's radius of gyration about that axis), ``"uniform"``
        (``1 / radius_mm`` rad about each of the world's axes) or ``"auto"``: uniform at Adam levels (Adam moves
        every parameter by about its step, so its precision is the step: equal angles), gyration
        at L-BFGS levels (its progress depends on the conditioning: equal curvature, so a thin
        bone's turn about its shaft converges as fast as the rest).
      radius_mm: the rotation scale of ``rotation_scale="uniform"`` (mm).
      n_starts: starts per seed pose at the first level (the seed itself plus random perturbations).
      start_rotation_deg, start_translation_mm: the perturbations' size (uniform in a ball).
      seed: seed of the perturbations (NumPy; deterministic).
      roi_margin_mm: margin of the crop around the bones' projected boxes (per view).
      mask_margin_mm: dilation of each bone's projected footprint (its similarity mask); at the
        first level ``max(mask_margin_mm, start_translation_mm)``, so that a bone that far off
        still sees its own edges.
      mask_threshold: a pixel belongs to a bone's footprint where the bone's line integral exceeds
        this fraction of its maximum in the view.
      mask_update_every: iterations between re-computations of the masks at Adam levels (0: once
        per level; L-BFGS levels keep the masks of their start).
      smooth_px: Gaussian blur (sigma, in each level's pixels) of the DRR and the image before
        the similarity: widens the basin of edge-based metrics and suppresses pixel noise (0: none).
      taper_mm: attenuation fade towards faces of the volume that cut the bone (0: none).
      step_mm: ray-march step (None: the projector's default, half the smallest voxel).
      patience, tol: a level stops after ``patience`` iterations without a loss improvement
        larger than ``tol``; the registration counts as converged when the last level's loss stopped
        improving (for ``patience`` iterations, or the last third of a shorter level).
      backend: projector backend (:func:`jaxdrr.ops.project`).
      roll_search_deg: after the last level, each bone is turned about its own long axis (the
        principal axis of its attenuation, through its centroid) over ``+-roll_search_deg`` and
        kept at the angle of its best similarity, then refined for ``roll_refine_iterations`` at
        the last level (0: no search). Roll about the shaft of a long, nearly cylindrical bone
        changes its projections least; gradient steps stop anywhere on that flat valley.
      roll_step_deg: the search's grid step (a coarse pass, then a pass at a fifth of the step
        around the coarse optimum; both at the last level).
      roll_refine_iterations: last-level iterations after the search.
      slide_search_mm, slide_step_mm: with ``roll_search_deg > 0``, the search also slides each
        bone along its long axis over ``+-slide_search_mm`` at ``slide_step_mm`` (a grid of turn x
        slide, then both at a fifth of their steps around the best; 0: turn only). A cropped
        shaft that continues in the image changes it only at its ends as it slides.
    """

    metric: str = "gncc"
    target: str = "intensity"
    # Adam (robust far from the optimum) from 1/8 to 1/2 size, then an L-BFGS polish: the Adam levels
    # alone leave a long bone anywhere along the flat valley of its turn about its shaft, and at 1/16
    # size two neighbouring shafts blur into one (README, "Real X-rays").
    levels: tuple = ((8, 30, "adam"), (4, 20, "adam"), (2, 10, "adam"), (2, 10, "lbfgs"))
    optimizer: str = "adam"
    learning_rate: float = 0.5
    rotation_scale: str = "auto"
    radius_mm: float = 30.0
    n_starts: int = 1
    start_rotation_deg: float = 10.0
    start_translation_mm: float = 10.0
    seed: int = 0
    roi_margin_mm: float = 12.0
    mask_margin_mm: float = 4.0
    mask_threshold: float = 0.05
    mask_update_every: int = 10
    smooth_px: float = 0.0
    taper_mm: float = 8.0
    step_mm: float | None = None
    patience: int = 8
    tol: float = 1e-5
    backend: str = "auto"
    roll_search_deg: float = 0.0
    roll_step_deg: float = 1.5
    roll_refine_iterations: int = 10
    slide_search_mm: float = 0.0
    slide_step_mm: float = 1.0

    def __post_init__(self):
        if self.metric not in MULTIVIEW_METRICS:
            raise JaxdrrError(f"metric must be one of {MULTIVIEW_METRICS}, got {self.metric!r}")
        if self.target not in TARGETS:
            raise JaxdrrError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.optimizer not in OPTIMIZERS:
            raise JaxdrrError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.rotation_scale not in ROTATION_SCALES:
            raise JaxdrrError(f"rotation_scale must be one of {ROTATION_SCALES}, got {self.rotation_scale!r}")
        try:
            levels = tuple(
                (int(lv[0]), int(lv[1]), str(lv[2]) if len(lv) > 2 else self.optimizer) for lv in self.levels
            )
        except (TypeError, ValueError, IndexError) as e:
            raise JaxdrrError(
                f"levels must be ((factor, iterations[, optimizer]), ...), got {self.levels}"
            ) from e
        if not levels or any(f < 1 or n < 0 or o not in OPTIMIZERS for f, n, o in levels):
            raise JaxdrrError(
                f"levels must be non-empty, factor >= 1, iterations >= 0, optimizer in {OPTIMIZERS}; "
                f"got {self.levels}"
            )
        object.__setattr__(self, "levels", levels)
        for name in ("learning_rate", "radius_mm"):
            if not getattr(self, name) > 0:
                raise JaxdrrError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "start_rotation_deg",
            "start_translation_mm",
            "roi_margin_mm",
            "mask_margin_mm",
            "taper_mm",
            "roll_search_deg",
            "slide_search_mm",
        ):
            if not getattr(self, name) >= 0:
                raise JaxdrrError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_starts < 1:
            raise JaxdrrError(f"n_starts must be >= 1, got {self.n_starts}")
        if not 0 < self.mask_threshold < 1:
            raise JaxdrrError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if not self.smooth_px >= 0:
            raise JaxdrrError(f"smooth_px must be >= 0, got {self.smooth_px}")
        if not self.roll_step_deg > 0 or not self.slide_step_mm > 0 or self.roll_refine_iterations < 0:
            raise JaxdrrError("roll_step_deg and slide_step_mm must be > 0, roll_refine_iterations >= 0")
        if self.mask_update_every < 0 or self.patience < 1:
            raise JaxdrrError("mask_update_every must be >= 0 and patience >= 1")

    def replace(self, **changes) -> MultiViewConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class MultiViewResult:
    """Outcome of :func:`register_multiview`.

    Attributes:
      poses: ``{bone: RigidTransform}`` (object -> world; pivot = the volume's centre).
      similarity: ``{view: {bone: similarity}}`` at the last level (metric inside the bone's mask).
      view_similarity: ``{view: similarity}`` inside the union of the bones' masks.
      loss: final loss (mean of ``1 - similarity`` over views and bones).
      initial_similarity: as ``similarity``, of the kept start before optimisation (last level's
        grid), for comparison.
      history: per-iteration records ``{"level", "factor", "iteration", "loss"}`` of the kept start.
      start_losses: first-level final loss of every start.
      best_start: index of the start with the lowest first-level loss.
      bone_starts: ``{bone: start}``: each bone continues from the jointly best start, or from the
        start where it alone matched clearly better (mean similarity over the views, on the pixels
        no other bone covers, higher by more than ``SWITCH_MARGIN``).
      converged: the last level's loss stopped improving (no improvement > ``tol`` for ``patience``
        iterations, or for the last third of a level shorter than ``2 * patience``).
      n_iterations: iterations run (all starts and levels).
      time_s: wall time (includes compilation on a cold cache).
      rois: ``{view: (x0, y0, width, height)}`` crop of each view in image pixels.
    """

    poses: dict[str, RigidTransform]
    similarity: dict[str, dict[str, float]]
    view_similarity: dict[str, float]
    loss: float
    initial_similarity: dict[str, dict[str, float]]
    history: list[dict[str, Any]]
    start_losses: np.ndarray
    best_start: int
    bone_starts: dict[str, int]
    converged: bool
    n_iterations: int
    time_s: float
    rois: dict[str, tuple[int, int, int, int]]

    def mean_similarity(self) -> float:
        return float(np.mean([s for per_bone in self.similarity.values() for s in per_bone.values()]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (poses as rotation vector / translation / pivot / 4x4 matrix)."""
        return {
            "poses": {name: pose_to_dict(p) for name, p in self.poses.items()},
            "similarity": self.similarity,
            "view_similarity": self.view_similarity,
            "initial_similarity": self.initial_similarity,
            "loss": self.loss,
            "start_losses": np.asarray(self.start_losses).tolist(),
            "best_start": self.best_start,
            "bone_starts": self.bone_starts,
            "converged": self.converged,
            "n_iterations": self.n_iterations,
            "time_s": self.time_s,
            "rois": {k: list(v) for k, v in self.rois.items()},
        }


def pose_to_dict(pose: RigidTransform) -> dict[str, Any]:
    """A pose as JSON-ready lists: ``rotation`` (rad), ``translation`` (mm), ``pivot``, ``matrix``."""
    return {
        "rotation": np.asarray(pose.rotation, np.float64).tolist(),
        "translation": np.asarray(pose.translation, np.float64).tolist(),
        "pivot": list(pose.pivot),
        "matrix": np.asarray(pose.matrix(), np.float64).tolist(),
    }


def pose_difference(a: RigidTransform, b: RigidTransform, points=None) -> dict[str, float]:
    """Rotation angle (deg) between two poses, translation of the pivot (mm), and, with
    ``points`` [N, 3] (object mm), the mean and max displacement of those points (mm)."""
    Ta, Tb = np.asarray(a.matrix(), np.float64), np.asarray(b.matrix(), np.float64)
    dR = Ta[:3, :3].T @ Tb[:3, :3]
    angle = math.degrees(math.acos(float(np.clip((np.trace(dR) - 1.0) / 2.0, -1.0, 1.0))))
    c = np.append(np.asarray(a.pivot, np.float64), 1.0)
    out = {"rotation_deg": angle, "translation_mm": float(np.linalg.norm((Ta @ c - Tb @ c)[:3]))}
    if points is not None:
        p = np.asarray(points, np.float64)
        d = np.linalg.norm(p @ (Ta[:3, :3] - Tb[:3, :3]).T + (Ta[:3, 3] - Tb[:3, 3]), axis=1)
        out["mean_mm"] = float(d.mean())
        out["max_mm"] = float(d.max())
    return out


@dataclasses.dataclass
class TrackingResult:
    """Outcome of :func:`track_sequence`: one :class:`MultiViewResult` per frame and its flags.

    Attributes:
      results: per-frame results (the kept one where a frame was re-seeded).
      flags: per-frame booleans ``similarity_drop``, ``pose_jump``, ``not_converged``,
        ``low_similarity`` (of the kept result), ``reseeded`` (the frame was re-seeded),
        ``recovered`` (the re-seeded registration replaced the warm-started one) and ``ok`` (none
        of the first four).
      tracked: per-frame warm-started results (the same objects as ``results`` where nothing was
        replaced), for comparison.
      poses: per-frame ``{bone: RigidTransform}`` (the results' poses).
    """

    results: list[MultiViewResult]
    flags: list[dict[str, bool]]
    tracked: list[MultiViewResult] = dataclasses.field(default_factory=list)

    @property
    def poses(self) -> list[dict[str, RigidTransform]]:
        return [r.poses for r in self.results]


# ----------------------------------------------------------------------------------------------
# Volumes


def attenuation_volume(volume: Volume, taper_mm: float = 0.0) -> Volume:
    """A single-channel attenuation-like density volume of a bone: the voxel values (summed over
    channels) above the volume's minimum, divided by their maximum, faded to zero over ``taper_mm``
    towards every face of the volume that cuts the object (a face with non-background voxels).

    Raises:
      VolumeError: the volume is constant (no object).
    """
    data = np.asarray(volume.data, np.float64)
    if data.ndim == 4:
        data = data.sum(axis=0)
    att = data - data.min()
    peak = att.max()
    if not peak > 0:
        raise VolumeError("the volume is constant: there is no object to register")
    att = att / peak
    if taper_mm > 0:
        spacing = volume.spacing
        for axis in range(3):
            n = att.shape[axis]
            for side in (0, n - 1):
                face = np.take(att, side, axis=axis)
                if (face > 1e-3).mean() < 1e-3:  # the object does not reach this face
                    continue
                dist_mm = (np.arange(n) if side == 0 else (n - 1 - np.arange(n))) * spacing[axis]
                ramp = np.clip(dist_mm / taper_mm, 0.0, 1.0)
                shape = [1, 1, 1]
                shape[axis] = n
                att = att * ramp.reshape(shape)
    return Volume.create(
        att[None].astype(np.float32), volume.affine, kind="density", channel_names=("attenuation",)
    )


def _check_volumes(volumes: Mapping[str, Volume]) -> dict[str, Volume]:
    if not isinstance(volumes, Mapping) or not volumes:
        raise JaxdrrError("volumes must be a non-empty dict {name: Volume}")
    for name, v in volumes.items():
        if not isinstance(v, Volume):
            raise JaxdrrError(f"volume {name!r} must be a jaxdrr Volume, got {type(v).__name__}")
    return dict(volumes)


def _check_views(views: Sequence[View]) -> list[View]:
    views = list(views)
    if not views:
        raise JaxdrrError("register_multiview needs at least one View")
    for v in views:
        if not isinstance(v, View):
            raise JaxdrrError(f"views must be View objects, got {type(v).__name__}")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise JaxdrrError(f"view names must be unique, got {names}")
    return views


def _seed_list(initial_poses, names: list[str]) -> list[dict[str, RigidTransform]]:
    seeds = [initial_poses] if isinstance(initial_poses, Mapping) else list(initial_poses or [])
    if not seeds:
        raise JaxdrrError("initial_poses must be a dict {bone: RigidTransform} or a non-empty list of them")
    out = []
    for s in seeds:
        if not isinstance(s, Mapping) or set(s) != set(names):
            got = sorted(s) if isinstance(s, Mapping) else type(s).__name__
            raise JaxdrrError(f"initial poses must name exactly the volumes {sorted(names)}, got {got}")
        for n in names:
            if not isinstance(s[n], RigidTransform) or np.shape(s[n].rotation) != (3,):
                raise JaxdrrError(f"initial pose of {n!r} must be a single RigidTransform")
        out.append({n: s[n] for n in names})
    return out


# ----------------------------------------------------------------------------------------------
# Geometry helpers


def _crop_projection(P, x0: float, y0: float, factor: int) -> np.ndarray:
    """P of the crop whose pixel (0, 0) is image pixel (x0, y0), with pixels ``factor`` larger."""
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    return np.asarray(rescale_detector(shift @ np.asarray(P, np.float64), factor), np.float64)


def _box_corners(volume: Volume) -> np.ndarray:
    """The 8 corners of the volume's voxel box in object mm."""
    c = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in volume.shape], indexing="ij")).reshape(3, -1).T
    return c @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def _project(P, points) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(points, np.float64) @ P[:, :3].T + P[:, 3]
    return h[:, :2] / h[:, 2:3], h[:, 2]


def _pixels_per_mm(P, point) -> float:
    """Image pixels per mm at a world point (perpendicular to the ray, mean of two directions)."""
    xy, depth = _project(P, point[None])
    M = P[:, :3]
    # Image axes' back-projections at that depth: a pixel spans depth * |M^-1 e_x| mm roughly.
    Minv = np.linalg.inv(M)
    mm = [np.linalg.norm(Minv @ e) * depth[0] for e in (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))]
    return float(2.0 / (mm[0] + mm[1]))


def _choose_rois(views, volumes, seeds, config, max_factor: int) -> list[tuple[int, int, int, int]]:
    rois = []
    for view in views:
        pts, scales = [], []
        for seed in seeds:
            for name, vol in volumes.items():
                T = np.asarray(seed[name].matrix(), np.float64)
                world = _box_corners(vol) @ T[:3, :3].T + T[:3, 3]
                xy, depth = _project(view.P, world)
                if np.any(depth <= 0):
                    raise GeometryError(f"bone {name!r} is (partly) behind the source of view {view.name!r}")
                pts.append(xy)
                scales.append(_pixels_per_mm(view.P, world.mean(axis=0)))
        pts = np.concatenate(pts)
        margin = config.roi_margin_mm * max(scales)
        H, W = view.shape
        lo = np.floor(pts.min(axis=0) - margin)
        hi = np.ceil(pts.max(axis=0) + margin)
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [W - 1, H - 1])
        if np.any(hi - lo < 8):
            raise GeometryError(f"the bones project outside view {view.name!r} (image {W}x{H})")
        # Whole blocks of the coarsest level, and sizes rounded up to ROI_QUANTUM of them so that
        # nearby starts (tracking, repeated registrations) share crop shapes and compiled steps.
        quantum = max_factor * ROI_QUANTUM
        w = int(math.ceil((hi[0] - lo[0] + 1) / quantum) * quantum)
        h = int(math.ceil((hi[1] - lo[1] + 1) / quantum) * quantum)
        x0 = int(max(0, min(lo[0], W - w))) if w <= W else int(lo[0])
        y0 = int(max(0, min(lo[1], H - h))) if h <= H else int(lo[1])
        rois.append((x0, y0, w, h))
    return rois


def _crop(image, roi, fill=0.0):
    x0, y0, w, h = roi
    H, W = image.shape
    out = np.full((h, w), fill, np.float64)
    ys, xs = slice(y0, min(y0 + h, H)), slice(x0, min(x0 + w, W))
    out[: ys.stop - y0, : xs.stop - x0] = image[ys, xs]
    return out


def _target_image(view: View, target: str) -> np.ndarray:
    if target == "intensity":
        if view.image.min() < 0:
            raise JaxdrrError(
                f"view {view.name!r}: target='intensity' needs intensities >= 0 (use target='attenuation' "
                "for line-integral images)"
            )
        return -np.log(np.maximum(view.image, _INTENSITY_FLOOR))
    return view.image


# ----------------------------------------------------------------------------------------------
# Rendering and similarity (pure, jit-able)


def _pose_matrix(p, base, scale, pivot):
    """4x4 object -> world pose of one bone's parameters ``p`` = (turn [3], translation [3]).

    The ``base`` pose [4, 4], turned first by ``so3_exp(scale @ turn)`` about ``pivot`` (object
    mm; ``scale`` [3, 3] maps parameters to a rotation vector in object coordinates), then moved
    by ``translation`` (world mm). ``p = 0`` is the base pose."""
    R = so3_exp(scale @ p[:3])
    turn = jnp.eye(4, dtype=p.dtype).at[:3, :3].set(R).at[:3, 3].set(pivot - R @ pivot)
    return (base @ turn).at[:3, 3].add(p[3:])


def _render(datas, affines, params, frames, P, h, w, step_mm, backend):
    """[B, h, w] line integrals of every bone in one view (``frames`` = (bases, scales, pivots))."""
    out = []
    for b, (data, affine) in enumerate(zip(datas, affines)):
        T = _pose_matrix(params[b], *(f[b] for f in frames))
        Pb = P @ T  # object_projection's P @ pose, from the matrix
        out.append(project(data, np.asarray(affine), Pb, h, w, step_mm=step_mm, backend=backend)[..., 0])
    return jnp.stack(out)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(image, sigma: float):
    """Separable Gaussian blur with edge replication (same size); identity for sigma 0."""
    if sigma <= 0:
        return image
    k = jnp.asarray(_gaussian_kernel(sigma), image.dtype)
    r = (k.shape[0] - 1) // 2
    x = jnp.pad(image, r, mode="edge")[None, None]
    x = jax.lax.conv_general_dilated(x, k[None, None, :, None], (1, 1), "VALID")
    x = jax.lax.conv_general_dilated(x, k[None, None, None, :], (1, 1), "VALID")
    return x[0, 0]


def _similarity(metric: str):
    if metric == "gncc":
        return metrics_lib.gradient_ncc
    if metric == "mncc":
        return lambda x, y, mask: metrics_lib.multiscale_ncc(x, y, patch_sizes=(None, 8), mask=mask)
    return metrics_lib.ncc


@functools.lru_cache(maxsize=32)
def _level_functions(metric, affines, shapes, step_mm, backend, optimizer, smooth_px=0.0):
    """Jitted ``(step, init, evaluate)`` for one level's static structure (shapes, affines).

    ``step(params, state, lr, frames, datas, Ps, targets, masks) -> (params, state, loss)`` (the
    loss at the incoming params); ``evaluate(params, frames, datas, Ps, targets, masks) -> (loss,
    sims [V, B], line integrals per view [B, h, w])``; ``params`` [B, 6] are relative to
    ``frames`` = (base poses [B, 4, 4], scales [B, 3, 3], pivots [B, 3]) (:func:`_pose_matrix`).
    The learning rate and the frames are arguments, not constants, so one compilation serves every
    level schedule, start and call with these shapes.
    """
    sim = _similarity(metric)

    def render_all(params, frames, datas, Ps):
        return [
            _render(datas, affines, params, frames, Ps[v], h, w, step_mm, backend)
            for v, (h, w) in enumerate(shapes)
        ]

    def evaluate(params, frames, datas, Ps, targets, masks):
        Ls = render_all(params, frames, datas, Ps)
        s = jnp.stack(
            [
                jnp.stack(
                    [
                        sim(_blur(L.sum(axis=0), smooth_px), targets[v], masks[v][b])
                        for b in range(len(affines))
                    ]
                )
                for v, L in enumerate(Ls)
            ]
        )  # [V, B]
        return jnp.mean(1.0 - s), s, Ls

    def loss(params, frames, datas, Ps, targets, masks):
        return evaluate(params, frames, datas, Ps, targets, masks)[0]

    if optimizer == "lbfgs":
        opt = optax.lbfgs(
            memory_size=10,
            linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=12, initial_guess_strategy="one"),
        )
    else:
        opt = optax.scale_by_adam()

    def step(params, state, lr, frames, datas, Ps, targets, masks):
        f = lambda p: loss(p, frames, datas, Ps, targets, masks)  # noqa: E731
        value, grad = jax.value_and_grad(f)(params)
        if optimizer == "lbfgs":
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
        else:
            updates, state = opt.update(grad, state, params)
            updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
        return optax.apply_updates(params, updates), state, value

    return jax.jit(step), opt.init, jax.jit(evaluate)


def _dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary dilation by a square of half-width ``radius_px`` (separable running max)."""
    from scipy import ndimage

    if radius_px <= 0:
        return mask
    return ndimage.maximum_filter(mask, size=2 * radius_px + 1, mode="constant")


def _bone_masks(L: np.ndarray, fov: np.ndarray, threshold: float, margin_px: int) -> np.ndarray:
    """[B, h, w] masks: each bone's footprint (above ``threshold`` of its max), dilated, times FOV."""
    out = []
    for Lb in L:
        peak = float(Lb.max())
        foot = (Lb > threshold * peak).astype(np.float64) if peak > 0 else np.zeros_like(Lb)
        m = _dilate(foot, margin_px) * fov
        if m.sum() < 16:  # the bone left the crop: compare the whole field instead of nothing
            m = fov.copy()
        out.append(m)
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# Registration


@dataclasses.dataclass
class _Level:
    factor: int
    iterations: int
    optimizer: str
    datas: tuple
    affines: tuple
    Ps: tuple
    targets: tuple
    fovs: tuple
    shapes: tuple
    margin_px: tuple

    def inputs(self) -> tuple:
        return self.datas, self.Ps, self.targets


def _prepare_levels(views, vols, rois, config) -> list[_Level]:
    names = list(vols)
    targets_full = [_target_image(v, config.target) for v in views]
    fovs_full = [np.ones(v.shape) if v.mask is None else v.mask for v in views]
    levels = []
    for li, (factor, iterations, optimizer) in enumerate(config.levels):
        # At the first level a bone may be up to the starts' spread away from its shadow: its mask
        # must reach that far, or it never sees its own edges.
        margin_mm = (
            max(config.mask_margin_mm, config.start_translation_mm) if li == 0 else config.mask_margin_mm
        )
        Ps, targets, fovs, shapes, margins, px_mm = [], [], [], [], [], []
        for view, roi, tgt, fov in zip(views, rois, targets_full, fovs_full):
            x0, y0, w, h = roi
            Ps.append(jnp.asarray(_crop_projection(view.P, x0, y0, factor), jnp.float32))
            fov_c = np.asarray(downsample_image(_crop(fov, roi), factor), np.float64)
            tgt_c = np.asarray(downsample_image(_crop(tgt, roi), factor), np.float64)
            targets.append(_blur(jnp.asarray(tgt_c, jnp.float32), float(config.smooth_px)))
            fovs.append(fov_c)
            shapes.append((h // factor, w // factor))
            centre = np.mean([np.asarray(v.center) for v in vols.values()], axis=0)
            scale = _pixels_per_mm(view.P, centre) / factor  # level pixels per mm (approximate)
            px_mm.append(1.0 / scale)
            margins.append(max(1, int(round(margin_mm * scale))))
        # Block-average volumes whose voxels are much finer than this level's pixels.
        datas, affines = [], []
        for name in names:
            v = vols[name]
            vf = int(np.clip(np.floor(min(px_mm) / (1.5 * float(np.min(v.spacing)))), 1, 4))
            vd = downsample_volume(v, vf)
            datas.append(jnp.asarray(vd.data, jnp.float32))
            affines.append(vd.affine_key)
        levels.append(
            _Level(
                factor,
                iterations,
                optimizer,
                tuple(datas),
                tuple(affines),
                tuple(Ps),
                tuple(targets),
                tuple(fovs),
                tuple(shapes),
                tuple(margins),
            )
        )
    return levels


@dataclasses.dataclass(frozen=True, eq=False)
class _BoneFrame:
    """A bone's principal frame (object mm) and how its turns are scaled.

    Attributes:
      centroid: [3] centre of its attenuation.
      axes: [3, 3] principal axes (columns), ascending second moment: the last is the long axis.
      gyration: [3] radius of gyration about each axis (mm, at least ``MIN_GYRATION_MM``).
    """

    centroid: np.ndarray
    axes: np.ndarray
    gyration: np.ndarray

    def scale(self, config: MultiViewConfig, optimizer: str) -> np.ndarray:
        """[3, 3]: turn parameters -> rotation vector (rad) for a level optimised with
        ``optimizer``: about the world's axes for ``"uniform"``, the object's principal axes for
        ``"gyration"`` (:func:`_rotation_kind`)."""
        if _rotation_kind(config, optimizer) == "uniform":
            return np.eye(3) / config.radius_mm
        return self.axes / self.gyration


def _rotation_kind(config: MultiViewConfig, optimizer: str) -> str:
    if config.rotation_scale == "auto":
        return "gyration" if optimizer == "lbfgs" else "uniform"
    return config.rotation_scale


def _bone_frame(volume: Volume) -> _BoneFrame:
    """The principal frame of a volume's values (voxels above 5 % of the maximum, value-weighted)."""
    data = np.asarray(volume.data, np.float64)
    data = data.sum(axis=0) if data.ndim == 4 else data
    idx = np.argwhere(data > 0.05 * data.max())
    w = data[tuple(idx.T)]
    pts = np.c_[idx, np.ones(len(idx))] @ np.asarray(volume.affine, np.float64)[:3].T
    centroid = (w[:, None] * pts).sum(axis=0) / w.sum()
    d = pts - centroid
    moments, axes = np.linalg.eigh((w[:, None] * d).T @ d / w.sum())
    # Radius of gyration about axis k: sqrt(E|d|^2 - E(d . e_k)^2).
    gyration = np.sqrt(np.maximum(moments.sum() - moments, 0.0))
    return _BoneFrame(centroid, axes, np.maximum(gyration, MIN_GYRATION_MM))


def _frames(poses: np.ndarray, geometry: tuple) -> tuple:
    """``frames`` of :func:`_level_functions` at the base ``poses`` [B, 4, 4], from ``geometry`` =
    (scales [B, 3, 3], pivots [B, 3], world): with ``world`` the scales turn about the world's
    axes (``R0 exp(R0^T w) = exp(w) R0``), else about the object's."""
    scales, pivots, world = geometry
    bases = np.asarray(poses, np.float64)
    if world:
        scales = np.einsum("bji,bjk->bik", bases[:, :3, :3], scales)
    return jnp.asarray(bases, jnp.float32), jnp.asarray(scales, jnp.float32), pivots


# Compiled once per shape: eagerly, the vmapped so3_exp compiles each of its primitives on every call.
_pose_matrices = jax.jit(jax.vmap(_pose_matrix))


def _apply(params, frames) -> np.ndarray:
    """[B, 4, 4] float64 poses of ``params`` [B, 6] relative to ``frames`` (rotations re-orthonormalised)."""
    T = np.asarray(_pose_matrices(jnp.asarray(params, jnp.float32), *frames), np.float64)
    U, _, Vt = np.linalg.svd(T[:, :3, :3])
    T[:, :3, :3] = U @ Vt
    return T


def _perturbations(config: MultiViewConfig, scales: np.ndarray) -> np.ndarray:
    """[n_starts - 1, B, 6] deterministic random start offsets (turn parameters, translation mm):
    turns uniform in a ball of ``start_rotation_deg`` (object coordinates), translations in a ball
    of ``start_translation_mm``."""
    rng = np.random.default_rng(config.seed)
    n, n_bones = config.n_starts - 1, len(scales)

    def ball(radius):
        d = rng.normal(size=(n, n_bones, 3))
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        r = radius * rng.uniform(size=(n, n_bones, 1)) ** (1.0 / 3.0)
        return d * r

    rot = ball(math.radians(config.start_rotation_deg))  # rotation vectors (rad)
    turn = np.einsum("bij,nbj->nbi", np.linalg.inv(scales), rot)
    return np.concatenate([turn, ball(config.start_translation_mm)], axis=-1)


def _cosine_lr(peak: float, iterations: int, it: int, final_fraction: float = 0.1) -> float:
    """Cosine decay from ``peak`` to ``final_fraction * peak`` over a level."""
    frac = it / max(iterations - 1, 1)
    return peak * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _level_masks(level, evaluate, params, frames, config) -> tuple:
    """Every view's [B, h, w] bone masks at ``params`` (see :func:`_bone_masks`)."""
    ones = tuple(jnp.ones((len(level.affines), h, w), jnp.float32) for h, w in level.shapes)
    Ls = evaluate(params, frames, level.datas, level.Ps, level.targets, ones)[2]
    return tuple(
        jnp.asarray(
            _bone_masks(np.asarray(L), level.fovs[v], config.mask_threshold, level.margin_px[v]), jnp.float32
        )
        for v, L in enumerate(Ls)
    )


def _run_level(level, poses, geometry, fns, config, record, start_index):
    """Optimises one level from ``poses`` [B, 4, 4]; returns (best poses, best loss, iterations,
    converged, masks): converged = no improvement larger than ``tol`` for ``patience`` iterations,
    or for the last third (at least 2 iterations) of a level shorter than ``2 * patience``."""
    step, init_fn, evaluate = fns
    peak = config.learning_rate * math.sqrt(level.factor)
    frames = _frames(poses, geometry)
    params = jnp.zeros((len(poses), 6), jnp.float32)

    def loss_at(p, masks):
        return float(evaluate(p, frames, level.datas, level.Ps, level.targets, masks)[0])

    masks = _level_masks(level, evaluate, params, frames, config)
    update_masks = bool(config.mask_update_every) and level.optimizer == "adam"
    state = init_fn(params)
    best_params = params
    best = loss_at(params, masks)
    since, stopped = 0, False
    n_run = 0
    for it in range(level.iterations):
        # L-BFGS's curvature pairs and line search need one fixed function: masks move at Adam levels only.
        if update_masks and it > 0 and it % config.mask_update_every == 0:
            # The masks follow the bones; the loss changes with them, so restart the comparison.
            masks = _level_masks(level, evaluate, best_params, frames, config)
            best = loss_at(best_params, masks)
        lr = jnp.asarray(_cosine_lr(peak, level.iterations, it), jnp.float32)
        new_params, state, value = step(
            params, state, lr, frames, level.datas, level.Ps, level.targets, masks
        )
        value = float(value)
        n_run += 1
        if not np.isfinite(value):
            break
        since = 0 if value < best - config.tol else since + 1
        if value < best:
            best, best_params = value, params
        params = new_params
        record({"start": start_index, "factor": level.factor, "iteration": it, "loss": value})
        # Adam oscillates at about its step size: judge a plateau only once the step has decayed.
        if since >= config.patience and it >= level.iterations // 2:
            stopped = True
            break
    final = loss_at(params, masks)
    if final < best:
        best, best_params = final, params
    # A level shorter than 2 * patience (the L-BFGS polish: 10 iterations) never stops early: it has
    # converged when its last third (at least 2 iterations) brought no improvement larger than tol.
    stopped = stopped or (n_run == level.iterations and since >= min(config.patience, max(2, n_run // 3)))
    return _apply(best_params, frames), best, n_run, stopped, masks


def _roll_search(level, evaluate, poses, geometry, bone_frames, config) -> np.ndarray:
    """Each bone turned about its long axis (through its centroid), and slid along it with
    ``slide_search_mm``, to its best similarity (mean over the views) at ``level``: a grid of
    ``+-roll_search_deg`` at ``roll_step_deg`` (times ``+-slide_search_mm`` at ``slide_step_mm``),
    then one step each way at a fifth of the steps around the best. The other bones stay put and
    the masks are fixed. The current pose is on both grids, so the search never lowers the
    similarity it measures. Returns the poses [B, 4, 4]."""
    frames = _frames(poses, geometry)
    params = np.zeros((len(poses), 6))
    masks = _level_masks(level, evaluate, jnp.asarray(params, jnp.float32), frames, config)
    step, half = math.radians(config.roll_step_deg), math.radians(config.roll_search_deg)
    slide_step, slide_half = config.slide_step_mm, config.slide_search_mm
    pivots = np.asarray(geometry[1], np.float64)

    def moved(b, angle, slide):
        """Parameters of bone b turned by ``angle`` about its long axis through its centroid and
        slid by ``slide`` mm along it."""
        frame = bone_frames[b]
        axis = frame.axes[:, -1]
        R = np.asarray(so3_exp(jnp.asarray(axis * angle, jnp.float32)), np.float64)
        shift = (np.eye(3) - R) @ (frame.centroid - pivots[b]) + slide * axis  # object mm
        scale = np.asarray(frames[1][b], np.float64)  # as the level turns (world or object axes)
        return np.concatenate([np.linalg.solve(scale, axis * angle), poses[b, :3, :3] @ shift])

    def grid(centre, span, st):
        n = int(round(span / st))
        return centre + st * np.arange(-n, n + 1)

    for b in range(len(bone_frames)):
        best = (0.0, 0.0)
        passes = ((half, step, slide_half, slide_step), (step, step / 5.0, slide_step, slide_step / 5.0))
        for span, st, slide_span, slide_st in passes:
            trials = [
                (a, d)
                for a in grid(best[0], span, st)
                for d in (grid(best[1], slide_span, slide_st) if slide_half > 0 else [0.0])
            ]
            losses = []
            for angle, slide in trials:
                trial = params.copy()
                trial[b] = moved(b, angle, slide)
                sims = np.asarray(
                    evaluate(jnp.asarray(trial, jnp.float32), frames, *level.inputs(), masks)[1]
                )
                value = 1.0 - float(np.mean(sims[:, b]))
                losses.append(value if np.isfinite(value) else np.inf)
            best = trials[int(np.argmin(losses))]
        params[b] = moved(b, *best)
    return _apply(params, frames)


def register_multiview(
    volumes: Mapping[str, Volume],
    views: Sequence[View],
    initial_poses,
    config: MultiViewConfig | None = None,
    *,
    rois: Mapping[str, tuple[int, int, int, int]] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> MultiViewResult:
    """Jointly registers several rigid objects (bones) in several calibrated views.

    Args:
      volumes: ``{bone: Volume}`` in the bone's own coordinates (mm); any value range (see
        :func:`attenuation_volume`).
      views: the calibrated views (:class:`View`); images of any size, each with its own P.
      initial_poses: ``{bone: RigidTransform}`` (object -> world), or a list of such dicts (seeds of
        a multi-start). A pose's pivot is replaced by the volume's centre (same transform).
      config: :class:`MultiViewConfig`.
      rois: ``{view: (x0, y0, width, height)}`` crops to use instead of the automatic ones (e.g. a
        previous result's ``rois``: the same shapes reuse the compiled steps); sizes must be
        multiples of the coarsest level's factor.
      callback: called with each iteration's record (progress display).

    Returns:
      :class:`MultiViewResult`.

    Raises:
      JaxdrrError: bad or inconsistent inputs (names, shapes, masks), before any work.
    """
    config = config or MultiViewConfig()
    vols_in = _check_volumes(volumes)
    views = _check_views(views)
    names = list(vols_in)
    seeds = _seed_list(initial_poses, names)
    t0 = time.perf_counter()
    vols = {n: attenuation_volume(v, config.taper_mm) for n, v in vols_in.items()}
    pivots = tuple(tuple(float(c) for c in vols[n].center) for n in names)
    max_factor = max(f for f, _, _ in config.levels)
    if rois is None:
        rois = _choose_rois(views, vols, seeds, config, max_factor)
    else:
        if set(rois) != {v.name for v in views}:
            raise JaxdrrError(
                f"rois must name exactly the views {[v.name for v in views]}, got {sorted(rois)}"
            )
        rois = [tuple(int(x) for x in rois[v.name]) for v in views]
        if any(
            len(r) != 4 or r[2] % max_factor or r[3] % max_factor or min(r[2:]) < 4 * max_factor for r in rois
        ):
            raise JaxdrrError(
                f"each roi must be (x0, y0, width, height) with sizes multiples of {max_factor}, at least "
                f"{4 * max_factor}; got {rois}"
            )
    levels = _prepare_levels(views, vols, rois, config)
    bone_frames = [_bone_frame(vols[n]) for n in names]
    pivots_mm = jnp.asarray(np.stack([vols[n].center for n in names]), jnp.float32)

    def geometry_for(level):
        """(scales [B, 3, 3], pivots [B, 3], world) of a level's turn parameters (:func:`_frames`)."""
        scales = np.stack([f.scale(config, level.optimizer) for f in bone_frames])
        return scales, pivots_mm, _rotation_kind(config, level.optimizer) == "uniform"

    starts = []  # [B, 4, 4] poses
    first = levels[0]
    first_geometry = geometry_for(first)
    offsets = _perturbations(config, first_geometry[0])
    for s in seeds:
        base = np.stack([np.asarray(s[n].matrix(), np.float64) for n in names])
        starts.append(base)
        frames = _frames(base, first_geometry)
        starts.extend(_apply(o, frames) for o in offsets)

    history: list[dict[str, Any]] = []
    n_iter = 0

    def fns_for(level):
        return _level_functions(
            config.metric,
            level.affines,
            level.shapes,
            config.step_mm,
            config.backend,
            level.optimizer,
            float(config.smooth_px),
        )

    def record_into(buffer):
        def record(rec):
            buffer.append(rec)
            if callback is not None:
                callback(rec)

        return record

    zeros = jnp.zeros((len(names), 6), jnp.float32)
    # First level: every start; keep the best.
    fns = fns_for(first)
    start_losses, start_results, start_histories, start_sims = [], [], [], []
    for i, pose0 in enumerate(starts):
        buf: list[dict[str, Any]] = []
        poses, loss, n, stopped, masks = _run_level(
            first, pose0, first_geometry, fns, config, record_into(buf), i
        )
        n_iter += n
        start_losses.append(loss)
        start_results.append((poses, stopped, masks))
        start_histories.append(buf)
        # Each bone scored where no other bone projects, so that a well-placed neighbour does not
        # lend its edges to a misplaced bone.
        own = tuple(m * (1.0 - (jnp.sum(m, axis=0, keepdims=True) - m > 0)) for m in masks)
        frames = _frames(poses, first_geometry)
        sims_i = np.asarray(fns[2](zeros, frames, first.datas, first.Ps, first.targets, own)[1], np.float64)
        start_sims.append(np.where(np.isfinite(sims_i), sims_i, -np.inf).mean(axis=0))  # [B]
    best_start = int(np.nanargmin(start_losses))
    poses, stopped, masks = start_results[best_start]
    history.extend(dict(r, level=0) for r in start_histories[best_start])
    # Each bone continues from the start where *it* matched best (its mean similarity over the
    # views): the bones' starts need not be good in the same start.
    # A bone leaves the jointly best start only for a clearly better one of its own (scores on
    # small exclusive masks are noisy where bones overlap).
    bone_starts = []
    for b in range(len(names)):
        own_best = int(np.argmax([s[b] for s in start_sims]))
        better = start_sims[own_best][b] > start_sims[best_start][b] + SWITCH_MARGIN
        bone_starts.append(own_best if better else best_start)
    poses = np.stack([start_results[bone_starts[b]][0][b] for b in range(len(names))])
    init_poses = np.stack([starts[bone_starts[b]][b] for b in range(len(names))])
    loss = start_losses[best_start]
    for li, level in enumerate(levels[1:], start=1):
        buf = []
        poses, loss, n, stopped, masks = _run_level(
            level, poses, geometry_for(level), fns_for(level), config, record_into(buf), best_start
        )
        n_iter += n
        history.extend(dict(r, level=li) for r in buf)

    last = levels[-1]
    evaluate = fns_for(last)[2]
    if config.roll_search_deg > 0:
        poses = _roll_search(last, evaluate, poses, geometry_for(last), bone_frames, config)
        if config.roll_refine_iterations:
            buf = []
            poses, loss, n, stopped, masks = _run_level(
                dataclasses.replace(last, iterations=config.roll_refine_iterations),
                poses,
                geometry_for(last),
                fns_for(last),
                config.replace(learning_rate=0.1 * config.learning_rate),  # stay in the valley found
                record_into(buf),
                best_start,
            )
            n_iter += n
            history.extend(dict(r, level=len(levels) - 1, roll_refinement=True) for r in buf)
    frames = _frames(poses, geometry_for(last))
    masks = _level_masks(last, evaluate, zeros, frames, config)  # at the final poses (reported similarities)
    _, sims, Ls = evaluate(zeros, frames, last.datas, last.Ps, last.targets, masks)
    _, sims0, _ = evaluate(
        zeros, _frames(init_poses, geometry_for(last)), last.datas, last.Ps, last.targets, masks
    )
    sims, sims0 = np.asarray(sims, np.float64), np.asarray(sims0, np.float64)
    sim_fn = _similarity(config.metric)
    view_sim = {}
    for v, view in enumerate(views):
        union = jnp.max(masks[v], axis=0)
        view_sim[view.name] = float(sim_fn(Ls[v].sum(axis=0), last.targets[v], union))
    result_poses = {
        n: RigidTransform.from_matrix(jnp.asarray(poses[i]), pivots[i]) for i, n in enumerate(names)
    }
    return MultiViewResult(
        poses=result_poses,
        similarity={
            view.name: {n: float(sims[v, b]) for b, n in enumerate(names)} for v, view in enumerate(views)
        },
        view_similarity=view_sim,
        loss=float(loss),
        initial_similarity={
            view.name: {n: float(sims0[v, b]) for b, n in enumerate(names)} for v, view in enumerate(views)
        },
        history=history,
        start_losses=np.asarray(start_losses),
        best_start=best_start,
        bone_starts={n: bone_starts[b] for b, n in enumerate(names)},
        converged=bool(stopped),
        n_iterations=n_iter,
        time_s=time.perf_counter() - t0,
        rois={view.name: rois[v] for v, view in enumerate(views)},
    )


def render_views(
    volumes: Mapping[str, Volume],
    poses: Mapping[str, RigidTransform],
    views: Sequence[View],
    *,
    taper_mm: float = 0.0,
    step_mm=None,
    backend: str = "auto",
) -> list[np.ndarray]:
    """Full-size DRRs (sum of the bones' attenuation line integrals, :func:`attenuation_volume`) of
    ``poses`` in every view: a list of [H, W] arrays (for overlays and checks)."""
    vols = _check_volumes(volumes)
    views = _check_views(views)
    out = []
    for view in views:
        H, W = view.shape
        total = np.zeros((H, W))
        for name, vol in vols.items():
            att = attenuation_volume(vol, taper_mm)
            Pb = object_projection(jnp.asarray(view.P, jnp.float32), poses[name])
            total += np.asarray(
                project(att.data, att.affine, Pb, H, W, step_mm=step_mm, backend=backend)[..., 0]
            )
        out.append(total)
    return out


def view_similarities(result: MultiViewResult) -> dict[str, float]:
    """Mean similarity over bones, per view."""
    return {v: float(np.mean(list(per_bone.values()))) for v, per_bone in result.similarity.items()}


# ----------------------------------------------------------------------------------------------
# Tracking


# Flags that can trigger a re-seed (a pose jump alone is usually real motion).
TRACKING_FLAGS = ("similarity_drop", "pose_jump", "not_converged", "low_similarity")

# A re-seeding function: (frame index, the frame's views) -> seeds (each {bone: RigidTransform}).
Reseed = Callable[[int, list[View]], Sequence[Mapping[str, RigidTransform]]]


def _tracking_flags(res, prev, min_similarity, max_similarity_drop, max_jump_mm, max_jump_deg) -> dict:
    """The quality flags of one frame's result against the previous frame's (None for the first)."""
    flag = {
        "similarity_drop": False,
        "pose_jump": False,
        "not_converged": not res.converged,
        "low_similarity": min_similarity is not None
        and min(s for per_bone in res.similarity.values() for s in per_bone.values()) < min_similarity,
    }
    if prev is not None:
        flag["similarity_drop"] = res.mean_similarity() < prev.mean_similarity() - max_similarity_drop
        for name, pose in res.poses.items():
            d = pose_difference(prev.poses[name], pose)
            if d["translation_mm"] > max_jump_mm or d["rotation_deg"] > max_jump_deg:
                flag["pose_jump"] = True
    return flag


def track_sequence(
    volumes: Mapping[str, Volume],
    frames_per_view: Sequence[Sequence[np.ndarray]],
    views: Sequence[View],
    initial_poses: Mapping[str, RigidTransform] | Sequence[Mapping[str, RigidTransform]],
    config: MultiViewConfig | None = None,
    *,
    first_config: MultiViewConfig | None = None,
    max_similarity_drop: float = 0.1,
    max_jump_mm: float = 5.0,
    max_jump_deg: float = 5.0,
    min_similarity: float | None = None,
    reseed: Reseed | None = None,
    reseed_on: Sequence[str] = ("similarity_drop", "low_similarity"),
    reseed_config: MultiViewConfig | None = None,
    on_frame: Callable[[int, MultiViewResult, dict[str, bool]], None] | None = None,
) -> TrackingResult:
    """Registers a sequence frame by frame, each frame warm-started from the previous frame's poses.

    A warm start converges only within roughly a bone's width of the new pose; a faster motion
    between frames (or a dropped frame) leaves the bone on another shadow, which the flags show.
    With ``reseed``, a frame whose warm-started result raises any flag of ``reseed_on`` is
    registered again from the seeds ``reseed`` returns for it (e.g. the automatic search,
    :func:`jaxdrr.registration.initialize.search_seeds`), and the result with the higher mean
    similarity is kept; the next frame starts from it::

        frames8 = [[read_fluoro_frame(path, downsample=8) for path in cam] for cam in paths]
        reseed = lambda t, views: search_seeds(volumes, [cam[t] for cam in frames8], Ps8)
        track_sequence(volumes, images, views, poses, reseed=reseed, min_similarity=0.35)

    Args:
      volumes: ``{bone: Volume}``.
      frames_per_view: ``[view][frame]`` images (every view the same number of frames, each frame
        the shape of its view's image).
      views: the calibrated views (P, mask, name; their ``image`` is replaced by each frame's).
      initial_poses: the poses for the first frame's start (``{bone: RigidTransform}``, or a list of
        them: the seeds of a multi-start, e.g. from the automatic search).
      config: settings of every frame after the first (default: :class:`MultiViewConfig` with one
        start: the previous frame's poses). ``first_config``: settings of the first frame (default ``config``).
      max_similarity_drop: flag a frame whose mean similarity is lower than the previous frame's by
        more than this.
      max_jump_mm, max_jump_deg: flag a frame whose pose moved more than this from the previous
        frame (any bone; pivot translation and rotation angle).
      min_similarity: flag a frame in which any bone's similarity in any view is below this (None:
        no such flag). The scale depends on the images: on the Autoscoper wrist's frame 0002
        (gradient correlation) converged bones score 0.47-0.56 and bones left on another shadow
        0.17-0.28, so 0.35 separates them there.
      reseed: ``(frame index, the frame's views) -> seeds`` (a list of ``{bone: RigidTransform}``;
        an empty list keeps the warm-started result), or None (never re-seed).
      reseed_on: the flags (of ``TRACKING_FLAGS``) that trigger a re-seed.
      reseed_config: settings of the registration from the re-seeds (default ``first_config``).
      on_frame: called with (frame index, kept result, flags) after each frame (e.g. to save
        progress).

    Returns:
      :class:`TrackingResult` (per-frame results, flags and warm-started results).

    Raises:
      JaxdrrError: inconsistent frames or views, or unknown ``reseed_on`` flags.
    """
    views = _check_views(views)
    if len(frames_per_view) != len(views):
        raise JaxdrrError(f"frames_per_view has {len(frames_per_view)} views, expected {len(views)}")
    counts = {len(f) for f in frames_per_view}
    if len(counts) != 1 or 0 in counts:
        raise JaxdrrError(
            f"every view needs the same, non-zero number of frames, got {[len(f) for f in frames_per_view]}"
        )
    unknown = sorted(set(reseed_on) - set(TRACKING_FLAGS))
    if unknown:
        raise JaxdrrError(f"reseed_on names unknown flags {unknown}; choose from {list(TRACKING_FLAGS)}")
    if min_similarity is not None and not -1.0 <= float(min_similarity) <= 1.0:
        raise JaxdrrError(f"min_similarity must lie in [-1, 1] (a correlation), got {min_similarity!r}")
    config = config or MultiViewConfig(n_starts=1)
    first_config = first_config or config
    reseed_config = reseed_config or first_config
    limits = (min_similarity, max_similarity_drop, max_jump_mm, max_jump_deg)
    n_frames = counts.pop()
    results, flags, tracked = [], [], []
    poses = dict(initial_poses) if isinstance(initial_poses, Mapping) else list(initial_poses)
    for t in range(n_frames):
        frame_views = []
        for v, view in enumerate(views):
            img = np.asarray(frames_per_view[v][t], np.float64)
            if img.shape != view.shape:
                raise JaxdrrError(
                    f"frame {t} of view {view.name!r} has shape {img.shape}, expected {view.shape}"
                )
            frame_views.append(view.replace(image=img))
        prev = results[-1] if results else None
        res = register_multiview(volumes, frame_views, poses, first_config if t == 0 else config)
        tracked.append(res)
        flag = _tracking_flags(res, prev, *limits)
        flag["reseeded"] = flag["recovered"] = False
        if reseed is not None and any(flag[f] for f in reseed_on):
            seeds = list(reseed(t, frame_views))
            flag["reseeded"] = bool(seeds)
            if seeds:
                again = register_multiview(volumes, frame_views, seeds, reseed_config)
                if again.mean_similarity() > res.mean_similarity():
                    res = again
                    flag.update(_tracking_flags(res, prev, *limits), recovered=True)
        flag["ok"] = not any(flag[f] for f in TRACKING_FLAGS)
        results.append(res)
        flags.append(flag)
        poses = res.poses
        if on_frame is not None:
            on_frame(t, res, flag)
    return TrackingResult(results=results, flags=flags, tracked=tracked)
