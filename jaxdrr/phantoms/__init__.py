"""Phantoms: analytic test objects with exact line integrals, and a procedural CT generator with labels.

Two modules:

* :mod:`jaxdrr.phantoms.analytic`: the painted pelvis phantom (:func:`phantom`, :func:`pelvis_shapes`),
  primitive :class:`Shape` records, voxelisation and *exact* line integrals through shapes, boxes,
  spheres and ellipsoids. Use it to test projectors against closed-form answers.
* :mod:`jaxdrr.phantoms.synthetic`: random, anatomically plausible CTs of a chest, abdomen, pelvis,
  spine or limb with exact partial-volume material fractions (air / soft tissue / bone / metal) and a
  fine tissue label map, plus randomised CT image formation (blur, textured noise, cupping, metal
  streaks, calibration). Use it as training data for material decomposition
  (:func:`synthetic_ct`, :func:`synthetic_volume`, :func:`demo_ct`).
* :mod:`jaxdrr.phantoms.demo`: one detailed, deterministic adult anatomy (pelvis, chest, abdomen, or
  a knee) with textured bone, organs and bowel gas, for pictures: :func:`demo_volume` (also
  ``jaxdrr.phantom(kind="pelvis")``), the CLI's built-in CT.

Everything that used to be importable from the single-file ``jaxdrr.phantoms`` module is re-exported
here, so ``from jaxdrr.phantoms import phantom, centered_affine, ...`` keeps working.
"""

from jaxdrr.phantoms.analytic import (
    HU_AIR,
    HU_CLIP,
    PAINT_MODES,
    PELVIS_LABELS,
    SHAPE_KINDS,
    Shape,
    box_chord_length,
    box_ray_interval,
    centered_affine,
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
    phantom,
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
from jaxdrr.phantoms.demo import DEMO_REGIONS, demo_hu, demo_volume
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

__all__ = [
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
    "phantom",
    "voxelize",
    "paint_points",
    "centered_affine",
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
    # demo.py
    "DEMO_REGIONS",
    "demo_volume",
    "demo_hu",
]
