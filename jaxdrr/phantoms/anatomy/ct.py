"""The anatomical phantom as a CT: the regions' fields of view, the painting order, image formation.

One adult anatomy is painted in the trunk frame, and a region (:data:`DEMO_REGIONS`) is a field of
view cut out of it (the knee has a frame of its own). :func:`demo_hu` paints the whole trunk (or the
knee) on the region's grid, parts outside the grid costing nothing, then applies a light CT image
formation (Gaussian blur, noise) and clips to the 12-bit CT range; :func:`demo_volume` returns it as
a :class:`jaxdrr.Volume`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxdrr.errors import JaxdrrError
from jaxdrr.phantoms.anatomy.abdomen import paint_bowel, paint_upper_abdomen
from jaxdrr.phantoms.anatomy.body import paint_body
from jaxdrr.phantoms.anatomy.chest import paint_chest_bones, paint_lungs, paint_mediastinum
from jaxdrr.phantoms.anatomy.knee import paint_knee
from jaxdrr.phantoms.anatomy.pelvis import paint_pelvic_organs, paint_pelvis_bones
from jaxdrr.phantoms.anatomy.scene import Scene, subject_tissues
from jaxdrr.phantoms.anatomy.spine import paint_spine
from jaxdrr.phantoms.grid import centered_affine
from jaxdrr.volume import Volume

DEMO_REGIONS = ("pelvis", "chest", "abdomen", "limb")


@dataclasses.dataclass(frozen=True)
class _Region:
    """A region's field of view in the trunk frame and its default voxel spacing."""

    center: tuple[float, float, float]  # trunk frame, mm
    fov: tuple[float, float, float]  # mm
    spacing: tuple[float, float, float]  # default voxel spacing, mm


_REGIONS = {
    "pelvis": _Region((0.0, -5.0, 25.0), (390.0, 280.0, 380.0), (1.6, 1.6, 1.6)),
    "abdomen": _Region((0.0, -5.0, 200.0), (380.0, 280.0, 400.0), (1.75, 1.75, 1.75)),
    "chest": _Region((0.0, -10.0, 490.0), (430.0, 270.0, 390.0), (1.75, 1.75, 1.75)),
    "limb": _Region((0.0, 0.0, 0.0), (170.0, 150.0, 300.0), (1.0, 1.0, 1.0)),
}


def paint_trunk(sc: Scene, h, seed: int):
    """The whole adult trunk; parts outside the grid cost nothing. Random parts (lung vessels,
    bowel) have their own streams, so every region of one seed shows the same subject.

    The order is part of the result: paint covers what is under it (organs over the cavity fat,
    bones last), and the scene draws each texture field from its stream on first use.
    """
    paint_body(sc, h)
    paint_lungs(sc, h, np.random.default_rng([seed, 10]))
    paint_mediastinum(sc, h)
    paint_upper_abdomen(sc, h)
    paint_pelvic_organs(sc, h)
    paint_bowel(sc, h, np.random.default_rng([seed, 11]))
    paint_spine(sc, h)
    paint_chest_bones(sc, h)
    paint_pelvis_bones(sc, h)


def region_center(region: str) -> tuple[float, float, float]:
    """Centre (mm) of a region's field of view in its frame (the trunk frame; the knee's own for "limb")."""
    return _REGIONS[region].center


def _ct_image(sc: Scene, rng, blur_mm=0.7, noise_hu=6.0):
    """Light CT image formation: a Gaussian MTF and slightly correlated noise."""
    hu = ndimage.gaussian_filter(sc.hu, blur_mm / sc.spacing, mode="nearest", truncate=3.0)
    if noise_hu > 0:
        hu += noise_hu * rng.standard_normal(hu.shape, dtype=np.float32)
    return np.clip(hu, -1024.0, 3071.0)


def _grid(region: str, shape, spacing_mm):
    """(shape, spacing, trunk-frame origin) of a region's grid; see :func:`demo_volume` for the defaults."""
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
    h = subject_tissues(np.random.default_rng(seed))
    sc = Scene(shape, spacing, origin, np.random.default_rng([seed, 1]))
    if region == "limb":
        paint_knee(sc, h)
    else:
        paint_trunk(sc, h, seed)
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
    hu, affine = demo_hu(
        region, seed=seed, shape=shape, spacing_mm=spacing_mm, ct_blur_mm=ct_blur_mm, ct_noise_hu=ct_noise_hu
    )
    return Volume.create(hu, affine)
