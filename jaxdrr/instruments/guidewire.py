"""Guidewires and catheters: round tubes swept along a smooth curve through control points.

The centreline is a cubic spline (not-a-knot) in the chord-length parameter through the control points
(the first is the ``base``, the last the ``tip``), resampled every ``step_mm`` of arc length; the
rings are perpendicular to it and carried along by rotation-minimising frames, so the mesh does not
twist. Both ends are cut flat. The instrument's frame is the frame of the control points.

A tube of radius r folds into itself where the centreline bends with a radius of curvature below
r; such a centreline is rejected (the check uses the spline's curvature, so sharp kinks between
control points, which the spline turns into tight loops, are caught too). Crossings of distant
parts of the curve are not detected.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.instruments.base import Instrument, make_instrument
from jaxdrr.instruments.primitives import (
    InstrumentError,
    check_positive,
    check_segments,
    smooth_centreline,
    sweep_tube,
)

CENTRELINE_LANDMARKS = 11  # centreline_0 .. centreline_10 at 0 %, 10 %, ..., 100 % of the arc length


def _swept(name, control_points_mm, radius, bore, segments, step_mm, material, density) -> Instrument:
    check_positive(step_mm=step_mm)
    segments = check_segments(segments)
    points, tangents, arc_length, curvature = smooth_centreline(control_points_mm, float(step_mm))
    if curvature * radius >= 1.0:
        raise InstrumentError(
            f"the centreline bends with a radius of curvature of {1.0 / curvature:.3g} mm, less than the "
            f"{name}'s radius ({radius:.3g} mm): the tube would fold into itself (control points too "
            "close together or turning back sharply)"
        )
    vertices, faces = sweep_tube(points, tangents, radius, segments, bore_radius=bore)
    # Landmarks along the centreline at equal fractions of its arc length (samples are uniform in s).
    s = np.linspace(0.0, arc_length, len(points))
    targets = np.linspace(0.0, arc_length, CENTRELINE_LANDMARKS)
    along = np.stack([np.interp(targets, s, points[:, k]) for k in range(3)], 1)
    landmarks = {"base": points[0], "tip": points[-1]}
    landmarks.update({f"centreline_{i}": p for i, p in enumerate(along)})
    return make_instrument(name, vertices, faces, landmarks, material, density)


def guidewire(
    control_points_mm,
    diameter_mm: float = 0.89,
    *,
    segments: int = 12,
    step_mm: float = 1.0,
    material: str = "stainless_steel_316l",
    density: float | None = None,
) -> Instrument:
    """A solid guidewire along a smooth curve (default 0.035 inch = 0.89 mm).

    Args:
      control_points_mm: [N, 3] points the centreline passes through (N >= 2), base first.
      diameter_mm: wire diameter.
      segments: vertices per ring.
      step_mm: ring spacing along the centreline.
      material: attenuation-table material (default 316L stainless steel).
      density: g/cm^3 (default the material's nominal density).

    Returns:
      :class:`Instrument` named ``"guidewire"`` with landmarks ``base``, ``tip`` and
      ``centreline_0`` .. ``centreline_10`` (equal arc-length fractions, base to tip).

    Raises:
      InstrumentError: fewer than 2 or repeated consecutive control points, non-positive sizes, or a
        curve bending tighter than the wire's radius.
    """
    check_positive(diameter_mm=diameter_mm)
    return _swept(
        "guidewire", control_points_mm, diameter_mm / 2.0, None, segments, step_mm, material, density
    )


def catheter(
    control_points_mm,
    outer_diameter_mm: float = 2.0,
    inner_diameter_mm: float = 1.4,
    *,
    segments: int = 16,
    step_mm: float = 1.0,
    material: str = "pmma",
    density: float | None = None,
) -> Instrument:
    """A hollow catheter along a smooth curve (default 6 Fr: 2.0 mm outside, 1.4 mm lumen).

    The default material is a generic polymer stand-in (PMMA, 1.19 g/cm^3; catheter shafts are
    polyurethane, nylon or PEBAX at 1.0-1.25 g/cm^3, often made radiopaque with barium sulfate or
    a braided steel layer): pass ``material=`` / ``density=`` for a specific catheter.

    Args:
      control_points_mm: [N, 3] points the centreline passes through (N >= 2), base first.
      outer_diameter_mm, inner_diameter_mm: wall outside and lumen diameters (inner < outer).
      segments, step_mm, material, density: as for :func:`guidewire`.

    Returns:
      :class:`Instrument` named ``"catheter"`` (a genus-1 solid: the lumen is open at both ends) with
      the landmarks of :func:`guidewire`.

    Raises:
      InstrumentError: as :func:`guidewire`, and a lumen not narrower than the outside.
    """
    check_positive(outer_diameter_mm=outer_diameter_mm, inner_diameter_mm=inner_diameter_mm)
    if inner_diameter_mm >= outer_diameter_mm:
        raise InstrumentError(
            f"inner_diameter_mm ({inner_diameter_mm}) must be smaller than outer_diameter_mm ({outer_diameter_mm})"
        )
    return _swept(
        "catheter",
        control_points_mm,
        outer_diameter_mm / 2.0,
        inner_diameter_mm / 2.0,
        segments,
        step_mm,
        material,
        density,
    )
