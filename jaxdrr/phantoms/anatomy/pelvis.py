"""The pelvis of the anatomical phantom: hip bones, sacrum, femurs, pelvic organs and muscles.

:func:`paint_pelvic_organs`: bladder, prostate, psoas, iliacus and obturator internus.
:func:`paint_pelvis_bones`: the hip bones (the iliac wing as a plate in its own frame, the pelvic
brim, ischium and pubis around the obturator foramen, the acetabulum), the sacrum with its foramina and
sacro-iliac joints, the femurs (head, neck, trochanters, a shaft with a medullary canal), the hip
joint cartilage, the iliac crests and the cortical lines an AP view sees tangentially (pelvic brim,
teardrops).
"""

from __future__ import annotations

import numpy as np

from jaxdrr.phantoms.anatomy.scene import Field, Scene, trabecular_hu
from jaxdrr.phantoms.anatomy.shapes import (
    Prim,
    axis_rotation,
    both_sides,
    capsule,
    catmull_rom,
    ellipsoid,
    elliptic_cylinder,
    plate,
    plate_through,
    sigmoid,
    smooth_tube,
    tube,
)


def paint_pelvic_organs(sc: Scene, h):
    """Bladder, prostate, psoas (over the pelvic brim), iliacus and obturator internus."""
    sc.fill(sc.field(ellipsoid((0, 45, -28), (50, 38, 36))), h["muscle"])  # bladder wall
    sc.fill(sc.field(ellipsoid((0, 45, -28), (47, 35, 33))), h["urine"])
    sc.fill(sc.field(ellipsoid((0, 32, -72), (20, 16, 17))), h["organ"] - 10)  # prostate
    for s in (1.0, -1.0):
        # Psoas descending beside the spine, over the pelvic brim to the lesser trochanter.
        pts = [
            (s * 26, -22, 290),
            (s * 38, -20, 210),
            (s * 48, -12, 130),
            (s * 60, 8, 65),
            (s * 74, 32, 18),
            (s * 84, 36, -20),
            (s * 100, 0, -62),
        ]
        sc.fill(sc.field(smooth_tube(pts, [9, 17, 23, 22, 18, 14, 9]), 4.0), h["muscle"])
        # Iliacus in the iliac fossa.
        U, V, W = _ilium_frame(s)
        o = np.array([s * 42, -60, 70]) + 60 * U + 28 * V - 16 * W
        sc.fill(sc.field(ellipsoid(o, (55, 42, 14), np.stack([U, V, W], 1))), h["muscle"])
        sc.fill(sc.field(ellipsoid((s * 52, -5, -35), (9, 34, 32))), h["muscle"])  # obturator internus


def _ilium_frame(s):
    """Axes of the iliac wing: U along the wing (posterior -> anterior), V up it, W lateral."""
    U = np.array([s * 83.0, 105.0, 5.0])
    U /= np.linalg.norm(U)
    V = np.array([s * 63.0, 35.0, 70.0])
    V -= (V @ U) * U
    V /= np.linalg.norm(V)
    W = np.cross(U, V) * s
    return U, V, W


def _hip_bone(sc: Scene, h):
    """Both hip bones (ilium, ischium, pubis around the acetabulum) as one field."""
    prims = []
    U, V, W = _ilium_frame(1.0)
    # Traced in AP (x, z): PSIS (40, 115), crest summit (85, 146), lateral crest (137, 95), ASIS (128, 62),
    # AIIS (115, 32), then the acetabulum, the greater sciatic notch and the PIIS.
    outline = catmull_rom(
        [
            (-20, 50),
            (-3, 70),
            (33, 81),
            (76, 76),
            (120, 49),
            (144, 21),
            (145, -15),
            (136, -32),
            (139, -47),
            (118, -64),
            (88, -72),
            (55, -72),
            (25, -58),
            (7, -36),
            (-9, -8),
            (-21, 22),
        ],
        8,
        closed=True,
    )

    def thickness(u, v, sd2):
        rim = 5.0 * np.exp(np.minimum(sd2, 0.0) / 8.0)
        post = 10.0 * sigmoid((-u + 10.0) / 7.0)
        low = 10.0 * sigmoid((-v - 36.0) / 7.0)
        # The iliac pillar: a thick column from the acetabular roof up to the iliac tubercle.
        t = np.clip(((u - 85.0) * 20.0 + (v + 50.0) * 105.0) / (20.0**2 + 105.0**2), 0.0, 1.0)
        dist2 = (u - 85.0 - 20.0 * t) ** 2 + (v + 50.0 - 105.0 * t) ** 2
        pillar = 3.5 * np.exp(-dist2 / (2 * 9.0**2))
        return 2.0 + rim + post + low + pillar

    bend = lambda u, v: -0.0022 * (u - 60.0) ** 2  # noqa: E731
    prims.append(plate((42, -60, 70), U, V, outline, thickness, bend=bend))
    # Pelvic brim (arcuate / iliopectineal line), ischium, rami, pubic body, acetabulum.
    prims += smooth_tube(
        [(38, -52, 72), (55, -26, 42), (62, 4, 18), (56, 30, 0), (40, 47, -12), (22, 55, -20)],
        [5.5, 5.5, 5.5, 5, 5, 5],
    )
    # Ischium and pubis: one plate around the obturator foramen, thick at the ischial tuberosity,
    # the superior pubic ramus and the pubic body.
    prims.append(
        plate_through(
            [
                (3, 56, -20),
                (18, 54, -16),
                (38, 44, -6),
                (56, 30, 2),
                (66, 14, -12),
                (72, -16, -26),
                (74, -40, -40),
                (70, -44, -58),
                (64, -38, -80),
                (52, -22, -88),
                (38, 2, -86),
                (24, 30, -78),
                (8, 50, -66),
                (3, 54, -62),
            ],
            holes=[
                [
                    (30, 44, -26),
                    (48, 32, -22),
                    (62, 12, -30),
                    (64, -8, -46),
                    (56, -14, -64),
                    (44, 2, -72),
                    (30, 28, -64),
                    (24, 40, -46),
                ]
            ],
            base=2.0,
            rim=(2.2, 3.0),
            ridges=[
                ([(20, 52, -22), (40, 40, -14), (62, 20, -8)], 5.0, 6.0),
                ([(76, -30, -28), (68, -34, -60), (58, -28, -80)], 11.0, 10.0),
                ([(6, 54, -28), (6, 52, -58)], 5.0, 5.0),
            ],
        )
    )
    prims += tube([(62, -46, -12), (48, -54, -18)], [5, 3])  # ischial spine
    f = sc.field(prims + [p.mirrored() for p in prims], 6.0)
    n_open = np.array([0.665, 0.342, -0.665])
    for s in (1.0, -1.0):
        # The acetabulum: a ball whose lateral-inferior-anterior part is cut off along the opening plane.
        H = np.array([s * 88.0, 0.0, 0.0])
        ball = ellipsoid((s * 84, -4, 6), (33, 33, 36))
        acetabulum = sc.field(ball)
        n = n_open * (s, 1, 1)
        opening = Prim(
            ball.lo - 5,
            ball.hi + 5,
            lambda X, Y, Z, H=H, n=n: -((X - H[0]) * n[0] + (Y - H[1]) * n[1] + (Z - H[2]) * n[2] - 2.0),
        )
        f = sc.merge(f, sc.cut(acetabulum, opening), 6.0)
        sc.cut(f, ellipsoid(H, (27.5, 27.5, 27.5)))  # the cup
    return f


def _sacrum(sc: Scene, h, hip: Field | None):
    R = np.array([[1.0, 0, 0], [0, 0.84, 0.54], [0, -0.54, 0.84]])
    R2 = np.array([[1.0, 0, 0], [0, 0.96, 0.28], [0, -0.28, 0.96]])
    prims = [
        elliptic_cylinder((0, -40, 88), 26, 18, 11, rounding=2.5),  # S1 body
        ellipsoid((0, -52, 80), (40, 18, 20), R),
        ellipsoid((0, -62, 62), (40, 17, 18), R),
        ellipsoid((0, -74, 38), (34, 15, 16), R2),
        ellipsoid((0, -80, 16), (24, 10, 14), R2),
        ellipsoid((0, -82, -4), (14, 8, 12)),
        ellipsoid((32, -52, 80), (24, 18, 17), axis_rotation((0, 1, 0), -25)).mirrored(),
        ellipsoid((32, -52, 80), (24, 18, 17), axis_rotation((0, 1, 0), -25)),
    ]
    prims += both_sides(ellipsoid((30, -64, 58), (20, 16, 22), R))  # lateral masses
    prims += smooth_tube(
        [(0, -80, 90), (0, -94, 58), (0, -99, 28), (0, -97, 6)], [6, 6, 5, 4]
    )  # median crest
    prims += tube([(0, -81, -14), (0, -77, -30), (0, -69, -44)], [7, 5.5, 4])  # coccyx
    f = sc.field(prims, 7.0)
    sc.cut_field(f, hip, offset=2.5)  # sacro-iliac joints
    d = np.array([0.0, 0.95, -0.3]) * 40
    for x, c, r in [(27, (-50, 74), 5.5), (23, (-66, 51), 5.0), (20, (-76, 28), 4.3), (16, (-81, 8), 3.6)]:
        for s in (1, -1):
            p = np.array([s * x, c[0], c[1]])
            sc.cut(f, capsule(p - d, p + d, r), 1.0)
    sc.cut(f, smooth_tube([(0, -60, 100), (0, -76, 62), (0, -86, 30), (0, -88, 5)], [9, 8, 6, 4]), 1.5)
    return f


def _femur(sc: Scene, h, s):
    H = np.array([s * 88.0, 0.0, 0.0])
    head = sc.field(ellipsoid(H, (24, 24, 24)))
    prims = tube([H + (s * 14, -3, -12), (s * 128, -10, -34)], [14, 16.5])  # neck
    prims += [ellipsoid((s * 142, -16, -18), (13, 20, 22))]  # greater trochanter
    prims += tube([(s * 138, -22, -22), (s * 114, -20, -68)], [9, 9])  # intertrochanteric crest
    prims += [ellipsoid((s * 108, -22, -70), (10, 10, 13))]  # lesser trochanter
    prims += smooth_tube(
        [(s * 132, -8, -48), (s * 127, -4, -100), (s * 116, 2, -220), (s * 106, 6, -330)], [17, 15, 14, 14]
    )
    f = sc.merge(sc.field(prims, 5.0), head, 3.0)
    calcar = np.array([s * 112.0, -8.0, -34.0])  # the thick cortex under the neck (calcar femorale)

    def cortex(X, Y, Z):
        d2 = (X - calcar[0]) ** 2 + (Y - calcar[1]) ** 2 + (Z - calcar[2]) ** 2
        return 1.3 + 2.5 * np.exp(-d2 / (2 * 12.0**2)) + 5.0 * np.clip((-85.0 - Z) / 55.0, 0.0, 1.0)

    marrow = lambda X, Y, Z: np.clip((-95.0 - Z) / 45.0, 0.0, 1.0)  # noqa: E731
    sc.bone(f, cortex, h["cortical"], trabecular_hu(h, 1.1), marrow=marrow, level=-0.15)


def paint_pelvis_bones(sc: Scene, h):
    """Hip bones, sacrum, femurs with hip cartilage, iliac crests, pelvic brim and teardrop lines."""
    hip = _hip_bone(sc, h)
    sacrum = _sacrum(sc, h, hip)
    for s in (1.0, -1.0):  # hip joint cartilage and capsule around the heads
        sc.fill(sc.field(ellipsoid((s * 88.0, 0.0, 0.0), (27.5, 27.5, 27.5))), h["cartilage"])
        _femur(sc, h, s)
    sc.bone(hip, 1.4, h["cortical"], trabecular_hu(h, 0.9), level=0.1)
    sc.bone(sacrum, 1.6, h["cortical"], trabecular_hu(h, 0.9), level=0.0)
    # The iliac crests: thick rounded rims of dense bone along the top of the wings.
    U, V, W = _ilium_frame(1.0)
    uv = np.array([(-16, 47), (-1, 64), (33, 75), (74, 70), (114, 46), (137, 19), (138, -12)], np.float64)
    crest = [np.array([42.0, -60.0, 70.0]) + u * U + v * V - 0.0022 * (u - 60.0) ** 2 * W for u, v in uv]
    sc.bone(
        sc.field(both_sides(smooth_tube(crest, [7, 6.5, 6, 6, 5.5, 5, 5.5]))),
        2.2,
        h["cortical"],
        trabecular_hu(h, 0.9),
        level=0.1,
    )
    # Lines of cortex seen tangentially: the pelvic brim (iliopectineal line) and the teardrops.
    brim = [(40, -50, 70), (55, -26, 42), (61, 2, 18), (55, 28, 0), (40, 45, -12), (22, 53, -20)]
    sc.bone(sc.field(both_sides(smooth_tube(brim, 3.0))), 3.0, h["cortical"])
    sc.bone(
        sc.field(both_sides(smooth_tube([(57, -8, -8), (56, -4, -22), (60, -2, -30)], 2.5))),
        2.5,
        h["cortical"],
    )
