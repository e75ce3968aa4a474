"""Readers and automatic initialisation on the real Autoscoper wrist data (frame 0002 only).

The data are the copy in ``data/autoscoper_wrist/`` (see its PROVENANCE.md). What is checked:

* the MayaCam reader's values and its errors on malformed files (the message names the line);
* the calibration convention against the images themselves: bead markers found in both views lie
  on each other's epipolar lines under ``P = K [R | t]`` and not under the transposed reading;
* projection / triangulation round trips and downsampling consistency (pure geometry, float64);
* the FOV circle of both frames against values measured once and checked on an overlay picture;
* the TIFF stack reader: shapes, spacing, HU rescale, the radius's long axis along z;
* the initialiser: the 2D limb axes are consistent with each other, and the best radius seed
  projects onto the forearm in both views.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from PIL import Image

from jaxdrr.errors import JaxdrrError, LoadError
from jaxdrr.io.frames import detect_fov_circle, downsample_image, read_fluoro_frame
from jaxdrr.io.mayacam import parse_mayacam, projection_from_mayacam, read_mayacam, triangulate
from jaxdrr.io.tiff_stack import AUTOSCOPER_WRIST_VOXEL_MM, principal_axes, read_tiff_volume
from jaxdrr.volume import Volume

DATA = Path(__file__).resolve().parents[1] / "data" / "autoscoper_wrist"
FRAME = "frames/xr_rad_uln_cam0{}_UND.0002.tif"
CALIB = "Calibration/xr_calib_wrist_cam0{}.txt"

# FOV circles (cx, cy, r) in full-size pixels, measured once with detect_fov_circle and checked by
# eye on an overlay (the fitted circle follows the rim within ~1-2 px all round).
FOV_MEASURED = {1: (863.0, 870.1, 875.0), 2: (888.6, 890.6, 893.3)}
FOV_TOL_PX = 3.0


@pytest.fixture(scope="module")
def calibs():
    return [read_mayacam(DATA / CALIB.format(c)) for c in (1, 2)]


@pytest.fixture(scope="module")
def full_images():
    return [np.asarray(Image.open(DATA / FRAME.format(c)), np.float64) for c in (1, 2)]


# ------------------------------------------------------------------------------------ MayaCam


def test_read_mayacam_values(calibs):
    c1, c2 = calibs
    assert (c1.width, c1.height) == (1760, 1760)
    np.testing.assert_allclose(
        c1.K[[0, 1, 0, 1], [0, 1, 2, 2]], [6167.35342293, 6165.63244754, 803.741292437, 865.698104164]
    )
    np.testing.assert_allclose(c2.t, [-135.747285386, -87.5774698666, 1152.28037649])
    for c in calibs:
        np.testing.assert_allclose(c.R @ c.R.T, np.eye(3), atol=1e-9)
        # The source is |t| from the world origin whatever the convention; the check that matters is
        # that the two sources are ~1 m from the region both cameras look at (below).
        assert np.linalg.norm(c.source_position) == pytest.approx(np.linalg.norm(c.t))
    assert c1.distortion is None


def _closest_points(o1, d1, o2, d2):
    """Closest points of two lines o + s d (unit d)."""
    w = o1 - o2
    b = d1 @ d2
    den = 1.0 - b * b
    s = (b * (d2 @ w) - (d1 @ w)) / den
    u = ((d2 @ w) - b * (d1 @ w)) / den
    return o1 + s * d1, o2 + u * d2, s, u


def test_fov_centre_rays_meet_about_1m_from_both_sources(calibs):
    """The rays through both FOV centres pass close to each other ~1 m in front of both sources:
    the two calibrations share one world frame and look at one region (the wrist)."""
    rays = []
    for c, cam in zip(calibs, (1, 2), strict=True):
        cx, cy, _ = FOV_MEASURED[cam]
        d = c.R.T @ np.linalg.solve(c.K, [cx, cy, 1.0])
        rays.append((c.source_position, d / np.linalg.norm(d)))
    p1, p2, s, u = _closest_points(rays[0][0], rays[0][1], rays[1][0], rays[1][1])
    assert np.linalg.norm(p1 - p2) < 15.0  # measured 3.4 mm; the FOV centres need not be one point
    assert 800.0 < s < 1300.0 and 800.0 < u < 1300.0  # measured 1063 and 1067 mm


def _bead_centres(image):
    """Small dark blobs (tantalum beads, ~5 px): black top-hat maxima."""
    bth = ndi.gaussian_filter(ndi.grey_closing(image, size=(9, 9)) - image, 1.0)
    peaks = (bth == ndi.maximum_filter(bth, size=15)) & (bth > 25.0) & (image > 5.0)
    rows, cols = np.nonzero(peaks)
    return np.stack([cols, rows], axis=1).astype(np.float64)


def _fundamental(P1, P2):
    c1 = np.append(-np.linalg.solve(P1[:, :3], P1[:, 3]), 1.0)
    e2 = P2 @ c1
    ex = np.array([[0, -e2[2], e2[1]], [e2[2], 0, -e2[0]], [-e2[1], e2[0], 0]])
    return ex @ P2 @ np.linalg.pinv(P1)


def test_calibration_convention_epipolar_beads(calibs, full_images):
    """Beads seen in view 1 lie on the epipolar lines of beads seen in view 2 for P = K [R | t]
    (median distance measured 0.5 px), and far from them if R were read transposed (~130 px)."""
    b1, b2 = (_bead_centres(im) for im in full_images)
    assert len(b1) >= 8 and len(b2) >= 8

    def median_epipolar_distance(P1, P2):
        F = _fundamental(P1, P2)
        h2 = np.c_[b2, np.ones(len(b2))]
        dists = []
        for x in b1:
            line = F @ np.append(x, 1.0)
            dists.append(np.min(np.abs(h2 @ line)) / np.hypot(line[0], line[1]))
        return float(np.median(dists))

    P1, P2 = (projection_from_mayacam(c) for c in calibs)
    assert median_epipolar_distance(P1, P2) < 2.0
    Pt1, Pt2 = (c.K @ np.c_[c.R.T, c.t] for c in calibs)
    assert median_epipolar_distance(Pt1, Pt2) > 20.0


def test_project_triangulate_round_trip(calibs):
    """World points near the wrist -> both views' pixels -> triangulated back (float64 DLT, exact data:
    the error is rounding, ~1e-12 relative of ~1000 mm)."""
    Ps = [projection_from_mayacam(c) for c in calibs]
    rng = np.random.default_rng(0)
    for X in np.array([104.0, 72.0, 101.0]) + rng.uniform(-40, 40, size=(5, 3)):
        xy = [P[:2] @ np.append(X, 1) / (P[2] @ np.append(X, 1)) for P in Ps]
        np.testing.assert_allclose(triangulate(Ps, xy), X, atol=1e-6)


def test_downsampled_projection_lands_on_downsampled_pixel(calibs):
    """A point at full-size image point x is at (x + 0.5) / k - 0.5 in a k-times block-averaged
    image, and P(image_scale=1/k) projects it there."""
    X = np.array([[110.0, 160.0, 80.0, 1.0], [90.0, 120.0, 110.0, 1.0]])
    for c in calibs:
        P = projection_from_mayacam(c)
        for k in (2, 4, 8):
            Pk = projection_from_mayacam(c, image_scale=1.0 / k)
            h, hk = X @ P.T, X @ Pk.T
            xy, xyk = h[:, :2] / h[:, 2:], hk[:, :2] / hk[:, 2:]
            np.testing.assert_allclose(xyk, (xy + 0.5) / k - 0.5, atol=1e-9)


def test_downsampled_frame_is_block_mean(full_images):
    k = 4
    frame = read_fluoro_frame(DATA / FRAME.format(2), downsample=k)
    full = full_images[1] / 255.0
    assert frame.image.shape == (440, 440) and frame.image.dtype == np.float32
    # Pixel (r, c) of the downsampled image is the mean of the full-size block it covers.
    r, c = 300, 123
    assert frame.image[r, c] == pytest.approx(full[k * r : k * r + k, k * c : k * c + k].mean(), abs=1e-6)
    np.testing.assert_allclose(downsample_image(full, k), frame.image, atol=1e-6)


# (line index to replace, its new text, what the error must say); the rest is camera 1's file.
_MALFORMED = [
    (1, "1760", "line 2"),  # one number in 'image size'
    (5, "0,6165.6,x", "line 6"),  # not a number in 'camera matrix'
    (3, "camera", "line 4"),  # unknown header
    (13, "", "line 15"),  # 'translation' header gone: its first value is not a header
    (10, "0.05,0.99", "line 11"),  # two numbers in a rotation row
]


@pytest.mark.parametrize("index, replacement, fragment", _MALFORMED)
def test_malformed_mayacam_names_the_problem(index, replacement, fragment):
    lines = (DATA / CALIB.format(1)).read_text().splitlines()
    lines[index] = replacement
    with pytest.raises(LoadError, match=fragment):
        parse_mayacam("\n".join(lines), "bad.txt")


def test_mayacam_rejects_non_rotation_and_missing_file(tmp_path, calibs):
    good = (DATA / CALIB.format(1)).read_text()
    lines = good.splitlines()
    lines[9] = "2.0,0,0"  # first rotation row scaled: not a rotation
    with pytest.raises(LoadError, match="not a proper rotation"):
        parse_mayacam("\n".join(lines), "scaled.txt")
    lines = good.splitlines()
    lines[16] = ""  # translation cut short
    with pytest.raises(LoadError, match="line 17"):
        parse_mayacam("\n".join(lines), "short.txt")
    with pytest.raises(LoadError, match="missing block"):
        parse_mayacam("\n".join(good.splitlines()[:13]), "no_translation.txt")
    with pytest.raises(FileNotFoundError):
        read_mayacam(tmp_path / "nope.txt")
    # An undistortion block is read (not applied).
    calib = parse_mayacam(good + "\nundistortion\n0.1,0,0,0,0,0,0,0\n", "und.txt")
    assert calib.distortion[0] == pytest.approx(0.1)
    with pytest.raises(LoadError, match="image_scale"):
        projection_from_mayacam(calibs[0], image_scale=0.0)


# ------------------------------------------------------------------------------------ frames


@pytest.mark.parametrize("cam", [1, 2])
def test_fov_circle_detected(cam, full_images):
    cx, cy, r = detect_fov_circle(full_images[cam - 1])
    np.testing.assert_allclose([cx, cy, r], FOV_MEASURED[cam], atol=FOV_TOL_PX)


def test_fov_circle_synthetic_and_no_fov():
    """A disc (partly cut by the image border, with a dark notch on its rim like the letters on the
    real rims) is found to within half a pixel; an image without a dark surround is an error."""
    rows, cols = np.mgrid[0:220, 0:240]
    cx, cy, r = 120.3, 100.7, 105.0  # the disc runs off the top border
    image = np.where(np.hypot(cols - cx, rows - cy) < r, 200.0, 3.0)
    image[95:105, 10:25] = 3.0  # a notch 10 px deep into the left rim
    np.testing.assert_allclose(detect_fov_circle(image), (cx, cy, r), atol=0.5)
    with pytest.raises(LoadError, match="no field of view"):
        detect_fov_circle(np.full((50, 60), 120.0))


def test_frame_mask_and_given_fov():
    frame = read_fluoro_frame(DATA / FRAME.format(1), downsample=8, fov=FOV_MEASURED[1], margin=16.0)
    cx, cy, r = frame.fov
    assert r == pytest.approx(FOV_MEASURED[1][2] / 8)
    assert cx == pytest.approx((FOV_MEASURED[1][0] + 0.5) / 8 - 0.5)
    assert frame.mask[int(cy), int(cx)] and not frame.mask[0, 0]
    # The mask excludes the rim: no masked-in pixel closer than the margin (2 px here) to the circle.
    rows, cols = np.nonzero(frame.mask)
    assert np.hypot(cols - cx, rows - cy).max() < r - 2.0
    # Bone is dark in the files: the forearm bones (bottom centre) are darker than air (top left).
    inverted = read_fluoro_frame(DATA / FRAME.format(1), downsample=8, invert=True, fov=FOV_MEASURED[1])
    np.testing.assert_allclose(inverted.image, 1.0 - frame.image, atol=1e-6)


# ------------------------------------------------------------------------------------ CT crops


@pytest.mark.parametrize(
    "bone, shape",
    [("rad", (68, 86, 128)), ("uln", (65, 45, 112)), ("mc3", (60, 59, 116)), ("mc2_mc3", (65, 112, 116))],
)
def test_read_tiff_volume(bone, shape):
    path = DATA / "Models" / f"{bone}_dcm_cropped.tif"
    vol = read_tiff_volume(path, AUTOSCOPER_WRIST_VOXEL_MM)
    assert vol.shape == shape and vol.kind == "hu" and vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, AUTOSCOPER_WRIST_VOXEL_MM)
    np.testing.assert_allclose(vol.center, 0.0, atol=1e-9)
    data = np.asarray(vol.data)
    raw = np.asarray(read_tiff_volume(path, AUTOSCOPER_WRIST_VOXEL_MM, values="raw").data)
    assert raw.max() == 4095 and raw.min() == 0
    # Stored 0 (outside the bone) -> -1000 HU; stored v -> v - 1024 HU; 4095 -> 3071 HU.
    np.testing.assert_array_equal(data[raw == 0], -1000.0)
    np.testing.assert_allclose(data[raw > 0], raw[raw > 0] - 1024.0)
    # Long bones: the long principal axis runs along z (between pages), the 0.625 mm axis.
    _, axes, std = principal_axes(vol)
    assert abs(axes[0, 2]) > 0.95 and std[0] > 2.0 * std[1]


def test_read_tiff_volume_origin_flip_and_errors(tmp_path):
    path = DATA / "Models" / "uln_dcm_cropped.tif"
    vol = read_tiff_volume(path, (1.0, 1.0, 1.0), origin_mm=(10.0, 20.0, 30.0), values="raw")
    np.testing.assert_allclose(vol.affine[:3, 3], [10.0, 20.0, 30.0])
    flipped = read_tiff_volume(path, (1.0, 1.0, 1.0), values="raw", flip=(False, False, True))
    np.testing.assert_array_equal(np.asarray(flipped.data), np.asarray(vol.data)[:, :, ::-1])
    with pytest.raises(LoadError, match="voxel_size_mm"):
        read_tiff_volume(path, (1.0, 0.0, 1.0))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(LoadError, match="cannot read"):
        read_tiff_volume(bad, (1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------ initialiser


@pytest.fixture(scope="module")
def views(calibs):
    k = 8
    frames = [read_fluoro_frame(DATA / FRAME.format(c), downsample=k) for c in (1, 2)]
    Ps = [projection_from_mayacam(c, image_scale=1.0 / k) for c in calibs]
    return frames, Ps


def test_triangulate_line_recovers_a_3d_line(calibs):
    """A 3D line projected into both views (as 2D point + direction) is triangulated back: same
    direction (sign from view 0) and a point on it (float64 geometry, exact data)."""
    from jaxdrr.registration.initialize import LimbAxis2D, triangulate_line

    Ps = [projection_from_mayacam(c, image_scale=0.25) for c in calibs]
    point = np.array([110.0, 170.0, 85.0])
    direction = np.array([-0.1, -0.98, -0.15])
    direction /= np.linalg.norm(direction)
    lines = []
    for P in Ps:
        a, b = (P @ np.append(point + s * direction, 1.0) for s in (0.0, 30.0))
        a, b = a[:2] / a[2], b[:2] / b[2]
        lines.append(LimbAxis2D(entry=a, center=a, direction=(b - a) / np.linalg.norm(b - a)))
    p, d = triangulate_line(Ps, lines)
    np.testing.assert_allclose(d, direction, atol=1e-9)
    off_line = (p - point) - ((p - point) @ direction) * direction
    assert np.linalg.norm(off_line) < 1e-6
    assert np.linalg.norm(p - point) < 1e-6  # both centers are the projections of `point`


def _enters_at_the_bottom_going_up(axis, frame) -> bool:
    """The entry in the lower part of the FOV circle, the axis pointing up the image (within ~25 deg
    of vertical)."""
    cx, cy, r = frame.fov
    return bool(axis.entry[1] > cy + 0.6 * r and axis.direction[1] < -0.9)


def test_limb_axes_enter_from_the_bottom(views):
    """In both frames the forearm enters the FOV at the bottom and runs up (checked on the pictures)."""
    from jaxdrr.registration.initialize import limb_axis_2d

    frames, _ = views
    for frame in frames:
        assert _enters_at_the_bottom_going_up(limb_axis_2d(frame), frame)


def _with_absorber(frame, angle_deg: float, strength: float):
    """``frame`` with a strap-like absorber (Gaussian profile, ``strength`` at its centre line, in
    ``-ln`` units) entering the FOV from its rim at ``angle_deg`` (0 = right, 90 = up) and reaching
    to 0.45 FOV radii from the centre."""
    import dataclasses

    cx, cy, r = frame.fov
    rows, cols = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]].astype(np.float64)
    out = np.array([np.cos(np.radians(angle_deg)), -np.sin(np.radians(angle_deg))])
    along = (cols - cx) * out[0] + (rows - cy) * out[1]
    across = -(cols - cx) * out[1] + (rows - cy) * out[0]
    absorption = strength * np.exp(-0.5 * (across / (0.08 * r)) ** 2) * (along > 0.45 * r)
    assert not frame.inverted
    return dataclasses.replace(frame, image=(frame.image * np.exp(-absorption)).astype(np.float32))


def test_a_stronger_absorber_at_the_rim_leaves_the_forearm_a_hypothesis(views):
    """A strap entering camera 2's FOV from the upper right absorbs more than the forearm at its
    entry: the strongest entry is then the strap, but the forearm (as found without the strap) stays
    one of the hypotheses, and its combination with camera 1's forearm is one of the 3D axes."""
    from jaxdrr.registration.initialize import limb_axes_2d, limb_axes_3d, limb_axis_2d, triangulate_line

    frames, Ps = views
    clean = [limb_axis_2d(f) for f in frames]
    strapped = [frames[0], _with_absorber(frames[1], 45.0, 1.5)]
    assert not _enters_at_the_bottom_going_up(limb_axis_2d(strapped[1]), strapped[1])
    forearm = []
    for frame, alone in zip(strapped, clean, strict=True):
        hypotheses = limb_axes_2d(frame)
        assert 1 <= len(hypotheses) <= 2
        (axis,) = [a for a in hypotheses if _enters_at_the_bottom_going_up(a, frame)]
        # The strap changes the Otsu threshold of the limb mask a little, not the forearm's axis.
        assert np.linalg.norm(axis.center - alone.center) < 2.0 and axis.direction @ alone.direction > 0.999
        forearm.append(axis)
    assert len(limb_axes_2d(strapped[1])) == 2 and len(limb_axes_2d(strapped[1], max_entries=1)) == 1
    point, direction = triangulate_line(Ps, forearm)
    axes = limb_axes_3d(strapped, Ps)
    assert len(axes) == 2
    assert any(np.linalg.norm(p - point) < 1e-6 and d @ direction > 1 - 1e-9 for p, d in axes)
    with pytest.raises(JaxdrrError, match="min_fraction"):
        limb_axes_2d(frames[0], min_fraction=0.0)


def test_initialize_bones_takes_the_axis_that_suits_all_bones(views, monkeypatch):
    """With two axis hypotheses, each bone's candidates come from the one whose best combination
    of candidates that keeps the bones apart scores highest: even where one bone alone matches the
    other better (a thin ulna on a metacarpal's shadow), and not where both bones claim one place."""
    from jaxdrr.geometry.rigid import RigidTransform
    from jaxdrr.registration import initialize as init

    frames, Ps = views
    axes = [(np.zeros(3), np.array([0.0, 1.0, 0.0])), (np.ones(3), np.array([0.0, 0.0, 1.0]))]
    best = {("rad", 0): 0.55, ("uln", 0): 0.44, ("rad", 1): 0.48, ("uln", 1): 0.46}
    place = {("rad", 0): 0.0, ("uln", 0): 100.0, ("rad", 1): 0.0, ("uln", 1): 100.0}  # x (mm)
    calls = []

    def fake_search(volume, frames_, Ps_, *, name, axis, config):
        index = next(i for i, a in enumerate(axes) if a is axis)
        calls.append((name, index))
        pose = RigidTransform.create(translation=(place[name, index], 0.0, 0.0))
        return [
            init.PoseCandidate(name, pose, best[name, index] - 0.01 * k, (0.0, 0.0))
            for k in range(config.top_k)
        ]

    monkeypatch.setattr(init, "limb_axes_3d", lambda *args: axes)
    monkeypatch.setattr(init, "initialize_bone", fake_search)
    volumes = {"rad": _box_bone(), "uln": _box_bone()}
    config = init.InitConfig(top_k=3)
    found = init.initialize_bones(volumes, frames, Ps, config=config)
    assert sorted(calls) == [("rad", 0), ("rad", 1), ("uln", 0), ("uln", 1)]
    assert [c.score for c in found["rad"]] == pytest.approx([0.55, 0.54, 0.53])
    assert all(c.axis_index == 0 for cands in found.values() for c in cands)
    best["rad", 1] = 0.54  # now 0.54 + 0.46 > 0.55 + 0.44
    found = init.initialize_bones(volumes, frames, Ps, config=config)
    assert [c.score for c in found["uln"]] == pytest.approx([0.46, 0.45, 0.44])
    assert all(c.axis_index == 1 for cands in found.values() for c in cands)
    best["rad", 1], best["uln", 1], place["uln", 1] = 0.6, 0.6, 0.0  # both bones on one shadow
    found = init.initialize_bones(volumes, frames, Ps, config=config)
    assert all(c.axis_index == 0 for cands in found.values() for c in cands)
    with pytest.raises(JaxdrrError, match="max_entries"):
        init.InitConfig(max_entries=0)


def test_initialiser_places_radius_on_the_forearm(views):
    """Seeds are scored and ordered, and the best radius seed projects onto the forearm's shadow
    (the top-hat limb region) in both views: its centroid inside the limb, and most of its DRR
    footprint too. A coarse search (45 deg steps, no tilts) keeps the test fast; this does not
    check the exact pose (there is no ground truth), only that the seed is where the bone can be."""
    from jaxdrr.io.tiff_stack import bone_excess_density
    from jaxdrr.ops.project import project
    from jaxdrr.registration.initialize import InitConfig, initialize_bone, limb_tophat

    frames, Ps = views
    vol = read_tiff_volume(DATA / "Models" / "rad_dcm_cropped.tif", AUTOSCOPER_WRIST_VOXEL_MM)
    config = InitConfig(angle_step_deg=45.0, tilt_deg=0.0, lateral_range_mm=30.0, top_k=3)
    cands = initialize_bone(vol, frames, Ps, name="rad", config=config)
    assert 1 <= len(cands) <= 3
    scores = [c.score for c in cands]
    assert scores == sorted(scores, reverse=True)
    best = cands[0]
    assert best.score > 0.0 and len(best.view_scores) == 2
    T = best.matrix()
    centroid = T[:3, :3] @ np.asarray(best.pose.pivot) + T[:3, 3]
    density = bone_excess_density(vol)
    for frame, P in zip(frames, Ps, strict=True):
        top = limb_tophat(frame)
        limb = ndi.binary_dilation(top > 0.5 * np.percentile(top[frame.mask], 99), iterations=2)
        h = P @ np.append(centroid, 1.0)
        x, y = h[:2] / h[2]
        assert limb[int(round(y)), int(round(x))]
        H, W = frame.image.shape
        drr = np.asarray(project(density, vol.affine, np.asarray(P @ T, np.float32), H, W, step_mm=1.0))[
            ..., 0
        ]
        foot = drr > 0.05 * drr.max()
        assert (foot & limb).sum() > 0.8 * foot.sum()


def test_initial_pose_json_round_trip(tmp_path):
    from jaxdrr.geometry.rigid import RigidTransform
    from jaxdrr.registration.initialize import load_initial_poses, save_initial_poses

    pose = RigidTransform.create((0.1, -0.2, 0.3), (100.0, 150.0, 90.0), pivot=(1.0, 2.0, 3.0))
    save_initial_poses(tmp_path / "p.json", {"rad": pose})
    back = load_initial_poses(tmp_path / "p.json")
    np.testing.assert_allclose(np.asarray(back["rad"].matrix()), np.asarray(pose.matrix()), atol=1e-4)
    (tmp_path / "q.json").write_text(
        json.dumps({"uln": {"rotvec_deg": [0.0, 0.0, 90.0], "translation_mm": [1.0, 2.0, 3.0]}})
    )
    T = np.asarray(load_initial_poses(tmp_path / "q.json")["uln"].matrix())
    np.testing.assert_allclose(T[:3, :3] @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(T[:3, 3], [1.0, 2.0, 3.0], atol=1e-6)
    (tmp_path / "r.json").write_text(json.dumps({"rad": {"matrix": np.diag([2.0, 1, 1, 1]).tolist()}}))
    with pytest.raises(LoadError, match="not a proper rotation"):
        load_initial_poses(tmp_path / "r.json")
    (tmp_path / "s.json").write_text("{")
    with pytest.raises(LoadError, match="not valid JSON"):
        load_initial_poses(tmp_path / "s.json")


def _box_bone(shape=(20, 20, 30), inner=(slice(2, 18), slice(2, 18), slice(0, 30))) -> Volume:
    """A HU volume (1 mm voxels, centred on the origin) whose bone is a box of 16 x 16 x 30 voxels."""
    data = np.zeros(shape, np.float32)
    data[inner] = 1000.0
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0
    return Volume.create(data, affine, kind="hu")


def _at_x(x_mm: float):
    from jaxdrr.geometry.rigid import RigidTransform

    return RigidTransform.create(np.zeros(3), np.array([x_mm, 0.0, 0.0]))


def test_bone_overlap_is_the_shared_fraction_of_voxels():
    """Two 16 mm wide boxes: identical poses share every voxel, an 8 mm shift (whole voxels) half of
    them along that axis, a 16 mm shift none; the fraction is exact with every voxel sampled."""
    from jaxdrr.registration.initialize import bone_overlap

    a = b = _box_bone()
    n = 16 * 16 * 30
    assert bone_overlap(a, _at_x(0.0), b, _at_x(0.0), n_points=n) == 1.0
    assert bone_overlap(a, _at_x(0.0), b, _at_x(8.0), n_points=n) == 0.5
    assert bone_overlap(a, _at_x(0.0), b, _at_x(16.0), n_points=n) == 0.0


def test_joint_seeds_drop_bones_in_the_same_place_and_order_by_score():
    """Candidates of two bones: the combination that puts both at x = 0 is dropped (they would
    share space); the others come best summed score first."""
    from jaxdrr.errors import JaxdrrError
    from jaxdrr.registration.initialize import PoseCandidate, joint_seeds

    vols = {"a": _box_bone(), "b": _box_bone()}

    def cand(name, x, score):
        return PoseCandidate(name=name, pose=_at_x(x), score=score, view_scores=(score, score))

    cands = {
        "a": [cand("a", 0.0, 0.9), cand("a", 30.0, 0.5)],
        "b": [cand("b", 0.0, 0.8), cand("b", 60.0, 0.3)],
    }
    seeds = joint_seeds(vols, cands)
    placed = [(float(s["a"].translation[0]), float(s["b"].translation[0])) for s in seeds]
    assert placed == [(30.0, 0.0), (0.0, 60.0), (30.0, 60.0)]  # sums 1.3, 1.2, 0.8; (0, 0) overlaps
    assert len(joint_seeds(vols, cands, max_seeds=2)) == 2
    alone = joint_seeds({"b": vols["b"]}, {"b": cands["b"]})  # one bone: its candidates, in order
    assert [float(s["b"].translation[0]) for s in alone] == [0.0, 60.0]
    with pytest.raises(JaxdrrError, match="no candidate"):
        joint_seeds(vols, {"a": cands["a"], "b": []})
    with pytest.raises(JaxdrrError, match="same bones"):
        joint_seeds(vols, {"a": cands["a"]})


def test_distinct_peaks_keep_a_second_place_apart_from_the_best():
    """Per orientation the search keeps several translations: the best and the next ones at least
    ``distinct_mm`` away (a bone's own place can be the second peak, after its neighbour's shadow)."""
    from jaxdrr.registration.initialize import InitConfig, _distinct_peaks

    points = np.array([[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0], [20.0, 0, 0], [10.5, 0, 0]])
    scores = np.array([0.9, 0.85, 0.7, 0.1, 0.8])
    assert _distinct_peaks(scores, points, 2, 6.0) == [0, 4]  # 1 is within 6 mm of 0
    assert _distinct_peaks(scores, points, 3, 6.0) == [0, 4, 3]  # 2 is within 6 mm of 4
    assert _distinct_peaks(scores, points, 9, 6.0) == [0, 4, 3]  # no more distinct points
    assert _distinct_peaks(scores, points, 1, 6.0) == [0]
    with pytest.raises(JaxdrrError, match="peaks_per_orientation"):
        InitConfig(peaks_per_orientation=0)
