"""Bone screws: head, optional unthreaded shank, thread, conical tip; optionally cannulated.

Frame: axis +z; the top of the head centred on the origin (landmarks ``head`` and ``base``), the
tip point at ``(0, 0, length)``: ``length_mm`` is the overall length, head included.

Profile along z (radius r(z), linear between the listed points):

* head: a cylinder of ``head_diameter`` over the first :data:`HEAD_CYLINDER_FRACTION` of
  ``head_height``, then a cone (the underside) down to the core radius at ``z = head_height``;
* shank: core radius, from the head to the start of the thread (the part of ``thread_length`` that
  is not a whole number of pitches also goes here);
* thread: whole pitches, each a symmetric V from the core radius to the thread radius at
  mid-pitch and back;
* tip: a cone from the core radius to the axis over ``tip_length``.

``thread="envelope"`` revolves that profile: every thread turn is a ring (a surface of
revolution), cheap and exactly watertight; its volume per pitch equals a helical thread's (at each
height a helix takes every radius of the V once around the circle). ``thread="helical"`` makes the
true helix: the radius at angle theta and height z is the V profile at ``z - pitch * theta / 2 pi``
(a right-handed single-start thread), sampled on rings every ``pitch / 8``; the first and last turn
run out linearly so that the thread meets the plain core.

Cannulated screws have a coaxial through-bore; the tip cone then stops at the radius half-way
between the bore and the core.
"""

from __future__ import annotations

import numpy as np

from jaxdrr.instruments.base import Instrument, make_instrument
from jaxdrr.instruments.primitives import InstrumentError, check_positive, check_segments, revolve, ring_stack

HEAD_CYLINDER_FRACTION = 0.6  # of the head height; the rest is the conical underside
HELIX_RINGS_PER_PITCH = 8
THREADS = ("envelope", "helical")


def _v_profile(phase: np.ndarray) -> np.ndarray:
    """The V thread's height (0 at the core, 1 at the crest) at a phase in pitches (period 1)."""
    frac = np.mod(phase, 1.0)
    return 1.0 - np.abs(2.0 * frac - 1.0)


def screw(
    length_mm: float = 30.0,
    core_diameter_mm: float = 2.4,
    thread_diameter_mm: float = 3.5,
    pitch_mm: float = 1.25,
    head_diameter_mm: float = 6.0,
    head_height_mm: float = 2.4,
    *,
    tip_length_mm: float | None = None,
    thread_length_mm: float | None = None,
    cannulated: bool = False,
    cannula_diameter_mm: float | None = None,
    thread: str = "envelope",
    segments: int = 20,
    material: str = "ti6al4v",
    density: float | None = None,
) -> Instrument:
    """A bone screw (defaults: a 3.5 mm cortex screw, 30 mm long, about 2,000 triangles).

    Args:
      length_mm: overall length, head top to tip.
      core_diameter_mm: root (minor) diameter of the thread.
      thread_diameter_mm: outer (major) diameter of the thread; > core.
      pitch_mm: thread pitch (axial distance between turns).
      head_diameter_mm, head_height_mm: head size; the head is wider than the core.
      tip_length_mm: axial length of the conical tip (default: the core diameter).
      thread_length_mm: threaded length (default: everything between head and tip, a fully
        threaded screw); a shorter thread leaves a plain shank at the core diameter under the head.
      cannulated: a coaxial through-bore of ``cannula_diameter_mm`` (default 0.45 x core).
      thread: ``"envelope"`` (rings, the default) or ``"helical"`` (a true helix, more triangles).
      segments: vertices per ring.
      material: attenuation-table material (default Ti-6Al-4V).
      density: g/cm^3 (default the material's nominal density).

    Returns:
      :class:`Instrument` named ``"screw"`` with landmarks ``head`` and ``base`` (head top, the
      origin), ``head_underside``, ``thread_start``, ``thread_end`` (where the tip cone begins) and
      ``tip`` (0, 0, length), all on the axis.

    Raises:
      InstrumentError: non-positive sizes, thread diameter <= core, head not wider than the core,
        cannula >= core, or the parts not fitting in the length.
    """
    check_positive(
        length_mm=length_mm,
        core_diameter_mm=core_diameter_mm,
        thread_diameter_mm=thread_diameter_mm,
        pitch_mm=pitch_mm,
        head_diameter_mm=head_diameter_mm,
        head_height_mm=head_height_mm,
    )
    segments = check_segments(segments)
    if thread not in THREADS:
        raise InstrumentError(f"thread must be one of {THREADS}, got {thread!r}")
    length, pitch, head_h = float(length_mm), float(pitch_mm), float(head_height_mm)
    r_core, r_thread, r_head = core_diameter_mm / 2.0, thread_diameter_mm / 2.0, head_diameter_mm / 2.0
    if r_thread <= r_core:
        raise InstrumentError(
            f"thread_diameter_mm ({thread_diameter_mm}) must exceed core_diameter_mm ({core_diameter_mm})"
        )
    if r_head <= r_core:
        raise InstrumentError(
            f"head_diameter_mm ({head_diameter_mm}) must exceed core_diameter_mm ({core_diameter_mm})"
        )
    tip_len = float(core_diameter_mm if tip_length_mm is None else tip_length_mm)
    check_positive(tip_length_mm=tip_len)
    shaft = length - head_h - tip_len  # between the head and the tip cone
    if shaft < pitch:
        raise InstrumentError(
            f"length_mm ({length}) leaves {shaft:.4g} mm between head ({head_h}) and tip ({tip_len}): "
            f"less than one pitch ({pitch} mm)"
        )
    thread_len = shaft if thread_length_mm is None else float(thread_length_mm)
    check_positive(thread_length_mm=thread_len)
    if thread_len > shaft + 1e-9 * length:
        raise InstrumentError(
            f"thread_length_mm ({thread_len}) exceeds the shaft between head and tip ({shaft:.4g})"
        )
    turns = int(np.floor(thread_len / pitch + 1e-9))
    if turns < 1:
        raise InstrumentError(f"thread_length_mm ({thread_len}) is shorter than one pitch ({pitch})")
    bore = None
    if cannulated:
        bore = 0.45 * r_core if cannula_diameter_mm is None else cannula_diameter_mm / 2.0
        check_positive(cannula_diameter_mm=2.0 * bore)
        if bore >= r_core:
            raise InstrumentError(
                f"cannula_diameter_mm ({2 * bore}) must be smaller than core_diameter_mm ({core_diameter_mm})"
            )
    elif cannula_diameter_mm is not None:
        raise InstrumentError("cannula_diameter_mm is given but cannulated=False")

    z_thread_end = length - tip_len
    z_thread_start = z_thread_end - turns * pitch
    if z_thread_start - head_h < 1e-9 * length:  # a whole number of turns fills the shaft: no shank
        z_thread_start = head_h
    # The head ends on the core radius at head_h; from there to the thread start is the shank.
    head = [(r_head, 0.0), (r_head, HEAD_CYLINDER_FRACTION * head_h), (r_core, head_h)]
    if z_thread_start == head_h:
        head = head[:-1]  # the thread's first point (r_core, head_h) closes the head
    tip_end = 0.0 if bore is None else 0.5 * (bore + r_core)
    tip = [(tip_end, length)]
    if thread == "envelope":
        turn_starts = z_thread_start + pitch * np.arange(turns)
        turns_rz = [p for z in turn_starts for p in ((r_core, z), (r_thread, z + pitch / 2.0))]
        profile = head + turns_rz + [(r_core, z_thread_end)] + tip
        if bore is None:
            profile = [(0.0, 0.0), *profile]
        vertices, faces = revolve(np.array(profile), segments, bore_radius=bore)
    else:
        vertices, faces = _helical(head, tip, r_core, r_thread, pitch, z_thread_start, turns, segments, bore)
    landmarks = {
        "head": (0.0, 0.0, 0.0),
        "base": (0.0, 0.0, 0.0),
        "head_underside": (0.0, 0.0, head_h),
        "thread_start": (0.0, 0.0, z_thread_start),
        "thread_end": (0.0, 0.0, z_thread_end),
        "tip": (0.0, 0.0, length),
    }
    return make_instrument("screw", vertices, faces, landmarks, material, density)


def _helical(before, tip, r_core, r_thread, pitch, z0, turns, segments, bore):
    """Ring stack of a screw with a helical thread between z0 and z0 + turns * pitch."""
    angle = 2.0 * np.pi * np.arange(segments) / segments
    cos, sin = np.cos(angle), np.sin(angle)
    count = turns * HELIX_RINGS_PER_PITCH
    z = z0 + pitch * np.arange(count + 1) / HELIX_RINGS_PER_PITCH
    t = (z - z0) / pitch  # turns from the thread start
    # Run-out: the thread depth ramps from 0 to full over the first turn and back over the last.
    runout = np.clip(np.minimum(t, turns - t), 0.0, 1.0)
    phase = t[:, None] - angle[None, :] / (2.0 * np.pi)
    radius = r_core + (r_thread - r_core) * runout[:, None] * _v_profile(phase)

    def ring(r, zz):
        r = np.broadcast_to(np.asarray(r, np.float64), (segments,))
        return np.stack([r * cos, r * sin, np.full(segments, zz)], 1)

    rings = [ring(r, zz) for r, zz in before]
    rings += [ring(radius[i], z[i]) for i in range(len(z))]
    if bore is None:
        rings = [np.zeros(3), *rings, np.array([0.0, 0.0, tip[0][1]])]
        return ring_stack(rings, closed=False)
    rings += [ring(r, zz) for r, zz in tip]
    rings += [ring(bore, tip[-1][1]), ring(bore, 0.0)]
    return ring_stack(rings, closed=True)
