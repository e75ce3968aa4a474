"""Straight bone plates: a rounded rectangle with a row of round screw holes, extruded.

Frame: long axis +z from the end at ``z = 0`` (landmark ``base``) to ``z = length`` (``tip``);
width along x (``[-width/2, width/2]``), thickness along y (``[-thickness/2, thickness/2]``; the
bone-facing side is ``-y``). The holes are centred on the z axis, ``hole_spacing`` apart and
centred on the plate's middle; landmarks ``hole_0`` .. ``hole_{n-1}`` are their centres at
mid-thickness, in increasing z.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.instruments.base import Instrument, make_instrument
from jaxdrr.instruments.primitives import InstrumentError, check_positive, check_segments, perforated_slab


def plate(
    length_mm: float | None = None,
    width_mm: float = 11.0,
    thickness_mm: float = 3.3,
    *,
    holes: int = 6,
    hole_diameter_mm: float = 4.0,
    hole_spacing_mm: float = 12.0,
    corner_radius_mm: float | None = None,
    segments: int = 24,
    material: str = "stainless_steel_316l",
    density: float | None = None,
) -> Instrument:
    """A straight plate (defaults: a 6-hole 3.5 mm-system plate, 11 x 3.3 mm section, 72 mm long).

    Args:
      length_mm: overall length (default ``holes * hole_spacing_mm``, or 4 x width without holes).
      width_mm, thickness_mm: cross-section.
      holes: number of screw holes (>= 0), on the long axis.
      hole_diameter_mm: hole diameter.
      hole_spacing_mm: centre-to-centre distance of neighbouring holes.
      corner_radius_mm: radius of the four rounded corners (default width / 2: round ends).
      segments: vertices per hole polygon (the outline is sampled as finely).
      material: attenuation-table material (default 316L stainless steel).
      density: g/cm^3 (default the material's nominal density).

    Returns:
      :class:`Instrument` named ``"plate"`` with landmarks ``base``, ``tip``, ``centre`` and
      ``hole_<k>``.

    Raises:
      InstrumentError: non-positive sizes, a corner radius above width / 2, or holes that do not
        fit with a wall around them (between each other, to the sides and the ends).
    """
    if isinstance(holes, bool) or int(holes) != holes or holes < 0:
        raise InstrumentError(f"holes must be an integer >= 0, got {holes!r}")
    holes = int(holes)
    check_positive(width_mm=width_mm, thickness_mm=thickness_mm)
    if holes:
        check_positive(hole_diameter_mm=hole_diameter_mm, hole_spacing_mm=hole_spacing_mm)
    segments = check_segments(segments)
    if length_mm is None:
        length_mm = holes * hole_spacing_mm if holes else 4.0 * width_mm
    check_positive(length_mm=length_mm)
    corner = width_mm / 2.0 if corner_radius_mm is None else corner_radius_mm
    check_positive(corner_radius_mm=corner)
    if corner > width_mm / 2.0 or 2.0 * corner > length_mm:
        raise InstrumentError(
            f"corner_radius_mm ({corner}) must be at most half the width ({width_mm}) and half the length"
        )
    if holes and hole_diameter_mm >= width_mm:
        raise InstrumentError(
            f"hole_diameter_mm ({hole_diameter_mm}) must be smaller than width_mm ({width_mm})"
        )
    if holes > 1 and hole_spacing_mm <= hole_diameter_mm:
        raise InstrumentError(
            f"hole_spacing_mm ({hole_spacing_mm}) must exceed hole_diameter_mm ({hole_diameter_mm})"
        )
    length = float(length_mm)
    centres = (
        length / 2.0 + hole_spacing_mm * (np.arange(holes) - (holes - 1) / 2.0) if holes else np.zeros(0)
    )
    if holes and (
        centres[0] - hole_diameter_mm / 2.0 <= 0.0 or centres[-1] + hole_diameter_mm / 2.0 >= length
    ):
        raise InstrumentError(
            f"{holes} holes {hole_spacing_mm} mm apart do not fit in a {length} mm plate: make it longer"
        )
    vertices, faces = perforated_slab(
        length,
        float(width_mm),
        float(thickness_mm),
        float(corner),
        centres,
        hole_diameter_mm / 2.0 if holes else 1.0,
        segments,
    )
    landmarks = {
        "base": (0.0, 0.0, 0.0),
        "tip": (0.0, 0.0, length),
        "centre": (0.0, 0.0, length / 2.0),
    }
    landmarks.update({f"hole_{k}": (0.0, 0.0, float(z)) for k, z in enumerate(centres)})
    return make_instrument("plate", vertices, faces, landmarks, material, density)
