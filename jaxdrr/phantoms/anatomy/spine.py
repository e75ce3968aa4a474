"""The spine of the anatomical phantom: vertebral levels C5-L5 along the trunk's curve, discs, vertebrae.

:func:`spine_levels` and :func:`spine_y` (lumbar lordosis, thoracic kyphosis) place every vertebral
body in the trunk frame; the ribs and the back muscles are placed relative to them. :func:`paint_spine`
paints the intervertebral discs, then each vertebra (body, pedicles, laminae, facets, spinous and
transverse processes around the spinal canal) as bone.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.phantoms.anatomy.scene import Scene, trabecular_hu
from jaxdrr.phantoms.anatomy.shapes import both_sides, ellipsoid, elliptic_cylinder, tube


def spine_levels():
    """Vertebral levels from L5 up to C5.

    Returns:
      [(name, body centre z, half height, disc below (mm), body semi-axes a (x) and b (y)), ...].
    """
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


SPINE_Y = (
    [60, 120, 200, 270, 330, 420, 500, 580, 640, 700],
    [-50, -40, -30, -34, -44, -62, -64, -52, -38, -30],
)


def spine_y(z):
    """Centre (y) of the vertebral bodies along the trunk: lumbar lordosis, thoracic kyphosis."""
    return np.interp(z, *SPINE_Y)


def _vertebra(sc: Scene, h, name, zc, hh, a, b):
    yb = float(spine_y(zc))
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
    prims += both_sides(right) + spin
    f = sc.field(prims, 2.5)
    sc.cut(f, ellipsoid((0, yb - b - 12, zc), (9.0, 8.0, hh + 8)), 1.0)  # spinal canal
    sc.bone(f, 1.4, h["cortical"], trabecular_hu(h, 1.0), level=0.0)
    # Pedicles seen end-on in an AP view: rings of thick cortex.
    sc.bone(sc.field(both_sides(right[0])), 1.8, h["cortical"], trabecular_hu(h, 0.6), level=0.6)


def paint_spine(sc: Scene, h, names=None):
    """Intervertebral discs, then the vertebrae (all levels, or those in ``names``)."""
    for name, zc, hh, disc, a, b in spine_levels():
        if names is not None and name not in names:
            continue
        yb = float(spine_y(zc - hh - disc / 2))
        sc.fill(
            sc.field(elliptic_cylinder((0, yb, zc - hh - disc / 2), a - 1, b - 1, disc / 2 + 1.5)), h["disc"]
        )
    for name, zc, hh, _, a, b in spine_levels():
        if names is None or name in names:
            _vertebra(sc, h, name, zc, hh, a, b)
