"""The abdomen of the anatomical phantom: liver, spleen, stomach, kidneys, colon and small bowel.

:func:`paint_upper_abdomen` paints the solid organs and the stomach (with its air bubble) under the
diaphragm; :func:`paint_bowel` paints the colon frame (cecum to rectum, with haustra and mottled
stool and gas) and fluid-filled small-bowel loops, from a random stream of its own.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.phantoms.anatomy.body import diaphragm_z
from jaxdrr.phantoms.anatomy.scene import Scene
from jaxdrr.phantoms.anatomy.shapes import axis_rotation, ellipsoid, sigmoid, smooth_tube


def paint_upper_abdomen(sc: Scene, h):
    """Liver, spleen, stomach (air bubble on top) and kidneys in perirenal fat, under the diaphragm."""
    below = lambda gap: lambda X, Y, Z: Z - diaphragm_z(X, Y) + gap  # noqa: E731
    liver = sc.field(
        [
            ellipsoid((55, 8, 330), (105, 92, 82), axis_rotation((0, 1, 0), 12)),
            ellipsoid((-20, 35, 345), (55, 45, 40)),
        ],
        15.0,
    )
    sc.fill(sc.clip(liver, below(6.0)), h["organ"] + 5, texture=(3.0, 5.0))
    sc.fill(
        sc.clip(sc.field(ellipsoid((-98, -48, 330), (30, 40, 52), axis_rotation((0, 0, 1), 30))), below(6.0)),
        h["organ"],
    )  # spleen
    stomach = sc.clip(
        sc.field(ellipsoid((-62, 22, 330), (50, 44, 58), axis_rotation((0, 1, 0), -20))), below(6.0)
    )
    sc.fill(stomach, h["muscle"])
    if stomach is not None:
        stomach.sd = stomach.sd + 3.0
        sc.fill(stomach, lambda X, Y, Z: np.where(Z > diaphragm_z(X, Y) - 38.0, -1000.0, h["stool"] + 5))
    for s, z in ((1.0, 238.0), (-1.0, 254.0)):  # kidneys in perirenal fat, upper poles tilted medially
        R = axis_rotation((0, 1, 0), -s * 14) @ axis_rotation((0, 0, 1), s * 30)
        sc.fill(sc.field(ellipsoid((s * 66, -48, z), (40, 34, 68), R)), h["visceral_fat"] - 10)
        sc.fill(sc.field(ellipsoid((s * 66, -48, z), (28, 22, 55), R)), h["organ"] - 15)


def _colon(sc: Scene, h, path, radius, gas, wall=3.0, haustra=28.0):
    """A colon segment: a wall and a lumen with haustral folds, holding mottled stool and gas."""

    def folds(s):
        if haustra <= 0:
            return 1.0
        return 1.0 - 0.22 * np.exp(-(((s % haustra) - haustra / 2) ** 2) / 8.0)

    sc.fill(sc.field(smooth_tube(path, radius), 3.0), h["muscle"] - 5)
    lumen = sc.field(smooth_tube(path, np.asarray(radius) - wall, radius_fn=folds), 2.0)
    if lumen is None:
        return
    n = sc.noise(3.0)[lumen.slices]
    thr = float(np.sqrt(2.0) * _erfinv(1.0 - 2.0 * gas))
    g = sigmoid(2.5 * (n - thr))
    content = h["stool"] + (-1000.0 - h["stool"]) * g
    sc.fill(lumen, content)


def _erfinv(y):
    # Winitzki's approximation: good to ~1e-3, plenty for choosing a threshold.
    a = 0.147
    ln = np.log(1.0 - y * y)
    t = 2.0 / (np.pi * a) + ln / 2.0
    return float(np.sign(y) * np.sqrt(np.sqrt(t * t - ln / a) - t))


def paint_bowel(sc: Scene, h, rng):
    """Colon frame (cecum to rectum) and small-bowel loops."""
    j = lambda p, s=6.0: np.asarray(p, np.float64) + rng.normal(0, s, 3)  # noqa: E731
    cecum = [j((70, 25, 55)), j((80, 20, 100)), j((86, 5, 180)), j((84, 0, 260)), j((78, 10, 330))]
    transverse = [cecum[-1], j((40, 55, 290)), j((0, 70, 255), 12), j((-50, 55, 285)), j((-88, 5, 365))]
    descending = [transverse[-1], j((-98, -15, 280)), j((-95, -10, 170)), j((-80, 5, 100))]
    sigmoid_colon = [
        descending[-1],
        j((-55, 35, 60)),
        j((-15, 45, 40)),
        j((15, 30, 55)),
        j((8, -20, 50)),
        (0, -58, 35),
    ]
    rectum = [(0, -58, 35), (0, -66, 5), (0, -55, -35), (0, -35, -65)]
    gas = rng.uniform(0.2, 0.45, 5)
    _colon(sc, h, cecum, [32, 28, 26, 25, 25], gas[0])
    _colon(sc, h, transverse, [25, 24, 24, 24, 25], min(gas[1] + 0.3, 0.85))
    _colon(sc, h, descending, [22, 20, 19, 18], gas[2])
    _colon(sc, h, sigmoid_colon, [18, 18, 18, 18, 18, 19], gas[3] + 0.1)
    _colon(sc, h, rectum, [19, 23, 22, 14], gas[4] + 0.15, haustra=0.0)
    # Small bowel: fluid-filled loops in the mid abdomen, a few with gas.
    for i in range(7):
        p = np.array([rng.uniform(-60, 55), rng.uniform(0, 50), rng.uniform(70, 230)])
        pts = [p]
        for _ in range(6):
            step = rng.normal(0, 1, 3) * (24, 18, 24)
            p = np.clip(p + step, (-75, -15, 60), (70, 70, 250))
            pts.append(p)
        r = rng.uniform(11, 14)
        f = sc.field(smooth_tube(pts, r), 3.0)
        sc.fill(f, h["muscle"] - 5)
        lumen = sc.field(smooth_tube(pts, r - 2.5), 2.0)
        if lumen is not None:
            gas_hu = -1000.0 if i < 2 else h["stool"] - 10
            n = sc.noise(3.0)[lumen.slices]
            sc.fill(lumen, h["stool"] - 10 + (gas_hu - h["stool"] + 10) * sigmoid(3.0 * (n - 0.3)))
