"""Tool pose recovery (jaxdrr.registration.tool_pose): a K-wire's pose from rendered images.

Small on purpose (CI budget): a 20^3 CT at 4 mm, a 60 mm K-wire, 64 px detectors. The recovery test
uses noise-free targets rendered with the same renderer, so the true pose is an exact minimum
(loss 0) of the MSE; from a 3 mm / 3 deg offset the estimate must reach it to better than half a
pixel of tip reprojection in both views (finer than snapping the tip to the nearest pixel, which
is what a pixel-level fit without a sub-pixel gradient would give) and 1 degree of axis direction
(the 2.5 mm wire spans ~50 px: 1 deg tilts its far end by ~1 px).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry import carm
from jaxdrr.geometry.carm import CArmGeometry
from jaxdrr.geometry.rigid import RigidTransform
from jaxdrr.instruments import kwire
from jaxdrr.registration import register_tool
from jaxdrr.registration.tool_pose import (
    perturb_tool_pose,
    repivot,
    tool_loss_fn,
    tool_pose_along,
    tool_pose_errors,
)
from jaxdrr.render import RenderConfig
from jaxdrr.scene import MeshObject, Scene, make_scene_renderer, scene_params
from jaxdrr.volume import Volume

SIZE = 64
GEOMETRY = CArmGeometry(height=SIZE, width=SIZE, pixel_size_mm=1.8)
LENGTH = 60.0
TIP, BASE = (0.0, 0.0, LENGTH), (0.0, 0.0, 0.0)


def small_ct() -> Volume:
    """A 80 mm cube of soft tissue with a bone block and a few HU textures (deterministic)."""
    shape = (20, 20, 20)
    hu = np.full(shape, 40.0)
    hu[6:14, 4:16, 8:12] = 700.0
    hu += np.random.default_rng(0).normal(0.0, 30.0, shape)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * 4.0
    return Volume.create(hu, affine)


@pytest.fixture(scope="module")
def setup():
    wire = kwire(diameter_mm=2.5, length_mm=LENGTH)
    truth = tool_pose_along([5.0, -3.0, 4.0], [0.6, 0.5, 0.62], TIP, BASE)
    scene = Scene.create(small_ct(), [MeshObject.from_instrument(wire, pose=truth, name="kwire")])
    config = RenderConfig(height=SIZE, width=SIZE, backend="xla")
    params = scene_params(config, scene)
    render = make_scene_renderer(config)
    P = jnp.stack([carm(lao, 0.0, isocenter=np.zeros(3), geometry=GEOMETRY) for lao in (0.0, 90.0)])
    target = jax.jit(jax.vmap(render, in_axes=(None, None, 0, None)))(params, scene, P, None)
    return dict(scene=scene, params=params, render=render, P=P, target=target, truth=truth)


def perturbed(truth: RigidTransform, mm: float, deg: float, seed: int = 1) -> RigidTransform:
    return perturb_tool_pose(truth, mm, deg, np.random.default_rng(seed))


def test_start_offset_is_what_it_says(setup):
    start = perturbed(setup["truth"], 3.0, 3.0)
    errors = tool_pose_errors(start, setup["truth"], TIP, BASE)
    assert errors["tip_mm"] == pytest.approx(3.0, abs=1e-3)
    assert 0.5 < errors["axis_deg"] <= 3.0 + 1e-3  # the axis turns by <= the rotation (spin part)
    truth = setup["truth"]
    np.testing.assert_allclose(truth.apply(np.asarray(TIP)), [5.0, -3.0, 4.0], atol=1e-4)
    axis = np.asarray(truth.apply(np.asarray(TIP)) - truth.apply(np.asarray(BASE)))
    np.testing.assert_allclose(
        axis / np.linalg.norm(axis), np.array([0.6, 0.5, 0.62]) / np.linalg.norm([0.6, 0.5, 0.62]), atol=1e-5
    )


def test_loss_gradient_wrt_pose_is_finite_and_nonzero(setup):
    loss = tool_loss_fn(
        setup["render"], setup["params"], setup["scene"], "kwire", setup["P"], setup["target"]
    )
    start = perturbed(setup["truth"], 3.0, 3.0)
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    value, (g_rot, g_tr) = value_and_grad(start.rotation, start.translation, start.pivot, jnp.asarray(1.0))
    assert np.isfinite(float(value)) and float(value) > 0
    for g in (g_rot, g_tr):
        assert np.all(np.isfinite(np.asarray(g)))
        assert float(jnp.linalg.norm(g)) > 0
    # At the truth the MSE of a noise-free target is zero up to float32 rounding of the two renders
    # (relative ~1e-7 per pixel, so ~1e-13 in squared units against ~1e-4 at the start).
    truth = setup["truth"]
    at_truth, _ = value_and_grad(truth.rotation, truth.translation, truth.pivot, jnp.asarray(1.0))
    assert float(at_truth) < 1e-6 * float(value)


def test_recovers_kwire_pose_from_3mm_3deg_offset(setup):
    truth = setup["truth"]
    start = perturbed(truth, 3.0, 3.0)
    result = register_tool(
        setup["render"],
        setup["params"],
        setup["scene"],
        "kwire",
        setup["P"],
        setup["target"],
        start,
        iterations=(20, 20),
        blur_sigmas_px=(1.5, 0.0),
        learning_rate_mm=0.5,
        learning_rate_deg=0.5,
    )
    assert result.losses.shape == (40,) and result.translations.shape == (41, 3)
    assert result.loss < result.losses[0]
    for P in setup["P"]:
        before = tool_pose_errors(start, truth, TIP, BASE, P)
        after = tool_pose_errors(result.pose, truth, TIP, BASE, P)
        assert before["tip_px"] > 1.0  # the start is visibly off in this view
        assert after["tip_px"] < 0.5, (before, after)
    assert tool_pose_errors(result.pose, truth, TIP, BASE)["axis_deg"] < 1.0


def test_axial_scan_finds_a_wire_slid_along_its_axis(setup):
    # The truth slid 3.2 mm along the wire (off the 0.5 mm scan grid by 0.2 mm), one Adam step at a
    # negligible rate: only the scan can bring the tip back; on a noise-free target its minimum is the
    # grid point nearest the truth, 0.2 mm away.
    truth = setup["truth"]
    axis = np.array(truth.apply(np.asarray(TIP)) - truth.apply(np.asarray(BASE)))
    axis /= np.linalg.norm(axis)
    start = RigidTransform(
        truth.rotation, truth.translation + jnp.asarray(3.2 * axis, jnp.float32), truth.pivot
    )
    common = dict(iterations=1, blur_sigmas_px=(0.0,), learning_rate_mm=1e-6, learning_rate_deg=1e-6)
    args = (setup["render"], setup["params"], setup["scene"], "kwire", setup["P"], setup["target"], start)
    without = register_tool(*args, **common)
    assert tool_pose_errors(without.pose, truth, TIP, BASE)["tip_mm"] == pytest.approx(3.2, abs=0.01)
    result = register_tool(*args, axial_search_mm=5.0, **common)
    assert tool_pose_errors(result.pose, truth, TIP, BASE)["tip_mm"] == pytest.approx(0.2, abs=0.01)
    assert result.losses.shape == (2,) and result.translations.shape == (3, 3)
    assert list(result.stages) == [0, 0]
    np.testing.assert_allclose(result.pose_at(-1).translation, result.pose.translation)
    with pytest.raises(JaxdrrError, match="axial_search_mm must be"):
        register_tool(*args, axial_search_mm=-1.0, **common)


def test_repivot_keeps_the_map_and_errors_split_exactly():
    pose = RigidTransform.create([0.3, -0.2, 0.5], [4.0, 1.0, -2.0], pivot=(0.0, 0.0, 0.0))
    moved = repivot(pose, TIP)
    assert moved.pivot == TIP
    np.testing.assert_allclose(moved.matrix(), pose.matrix(), atol=1e-4)
    P = carm(20.0, 10.0, isocenter=np.zeros(3), geometry=GEOMETRY)
    shifted = RigidTransform.create(pose.rotation, pose.translation + jnp.asarray([1.0, 2.0, -2.0]))
    e = tool_pose_errors(shifted, pose, TIP, BASE, P)
    assert e["tip_mm"] == pytest.approx(3.0, rel=1e-5)
    assert e["tip_in_plane_mm"] ** 2 + e["tip_depth_mm"] ** 2 == pytest.approx(9.0, rel=1e-5)
    assert e["axis_deg"] == pytest.approx(0.0, abs=0.05)


def test_bad_inputs_are_refused(setup):
    s = setup
    start = perturbed(s["truth"], 3.0, 3.0)
    with pytest.raises(JaxdrrError, match="no object named"):
        register_tool(s["render"], s["params"], s["scene"], "screw", s["P"], s["target"], start)
    with pytest.raises(JaxdrrError, match="target must be"):
        register_tool(s["render"], s["params"], s["scene"], "kwire", s["P"], s["target"][0], start)
    with pytest.raises(JaxdrrError, match="iteration count per blur stage"):
        register_tool(
            s["render"],
            s["params"],
            s["scene"],
            "kwire",
            s["P"],
            s["target"],
            start,
            iterations=(5, 5, 5),
            blur_sigmas_px=(1.0,),
        )
