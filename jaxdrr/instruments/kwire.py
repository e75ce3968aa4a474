"""Kirschner wires: a round pin with a trocar, round or flat tip.

Frame: axis +z, the base (flat end) centred on the origin, the tip point at ``(0, 0, length)``.

The trocar tip is the classic three-facet pyramid point: three planes through the tip point, each
tilted towards one of three directions 120 degrees apart, cut the cylinder. Facet i is
``z = length - tip_length * (p . u_i) / r`` over the 120-degree sector of the cross-section around
``u_i``; it meets the cylinder ``tip_length`` below the point at the middle of its sector and
``tip_length / 2`` below it on the ridges between facets. Its volume is ``tip_length * r^2 *
(pi - sqrt(3))`` (the cylinder minus what the three planes cut off), about 1.35 times a cone's.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.instruments.base import Instrument, make_instrument
from jaxdrr.instruments.primitives import InstrumentError, check_positive, check_segments, revolve, ring_stack

TIPS = ("trocar", "round", "flat")


def _trocar_mesh(radius: float, length: float, tip_length: float, segments: int):
    angle = 2.0 * np.pi * np.arange(segments) / segments
    # Facet directions: the ridges between facets lie at multiples of 120 degrees (ring vertices).
    facet_dirs = 2.0 * np.pi * np.arange(3) / 3 + np.pi / 3
    reach = np.max(np.cos(angle[:, None] - facet_dirs[None, :]), axis=1)  # max_i (p . u_i) / r
    z_top = length - tip_length * reach
    x, y = radius * np.cos(angle), radius * np.sin(angle)
    base_ring = np.stack([x, y, np.zeros(segments)], 1)
    top_ring = np.stack([x, y, z_top], 1)
    # The fan from the tip point onto the top ring is the three planar facets: each facet's ring
    # vertices lie in its plane, and the ridge vertices (shared by two facets) are ring vertices.
    return ring_stack([np.zeros(3), base_ring, top_ring, np.array([0.0, 0.0, length])], closed=False)


def kwire(
    diameter_mm: float = 1.6,
    length_mm: float = 150.0,
    *,
    tip: str = "trocar",
    tip_length_mm: float | None = None,
    segments: int = 24,
    material: str = "stainless_steel_316l",
    density: float | None = None,
) -> Instrument:
    """A K-wire.

    Args:
      diameter_mm: wire diameter (1.0-3.0 mm are usual; default 1.6 mm).
      length_mm: overall length including the tip.
      tip: ``"trocar"`` (three-facet pyramid point), ``"round"`` (half-ellipsoid, a hemisphere by
        default) or ``"flat"`` (square cut).
      tip_length_mm: axial length of the tip: trocar default 1.5 x diameter, round default the
        radius (hemisphere); must be None for a flat tip.
      segments: vertices per ring (a multiple of 3 for a trocar tip, so the ridges are vertices).
      material: attenuation-table material (default 316L stainless steel).
      density: g/cm^3 (default the material's nominal density).

    Returns:
      :class:`Instrument` named ``"kwire"`` with landmarks ``base`` (0, 0, 0), ``tip`` (0, 0, length),
      ``tip_start`` (on the axis where the tip begins: the full round section ends) and ``axis_mid``.

    Raises:
      InstrumentError: non-positive sizes, a tip longer than the wire, an unknown tip kind.
    """
    check_positive(diameter_mm=diameter_mm, length_mm=length_mm)
    segments = check_segments(segments)
    radius, length = float(diameter_mm) / 2.0, float(length_mm)
    if tip not in TIPS:
        raise InstrumentError(f"tip must be one of {TIPS}, got {tip!r}")
    if tip == "flat":
        if tip_length_mm is not None:
            raise InstrumentError("a flat tip has no tip length: leave tip_length_mm None")
        tip_length = 0.0
    else:
        tip_length = (3.0 * radius if tip == "trocar" else radius) if tip_length_mm is None else tip_length_mm
        check_positive(tip_length_mm=tip_length)
        tip_length = float(tip_length)
        if tip_length >= length:
            raise InstrumentError(f"tip_length_mm ({tip_length}) must be shorter than length_mm ({length})")
    if tip == "trocar":
        if segments % 3:
            raise InstrumentError(f"a trocar tip needs segments divisible by 3, got {segments}")
        vertices, faces = _trocar_mesh(radius, length, tip_length, segments)
    elif tip == "round":
        quarter = max(2, segments // 4)
        phi = 0.5 * np.pi * np.arange(quarter) / quarter  # the last point (phi = pi/2) is the pole
        z0 = length - tip_length
        cap = np.stack([radius * np.cos(phi), z0 + tip_length * np.sin(phi)], 1)
        profile = np.concatenate([[[0.0, 0.0], [radius, 0.0]], cap, [[0.0, length]]])
        vertices, faces = revolve(profile, segments)
    else:
        vertices, faces = revolve([(0.0, 0.0), (radius, 0.0), (radius, length), (0.0, length)], segments)
    landmarks = {
        "base": (0.0, 0.0, 0.0),
        "tip": (0.0, 0.0, length),
        "tip_start": (0.0, 0.0, length - tip_length),
        "axis_mid": (0.0, 0.0, length / 2.0),
    }
    return make_instrument("kwire", vertices, faces, landmarks, material, density)
