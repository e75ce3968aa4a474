"""Surgical tools in jaxdrr.datasets: the [[tools]] spec, per-image tool draws, rendering through the
scene, and the tool annotations (masks, keypoints, path lengths, COCO) against independent checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr import datasets as D
from jaxdrr.datasets.sources import load_ct
from jaxdrr.geometry.rotations import so3_exp
from jaxdrr.physics.compositions import density as nominal_density

U32 = 2.0**-24  # float32 unit roundoff

BASE = """
name = "tools"
seed = 11
images_per_ct = 2

[[ct]]
phantom = "analytic"
shape = [40, 32, 28]
landmarks = "builtin"
labels = "builtin"

[detector]
height = 32
width = 40
pixel_mm = 6.0

[pose]
lao_deg = [-20, 20]
cran_deg = [-10, 10]
sdd_mm = 1000
sid_mm = 700

[physics]
kvp = 90
noise = false

[annotations]
path_lengths = true
line_integrals = true
{tool_annotations}

[output]
shard_size = 2
batch_size = 2
"""

KWIRE = """
[[tools]]
kind = "kwire"
params = { diameter_mm = 4.0, length_mm = 120.0, segments = 12 }
entry = { center_mm = [0, 0, 0], radius_mm = 10 }
direction = { mean = [1, 0, 0], cone_deg = 20 }
depth_mm = [20, 40]

[[tools]]
kind = "screw"
probability = 0.0
entry = { center_fraction = [0.5, 0.5, 0.5], half_size_fraction = 0.1 }
direction = { mean = [0, 1, 0], cone_deg = 10 }
depth_mm = 5
"""


def spec_dict(extra: dict | None = None) -> dict:
    d = {"ct": [{"phantom": "analytic", "shape": [40, 32, 28]}]}
    d.update(extra or {})
    return d


def kwire_tool(**changes) -> dict:
    tool = {
        "kind": "kwire",
        "params": {"diameter_mm": 2.0},
        "entry": {"center_mm": [0, 0, 0], "radius_mm": 5},
        "direction": {"mean": [0, 0, -1], "cone_deg": 15},
        "depth_mm": [0, 30],
    }
    tool.update(changes)
    return tool


# ----------------------------------------------------------------------------------------------
# Spec


def test_tool_spec_parses():
    spec = D.spec_from_dict(
        spec_dict(
            {
                "tools": [
                    kwire_tool(material="ti6al4v", density=4.0, probability=0.5),
                    kwire_tool(params={"diameter_mm": 1.6, "segments": 12}),
                    {"kind": "plate", "pose": {"rotation_deg": [0, 90, 0], "translation_mm": [1, 2, 3]}},
                    {
                        "kind": "guidewire",
                        "params": {"control_points_mm": [[0, 0, 0], [0, 10, 40], [0, 0, 80]]},
                        "frame": "world",
                        "entry": {"center_fraction": [0.5, 0.5, 0.9], "half_size_mm": [5, 5, 0]},
                        "direction": {"mean": [0, 0, -2]},
                    },
                ],
                "annotations": {"tool_path_length": True},
            }
        )
    )
    a, b, plate, wire = spec.tools
    assert (a.name, b.name, plate.name, wire.name) == ("kwire-0", "kwire-1", "plate", "guidewire")
    assert a.material == "ti6al4v" and a.density == 4.0 and a.probability == 0.5
    assert b.params == (("diameter_mm", 1.6), ("segments", 12)) and isinstance(b.params[1][1], int)
    assert a.placement.entry_shape == "sphere" and a.placement.entry_size == (5.0, 5.0, 5.0)
    assert a.placement.direction == (0.0, 0.0, -1.0) and a.placement.spin_deg == (0.0, 360.0)
    assert plate.pose == D.ToolPose((0.0, 90.0, 0.0), (1.0, 2.0, 3.0)) and plate.placement is None
    assert wire.params[0][1] == ((0, 0, 0), (0, 10, 40), (0, 0, 80))
    assert wire.placement.entry_center_units == "fraction" and wire.placement.entry_shape == "box"
    assert wire.placement.direction == (0.0, 0.0, -1.0) and wire.placement.cone_deg == 0.0
    assert spec.annotations.tool_path_length
    # The digest sees the tools, and is JSON-serialisable.
    assert D.spec_digest(spec) != D.spec_digest(D.spec_from_dict(spec_dict()))


def test_spec_without_tools_keeps_its_normalised_form():
    """A spec without tools normalises (and hashes) exactly as before tools existed."""
    d = D.spec_from_dict(spec_dict()).to_dict()
    assert "tools" not in d and "tool_path_length" not in d["annotations"]


@pytest.mark.parametrize(
    "tool, message",
    [
        ({"kind": "drill", "pose": {}}, r"tools\[0\]\.kind: expected one of"),
        (
            kwire_tool(params={"diameter_mm": 2.0, "lenght_mm": 3}),
            r"tools\[0\]\.params\.lenght_mm: unknown kwire",
        ),
        (kwire_tool(params={"material": "peek"}), r"tools\[0\]\.params\.material: set the tool's material"),
        (
            kwire_tool(direction={"mean": [0, 0, 1], "cone_deg": 200}),
            r"tools\[0\]\.direction\.cone_deg: must be <= 180",
        ),
        (
            kwire_tool(direction={"mean": [0, 0, 1], "cone_deg": -5}),
            r"tools\[0\]\.direction\.cone_deg: must be >= 0",
        ),
        (
            kwire_tool(direction={"mean": [0, 0, 0]}),
            r"tools\[0\]\.direction\.mean: the direction must not be zero",
        ),
        (kwire_tool(direction={"cone_deg": 5}), r"tools\[0\]\.direction\.mean: give the mean direction"),
        ({"kind": "mesh", "material": "ti6al4v", "pose": {}}, r"tools\[0\]\.path: a mesh tool needs path"),
        ({"kind": "mesh", "path": "a.stl", "pose": {}}, r"tools\[0\]\.material: a mesh tool needs material"),
        (
            {
                "kind": "mesh",
                "path": "a.stl",
                "material": "ti6al4v",
                "entry": {"center_mm": [0, 0, 0]},
                "direction": {"mean": [0, 0, 1]},
            },
            r"tools\[0\]\.landmarks: random placement of a mesh needs its tip and base",
        ),
        (kwire_tool(path="a.stl"), r"tools\[0\]\.path: only for kind = 'mesh'"),
        (kwire_tool(pose={}), r"tools\[0\]: give a fixed pose or a random placement, not both"),
        ({"kind": "kwire"}, r"tools\[0\]: place the tool"),
        (kwire_tool(entry=None), r"tools\[0\]: random placement needs both entry"),
        (
            kwire_tool(entry={"center_mm": [0, 0, 0], "center_fraction": [0.5, 0.5, 0.5]}),
            r"tools\[0\]\.entry: give exactly one",
        ),
        (
            kwire_tool(entry={"center_mm": [0, 0, 0], "radius_mm": 1, "half_size_mm": 1}),
            r"tools\[0\]\.entry: give at most one",
        ),
        (kwire_tool(entry={"center_mm": [0, 0]}), r"tools\[0\]\.entry\.center_mm: expected 3 numbers"),
        (kwire_tool(depth_mm=[5, 1]), r"tools\[0\]\.depth_mm: low 5.0 > high 1.0"),
        (kwire_tool(probability=1.5), r"tools\[0\]\.probability: must be <= 1"),
        (kwire_tool(material="kryptonite"), r"tools\[0\]\.material: unknown material 'kryptonite'"),
        (kwire_tool(frame="patient"), r"tools\[0\]\.frame: expected one of 'ct', 'world'"),
        (kwire_tool(colour="red"), r"tools\[0\]: unknown key\(s\) colour"),
        (
            {"kind": "guidewire", "pose": {}},
            r"tools\[0\]\.params: the guidewire needs parameter\(s\) control_points_mm",
        ),
        (
            kwire_tool(pose={"rotation": [0, 0, 0]}, entry=None),
            r"tools\[0\]\.pose: unknown key\(s\) rotation",
        ),
    ],
)
def test_tool_spec_errors_name_the_key(tool, message):
    tool = {k: v for k, v in tool.items() if v is not None}
    if "pose" in tool and tool.get("entry") is None and "direction" in tool and "not both" not in message:
        tool = {k: v for k, v in tool.items() if k not in ("direction", "depth_mm")}
    with pytest.raises(D.SpecError, match=message):
        D.spec_from_dict(spec_dict({"tools": [tool]}))


def test_more_tool_spec_errors():
    with pytest.raises(D.SpecError, match=r"tools\[1\]\.name: tool name 'kwire' is used twice"):
        D.spec_from_dict(spec_dict({"tools": [kwire_tool(name="kwire"), kwire_tool(name="kwire")]}))
    with pytest.raises(D.SpecError, match=r"annotations\.tool_path_length: needs tools"):
        D.spec_from_dict(spec_dict({"annotations": {"tool_path_length": True}}))
    with pytest.raises(D.SpecError, match=r"tools: expected an array of tables"):
        D.spec_from_dict(spec_dict({"tools": {"kind": "kwire"}}))


def test_example_spec_tools_section_is_valid(tmp_path):
    """The example spec's commented [[tools]] block parses once uncommented."""
    path = D.write_example_spec(tmp_path / "ex.toml")
    assert D.load_spec(path).tools == ()
    text = path.read_text()
    block = text[text.index("# [[tools]]") :]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    path.write_text(text[: text.index("# [[tools]]")] + uncommented)
    (tool,) = D.load_spec(path).tools
    assert tool.kind == "kwire" and tool.probability == 0.8 and tool.placement.cone_deg == 25.0
    assert tool.placement.entry_center_units == "fraction" and tool.placement.depth_mm == (10.0, 60.0)


def test_bad_instrument_values_fail_before_rendering(tmp_path):
    """Parameter values the instrument refuses are a SpecError naming the tool, before any render."""
    spec = D.spec_from_dict(spec_dict({"tools": [kwire_tool(params={"diameter_mm": -1.0})]}))
    with pytest.raises(D.SpecError, match=r"tools\[0\] \(kwire 'kwire'\): InstrumentError"):
        D.build_tools(spec)
    with pytest.raises(D.SpecError, match=r"tools\[0\]"):
        D.generate(spec, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out" / "shards").glob("*.h5"))


def test_mesh_tool_from_a_file(tmp_path):
    """kind = "mesh": the file (here in metres, scale = 1000) becomes a scene object in mm with the
    spec's landmarks as keypoints; a missing file is a SpecError naming the key."""
    import trimesh

    cylinder = trimesh.creation.cylinder(radius=0.003, height=0.040, sections=12)  # metres, centred
    cylinder.export(tmp_path / "pin.stl")
    tool = {
        "kind": "mesh",
        "path": "pin.stl",
        "scale": 1000.0,
        "material": "ti6al4v",
        "landmarks": {"tip": [0, 0, 20], "base": [0, 0, -20]},
        "entry": {"center_mm": [0, 0, 0]},
        "direction": {"mean": [1, 0, 0]},
        "depth_mm": 10,
    }
    spec = D.spec_from_dict(spec_dict({"tools": [tool]}), base_dir=tmp_path)
    (obj,), (geo,) = D.build_tools(spec)
    lo, hi = obj.mesh.bounds
    np.testing.assert_allclose(hi - lo, [6.0, 6.0, 40.0], rtol=1e-5)  # 2 r x 2 r x height, in mm
    assert obj.material == "ti6al4v" and obj.name == "mesh" and obj.displaces
    assert (
        geo.keypoint_names == ("base", "tip") and geo.tip == (0.0, 0.0, 20.0) and geo.axis == (0.0, 0.0, 1.0)
    )
    assert obj.density == pytest.approx(nominal_density("ti6al4v"))
    missing = D.spec_from_dict(spec_dict({"tools": [dict(tool, path="nope.stl")]}), base_dir=tmp_path)
    with pytest.raises(D.SpecError, match=r"tools\[0\]\.path: mesh file .*nope.stl does not exist"):
        D.build_tools(missing)


# ----------------------------------------------------------------------------------------------
# Draws


def angle_deg(a, b) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def test_tool_draws_are_deterministic_and_follow_the_spec():
    spec = D.spec_from_dict(
        spec_dict(
            {
                "tools": [
                    kwire_tool(spin_deg=[10, 20]),
                    {
                        "kind": "screw",
                        "probability": 0.3,
                        "entry": {"center_fraction": [0.5, 0.25, 1.0], "half_size_fraction": [0.1, 0.2, 0.0]},
                        "direction": {"mean": [1, 1, 0], "cone_deg": 30},
                        "depth_mm": 12,
                    },
                    {
                        "kind": "plate",
                        "params": {"holes": 2},
                        "pose": {"rotation_deg": [0, 90, 30], "translation_mm": [5, -5, 10]},
                    },
                ]
            }
        )
    )
    _, geometry = D.build_tools(spec)
    bounds = np.array([[-100.0, -80.0, -60.0], [100.0, 40.0, 60.0]])
    centre, size = bounds.mean(axis=0), bounds[1] - bounds[0]

    def draw(i):
        return D.draw_tools(spec, geometry, D.sample_key(spec.seed, i), bounds)

    one = draw(7)
    again = draw(7)
    batch = jax.jit(jax.vmap(draw))(jnp.arange(5, 10))
    for k in one:
        assert np.array_equal(np.asarray(one[k]), np.asarray(again[k])), k  # same call: bit-identical
        # jit vs eager: the same draws; the float results are short chains (<= ~30 roundings) of
        # terms up to ~200 mm (CT bounds, depths) or 1 (directions, rotation vectors).
        magnitude = (
            200.0 if k in ("translation_mm", "entry_mm", "depth_mm") else 360.0 if k == "spin_deg" else 4.0
        )
        np.testing.assert_allclose(
            np.asarray(one[k]), np.asarray(batch[k][2]), rtol=0, atol=30 * U32 * magnitude, err_msg=k
        )
    assert not np.array_equal(np.asarray(one["entry_mm"]), np.asarray(batch["entry_mm"][0]))  # index matters

    n = 2000
    b = {k: np.asarray(v, np.float64) for k, v in jax.jit(jax.vmap(draw))(jnp.arange(n)).items()}
    tol = 1e-4  # float32 chains on 100 mm scales (mm) and unit vectors
    # K-wire: entry in the 5 mm ball about the CT centre, direction within 15 deg of -z.
    assert np.all(np.linalg.norm(b["entry_mm"][:, 0] - centre, axis=1) <= 5.0 + tol * 100)
    assert np.all(angle_deg(b["direction"][:, 0], [0, 0, -1]) <= 15.0 + 0.05)
    assert np.all((b["depth_mm"][:, 0] >= 0) & (b["depth_mm"][:, 0] <= 30 + tol))
    assert np.all((b["spin_deg"][:, 0] >= 10) & (b["spin_deg"][:, 0] <= 20 + tol))
    assert b["present"][:, 0].all() and b["present"][:, 2].all()
    # The cone is filled: some draws near its rim (uniform in solid angle: P(> 14 deg) ~ 13 %).
    assert np.mean(angle_deg(b["direction"][:, 0], [0, 0, -1]) > 14.0) > 0.05
    # Screw: box of fractions of the bounds; probability 0.3 (2000 draws: 5 sigma = 0.051).
    lo = bounds[0] + np.array([0.4, 0.05, 1.0]) * size
    hi = bounds[0] + np.array([0.6, 0.45, 1.0]) * size
    assert np.all((b["entry_mm"][:, 1] >= lo - 1e-3) & (b["entry_mm"][:, 1] <= hi + 1e-3))
    assert np.all(angle_deg(b["direction"][:, 1], [1, 1, 0]) <= 30.0 + 0.05)
    assert np.all(b["depth_mm"][:, 1] == 12.0)
    assert abs(b["present"][:, 1].mean() - 0.3) < 0.051
    # Pose: the tool's axis along the drawn direction, its tip at entry + depth x direction.
    for t in (0, 1):
        geo = geometry[t]
        for i in range(0, n, 250):
            pose = D.sampling.tool_pose(spec, geometry, {k: jnp.asarray(v[i]) for k, v in b.items()}, t)
            T = np.asarray(pose.matrix(), np.float64)
            tip = T[:3, :3] @ np.asarray(geo.tip) + T[:3, 3]
            expected = b["entry_mm"][i, t] + b["depth_mm"][i, t] * b["direction"][i, t]
            np.testing.assert_allclose(tip, expected, atol=1e-3)  # ~ 30 roundings of 200 mm terms
            np.testing.assert_allclose(T[:3, :3] @ np.asarray(geo.axis), b["direction"][i, t], atol=1e-4)
    # Fixed plate: the spec's pose about the tool origin, relative to the CT centre.
    R = np.asarray(so3_exp(jnp.deg2rad(jnp.asarray([0.0, 90.0, 30.0]))), np.float64)
    np.testing.assert_allclose(b["rotation"][0, 2], np.deg2rad([0, 90, 30]), atol=1e-6)
    np.testing.assert_allclose(b["translation_mm"][0, 2], centre + [5, -5, 10], atol=1e-4)
    np.testing.assert_allclose(
        b["entry_mm"][0, 2], R @ np.asarray(geometry[2].tip) + centre + [5, -5, 10], atol=1e-3
    )
    assert np.all(b["depth_mm"][:, 2] == 0) and np.all(b["spin_deg"][:, 2] == 0)


# ----------------------------------------------------------------------------------------------
# A dataset with a K-wire (and an absent screw) against the same dataset without tools


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    (root / "tools.toml").write_text(BASE.format(tool_annotations="tool_path_length = true") + KWIRE)
    (root / "plain.toml").write_text(BASE.format(tool_annotations=""))
    out = {}
    for name in ("tools", "plain"):
        spec = D.load_spec(root / f"{name}.toml")
        D.generate(spec, root / name, progress=False)
        with D.open(root / name) as ds:
            out[name] = (spec, root / name, [ds[i] for i in range(len(ds))])
    return out


def test_tool_fields_and_pose_record(datasets):
    spec, _, samples = datasets["tools"]
    _, geometry = D.build_tools(spec)
    assets = load_ct(spec, spec.cts[0])
    bounds = D.ct_bounds(assets.volume)
    for s in samples:
        assert s["tool_names"] == ("kwire", "screw")
        assert s["tool_masks"].shape == (2, 32, 40) and s["tool_masks"].dtype == np.uint8
        assert s["tool_keypoints_2d"].shape[:2] == s["tool_keypoints_visible"].shape
        assert s["tool_present"].tolist() == [True, False]
        # The stored pose is the draw of this sample index (deterministic per (seed, index)).
        draws = D.draw_tools(spec, geometry, D.sample_key(spec.seed, int(s["index"])), bounds)
        for t in range(2):
            pose = D.sampling.tool_pose(spec, geometry, draws, t)
            np.testing.assert_allclose(s["tool_pose"][t], np.asarray(pose.matrix()), atol=1e-3)
        np.testing.assert_allclose(s["tool_entry_mm"], np.asarray(draws["entry_mm"]), atol=1e-3)


def test_tool_keypoints_are_projected_tool_landmarks(datasets):
    spec, _, samples = datasets["tools"]
    _, geometry = D.build_tools(spec)
    H, W = spec.detector.height, spec.detector.width
    seen = 0
    for s in samples:
        P = np.asarray(s["P"], np.float64)
        for t, geo in enumerate(geometry):
            K = len(geo.keypoint_names)
            local = geo.keypoint_array()
            T = np.asarray(s["tool_pose"][t], np.float64)
            world = local @ T[:3, :3].T + T[:3, 3]
            h = world @ P[:, :3].T + P[:, 3]
            xy = h[:, :2] / h[:, 2:3]
            # Float32 chains of |P X| ~ 1e6 (pixels x mm): relative error ~ 1e-6 of ~ 50 px.
            np.testing.assert_allclose(s["tool_keypoints_2d"][t, :K], xy, rtol=0, atol=2e-3)
            inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= W - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= H - 0.5)
            expected = inside & (h[:, 2] > 0) & bool(s["tool_present"][t])
            assert s["tool_keypoints_visible"][t, :K].tolist() == expected.tolist()
            assert not s["tool_keypoints_visible"][t, K:].any()  # padding
            seen += int(expected.sum())
    assert seen > 0, "the K-wire should be in view in this spec"


def test_tool_masks_and_path_lengths(datasets):
    spec, _, samples = datasets["tools"]
    _, geometry = D.build_tools(spec)
    steel = nominal_density("stainless_steel_316l")
    for s in samples:
        path = s["tool_path_length_mm"].astype(np.float64)
        assert np.array_equal(s["tool_masks"].astype(bool), path > 0)
        assert s["tool_masks"][0].sum() > 10 and not s["tool_masks"][1].any()  # present K-wire, absent screw
        # No chord through a 4 mm wire exceeds its length; it is at least ~ the diameter somewhere
        # (the wire lies across the view: direction within 20 deg of +x, the view near AP).
        assert path.max() <= 120.0 and path.max() >= 3.0
        # Mask pixels lie along the projected wire axis: within the wire's projected radius plus a
        # pixel of the base -> tip segment.
        P = np.asarray(s["P"], np.float64)
        T = np.asarray(s["tool_pose"][0], np.float64)
        ends = np.array([geometry[0].keypoints[geometry[0].keypoint_names.index(n)] for n in ("base", "tip")])
        h = (ends @ T[:3, :3].T + T[:3, 3]) @ P[:, :3].T + P[:, 3]
        a, b = h[:, :2] / h[:, 2:3]
        rows, cols = np.nonzero(s["tool_masks"][0])
        p = np.stack([cols, rows], 1).astype(np.float64)
        u = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
        dist = np.linalg.norm(p - (a + u[:, None] * (b - a)), axis=1)
        magnification = spec.pose.sdd_mm[0] / h[:, 2].min()
        assert dist.max() <= 2.0 * magnification / spec.detector.pixel_mm[0] + 1.0
        # The tool material's channel of the line integrals is density x path length (g/cm^2),
        # both stored as float16 (relative rounding 2^-11 each).
        materials = D.tools.tool_materials(geometry)  # the channels after the M tissue channels
        assert materials == ("stainless_steel_316l", "ti6al4v")
        L = s["line_integrals"].astype(np.float64)
        L_steel = L[..., L.shape[-1] - len(materials)]
        np.testing.assert_allclose(L_steel, steel * path[0] / 10.0, rtol=3 * 2.0**-11, atol=1e-3)
        assert not L[..., -1].any()  # the absent titanium screw


def test_tools_attenuate_only_where_they_are(datasets):
    """Same seed with and without tools: identical draws; the images agree outside the K-wire's
    mask (the absent screw is invisible, and the scene path renders the CT like the old path) and
    the K-wire adds attenuation inside it."""
    _, _, with_tools = datasets["tools"]
    _, _, plain = datasets["plain"]
    for a, b in zip(with_tools, plain, strict=True):
        for k in ("P", "landmarks_2d", "kvp", "photons_per_pixel"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, err_msg=k)
        mask = a["tool_masks"][0].astype(bool)
        diff = a["image"].astype(np.float64) - b["image"].astype(np.float64)
        # Outside: the same line integrals (plus an all-zero tool channel) through a spectral sum of
        # ~90 energies: ~90 float32 roundings of O(1) log values.
        np.testing.assert_allclose(
            diff[~mask], 0.0, atol=90 * 8 * U32 * max(1.0, float(np.abs(b["image"]).max()))
        )
        # Inside: steel (~8 g/cm^3) replaces tissue (~1 g/cm^3): more attenuation per mm of path.
        thick = a["tool_path_length_mm"][0] > 1.0
        assert thick.any()
        assert np.all(diff[thick] > 0.05)
        # Label path lengths are the anatomy's (float16: 2^-11 relative).
        np.testing.assert_allclose(a["path_lengths_mm"], b["path_lengths_mm"], rtol=2.0**-10, atol=1e-2)


def test_coco_has_the_tool_annotations(datasets):
    spec, out, samples = datasets["tools"]
    coco = json.loads(Path(out, "coco.json").read_text())
    H, W = spec.detector.height, spec.detector.width
    tools = {c["name"]: c for c in coco["categories"] if c.get("supercategory") == "tool"}
    assert set(tools) == {"kwire"}  # the absent screw never gets a category
    assert tools["kwire"]["kind"] == "kwire" and tools["kwire"]["keypoints"] == [
        "base",
        "tip",
        "tip_start",
        "axis_mid",
    ]
    by_image = {s["index"].item(): s for s in samples}
    anns = [a for a in coco["annotations"] if a["category_id"] == tools["kwire"]["id"]]
    assert sorted(a["image_id"] for a in anns) == sorted(by_image)
    for ann in anns:
        s = by_image[ann["image_id"]]
        mask = s["tool_masks"][0].astype(bool)
        assert np.array_equal(D.rle_decode(ann["segmentation"]), mask)
        assert ann["area"] == int(mask.sum())
        kps = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        vis = s["tool_keypoints_visible"][0, : len(kps)]
        assert kps[:, 2].tolist() == [2.0 if v else 0.0 for v in vis]
        assert ann["num_keypoints"] == int(vis.sum()) > 0
        xy = kps[kps[:, 2] == 2, :2]
        assert np.all((xy >= 0) & (xy <= [W, H]))  # COCO coordinates: inside the image
        np.testing.assert_allclose(xy, s["tool_keypoints_2d"][0, : len(kps)][vis] + 0.5, atol=1e-3)
        x, y, w, h = ann["bbox"]
        rows, cols = np.nonzero(mask)
        assert (x, y, w, h) == (
            cols.min(),
            rows.min(),
            cols.max() - cols.min() + 1,
            rows.max() - rows.min() + 1,
        )
    # The anatomy annotations are still there.
    assert any(c.get("supercategory") == "label" for c in coco["categories"])
    assert math.isclose(len(coco["images"]), 2)
