"""The limb region of the anatomical phantom: a right knee in extension.

:func:`paint_knee` paints the leg's fat and muscle, the fat pads, the distal femur with its condyles
and intercondylar notch, the articular cartilage, the tibial plateau and spines, the fibular head, the
patella and the patellar tendon. The knee has its own frame: joint line at z = 0, +x lateral.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.phantoms.anatomy.scene import Field, Scene, trabecular_hu
from jaxdrr.phantoms.anatomy.shapes import (
    ellipse_sd,
    ellipsoid,
    elliptic_cylinder,
    interp_f32,
    smooth_tube,
    tube,
)


def paint_knee(sc: Scene, h):
    """A right knee in extension (joint line at z = 0, +x lateral) for an AP view."""
    X, Y, Z = sc.coords((0, 0, 0), sc.shape)
    r = interp_f32(Z, [-150, -60, 0, 60, 150], [54, 58, 60, 62, 70])
    leg = Field(np.zeros(3, int), np.asarray(sc.shape), ellipse_sd(X - 2.0, Y - 6.0, r, r * 0.92))
    sc.fill(leg, h["fat"], texture=(3.0, 6.0))
    leg.sd = leg.sd + 9.0
    sc.fill(leg, h["muscle"], texture=(3.0, 8.0))
    sc.fill(sc.field(ellipsoid((0, -38, 5), (26, 16, 45))), h["fat"])  # popliteal fat
    sc.fill(sc.field(ellipsoid((0, 34, -8), (20, 12, 16))), h["fat"])  # infrapatellar (Hoffa) fat pad
    sc.fill(sc.field(ellipsoid((0, 28, 62), (26, 10, 22))), h["fat"])  # suprapatellar fat
    sc.fill(sc.field(tube([(0, 44, 8), (0, 36, -40)], 5.0)), h["muscle"] + 20)  # patellar tendon
    cort, trab = h["cortical"], trabecular_hu(h, 1.0)
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
