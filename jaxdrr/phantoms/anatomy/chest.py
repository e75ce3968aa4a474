"""The chest of the anatomical phantom: lungs with vessel trees, mediastinum, ribs and shoulder girdle.

:func:`paint_lungs`: aerated lungs inside the rib cage above the diaphragm, with pulmonary vessel
trees branching from the hila (from a random stream of their own). :func:`paint_mediastinum`: heart,
aorta and great vessels, trachea and main bronchi. :func:`paint_chest_bones`: twelve pairs of ribs
with their costal cartilages, the sternum, clavicles, scapulae and humeri.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.phantoms.anatomy.body import diaphragm_z
from jaxdrr.phantoms.anatomy.scene import Field, Scene, trabecular_hu
from jaxdrr.phantoms.anatomy.shapes import (
    axis_rotation,
    both_sides,
    capsule,
    ellipse_sd,
    ellipsoid,
    interp_f32,
    plate_through,
    smooth_max,
    smooth_tube,
    tube,
)
from jaxdrr.phantoms.anatomy.spine import SPINE_Y, spine_levels, spine_y


def _thoracic_cavity(sc: Scene, X, Y, Z):
    """Inside of the rib cage above the diaphragm (signed distance, mm)."""
    zs = [300, 380, 450, 520, 570, 600, 625, 645]
    a = interp_f32(Z, zs, [128, 134, 137, 131, 114, 92, 58, 15])
    b = interp_f32(Z, zs, [86, 90, 90, 84, 72, 60, 42, 12])
    yc = interp_f32(Z, zs, [-8, -8, -10, -14, -18, -22, -26, -28])
    d = ellipse_sd(X, Y - yc, a, b)
    return smooth_max(d, diaphragm_z(X, Y) - Z, 3.0)


def paint_lungs(sc: Scene, h, rng):
    """Aerated lungs beside the mediastinum, with vessel trees from the hila (``rng``: their stream)."""
    box = sc.box((-150, -110, 300), (150, 90, 650))
    if box is None:
        return
    X, Y, Z = sc.coords(*box)
    cav = _thoracic_cavity(sc, X, Y, Z)
    ysp = interp_f32(Z, *SPINE_Y)
    mediastinum = np.minimum(
        ellipsoid((2, 10, 530), (24, 75, 120)).fn(X, Y, Z),
        ellipse_sd(X, Y - ysp, np.float32(27.0), np.float32(26.0)),
    )
    lung = Field(box[0], box[1], smooth_max(cav, -mediastinum, 8.0).astype(np.float32))
    sc.fill(lung, h["lung"], texture=(3.0, 18.0))
    # Pulmonary vessels: trees from the hila, painted only inside the lungs.
    tubes = []

    def branch(p, d, r, depth):
        length = rng.uniform(20, 32) * (r / 5.0) ** 0.4
        q = p + length * d
        tubes.append(capsule(p, q, r, r * 0.9))
        if depth == 0 or r < 0.9:
            return
        for _ in range(2):
            nd = d + rng.normal(0, 0.42, 3)
            nd /= np.linalg.norm(nd)
            branch(q, nd, r * rng.uniform(0.7, 0.82), depth - 1)

    for s, hilum in ((1.0, (50.0, 2.0, 470.0)), (-1.0, (-52.0, 0.0, 484.0))):
        for d0 in [
            (s * 0.4, 0.1, 0.9),
            (s * 0.8, 0.1, 0.5),
            (s * 0.9, 0.3, 0.1),
            (s * 0.8, -0.2, -0.55),
            (s * 0.45, -0.6, -0.65),
            (s * 0.6, 0.5, -0.6),
            (s * 0.7, -0.5, 0.3),
            (s * 0.3, 0.6, 0.2),
            (s * 0.6, 0.0, -0.9),
        ]:
            d0 = np.asarray(d0) / np.linalg.norm(d0)
            branch(np.asarray(hilum), d0, rng.uniform(6.0, 7.5), 7)
    vessels = sc.field(tubes)
    # Vessels with their bronchial walls and interstitium: a little denser than blood.
    sc.fill(vessels, h["blood"] + 30, where=lambda hu: np.clip((-300.0 - hu) / 300.0, 0.0, 1.0))


def paint_mediastinum(sc: Scene, h):
    """Heart in epicardial fat, aorta and great vessels, trachea and main bronchi."""
    R = axis_rotation((0, 1, 0), -35) @ axis_rotation((0, 0, 1), -15)
    sc.fill(sc.field(ellipsoid((-16, 30, 414), (79, 56, 64), R)), h["fat"] + 10)  # epicardial fat
    sc.fill(sc.field(ellipsoid((-16, 30, 414), (75, 52, 60), R)), h["blood"] + 4)  # heart
    aorta = [
        (24, 32, 440),
        (16, 22, 515),
        (0, 2, 547),
        (-30, -20, 532),
        (-30, -46, 480),
        (-22, -54, 390),
        (-15, -42, 330),
        (-12, -22, 280),
        (-10, -16, 170),
    ]
    sc.fill(sc.field(smooth_tube(aorta, [15, 14, 13, 13, 12, 12, 11, 10, 10]), 2.0), h["blood"])
    for s in (1.0, -1.0):
        sc.fill(
            sc.field(smooth_tube([(-10, -16, 170), (s * 35, -5, 110), (s * 55, 10, 40)], [9, 7, 6])),
            h["blood"],
        )
    sc.fill(sc.field(tube([(28, 12, 610), (28, 16, 450)], 10)), h["blood"])  # superior vena cava
    sc.fill(
        sc.field(smooth_tube([(-18, 36, 452), (-12, 20, 490), (-50, 0, 496)], [13, 12, 10]), 2.0), h["blood"]
    )
    sc.fill(
        sc.field(smooth_tube([(-12, 20, 490), (10, 10, 486), (48, 4, 474)], [12, 11, 9]), 2.0), h["blood"]
    )
    # Trachea (with its wall) and the main bronchi.
    airway = [(2, -2, 700), (1, 4, 560), (0, 6, 503)]
    sc.fill(sc.field(smooth_tube(airway, 12)), h["muscle"] + 40)
    sc.fill(
        sc.field(
            smooth_tube(airway, 9.0)
            + smooth_tube([(0, 6, 506), (30, 2, 480), (44, 0, 466)], [7, 6.5, 5])
            + smooth_tube([(0, 6, 506), (-36, -1, 486), (-52, -4, 470)], [6.5, 6, 5]),
            2.0,
        ),
        -1000.0,
    )


def _rib(sc: Scene, h, i, zc):
    """Rib i (1..12) of the vertebra at height zc, both sides, with its costal cartilage."""
    yb = float(spine_y(zc))
    A = [60, 86, 106, 119, 128, 134, 137, 138, 137, 133, 124, 108][i - 1]
    y_front = [70, 80, 84, 86, 86, 84, 80, 76, 70, 62, 40, 10][i - 1]
    y_back = yb - 32.0
    B = (y_front - y_back) / 2.0
    y0 = y_back + B
    drop = [22, 38, 52, 64, 74, 84, 90, 90, 84, 74, 52, 36][i - 1]
    end = np.deg2rad([70, 68, 66, 64, 62, 60, 56, 48, 40, 30, 5, -20][i - 1])
    start = -np.arccos(min(42.0 / A, 0.99))
    phi = np.linspace(start, end, 14)
    t = (phi - start) / (end - start)
    pts = [(12.0, yb - 6.0, zc + 2.0), (28.0, yb - 26.0, zc + 4.0)]
    pts += [(A * np.cos(p), y0 + B * np.sin(p), zc + 2.0 - drop * tt**1.15) for p, tt in zip(phi, t)]
    r = 4.8 if i > 1 else 6.0
    radii = r * np.concatenate([[0.8, 0.95], np.interp(t, [0, 0.35, 0.6, 1], [1.0, 0.92, 0.68, 0.5])])
    right = smooth_tube(pts, radii, n=3)
    y_mid = y0 + 0.3 * B  # anterior ribs: thinner cortex

    def cortex(X, Y, Z):
        return 1.1 - 0.8 * np.clip((Y - y_mid) / 30.0, 0.0, 1.0)

    sc.bone(sc.field(both_sides(right), 1.5), cortex, h["cortical"], trabecular_hu(h, 0.8), level=0.2)
    if i <= 10:  # costal cartilage to the sternum (ribs 8-10: to the cartilage above)
        e = np.asarray(pts[-1])
        target = (12.0, 82.0, e[2] + 14.0 * min(i, 7) - 10) if i <= 7 else (38.0, 78.0, e[2] + 40.0)
        cart = smooth_tube(
            [e, (e + np.asarray(target)) / 2 + (0, 4, 0), target], [r * 0.9, r * 0.85, r * 0.8]
        )
        sc.fill(sc.field(both_sides(cart), 1.5), h["cartilage"], texture=(1.2, 30.0))


def paint_chest_bones(sc: Scene, h):
    """Ribs (thoracic levels), sternum, clavicles, scapulae and humeri."""
    thoracic = [lv for lv in spine_levels() if lv[0][0] == "T"]
    for name, zc, *_ in thoracic:
        _rib(sc, h, int(name[1:]), zc)
    sternum = sc.field(
        [
            ellipsoid((0, 80, 578), (26, 7, 24)),
            ellipsoid((0, 84, 505), (15, 7, 52)),
            ellipsoid((0, 84, 448), (8, 5, 12)),
        ],
        6.0,
    )
    sc.bone(sternum, 1.0, h["cortical"], trabecular_hu(h, 0.8), level=0.2)
    clavicle = smooth_tube(
        [(20, 70, 598), (60, 74, 605), (105, 52, 614), (145, 12, 624), (165, -8, 624)], [9, 7.5, 6.5, 7, 8.5]
    )
    sc.bone(sc.field(both_sides(clavicle), 2.0), 2.0, h["cortical"], trabecular_hu(h, 0.8), level=0.2)
    scapula = plate_through(
        [
            (75, -95, 615),
            (110, -78, 622),
            (132, -58, 612),
            (148, -42, 598),
            (150, -42, 556),
            (126, -64, 510),
            (96, -90, 455),
            (80, -98, 480),
            (70, -100, 540),
            (68, -100, 590),
        ],
        base=1.4,
        rim=(2.0, 3.0),
        ridges=[
            ([(148, -42, 562), (126, -64, 512), (98, -90, 462)], 4.0, 4.0),
            ([(132, -50, 578), (148, -42, 578)], 9.0, 9.0),
            ([(76, -100, 586), (115, -82, 598), (150, -58, 610)], 4.0, 5.0),
        ],
    )
    acromion = smooth_tube([(140, -64, 606), (162, -44, 620), (172, -20, 624)], [7, 7, 6])
    coracoid = smooth_tube([(132, -52, 600), (136, -14, 602), (142, 4, 590)], [7, 6, 5])
    sc.bone(
        sc.field(both_sides([scapula] + acromion + coracoid), 4.0), 1.3, h["cortical"], trabecular_hu(h, 0.8)
    )
    H = np.array([170.0, -32.0, 572.0])
    humerus = [ellipsoid(H, (23, 23, 24)), ellipsoid((188, -16, 570), (12, 14, 16))]
    humerus += smooth_tube([(178, -30, 552), (188, -28, 480), (198, -24, 300)], [20, 13, 12])
    sc.bone(
        sc.field(both_sides(humerus), 6.0),
        lambda X, Y, Z: 1.2 + 3.0 * np.clip((530.0 - Z) / 50.0, 0, 1),
        h["cortical"],
        trabecular_hu(h, 1.0),
        marrow=lambda X, Y, Z: np.clip((520.0 - Z) / 40.0, 0, 1),
    )
