"""``jaxdrr render --tool/--mesh/--tool-pose/--tool-material``: surgical tools from the command line.

Bad tool options end with exit code 2 and one line on stderr, before the CT is loaded and with no
file written; a good one renders the same image as the library's scene renderer (the wiring of
poses, isocentre, materials and densities) and records the tools in the ``--save-npz`` bundle.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxdrr
from jaxdrr.cli.main import main

TINY = ["--ct", "phantom", "--phantom", "analytic", "--phantom-size", "24", "24", "20"]
TINY += ["--height", "32", "--width", "32", "--pixel-size", "6"]

# name: (tool arguments, text the one stderr line must contain)
ERRORS = {
    "unknown_kind": (["--tool", "hammer"], "unknown kind 'hammer'"),
    "unknown_key": (["--tool", "kwire:colour=red"], "unknown key 'colour' for kwire"),
    "not_a_number": (["--tool", "kwire:diameter=thick"], "diameter= must be a number"),
    "not_an_integer": (["--tool", "plate:holes=2.5"], "holes= must be an integer"),
    "not_a_bool": (["--tool", "screw:cannulated=maybe"], "cannulated= must be true or false"),
    "bad_item": (["--tool", "kwire:diameter"], "expected KEY=VALUE"),
    "key_twice": (["--tool", "kwire:length=9,length=10"], "length= is given twice"),
    "negative_density": (["--tool", "kwire:density=-1"], "density= must be a number >= 0"),
    "unknown_material": (["--tool", "kwire:material=unobtainium"], "unknown material 'unobtainium'"),
    "unknown_tool_material": (["--tool", "kwire", "--tool-material", "adamantium"], "unknown material"),
    "tool_material_twice": (
        ["--tool", "kwire", "--tool-material", "kwire=iron", "--tool-material", "kwire=peek"],
        "already has a --tool-material",
    ),
    "guidewire_without_points": (["--tool", "guidewire"], "guidewire needs points="),
    "bad_points": (["--tool", "guidewire:points=0/0;1/2/3"], "points X/Y/Z"),
    "impossible_instrument": (["--tool", "kwire:diameter=0"], "--tool 'kwire:diameter=0'"),
    "mesh_missing": (["--mesh", "nothere.stl"], "does not exist"),
    "mesh_wrong_format": (["--mesh", "notes.txt"], "is not a .stl"),
    "mesh_unknown_key": (["--mesh", "tool.stl:colour=red"], "unknown key 'colour'"),
    "mesh_bad_scale": (["--mesh", "tool.stl:scale=0"], "scale= must be a positive number"),
    "mesh_empty": (["--mesh", "tool.stl"], "holds no triangles"),
    "pose_count": (["--tool", "kwire", "--tool-pose", "1,2,3"], "expected RX,RY,RZ,TX,TY,TZ"),
    "pose_nan": (["--tool", "kwire", "--tool-pose", "nan,0,0,0,0,0"], "must be a finite number"),
    "too_many_poses": (
        ["--tool", "kwire", "--tool-pose", "0,0,0,0,0,0", "--tool-pose", "0,0,0,1,0,0"],
        "more --tool-pose values than tools",
    ),
    "pose_twice": (
        ["--tool", "kwire", "--tool-pose", "0,0,0,0,0,0", "--tool-pose", "kwire=0,0,0,1,0,0"],
        "already has a pose",
    ),
    "pose_unknown_name": (["--tool", "kwire", "--tool-pose", "nail=0,0,0,0,0,0"], "no tool named 'nail'"),
    "pose_without_tool": (["--tool-pose", "0,0,0,0,0,0"], "need a --tool or --mesh"),
    "duplicate_names": (["--tool", "kwire:name=a", "--tool", "screw:name=a"], "two tools are named 'a'"),
    "mc_scatter": (["--tool", "kwire", "--scatter", "mc"], "--scatter mc does not see tools"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_tool_options_fail_early_in_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a mesh")
    (tmp_path / "tool.stl").write_text("solid t\nendsolid t\n")
    arguments, expected = ERRORS[case]
    loaded = []
    monkeypatch.setattr("jaxdrr.cli.common.CtSelection.load", lambda self: loaded.append(1))
    code = main(["render", *TINY, *arguments, "--out", "x.png", "--save-npz", "x.npz"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and expected in err[0], err
    assert err[0].startswith("jaxdrr render: error:")
    assert not loaded  # before the CT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "tool.stl"]


def test_tool_names_poses_and_materials_are_resolved(tmp_path):
    from jaxdrr.cli.common import tool_specs_from_args
    from jaxdrr.cli.main import build_parser

    args = build_parser().parse_args(
        [
            "render",
            "--tool",
            "kwire",
            "--tool",
            "kwire:displace=false",
            "--tool",
            "screw:length=20,material=titanium,name=s1",
            "--tool-pose",
            "0,90,0,1,2,3",
            "--tool-pose=s1=10,0,0,-1,-2,-3",
            "--tool-material",
            "peek",
            "--tool-material",
            "kwire_2=iron",
        ]
    )
    specs = tool_specs_from_args(args)
    assert [s.name for s in specs] == ["kwire", "kwire_2", "s1"]
    assert [s.material for s in specs] == ["peek", "iron", "titanium"]
    assert [s.displaces for s in specs] == [True, False, True]
    assert specs[0].rotation_deg == (0.0, 90.0, 0.0) and specs[0].offset_mm == (1.0, 2.0, 3.0)
    assert specs[1].rotation_deg == (0.0, 0.0, 0.0)
    assert specs[2].rotation_deg == (10.0, 0.0, 0.0) and specs[2].offset_mm == (-1.0, -2.0, -3.0)
    assert dict(specs[2].params) == {"length_mm": 20.0}


def test_render_with_a_tool_matches_the_scene_renderer_and_records_it(tmp_path):
    import trimesh

    from jaxdrr.cli.common import CtSelection, carm_geometry
    from jaxdrr.cli.main import build_parser
    from jaxdrr.geometry.rigid import RigidTransform
    from jaxdrr.instruments import kwire
    from jaxdrr.io.mesh import read_mesh
    from jaxdrr.scene import MeshObject, Scene, make_scene_renderer, scene_params

    out, npz = tmp_path / "x.npy", tmp_path / "x.npz"
    trimesh.creation.box(extents=[0.02, 0.015, 0.01]).export(tmp_path / "block.stl")  # metres
    tool = ["--tool", "kwire:diameter=4,length=80,density=6", "--tool-pose", "0,90,0,-40,0,5"]
    tool += ["--mesh", f"{tmp_path / 'block.stl'}:material=pmma,scale=1000", "--tool-pose", "0,0,30,10,-5,-8"]
    arguments = ["render", *TINY, *tool, "--no-noise", "--out", str(out), "--save-npz", str(npz)]
    assert main(arguments) == 0
    image = np.load(out)
    bundle = jaxdrr.load_npz(npz)
    paths, masks = bundle["tool_paths"], bundle["tool_masks"]
    assert bundle["tool_names"] == ["kwire", "block"]
    assert bundle["tools"][0] == "kwire:diameter=4,length=80,density=6"
    assert bundle["tool_materials"] == ["stainless_steel_316l", "pmma"]
    assert paths.shape == (2, 32, 32) and paths[0].max() > 2.0 and paths[1].max() > 8.0
    np.testing.assert_array_equal(masks, paths > 0)
    assert set(bundle["tool_landmarks"]["kwire"]) >= {"tip", "base"}

    # The same scene through the library: origin 40 mm right of the CT centre and 5 mm up, the
    # wire's +z axis turned 90 degrees about y onto +x.
    ct = CtSelection.of_phantom("analytic", (24, 24, 20)).load()
    pose = RigidTransform.create(
        rotation=[0.0, np.pi / 2, 0.0], translation=ct.center + np.array([-40.0, 0, 5])
    )
    obj = MeshObject.from_instrument(kwire(diameter_mm=4, length_mm=80), pose, density=6.0)
    block_pose = RigidTransform.create(
        rotation=[0.0, 0.0, np.pi / 6], translation=ct.center + np.array([10.0, -5, -8])
    )
    block = MeshObject.create(
        read_mesh(tmp_path / "block.stl", scale=1000), "pmma", pose=block_pose, name="block"
    )
    scene = Scene.create(ct, [obj, block])
    np.testing.assert_allclose(bundle["tool_poses"][0], np.asarray(pose.matrix()), atol=1e-5)
    config = jaxdrr.RenderConfig(height=32, width=32, noise=None)
    P = bundle["P"]
    g = carm_geometry(build_parser().parse_args(arguments))
    assert (g.height, g.width) == (32, 32)
    # Jitted, as the CLI runs it (eager, every primitive of the scene renderer compiles on its own).
    expected = np.asarray(jax.jit(make_scene_renderer(config))(scene_params(config, scene), scene, P, None))
    # float32, two compilations of the same computation: ~100 ulps of the largest value
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    # The wire is seen: in its shadow the image is darker (more attenuation) than the CT alone.
    plain = np.asarray(jax.jit(jaxdrr.make_renderer(config))(jaxdrr.default_params(config), ct, P, None))
    for mask in masks:
        assert np.all(image[mask > 0] > plain[mask > 0])
