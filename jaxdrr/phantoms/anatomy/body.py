"""The trunk wall of the anatomical phantom: skin, fat, muscle, the abdominal cavity and the diaphragm.

:func:`body_surface` is the skin of the trunk, buttocks, thighs, shoulders, arms and neck.
:func:`paint_body` fills it with subcutaneous fat, muscle with intermuscular fat planes, and the
visceral fat of the abdominal and pelvic cavity, bounded by the wall muscles, the paraspinal muscles
and the diaphragm (:func:`diaphragm_z`, the surface the chest and the upper abdomen also follow).
"""

from __future__ import annotations

import numpy as np

from jaxdrr.phantoms.anatomy.scene import Field, Scene
from jaxdrr.phantoms.anatomy.shapes import (
    Prim,
    axis_rotation,
    capsule,
    ellipse_sd,
    ellipsoid,
    interp_f32,
    sigmoid,
    smooth_max,
)
from jaxdrr.phantoms.anatomy.spine import SPINE_Y


def body_surface(sc: Scene) -> Field:
    """Skin surface of the trunk, buttocks, thighs, shoulders, arms and neck (signed distance, mm)."""
    X, Y, Z = sc.coords((0, 0, 0), sc.shape)
    zs = [-175, -150, -120, -80, -40, 0, 60, 110, 160, 240, 320, 420, 520, 580, 615, 640, 700]
    As = [1, 55, 125, 162, 176, 178, 170, 156, 150, 150, 155, 162, 166, 162, 120, 62, 58]
    Bs = [1, 45, 98, 112, 116, 116, 114, 110, 108, 108, 110, 114, 112, 100, 80, 56, 54]
    yc = interp_f32(Z, [-100, 100, 600, 640], [-2, -4, -12, -20])
    body = Field(
        np.zeros(3, int),
        np.asarray(sc.shape),
        ellipse_sd(X, Y - yc, interp_f32(Z, zs, As), interp_f32(Z, zs, Bs)),
    )

    def thigh(s):
        def fn(X, Y, Z):
            cx, r = (
                interp_f32(Z, [-400, -150, -60], [86, 92, 92]),
                interp_f32(Z, [-400, -200, -100, -60], [70, 78, 84, 84]),
            )
            return smooth_max(np.sqrt((X - s * cx) ** 2 + (Y - 2.0) ** 2) - r, Z + 20.0, 30.0)

        return Prim((s * 90 - 100, -100, -500), (s * 90 + 100, 100, 20), fn)

    for s in (-1.0, 1.0):
        sc.merge(body, sc.field(thigh(s)), 25.0)
        sc.merge(body, sc.field(ellipsoid((s * 68, -62, -45), (82, 72, 95))), 20.0)  # buttocks
        sc.merge(body, sc.field(ellipsoid((s * 172, -25, 570), (52, 58, 62))), 30.0)  # shoulders
        sc.merge(body, sc.field(capsule((s * 188, -25, 560), (s * 205, -20, 250), 46, 40)))  # upper arms
    return body


def paint_body(sc: Scene, h):
    """Fat under the skin, muscle with intermuscular fat planes, and the visceral fat of the cavity."""
    body = body_surface(sc)
    sc.fill(body, h["fat"], texture=(3.0, 6.0))
    # Subcutaneous fat, thicker over the buttocks and the lower back.
    _, Y, Z = sc.coords((0, 0, 0), sc.shape)
    fat_sc = h["fat_sc"] + 12.0 * sigmoid(-(Y + 75.0) / 15.0) + 6.0 * sigmoid((Z - 480.0) / 30.0)
    muscle = Field(body.i0, body.i1, body.sd + fat_sc.astype(np.float32))
    sc.fill(muscle, h["muscle"], texture=(3.0, 8.0))
    # Intermuscular fat planes in the hips and thighs (thin sheets around the muscle groups).
    planes = []
    for s in (1.0, -1.0):
        planes += [
            ellipsoid((s * 120, -45, -10), (48, 62, 110), axis_rotation((0, 1, 0), s * 10)),  # glutei
            ellipsoid((s * 95, 30, -150), (45, 40, 160)),  # quadriceps / adductors
            ellipsoid((s * 110, -40, -180), (40, 35, 150)),
        ]  # hamstrings
    for p in planes:
        f = sc.field(p)
        if f is not None:
            f.sd = np.abs(f.sd) - 1.2
            sc.fill(f, h["fat"] + 20, where=lambda hu: np.clip(hu / 30.0, 0, 1))
    # The abdominal cavity (inside the wall muscles, in front of the paraspinal muscles) and the pelvis.
    box = sc.box((-170, -120, -80), (170, 130, 420))
    if box is None:
        return
    X, Y, Z = sc.coords(*box)
    sub = tuple(slice(a, b) for a, b in zip(*box))
    ysp = interp_f32(Z, *SPINE_Y) - 52.0
    para = np.minimum(ellipse_sd(X - 38.0, Y - ysp, 34.0, 34.0), ellipse_sd(X + 38.0, Y - ysp, 34.0, 34.0))
    cav = smooth_max(muscle.sd[sub] + 14.0, -para, 6.0)
    cav = smooth_max(cav, 100.0 - Z, 20.0)
    cav = smooth_max(cav, Z - diaphragm_z(X, Y) + 5.0, 4.0)
    cavity = Field(box[0], box[1], cav)
    for p in (ellipsoid((0, -5, -15), (56, 52, 58)), ellipsoid((0, 12, 92), (108, 78, 58))):
        sc.merge(cavity, sc.field(p), 20.0)
    sc.fill(cavity, h["visceral_fat"], texture=(3.0, 6.0))


def diaphragm_z(X, Y):
    """Height of the diaphragm surface: right dome higher than the left, lower posteriorly."""
    right = 395.0 - 0.011 * (X - 62.0) ** 2 - 0.0045 * (Y - 5.0) ** 2
    left = 378.0 - 0.011 * (X + 62.0) ** 2 - 0.0045 * (Y - 5.0) ** 2
    return np.maximum(np.maximum(right, left), 350.0 - 0.004 * (Y - 10.0) ** 2).astype(np.float32)
