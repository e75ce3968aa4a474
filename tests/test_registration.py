"""Tests of jaxdrr.registration: poses, metrics, gradients, the driver, the CLI and the notebook."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrr
from jaxdrr import registration as reg
from jaxdrr.errors import GeometryError, JaxdrrError
from jaxdrr.geometry.carm import AP_CAMERA_AXES

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def volume():
    return jaxdrr.phantom(shape=(48, 48, 36))


@pytest.fixture(scope="module")
def geometry():
    return jaxdrr.geometry.CArmGeometry(1020.0, 700.0, SIZE, SIZE, 204.8 / SIZE)


@pytest.fixture(scope="module")
def true_camera(volume, geometry):
    c = np.asarray(volume.center)
    return reg.camera_from_carm(20.0, 10.0, geometry, isocenter=c, center=c)


@pytest.fixture(scope="module")
def target(volume, true_camera):
    cfg = jaxdrr.RenderConfig(SIZE, SIZE)
    return np.asarray(
        jax.jit(jaxdrr.make_renderer(cfg))(jaxdrr.default_params(cfg), volume, true_camera.P, None)
    )


def _perturbation(rot_deg, trans_mm, axis=(0.3, -0.5, 0.8), direction=(0.6, 0.2, -0.77)):
    axis = np.asarray(axis) / np.linalg.norm(axis)
    direction = np.asarray(direction) / np.linalg.norm(direction)
    return reg.Pose(
        jnp.asarray(reg.pose.DEFAULT_RADIUS_MM * np.deg2rad(rot_deg) * axis, jnp.float32),
        jnp.asarray(trans_mm * direction, jnp.float32),
    )


# ------------------------------------------------------------------------------------------------
# Poses
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", reg.pose.PARAMETERIZATIONS)
def test_pose_projection_round_trip(param, true_camera):
    p = reg.random_pose(jax.random.key(3), 20.0, 30.0, param)
    assert p.rotation.shape == (reg.pose.ROTATION_DIMS[param],)
    P = reg.pose_to_projection(p, true_camera)
    back = reg.pose_from_projection(np.asarray(P), true_camera, param)
    np.testing.assert_allclose(reg.rotation_matrix(back), reg.rotation_matrix(p), atol=2e-5)
    np.testing.assert_allclose(back.translation, p.translation, atol=2e-3)
    # Parameterizations agree on the motion.
    so3 = reg.convert(p, "so3")
    np.testing.assert_allclose(reg.rotation_matrix(so3), reg.rotation_matrix(p), atol=2e-5)
    np.testing.assert_allclose(
        reg.pose_to_projection(reg.convert(so3, param), true_camera), P, rtol=1e-4, atol=1e-2
    )


def test_identity_pose_is_reference(true_camera):
    for param in reg.pose.PARAMETERIZATIONS:
        P = reg.pose_to_projection(reg.Pose.identity(param), true_camera)
        np.testing.assert_allclose(P, true_camera.P, rtol=1e-6, atol=1e-3)


def test_pose_scaling_one_unit_is_about_one_mm(volume, true_camera):
    """One unit of a rotation parameter moves points at radius_mm from the centre by ~1 mm."""
    c = np.asarray(volume.center)
    pts = c + np.array([[100.0, 0, 0], [0, 100.0, 0], [0, 0, 100.0]])
    for param in reg.pose.PARAMETERIZATIONS:
        base = reg.Pose.identity(param)
        R0, t0 = reg.pose_extrinsics(base, true_camera)
        for i in range(base.rotation.shape[0]):
            p = reg.Pose(base.rotation.at[i].set(1.0), base.translation, param)
            R, t = reg.pose_extrinsics(p, true_camera)
            d = np.linalg.norm(pts @ np.asarray(R).T + t - (pts @ np.asarray(R0).T + t0), axis=1)
            # Some components do not rotate (6D: scale / Gram-Schmidt-removed parts; quaternion: w).
            rotating = {"so3": (0, 1, 2), "6d": (1, 2, 5), "quaternion": (1, 2, 3)}[param]
            if i in rotating:
                assert 0.8 < d.max() < 1.2, (param, i, d)


def test_translation_is_in_camera_axes(true_camera):
    """t_d = (0, 0, 5) moves the CT 5 mm away from the source (depth), keeping it on the axis."""
    p = reg.Pose(jnp.zeros(3), jnp.array([0.0, 0.0, 5.0]))
    R, t = reg.pose_extrinsics(p, true_camera)
    c = np.asarray(true_camera.center)
    z0 = np.asarray(true_camera.R0) @ c + np.asarray(true_camera.t0)
    z1 = np.asarray(R) @ c + np.asarray(t)
    np.testing.assert_allclose(z1 - z0, [0, 0, 5.0], atol=1e-4)


@pytest.mark.parametrize("lao,cran", [(0.0, 0.0), (35.0, -20.0), (-60.0, 30.0)])
def test_carm_parameters_round_trip(lao, cran):
    iso = np.array([10.0, -20.0, 5.0])
    P = jaxdrr.geometry.carm(lao, cran, isocenter=iso)
    K, R, t = jaxdrr.geometry.decompose_projection(P)
    c = reg.carm_parameters(R, t, center=iso)
    assert c["lao"] == pytest.approx(lao, abs=1e-3)
    assert c["cran"] == pytest.approx(cran, abs=1e-3)
    assert c["roll"] == pytest.approx(0.0, abs=1e-3)
    assert c["sid_mm"] == pytest.approx(700.0, abs=1e-2)
    np.testing.assert_allclose(c["isocenter"], iso, atol=1e-2)
    # With a roll: Rz(lao) Rx(cran) Ry(roll) is recovered.
    M = reg.pose.carm_rotation_with_roll(lao, cran, 7.0)
    A = np.asarray(AP_CAMERA_AXES)
    R2 = (np.asarray(M) @ A).T
    c2 = reg.carm_parameters(R2, -R2 @ np.zeros(3))
    assert (c2["lao"], c2["cran"], c2["roll"]) == pytest.approx((lao, cran, 7.0), abs=1e-3)


def test_camera_validation(true_camera):
    K = np.asarray(true_camera.K)
    big = jaxdrr.geometry.intrinsic_matrix(1020.0, 0.4, 8 * SIZE, 8 * SIZE, flip_columns=True)
    with pytest.raises(GeometryError, match="principal point"):
        reg.Camera.create(np.asarray(big), true_camera.R0, true_camera.t0, SIZE, SIZE)
    with pytest.raises(GeometryError, match="principal point"):
        reg.Camera.create(K, true_camera.R0, true_camera.t0, SIZE // 4, SIZE // 4)
    with pytest.raises(GeometryError, match="rotation"):
        reg.Camera.create(K, 2 * np.eye(3), true_camera.t0, SIZE, SIZE)
    with pytest.raises(GeometryError, match="parameterization"):
        reg.Pose.identity("euler")
    P_other = jaxdrr.geometry.rescale_detector(true_camera.P, 2.0)
    with pytest.raises(GeometryError, match="intrinsics"):
        reg.pose_from_projection(np.asarray(P_other), true_camera)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------


def _images(seed=0, shape=(32, 40)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).cumsum(0).cumsum(1)
    y = x + 0.5 * rng.normal(size=shape).cumsum(0)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


METRIC_FNS = {
    "ncc": reg.ncc,
    "gncc": reg.gradient_ncc,
    "patch_ncc": lambda x, y, mask=None: reg.patch_ncc(x, y, 8, mask=mask),
    "mncc": reg.multiscale_ncc,
}


@pytest.mark.parametrize("name", sorted(METRIC_FNS))
def test_ncc_metrics_affine_invariance(name):
    f = METRIC_FNS[name]
    x, y = _images()
    assert float(f(x, x)) == pytest.approx(1.0, abs=1e-5)
    base = float(f(x, y))
    assert -1.0 <= base < 0.999
    assert float(f(3.0 * x - 7.0, y)) == pytest.approx(base, abs=1e-5)
    assert float(f(x, 0.25 * y + 100.0)) == pytest.approx(base, abs=1e-4)
    assert float(f(-x, x)) == pytest.approx(-1.0, abs=1e-5)
    mask = np.zeros(x.shape, bool)
    mask[4:28, 6:30] = True
    m = float(f(x, y, mask=mask))
    y2 = np.array(y)
    y2[~mask] = 1e3 * np.random.default_rng(1).normal(size=(~mask).sum())  # outside the mask
    if name != "gncc":  # Sobel stencils reach one pixel beyond the (eroded) mask
        assert float(f(x, jnp.asarray(y2), mask=mask)) == pytest.approx(m, abs=1e-4)


def test_metrics_jit_vmap_grad_and_finite_differences():
    x, y = _images(2)
    for name, f in METRIC_FNS.items():
        val = jax.jit(f)(x, y)
        assert float(val) == pytest.approx(float(f(x, y)), abs=1e-6)
        batch = jnp.stack([x, y, 2 * x])
        vals = jax.vmap(f, in_axes=(0, None))(batch, y)
        assert vals.shape == (3,)
        g = jax.grad(f)(x, y)
        assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
        d = jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32)
        eps = 1e-2
        fd = (float(f(x + eps * d, y)) - float(f(x - eps * d, y))) / (2 * eps)
        assert float(jnp.sum(g * d)) == pytest.approx(fd, rel=5e-2, abs=1e-4), name
    assert float(reg.mse(x, x)) == 0.0
    assert float(reg.mse(x, x + 2.0)) == pytest.approx(-4.0)
    assert float(reg.make_loss("ncc")(x, x)) == pytest.approx(-1.0, abs=1e-5)


def test_metric_bad_inputs():
    x, y = _images()
    with pytest.raises(JaxdrrError, match="does not match"):
        reg.ncc(x, y[:-1])
    with pytest.raises(JaxdrrError, match="2D"):
        reg.ncc(x[None], y[None])
    bad = np.array(y)
    bad[3, 4] = np.nan
    with pytest.raises(JaxdrrError, match="non-finite"):
        reg.gradient_ncc(x, bad)
    with pytest.raises(JaxdrrError, match="empty"):
        reg.ncc(x, y, mask=np.zeros(x.shape, bool))
    with pytest.raises(JaxdrrError, match="mask shape"):
        reg.ncc(x, y, mask=np.ones((3, 3)))
    with pytest.raises(JaxdrrError, match="unknown metric"):
        reg.make_loss("mutual_information")
    with pytest.raises(JaxdrrError, match="patch_size"):
        reg.patch_ncc(x, y, 100)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def test_error_measures(volume, true_camera):
    pts = reg.grid_points(volume, n=4, hu_threshold=-500)
    assert 0 < len(pts) < 64
    P = np.asarray(true_camera.P)
    e0 = reg.registration_errors(P, P, pts, volume.center)
    assert e0["mtre_mm"] < 1e-3 and e0["mpd_px"] < 1e-3 and e0["rotation_deg"] < 1e-3
    # Pure depth shift of 4 mm: mTRE = 4 mm, small projection distance.
    p = reg.Pose(jnp.zeros(3), jnp.array([0.0, 0.0, 4.0]))
    e = reg.registration_errors(reg.pose_to_projection(p, true_camera), P, pts, volume.center)
    assert e["mtre_mm"] == pytest.approx(4.0, abs=1e-3)
    assert e["translation_depth_mm"] == pytest.approx(4.0, abs=1e-3)
    assert e["mpd_px"] < 0.5
    # Rotation of 3 degrees about the centre.
    p = _perturbation(3.0, 0.0)
    e = reg.registration_errors(reg.pose_to_projection(p, true_camera), P, pts, volume.center)
    assert e["rotation_deg"] == pytest.approx(3.0, abs=1e-3)
    assert e["translation_mm"] < 1e-3


# ------------------------------------------------------------------------------------------------
# Loss and driver
# ------------------------------------------------------------------------------------------------


def test_loss_decreases_along_negative_gradient(volume, true_camera, target):
    cfg = jaxdrr.RenderConfig(SIZE, SIZE)
    params = jaxdrr.default_params(cfg)
    for metric in ("gncc", "ncc", "mse"):
        loss_fn = reg.make_loss_fn(cfg, metric, factor=2)
        tgt = reg.downsample_image(target, 2)
        mask = jnp.ones_like(tgt)
        pose = _perturbation(4.0, 8.0)
        f = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, volume, true_camera, tgt, mask, params)))
        v0, g = f(pose)
        gn = jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree_util.tree_leaves(g)))
        assert float(gn) > 0
        step = jax.tree_util.tree_map(lambda p, d: p - 0.3 * d / gn, pose, g)
        v1, _ = f(step)
        assert float(v1) < float(v0), metric


def test_register_recovers_known_pose(volume, true_camera, target):
    pts = reg.grid_points(volume, n=5, hu_threshold=-500)
    center = np.asarray(volume.center)
    P_true = np.asarray(true_camera.P)
    P_init = np.asarray(reg.pose_to_projection(_perturbation(5.0, 10.0), true_camera))
    err0 = reg.registration_errors(P_init, P_true, pts, center)
    assert err0["mtre_mm"] > 8.0
    camera = reg.Camera.from_projection(P_init, SIZE, SIZE, center=center)
    config = reg.RegistrationConfig()  # Adam at 1/4, L-BFGS at 1/2 and full resolution
    res = reg.register(volume, target, camera, config=config, render_config=jaxdrr.RenderConfig(SIZE, SIZE))
    err = reg.registration_errors(res.P, P_true, pts, center)
    assert err["mtre_mm"] < 0.25, err
    assert err["mpd_px"] < 0.05, err
    assert err["rotation_deg"] < 0.05, err
    assert len(res.history) == res.n_iterations == len(res.losses)
    assert {h["factor"] for h in res.history} == {4, 2, 1}
    assert res.losses[-1] < res.losses[0]
    assert res.loss == pytest.approx(min(h["loss"] for h in res.history if h["factor"] == 1), abs=1e-3)


def test_register_multistart_and_lbfgs(volume, true_camera, target):
    center = np.asarray(volume.center)
    P_init = np.asarray(reg.pose_to_projection(_perturbation(3.0, 6.0), true_camera))
    camera = reg.Camera.from_projection(P_init, SIZE, SIZE, center=center)
    model = jaxdrr.RenderConfig(SIZE, SIZE)
    config = reg.RegistrationConfig(levels=((4, 15),), n_starts=3, parameterization="6d")
    res = reg.register(volume, target, camera, config=config, render_config=model)
    assert res.start_losses.shape == (3,)
    assert res.best_start == int(np.argmin(res.start_losses))
    assert res.loss == pytest.approx(res.start_losses.min(), abs=1e-6)
    assert res.pose.rotation.shape == (6,)
    config = reg.RegistrationConfig(levels=((4, 4),), optimizer="lbfgs", metric="ncc")
    res = reg.register(volume, target, camera, config=config, render_config=model)
    assert res.loss < res.losses[0]


def test_register_bad_inputs(volume, true_camera, target):
    with pytest.raises(JaxdrrError, match="detector"):
        reg.register(volume, target[:-2], true_camera)
    bad = target.copy()
    bad[5, 5] = np.inf
    with pytest.raises(JaxdrrError, match="non-finite"):
        reg.register(volume, bad, true_camera)
    with pytest.raises(JaxdrrError, match="empty"):
        reg.register(volume, target, true_camera, mask=np.zeros_like(target))
    with pytest.raises(JaxdrrError, match="optimizer"):
        reg.RegistrationConfig(optimizer="sgd")
    with pytest.raises(JaxdrrError, match="levels"):
        reg.RegistrationConfig(levels=())
    with pytest.raises(JaxdrrError, match="level factor"):
        reg.register(volume, target, true_camera, config=reg.RegistrationConfig(levels=((32, 1),)))


# ------------------------------------------------------------------------------------------------
# CLI and notebook
# ------------------------------------------------------------------------------------------------


def test_cli_register(tmp_path, volume, true_camera, target):
    from jaxdrr.cli import register as cli

    P = np.asarray(true_camera.P, np.float64)
    K, R, t = jaxdrr.geometry.decompose_projection(P)
    npz = tmp_path / "xray.npz"
    jaxdrr.save_npz(
        npz,
        target,
        P,
        K=K,
        R=R,
        t=t,
        lao=20.0,
        cran=10.0,
        sid_mm=700.0,
        output="log",
        detector="ei",
        kvp=120.0,
        ct="phantom",
    )
    init = tmp_path / "init.json"
    P_init = np.asarray(reg.pose_to_projection(_perturbation(3.0, 5.0), true_camera))
    init.write_text(json.dumps({"P": P_init.tolist()}))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    out = tmp_path / "pose.json"
    args = parser.parse_args(
        [
            "register",
            "--ct",
            "phantom",
            "--phantom",
            "analytic",
            "--phantom-size",
            "48",
            "48",
            "36",
            "--xray",
            str(npz),
            "--init",
            str(init),
            "--out",
            str(out),
            "--levels",
            "4:40,1:10:lbfgs",
            "--quiet",
        ]
    )
    assert cli.run(args) == 0
    data = json.loads(out.read_text())
    assert np.asarray(data["P"]).shape == (3, 4)
    assert data["difference_to_bundle_P"]["mtre_mm"] < 1.0
    assert data["carm"]["lao"] == pytest.approx(20.0, abs=0.5)
    assert data["carm"]["cran"] == pytest.approx(10.0, abs=0.5)
    # The output is accepted as --init; --init with C-arm angles too.
    init2 = tmp_path / "init2.json"
    init2.write_text(json.dumps({"lao": 22.0, "cran": 8.0, "isocenter": list(volume.center)}))
    for f in (out, init2):
        args = parser.parse_args(
            [
                "register",
                "--ct",
                "phantom",
                "--phantom-size",
                "48",
                "48",
                "36",
                "--xray",
                str(npz),
                "--init",
                str(f),
                "--out",
                str(tmp_path / "p2.json"),
                "--levels",
                "4:2",
                "--quiet",
            ]
        )
        assert cli.run(args) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"foo": 1}))
    args = parser.parse_args(
        [
            "register",
            "--ct",
            "phantom",
            "--phantom-size",
            "48",
            "48",
            "36",
            "--xray",
            str(npz),
            "--init",
            str(bad),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    with pytest.raises(JaxdrrError, match="needs"):
        cli.run(args)


def test_notebook_executes():
    import nbclient
    import nbformat

    path = ROOT / "notebooks" / "02_registration.ipynb"
    nb = nbformat.read(path, as_version=4)
    env = {"JAXDRR_NB_SIZE": "64", "JAXDRR_NB_PHANTOM": "48,48,36", "JAX_PLATFORMS": "cpu"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
