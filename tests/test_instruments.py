"""Parametric instruments: closed meshes, volumes against the ideal shapes, landmarks, bad input.

Volumes are checked in float64 (meshes built under ``jax.enable_x64``) against closed forms:

* a revolved profile with ``n`` segments per ring is exactly the solid whose cross-section at each
  height is the regular n-gon inscribed in the ideal circle (the quads between coaxial rings are
  planar trapezoids), so its volume is ``k_n = n / (2 pi) sin(2 pi / n)`` times the ideal volume of
  the piecewise-linear profile: equality to rounding (rtol 1e-12);
* curved parts (a hemispherical tip, a trocar's facets over the polygonal section, a plate's
  rounded corners) are bracketed by the inscribed and the ideal shapes, with bounds derived below.
"""

import numpy as np
import pytest
import trimesh

from jaxdrr.errors import JaxdrrError, MeshError
from jaxdrr.geometry.projection import intrinsic_matrix, projection_matrix
from jaxdrr.geometry.rigid import RigidTransform, object_projection
from jaxdrr.instruments import (
    Instrument,
    InstrumentError,
    catheter,
    guidewire,
    kwire,
    plate,
    polygon_area_ratio,
    screw,
)
from jaxdrr.instruments.screw import HEAD_CYLINDER_FRACTION
from jaxdrr.physics.compositions import UnknownMaterialError, density

RTOL_EXACT = 1e-12  # float64 sums of a few thousand tetrahedra of similar size


def k(n):
    """Independent restatement of the regular-polygon area ratio."""
    return n / (2 * np.pi) * np.sin(2 * np.pi / n)


def arc_points(radius, angles, z_per_rad=0.0):
    return np.stack([radius * np.cos(angles), radius * np.sin(angles), z_per_rad * angles], 1)


ARC = arc_points(30.0, np.linspace(0.0, np.pi / 2, 10))

BUILDERS = {
    "kwire_trocar": (lambda: kwire(), 0),
    "kwire_round": (lambda: kwire(tip="round"), 0),
    "kwire_flat": (lambda: kwire(tip="flat"), 0),
    "screw": (lambda: screw(), 0),
    "screw_partial_thread": (lambda: screw(length_mm=40, thread_length_mm=12), 0),
    "screw_cannulated": (lambda: screw(cannulated=True), 1),
    "screw_helical": (lambda: screw(thread="helical"), 0),
    "screw_helical_cannulated": (lambda: screw(thread="helical", cannulated=True), 1),
    "screw_helical_partial_thread": (lambda: screw(length_mm=40, thread_length_mm=12, thread="helical"), 0),
    "screw_cannulated_partial_thread": (lambda: screw(length_mm=40, thread_length_mm=12, cannulated=True), 1),
    "plate": (lambda: plate(), 6),
    "plate_no_holes": (lambda: plate(holes=0), 0),
    "plate_disc_one_hole": (lambda: plate(11.0, 11.0, 2.0, holes=1), 1),  # round ends meet: no sides
    "plate_one_hole_square_corners": (lambda: plate(holes=1, length_mm=20, corner_radius_mm=1.0), 1),
    "guidewire": (lambda: guidewire(ARC), 0),
    "catheter": (lambda: catheter(ARC), 1),
}


def numpy_mesh(inst: Instrument):
    return np.asarray(inst.mesh.vertices, np.float64), np.asarray(inst.mesh.faces)


def volume(inst: Instrument) -> float:
    v, f = numpy_mesh(inst)
    return float(trimesh.Trimesh(v, f, process=False).volume)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_instrument_is_a_closed_outward_solid(name):
    build, genus = BUILDERS[name]
    inst = build()
    v, f = numpy_mesh(inst)
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0
    assert mesh.euler_number == 2 - 2 * genus  # the expected topology: ball, tube, plate with holes
    assert np.min(mesh.area_faces) > 1e-8 * mesh.scale**2  # no sliver near zero area
    assert len(np.unique(v, axis=0)) == len(v)  # no duplicated vertices (would hide open seams)
    assert inst.material and inst.density == density(inst.material)
    assert 50 <= len(f) <= 12_000


def test_polygon_area_ratio():
    assert polygon_area_ratio(4) == pytest.approx(2 / np.pi, rel=1e-15)  # the square in its circle
    assert polygon_area_ratio(6) == pytest.approx(3 * np.sqrt(3) / (2 * np.pi), rel=1e-15)
    assert polygon_area_ratio(24) == pytest.approx(k(24), rel=1e-15) and 0.988 < k(24) < 0.989


def test_default_screw_triangle_count_is_about_two_thousand():
    assert 1_500 <= screw().mesh.num_faces <= 2_500


def test_builds_are_deterministic():
    for build, _ in BUILDERS.values():
        a, b = build(), build()
        np.testing.assert_array_equal(np.asarray(a.mesh.vertices), np.asarray(b.mesh.vertices))
        np.testing.assert_array_equal(np.asarray(a.mesh.faces), np.asarray(b.mesh.faces))
        assert {n: p.tolist() for n, p in a.landmarks.items()} == {
            n: p.tolist() for n, p in b.landmarks.items()
        }


# ---- K-wire ------------------------------------------------------------------------------------


def test_flat_kwire_is_an_exact_polygonal_prism(x64):
    n, r, length = 24, 0.8, 150.0
    assert volume(kwire(tip="flat", segments=n)) == pytest.approx(
        k(n) * np.pi * r**2 * length, rel=RTOL_EXACT
    )


def test_round_kwire_volume_is_bracketed_by_inscribed_and_ideal_hemisphere(x64):
    n, r, length = 24, 0.8, 150.0
    q = n // 4  # chords per quarter circle of the tip profile
    body = np.pi * r**2 * (length - r)
    cap = 2.0 / 3.0 * np.pi * r**3
    # The chord polygon of the quarter circle contains the quarter disc of radius r cos(pi / 4q)
    # (each chord is that far from the centre) and lies inside the radius-r disc.
    low = k(n) * (body + cap * np.cos(np.pi / (4 * q)) ** 3)
    got = volume(kwire(tip="round", segments=n))
    assert low * (1 - RTOL_EXACT) <= got <= k(n) * (body + cap) * (1 + RTOL_EXACT)


def test_trocar_kwire_volume_and_facets(x64):
    n, d, length, tip_len = 24, 2.0, 60.0, 3.0
    r = d / 2
    inst = kwire(d, length, tip="trocar", tip_length_mm=tip_len, segments=n)
    # Ideal: cylinder up to the tip plus three planar facets; V = pi r^2 (L - t) + t r^2 (pi - sqrt 3).
    ideal = np.pi * r**2 * (length - tip_len) + tip_len * r**2 * (np.pi - np.sqrt(3.0))
    # The mesh is the same height function over the inscribed n-gon instead of the disc; the height
    # is between L - t and L, so the missing volume is the lost area times a height in that range.
    lost = (1 - k(n)) * np.pi * r**2
    got = volume(inst)
    assert ideal - lost * length - 1e-9 <= got <= ideal - lost * (length - tip_len) + 1e-9
    v, f = numpy_mesh(inst)
    # Three facets: the faces touching the tip vertex have exactly three distinct planes.
    tip_index = int(np.argmax(v[:, 2]))
    fan = f[np.any(f == tip_index, axis=1)]
    normals = np.cross(v[fan[:, 1]] - v[fan[:, 0]], v[fan[:, 2]] - v[fan[:, 0]])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    assert len(np.unique(np.round(normals, 9), axis=0)) == 3
    # The facets meet the cylinder between tip_len and tip_len / 2 below the point.
    rim = v[np.isclose(np.hypot(v[:, 0], v[:, 1]), r) & (v[:, 2] > 0)]
    assert rim[:, 2].min() == pytest.approx(length - tip_len) and rim[:, 2].max() == pytest.approx(
        length - tip_len / 2
    )


@pytest.mark.parametrize("tip", ["trocar", "round", "flat"])
def test_kwire_landmarks_and_extent(tip):
    inst = kwire(1.6, 100.0, tip=tip)
    v, _ = numpy_mesh(inst)
    np.testing.assert_array_equal(inst.landmarks["tip"], [0, 0, 100.0])
    np.testing.assert_array_equal(inst.landmarks["base"], [0, 0, 0])
    assert v[:, 2].min() == 0.0 and v[:, 2].max() == pytest.approx(100.0, rel=1e-7)
    # The tip landmark is the mesh's extreme point along the axis, on the axis (not just the plane).
    far = v[v[:, 2] == v[:, 2].max()]
    if tip != "flat":
        np.testing.assert_allclose(far, [[0, 0, 100.0]], atol=1e-5)
    assert np.max(np.hypot(v[:, 0], v[:, 1])) == pytest.approx(0.8, rel=1e-6)
    assert inst.material == "stainless_steel_316l"


@pytest.mark.parametrize(
    ("build", "n", "r_out", "r_in"),
    [
        (lambda: kwire(1.6, 150.0, segments=24), 24, 0.8, 0.0),
        # Straight catheter along +z: its rings start on +y (90 degrees, a multiple of 2 pi / 16), so
        # its 16-gons have the kwire's vertex angles; the ray crosses the wall twice.
        (lambda: catheter([[0.0, 0.0, 0.0], [0.0, 0.0, 150.0]], 2.0, 1.4, segments=16), 16, 1.0, 0.7),
    ],
)
def test_path_length_across_the_axis_is_the_polygon_chord(build, n, r_out, r_in):
    """A ray through the axis, perpendicular to it, travels the n-gon's chord through its centre."""
    from jaxdrr.ops.mesh_project import mesh_path_lengths

    length = 150.0
    inst = build()
    # Camera on the +x side looking along -x, rows along -z; the principal ray crosses the axis at
    # mid-length. The tube is turned by psi about its axis so that no ray runs along an edge.
    size, sdd, pitch, distance = 33, 1000.0, 0.1, 500.0
    K = intrinsic_matrix(sdd, pitch, size, size)
    R = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    source = np.array([distance, 0.0, length / 2])
    P = projection_matrix(K, R, -R @ source)
    psi = 0.1
    pose = RigidTransform.create(rotation=(0.0, 0.0, psi))
    paths = np.asarray(mesh_path_lengths(inst.mesh.triangles(), object_projection(P, pose), size, size))
    column = paths[:, size // 2]
    # In the tube's frame the ray runs at angle pi - psi from +x; from the centre the n-gon's boundary
    # in direction phi is r cos(pi/n) / cos((phi mod 2pi/n) - pi/n) away (both sides alike, n even).
    phi = np.mod(np.pi - psi, 2 * np.pi / n)
    chord = 2 * (r_out - r_in) * np.cos(np.pi / n) / np.cos(phi - np.pi / n)
    assert 2 * (r_out - r_in) * np.cos(np.pi / n) <= chord <= 2 * (r_out - r_in)
    # Rows tilt the ray in the axial plane by a; the prism is z-invariant, so the path is chord / cos a.
    tilt = np.arctan((np.arange(size) - size // 2) * pitch / sdd)
    # float32: hit depths are measured from the mesh centroid, so the error scales with the mesh
    # length (150 mm): a few float32 ulps of it.
    np.testing.assert_allclose(
        column, chord / np.cos(tilt), rtol=0, atol=4 * np.finfo(np.float32).eps * length
    )


# ---- screws ------------------------------------------------------------------------------------


def frustum(r1, r2, h):
    return np.pi * h * (r1 * r1 + r1 * r2 + r2 * r2) / 3.0


def ideal_screw_volume(length, core_d, thread_d, pitch, head_d, head_h, tip_len, thread_len, bore=0.0):
    """Volume of the documented profile, written out part by part."""
    rc, rt, rh = core_d / 2, thread_d / 2, head_d / 2
    turns = int(np.floor(thread_len / pitch + 1e-9))
    shank = length - head_h - tip_len - turns * pitch
    head = np.pi * rh**2 * HEAD_CYLINDER_FRACTION * head_h + frustum(
        rh, rc, (1 - HEAD_CYLINDER_FRACTION) * head_h
    )
    thread = turns * 2 * frustum(rc, rt, pitch / 2)
    tip_end = 0.0 if bore == 0.0 else 0.5 * (bore + rc)
    solid = head + np.pi * rc**2 * shank + thread + frustum(rc, tip_end, tip_len)
    return solid - np.pi * bore**2 * length


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"length_mm": 40.0, "thread_length_mm": 12.0},
        {"length_mm": 31.3, "pitch_mm": 1.75, "segments": 16},  # thread does not fill the shaft
        {"cannulated": True},
        {
            "length_mm": 60.0,
            "core_diameter_mm": 4.5,
            "thread_diameter_mm": 7.0,
            "pitch_mm": 2.75,
            "head_diameter_mm": 8.0,
            "head_height_mm": 4.0,
            "cannulated": True,
            "cannula_diameter_mm": 2.9,
            "tip_length_mm": 3.0,
        },
    ],
)
def test_envelope_screw_volume_is_exact(x64, kwargs):
    p = {
        "length_mm": 30.0,
        "core_diameter_mm": 2.4,
        "thread_diameter_mm": 3.5,
        "pitch_mm": 1.25,
        "head_diameter_mm": 6.0,
        "head_height_mm": 2.4,
        "segments": 20,
    }
    p.update(kwargs)
    inst = screw(**p)
    tip_len = p.get("tip_length_mm", p["core_diameter_mm"])
    shaft = p["length_mm"] - p["head_height_mm"] - tip_len
    bore = 0.0
    if p.get("cannulated"):
        bore = p.get("cannula_diameter_mm", 0.45 * p["core_diameter_mm"]) / 2  # documented default
    ideal = ideal_screw_volume(
        p["length_mm"],
        p["core_diameter_mm"],
        p["thread_diameter_mm"],
        p["pitch_mm"],
        p["head_diameter_mm"],
        p["head_height_mm"],
        tip_len,
        p.get("thread_length_mm", shaft),
        bore,
    )
    assert volume(inst) == pytest.approx(k(p["segments"]) * ideal, rel=RTOL_EXACT)


def test_screw_landmarks_and_radii():
    inst = screw(length_mm=36.0, thread_length_mm=20.0)
    v, _ = numpy_mesh(inst)
    lm = inst.landmarks
    np.testing.assert_array_equal(lm["head"], [0, 0, 0])
    np.testing.assert_array_equal(lm["tip"], [0, 0, 36.0])
    assert lm["head_underside"][2] == 2.4 and lm["thread_end"][2] == pytest.approx(36.0 - 2.4)
    assert lm["thread_end"][2] - lm["thread_start"][2] == pytest.approx(16 * 1.25)  # whole turns of 20 mm
    radius = np.hypot(v[:, 0], v[:, 1])
    assert radius.max() == pytest.approx(3.0, rel=1e-6)  # the head
    in_thread = (v[:, 2] > lm["thread_start"][2] + 1e-3) & (v[:, 2] < lm["thread_end"][2] - 1e-3)
    assert radius[in_thread].max() == pytest.approx(1.75, rel=1e-6)
    assert radius[in_thread].min() == pytest.approx(1.2, rel=1e-6)
    assert v[:, 2].min() == 0.0 and v[:, 2].max() == pytest.approx(36.0, rel=1e-7)
    tip_vertex = v[np.argmax(v[:, 2])]
    np.testing.assert_allclose(tip_vertex, lm["tip"], atol=1e-5)


def test_cannulated_screw_has_an_open_bore():
    inst = screw(cannulated=True, cannula_diameter_mm=1.0)
    v, _ = numpy_mesh(inst)
    radius = np.hypot(v[:, 0], v[:, 1])
    assert radius.min() == pytest.approx(0.5, rel=1e-6)  # nothing inside the bore
    # The bore runs the full length: bore-radius vertices at both ends.
    bore_z = v[np.isclose(radius, 0.5, rtol=1e-6), 2]
    assert bore_z.min() == 0.0 and bore_z.max() == pytest.approx(30.0, rel=1e-7)


def test_helical_thread_is_a_right_handed_helix_with_the_envelopes_radii(x64):
    pitch, n = 1.25, 20
    inst = screw(thread="helical", segments=n)
    v, _ = numpy_mesh(inst)
    lm = inst.landmarks
    radius = np.hypot(v[:, 0], v[:, 1])
    z0, z1 = lm["thread_start"][2], lm["thread_end"][2]
    # Full-depth turns (away from the one-turn run-outs): crests on the helix z = z0 + p (theta/2pi + 1/2) mod p.
    crest = np.isclose(radius, 1.75, rtol=1e-12) & (v[:, 2] > z0 + pitch) & (v[:, 2] < z1 - pitch)
    assert crest.sum() >= 5
    theta = np.mod(np.arctan2(v[crest, 1], v[crest, 0]), 2 * np.pi)
    offset = np.mod(v[crest, 2] - z0 - pitch * (theta / (2 * np.pi) + 0.5) + pitch / 2, pitch) - pitch / 2
    np.testing.assert_allclose(offset, 0.0, atol=1e-9)
    # Volume: between the bare core screw and the envelope screw (a helix has the envelope's radii
    # at every height, less the run-outs and the rounding of the V between rings).
    env = volume(screw(segments=n))
    core = k(n) * ideal_screw_volume(30.0, 2.4, 2.4, pitch, 6.0, 2.4, 2.4, 25.2)  # thread = core
    assert core < volume(inst) < env


# ---- plates ------------------------------------------------------------------------------------


def test_plate_volume_holes_and_landmarks(x64):
    n_holes, m, w, t, length, d, s = 5, 24, 11.0, 3.3, 64.0, 4.0, 12.0
    inst = plate(length, w, t, holes=n_holes, hole_diameter_mm=d, hole_spacing_mm=s, segments=m)
    rc = w / 2
    outline = (length - 2 * rc) * w + np.pi * rc**2
    holes = n_holes * k(m) * np.pi * (d / 2) ** 2  # the hole polygons are regular m-gons
    # The rounded ends are chord polygons with at least 2 chords per quarter circle (angle <= pi/4):
    # their area is at least sin(a)/a of the ideal sector's.
    a = np.pi / 4
    corners_lost_max = (1 - np.sin(a) / a) * np.pi * rc**2
    got = volume(inst)
    assert t * (outline - corners_lost_max - holes) <= got <= t * (outline - holes) * (1 + RTOL_EXACT)
    v, _ = numpy_mesh(inst)
    assert np.allclose(v.min(0), [-w / 2, -t / 2, 0.0]) and np.allclose(v.max(0), [w / 2, t / 2, length])
    centres = s * (np.arange(n_holes) - (n_holes - 1) / 2) + length / 2
    for i, z in enumerate(centres):
        np.testing.assert_allclose(inst.landmarks[f"hole_{i}"], [0.0, 0.0, z])
        # The hole's rim: exactly m vertices on each face at the hole radius, none closer.
        dist = np.hypot(v[:, 0], v[:, 2] - z)
        assert np.sum(np.isclose(dist, d / 2, rtol=1e-12)) == 2 * m
        assert dist.min() == pytest.approx(d / 2, rel=1e-12)


def test_plate_without_holes_is_an_exact_slab(x64):
    # Square corners are not allowed (radius > 0), but a tiny radius makes the outline a rectangle
    # up to the corners' area, bounded as above.
    inst = plate(40.0, 10.0, 2.0, holes=0, corner_radius_mm=1e-3)
    assert volume(inst) == pytest.approx(40.0 * 10.0 * 2.0, rel=1e-6)


# ---- guidewires and catheters ------------------------------------------------------------------


def test_straight_guidewire_is_an_exact_prism(x64):
    n, d = 12, 0.89
    inst = guidewire([[0.0, 0.0, 0.0], [0.0, 0.0, 40.0], [0.0, 0.0, 100.0]], d, segments=n)
    assert volume(inst) == pytest.approx(k(n) * np.pi * (d / 2) ** 2 * 100.0, rel=1e-9)
    np.testing.assert_allclose(inst.landmarks["tip"], [0, 0, 100.0], atol=1e-12)
    np.testing.assert_allclose(inst.landmarks["centreline_5"], [0, 0, 50.0], atol=1e-9)


def test_curved_guidewire_follows_its_arc_and_keeps_the_tube_volume(x64):
    big_r, r, n, step = 30.0, 0.5, 12, 1.0
    inst = guidewire(ARC, 2 * r, segments=n, step_mm=step)
    np.testing.assert_allclose(inst.landmarks["base"], ARC[0], atol=1e-12)
    np.testing.assert_allclose(inst.landmarks["tip"], ARC[-1], atol=1e-12)
    # The spline through points 10 degrees apart on a circle stays within 1e-3 R of it (the
    # not-a-knot cubic's error for this spacing is ~1e-4 R; end intervals are the worst).
    along = np.stack([inst.landmarks[f"centreline_{i}"] for i in range(11)])
    np.testing.assert_allclose(np.hypot(along[:, 0], along[:, 1]), big_r, rtol=1e-3)
    # Pappus: a bent tube's volume is its cross-section times its centreline length. Between two
    # rings turned by delta the polygonal tube has volume A R sin(delta) (not A R delta), a relative
    # deficit of delta^2 / 6, delta = step / R; the spline's radius error adds up to 2e-3 (area r^2
    # does not change; the centreline length error is that of the radius).
    delta = step / big_r
    ideal = k(n) * np.pi * r**2 * big_r * np.pi / 2
    assert volume(inst) == pytest.approx(ideal, rel=delta**2 / 6 + 2e-3)
    v, _ = numpy_mesh(inst)
    # Every ring vertex is at distance r from the centreline (here: from the arc, within the spline
    # error); the other two vertices are the centres of the end caps, on the arc.
    dist = np.hypot(np.hypot(v[:, 0], v[:, 1]) - big_r, v[:, 2])
    off_ring = np.abs(dist - r) > 1e-3 * big_r
    assert off_ring.sum() == 2 and np.all(dist[off_ring] < 1e-3 * big_r)


def test_straight_catheter_is_an_exact_polygonal_tube(x64):
    n = 16
    inst = catheter([[0.0, 0.0, 0.0], [0.0, 0.0, 50.0]], 2.0, 1.4, segments=n)
    assert volume(inst) == pytest.approx(k(n) * np.pi * (1.0 - 0.49) * 50.0, rel=1e-9)
    assert inst.material == "pmma"


# ---- materials, poses, errors ------------------------------------------------------------------


def test_material_and_density_overrides():
    inst = screw(material="cobalt_chrome")
    assert inst.material == "cobalt_chrome" and inst.density == 8.3
    assert kwire(material="tungsten", density=19.0).density == 19.0
    assert plate(material="peek").density == 1.32
    with pytest.raises(UnknownMaterialError):
        kwire(material="unobtainium")
    with pytest.raises(InstrumentError, match="density"):
        kwire(density=0.0)


def test_posed_landmarks_follow_the_rigid_transform():
    inst = kwire(length_mm=100.0)
    pose = RigidTransform.create(rotation=(0.0, np.pi / 2, 0.0), translation=(10.0, 20.0, 30.0))
    world = inst.posed_landmarks(pose)
    # +z turned by +90 degrees about y becomes +x.
    np.testing.assert_allclose(world["tip"], [110.0, 20.0, 30.0], atol=1e-4)
    np.testing.assert_allclose(world["base"], [10.0, 20.0, 30.0], atol=1e-5)
    assert inst.landmarks["tip"].flags.writeable is False
    np.testing.assert_allclose(inst.axis(), [0.0, 0.0, 1.0])
    np.testing.assert_allclose(inst.axis(pose), [1.0, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: kwire(length_mm=-5.0), "length_mm"),
        (lambda: kwire(diameter_mm=float("nan")), "diameter_mm"),
        (lambda: kwire(tip="spade"), "tip"),
        (lambda: kwire(tip_length_mm=200.0), "shorter than length"),
        (lambda: kwire(tip="flat", tip_length_mm=2.0), "flat tip"),
        (lambda: kwire(segments=20), "divisible by 3"),
        (lambda: kwire(segments=2), "segments"),
        (lambda: screw(thread_diameter_mm=2.4), "must exceed core"),
        (lambda: screw(thread_diameter_mm=2.0), "must exceed core"),
        (lambda: screw(head_diameter_mm=2.0), "head_diameter_mm"),
        (lambda: screw(cannulated=True, cannula_diameter_mm=2.4), "smaller than core"),
        (lambda: screw(cannula_diameter_mm=1.0), "cannulated=False"),
        (lambda: screw(length_mm=5.0), "less than one pitch"),
        (lambda: screw(thread_length_mm=100.0), "exceeds the shaft"),
        (lambda: screw(pitch_mm=0.0), "pitch_mm"),
        (lambda: screw(thread="double"), "thread"),
        (lambda: plate(holes=-1), "holes"),
        (lambda: plate(hole_diameter_mm=12.0), "smaller than width"),
        (lambda: plate(hole_spacing_mm=3.0), "must exceed hole_diameter"),
        (lambda: plate(length_mm=50.0), "do not fit"),
        (lambda: plate(corner_radius_mm=6.0), "corner_radius_mm"),
        (lambda: guidewire([[0.0, 0.0, 0.0]]), "N >= 2"),
        (lambda: guidewire([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]]), "coincide"),
        (lambda: guidewire([[0.0, 0.0, 0.0], [0.0, 0.0, np.inf]]), "finite"),
        (lambda: guidewire([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0], [0.0, 0.3, 0.0]]), "fold"),
        (lambda: guidewire(ARC, diameter_mm=-1.0), "diameter_mm"),
        (lambda: catheter(ARC, 2.0, 2.0), "inner_diameter_mm"),
        (lambda: catheter(ARC, 70.0, 1.0), "fold"),
    ],
)
def test_bad_parameters_raise_clear_errors(build, match):
    with pytest.raises(InstrumentError, match=match) as info:
        build()
    assert isinstance(info.value, JaxdrrError) and isinstance(info.value, MeshError)


def test_slab_rejects_a_hole_that_would_cut_the_outline():
    from jaxdrr.instruments.primitives import perforated_slab

    # 2 mm from a round end of radius 5: the ideal arc is 2 mm away, but the chord polygon of the
    # outline passes closer than the hole's 1.999 mm radius.
    with pytest.raises(InstrumentError, match="does not fit"):
        perforated_slab(20.0, 10.0, 2.0, 5.0, [2.0], 1.999, 16)
    vertices, faces = perforated_slab(20.0, 10.0, 2.0, 5.0, [2.0], 1.9, 16)
    assert trimesh.Trimesh(vertices, faces, process=False).is_watertight
