"""Phantoms: analytic test objects with exact line integrals, a demo anatomy, a procedural CT generator.

* :mod:`jaxdrr.phantoms.analytic`: the painted pelvis phantom (:func:`analytic_phantom`,
  :func:`pelvis_shapes`), primitive :class:`Shape` records, voxelisation and *exact* line integrals
  through shapes, boxes, spheres and ellipsoids. Use it to test projectors against closed-form answers.
* :mod:`jaxdrr.phantoms.anatomy`: one detailed, deterministic adult anatomy (pelvis, chest, abdomen,
  or a knee) with textured bone, organs and bowel gas, for pictures: :func:`demo_volume` (also
  ``jaxdrr.phantom(kind="pelvis")``), the CLI's built-in CT.
* :mod:`jaxdrr.phantoms.synthetic`: random, anatomically plausible CTs of a chest, abdomen, pelvis,
  spine or limb with exact partial-volume material fractions (air / soft tissue / bone / metal) and a
  fine tissue label map, plus randomised CT image formation (blur, textured noise, cupping, metal
  streaks, calibration). Use it as training data for material decomposition
  (:func:`synthetic_ct`, :func:`synthetic_volume`, :func:`demo_ct`).
* :mod:`jaxdrr.phantoms.grid`: the grid convention they share (centred at the world origin,
  :func:`centered_affine`).

:func:`phantom` picks one by ``kind``: the analytic phantom, or a region of the anatomy.
Everything that used to be importable from the single-file ``jaxdrr.phantoms`` module is re-exported
here, so ``from jaxdrr.phantoms import phantom, centered_affine, ...`` keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxdrr.phantoms.analytic import (
    HU_AIR,
    HU_CLIP,
    PAINT_MODES,
    PELVIS_LABELS,
    SHAPE_KINDS,
    Shape,
    analytic_phantom,
    box_chord_length,
    box_ray_interval,
    cylinder,
    cylinder_chord_length,
    cylinder_ray_interval,
    ellipsoid,
    ellipsoid_chord_length,
    ellipsoid_line_integral,
    ellipsoid_ray_interval,
    ellipsoid_volume,
    paint_points,
    pelvis_label_map,
    pelvis_landmarks,
    pelvis_shapes,
    phantom_line_integral,
    rotation_from_axis,
    rotation_matrix,
    shape_ray_interval,
    sphere_line_integral,
    sphere_volume,
    uniform_box,
    uniform_box_line_integral,
    voxelize,
)
from jaxdrr.phantoms.anatomy import DEMO_REGIONS, demo_hu, demo_volume
from jaxdrr.phantoms.grid import centered_affine
from jaxdrr.phantoms.synthetic import (
    MATERIAL_CLASSES,
    REGIONS,
    TISSUE_TO_CLASS,
    TISSUES,
    ScannerConfig,
    SyntheticCT,
    demo_ct,
    synthetic_ct,
    synthetic_volume,
)
from jaxdrr.volume import Volume

__all__ = [
    # this module: the kind dispatch
    "phantom",
    # grid.py
    "centered_affine",
    # analytic.py
    "Shape",
    "ellipsoid",
    "cylinder",
    "rotation_matrix",
    "rotation_from_axis",
    "pelvis_shapes",
    "pelvis_label_map",
    "pelvis_landmarks",
    "PELVIS_LABELS",
    "voxelize",
    "paint_points",
    "shape_ray_interval",
    "ellipsoid_ray_interval",
    "cylinder_ray_interval",
    "box_ray_interval",
    "ellipsoid_chord_length",
    "cylinder_chord_length",
    "box_chord_length",
    "phantom_line_integral",
    "uniform_box",
    "uniform_box_line_integral",
    "sphere_volume",
    "sphere_line_integral",
    "ellipsoid_volume",
    "ellipsoid_line_integral",
    "HU_AIR",
    "HU_CLIP",
    "SHAPE_KINDS",
    "PAINT_MODES",
    # synthetic.py
    "MATERIAL_CLASSES",
    "TISSUES",
    "TISSUE_TO_CLASS",
    "REGIONS",
    "ScannerConfig",
    "SyntheticCT",
    "synthetic_ct",
    "synthetic_volume",
    "demo_ct",
    # anatomy/
    "DEMO_REGIONS",
    "demo_volume",
    "demo_hu",
]


def phantom(
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    fov_mm: Sequence[float] = (380.0, 300.0, 240.0),
    screw: bool = True,
    supersample: int = 2,
    *,
    bowel_gas: bool = True,
    shapes: Sequence[Shape] | None = None,
    kind: str = "analytic",
    seed: int = 0,
) -> Volume:
    """The pelvis-like analytic phantom (or, with ``kind``, an anatomical CT) as a HU :class:`Volume`.

    Args:
      shape: grid shape (I, J, K) along (x = Right, y = Anterior, z = Superior); default
        (128, 128, 96) for the analytic phantom, the region's own default for the other kinds.
      spacing: voxel spacing in mm (scalar or 3); default ``fov_mm / shape``.
      fov_mm: field of view (mm) used when ``spacing`` is None.
      screw: include the titanium screw (see :func:`pelvis_shapes`).
      supersample: sub-samples per axis per edge voxel (anti-aliasing); 1 = point sampling.
      bowel_gas: include the asymmetric bowel gas pockets.
      shapes: voxelise this shape list instead of :func:`pelvis_shapes` (``screw``/``bowel_gas``
        are then ignored).
      kind: "analytic" (:func:`analytic_phantom`), or "pelvis", "chest", "abdomen", "limb": the
        detailed procedural adult CT of :func:`demo_volume` (textured bone, organs, bowel gas; no
        exact line integrals). For those, ``shape``, ``spacing`` and ``seed`` are passed on
        (``spacing`` alone keeps the region's field of view) and the analytic options are ignored.
      seed: subject of the anatomical kinds.

    Returns:
      A ``Volume`` (``kind="hu"``) centred at the world origin with a diagonal RAS+ affine; the
      analytic counterpart is ``pelvis_shapes(screw, bowel_gas)`` with :func:`phantom_line_integral`.

    Raises:
      ValueError: unknown ``kind``.
    """
    if kind == "analytic":
        return analytic_phantom(
            shape, spacing, fov_mm, screw, supersample, bowel_gas=bowel_gas, shapes=shapes
        )
    if kind not in DEMO_REGIONS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose 'analytic' or one of {DEMO_REGIONS}")
    return demo_volume(kind, seed=seed, shape=shape, spacing_mm=spacing)
