"""Scatter inside the renderer: the scatter ConvNet, the Monte Carlo route, geometry and errors.

Tolerances:
* low-resolution geometry (P of the binned detector, pixel pitch, object fraction): exact formulas
  evaluated in float64, compared at 1e-9 relative (a handful of roundings);
* "scatter is added to the primary": the renderer's transmission minus the primary-only one is the
  scatter estimate; both go through the same float32 moments and one extra addition, so they agree
  within a few float32 ulps of the total transmission (8 eps x T);
* Monte Carlo route vs a direct Monte Carlo call with the same key: the same float32 program, so
  equal within 4 ulps of the values after the shared bilinear interpolation;
* finite differences in float64 (x64) on a smooth volume (Gaussian blobs, "planes" sampling):
  central differences with h = 1e-4 (deg, or weight units) have truncation O(h^2 f''') ~ 1e-8
  relative and rounding O(eps64 f / h) ~ 1e-12, so 1e-6 relative is a loose bound (a float32
  cast inside the network shows up as ~1e-3 errors);
* the shipped network's held-out errors are recomputed from the held-out file shipped in
  tests/data; the float32 forward pass differs between CPUs and jax versions by ~1e-6 relative, so
  the recomputed errors match the record within 1e-3 relative.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrr
from jaxdrr import geometry as G
from jaxdrr.errors import JaxdrrError
from jaxdrr.models import scatter_net as sn
from jaxdrr.scatter import estimate

EPS32 = float(np.finfo(np.float32).eps)
SMALL = sn.ScatterNetConfig(widths=(8, 16))
HELDOUT = Path(__file__).parent / "data" / "scatter_heldout.npz"


@pytest.fixture(scope="module")
def small_weights():
    w = sn.init_weights(SMALL, seed=1)
    # a head that responds to its input, so that gradients w.r.t. the image are not tiny
    w["head"]["kernel"] = w["head"]["kernel"] * 10.0
    return w


@pytest.fixture(scope="module")
def volume():
    return jaxdrr.phantom(shape=(40, 32, 28))


def _carm(vol, lao=10.0, cran=5.0, size=32, pixel=10.0, sdd=1100.0, sid=700.0):
    g = G.CArmGeometry(sdd_mm=sdd, sid_mm=sid, height=size, width=size, pixel_size_mm=pixel)
    return G.carm(lao, cran, vol.center, g)


def _params(config, weights):
    params = jaxdrr.default_params(config.replace(scatter=None))
    params["scatter_net"] = weights
    return params


def test_low_res_projection_maps_pixels_to_block_centres():
    g = G.CArmGeometry(height=48, width=64, pixel_size_mm=1.0)
    with jax.enable_x64(True):
        P = np.asarray(G.carm(20.0, -10.0, (5.0, -3.0, 7.0), g), np.float64)
        P_low = estimate.low_res_projection(jnp.asarray(P), 48, 64, 12, 16)
        pts = np.random.default_rng(0).uniform(-80, 80, (20, 3))
        x_hi, _ = G.project_points(jnp.asarray(P), jnp.asarray(pts))
        x_lo, _ = G.project_points(P_low, jnp.asarray(pts))
    expected = (np.asarray(x_hi) + 0.5) * np.array([16 / 64, 12 / 48]) - 0.5
    np.testing.assert_allclose(np.asarray(x_lo), expected, rtol=1e-9, atol=1e-9)


def test_low_res_shape_and_block_average():
    assert estimate.low_res_shape(512, 512) == (32, 32)
    assert estimate.low_res_shape(480, 620) == (25, 32)
    assert estimate.low_res_shape(16, 24) == (16, 24)
    img = np.random.default_rng(0).random((64, 48, 2)).astype(np.float32)
    got = np.asarray(estimate.block_average(img, 16, 12))
    np.testing.assert_allclose(got, img.reshape(16, 4, 12, 4, 2).mean(axis=(1, 3)), rtol=4 * EPS32)
    const = np.full((50, 37), 0.25, np.float32)
    np.testing.assert_allclose(np.asarray(estimate.block_average(const, 7, 5)), 0.25, rtol=4 * EPS32)


def test_conditioning_recovers_the_geometry_and_spectrum(volume):
    config = jaxdrr.RenderConfig(height=128, width=128)
    params = jaxdrr.default_params(config)
    P = _carm(volume, size=128, pixel=2.5, sdd=1150.0, sid=690.0)
    P_low = estimate.low_res_projection(P, 128, 128, 32, 32)
    sc = estimate.ScatterConfig(sdd_mm=1150.0, grid=True)
    cond = np.asarray(estimate.conditioning(params, P_low, volume.center, sc), np.float64)
    e = np.asarray(params["energies"], np.float64)
    w = np.asarray(params["spectrum"], np.float64)
    expected = [e[w > 0].max(), np.sum(w * e) / np.sum(w), 1150.0, 690.0 / 1150.0, 10.0, 1.0]
    # float32 P and matrix algebra: a few hundred eps32 relative
    np.testing.assert_allclose(cond, expected, rtol=300 * EPS32)


def test_outside_the_trained_range_warns_and_behind_the_source_raises():
    inside = np.array([90.0, 55.0, 1100.0, 0.65, 10.0, 0.0])
    assert estimate.check_range(inside) == []
    far = inside.copy()
    far[2] = 2000.0
    with pytest.warns(UserWarning, match="sdd_mm"):
        assert len(estimate.check_range(far)) == 1
    behind = inside.copy()
    behind[3] = -0.2
    with pytest.raises(JaxdrrError, match="behind the source"):
        estimate.check_range(behind)


def test_render_warns_outside_the_trained_range_under_jit(volume, small_weights):
    config = jaxdrr.RenderConfig(height=32, width=32, scatter=estimate.ScatterConfig(sdd_mm=2000.0))
    P = _carm(volume, sdd=2000.0, sid=1200.0)
    with pytest.warns(UserWarning, match="sdd_mm"):
        jax.block_until_ready(
            jax.jit(jaxdrr.make_renderer(config))(_params(config, small_weights), volume, P)
        )


def test_config_validation_and_clear_errors(volume, small_weights):
    with pytest.raises(JaxdrrError, match="scatter"):
        jaxdrr.RenderConfig(scatter="bogus")
    assert jaxdrr.RenderConfig(scatter="none").scatter is None
    assert jaxdrr.RenderConfig(scatter="net").scatter == estimate.ScatterConfig()
    with pytest.raises(JaxdrrError, match="mc_photons"):
        estimate.ScatterConfig(method="mc", mc_photons=0)
    config = jaxdrr.RenderConfig(height=32, width=32, scatter="net")
    params = jaxdrr.default_params(config.replace(scatter=None))
    with pytest.raises(JaxdrrError, match="scatter_net"):
        jaxdrr.make_renderer(config)(params, volume, _carm(volume))
    mc = config.replace(scatter=estimate.ScatterConfig(method="mc", mc_photons=1000))
    with pytest.raises(JaxdrrError, match="key"):
        jaxdrr.make_renderer(mc)(params, volume, _carm(volume), None)


@pytest.mark.parametrize("detector", ["ei", "pc"])
def test_scatter_is_added_to_the_primary_signal(volume, small_weights, detector):
    config = jaxdrr.RenderConfig(height=32, width=32, output="transmission", detector=detector, scatter="net")
    params = _params(config, small_weights)
    P = _carm(volume)
    total = np.asarray(jaxdrr.make_renderer(config)(params, volume, P), np.float64)
    primary = np.asarray(jaxdrr.make_renderer(config.replace(scatter=None))(params, volume, P), np.float64)
    L = jaxdrr.line_integrals(config, volume, P, params)
    s_ei, s_pc = estimate.net_scatter(params, L, P, volume.center, config.scatter, 32, 32)
    s = np.asarray(s_ei if detector == "ei" else s_pc, np.float64)
    assert s.min() > 0
    np.testing.assert_allclose(total - primary, s, rtol=0, atol=8 * EPS32 * total.max())


def test_quantum_noise_is_that_of_the_total_signal(volume, small_weights):
    # Photon counting, quantum noise only: the variance of the counts equals their mean, primary
    # plus scatter. 2000 keys per pixel; the sample variance/mean ratio has a standard error of
    # sqrt(2 / 2000) ~ 0.032 per pixel, ~0.032/sqrt(16) on the mean over 16 pixels: 5 sigma = 0.04.
    noise = jaxdrr.NoiseConfig(readout=False, crosstalk=False)
    config = jaxdrr.RenderConfig(
        height=16,
        width=16,
        detector="pc",
        output="photons",
        noise=noise,
        photons_per_pixel=2000.0,
        scatter="net",
    )
    params = _params(config, small_weights)
    P = _carm(volume, size=16, pixel=10.0)
    keys = jax.random.split(jax.random.key(3), 2000)
    imgs = np.asarray(
        jax.jit(jax.vmap(jaxdrr.make_renderer(config), (None, None, None, 0)))(params, volume, P, keys)
    )
    expected = np.asarray(
        jaxdrr.make_renderer(config.replace(noise=None))(params, volume, P, None), np.float64
    )
    primary = np.asarray(
        jaxdrr.make_renderer(config.replace(noise=None, scatter=None))(params, volume, P, None), np.float64
    )
    assert np.all(expected - primary > 1.0)  # scatter adds at least one photon per pixel here
    pix = (slice(4, 12, 2), slice(4, 12, 2))
    ratio = imgs.var(axis=0, ddof=1)[pix] / expected[pix]
    assert abs(ratio.mean() - 1.0) < 0.04
    np.testing.assert_allclose(imgs.mean(axis=0)[pix], expected[pix], rtol=5 * np.sqrt(1.0 / (2000 * 20)))


def test_render_with_scatter_jits_vmaps_and_differentiates(volume, small_weights):
    config = jaxdrr.RenderConfig(height=32, width=32, scatter="net", noise=jaxdrr.NoiseConfig())
    params = _params(config, small_weights)
    render = jaxdrr.make_renderer(config)
    lao = jnp.array([0.0, 20.0, -30.0])
    Ps = jax.vmap(lambda a: _carm(volume, lao=a))(lao)
    keys = jax.random.split(jax.random.key(0), 3)
    imgs = jax.jit(jax.vmap(render, (None, None, 0, 0)))(params, volume, Ps, keys)
    assert imgs.shape == (3, 32, 32) and bool(jnp.all(jnp.isfinite(imgs)))
    assert float(jnp.abs(imgs[0] - imgs[1]).mean()) > 1e-3
    # Noise-free, a vmapped batch equals single renders up to float32 reassociation in the projector
    # (~100 samples per ray) and the network (~20 layers of <= 9 x 96 terms): gamma(500) ~ 3e-5
    # relative on -ln T ~ 4; a noisy image is not compared, since a Poisson draw is discontinuous in
    # its mean (one count more is 1e-3 in -ln T).
    clean = jaxdrr.make_renderer(config.replace(noise=None))
    batch = jax.jit(jax.vmap(clean, (None, None, 0, None)))(params, volume, Ps, None)
    for i in range(3):
        one = jax.jit(clean)(params, volume, Ps[i], None)
        np.testing.assert_allclose(np.asarray(batch[i]), np.asarray(one), rtol=1e-4)

    def loss(a, data, w):
        p = dict(params, scatter_net=w)
        vol = volume.replace(data=data)
        return jnp.sum(render(p, vol, _carm(volume, lao=a), keys[0]))

    g_a, g_v, g_w = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(5.0, volume.data, small_weights)
    assert np.isfinite(float(g_a)) and float(g_a) != 0.0
    assert bool(jnp.all(jnp.isfinite(g_v))) and float(jnp.abs(g_v).max()) > 0
    assert float(jnp.abs(g_w["head"]["bias"]).max()) > 0


def _smooth_density_volume():
    """Gaussian blobs of soft tissue and bone (density channels): smooth, so that the trilinear
    interpolation's kinks are small against the finite-difference step."""
    n, spacing = 24, 8.0
    x = (np.arange(n) - (n - 1) / 2) * spacing
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    soft = 1.0 * np.exp(-(X**2 / 70.0**2 + Y**2 / 50.0**2 + Z**2 / 60.0**2))
    bone = 1.5 * np.exp(-((X - 20) ** 2 + (Y + 10) ** 2 + Z**2) / 25.0**2)
    dens = np.stack([np.zeros_like(soft), soft, bone])
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -(n - 1) / 2 * spacing
    return dens, affine


def test_gradients_match_finite_differences(small_weights):
    dens, affine = _smooth_density_volume()
    with jax.enable_x64(True):
        w64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), small_weights)
        config = jaxdrr.RenderConfig(height=16, width=16, scatter="net", output="transmission")
        params = jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64), jaxdrr.default_params(config.replace(scatter=None))
        )
        vol = jaxdrr.Volume.create(dens, affine, kind="density")
        render = jaxdrr.make_renderer(config)
        weights_img = jnp.asarray(np.random.default_rng(0).random((16, 16)))

        def f(a, bias, kernel_entry):
            w = jax.tree.map(lambda x: x, w64)
            w["head"]["bias"] = w["head"]["bias"] + bias
            w["encoders"][0]["conv1"]["kernel"] = (
                w["encoders"][0]["conv1"]["kernel"].at[1, 1, 0, 0].add(kernel_entry)
            )
            P = _carm(vol, lao=a, size=16, pixel=10.0)
            return jnp.sum(render(dict(params, scatter_net=w), vol, P) * weights_img)

        x0 = (jnp.asarray(12.0), jnp.zeros(2), jnp.asarray(0.0))
        grads = jax.grad(f, argnums=(0, 1, 2))(*x0)
        h = 1e-4
        fd_a = (f(x0[0] + h, *x0[1:]) - f(x0[0] - h, *x0[1:])) / (2 * h)
        e0 = jnp.array([1.0, 0.0])
        fd_b = (f(x0[0], e0 * h, x0[2]) - f(x0[0], -e0 * h, x0[2])) / (2 * h)
        fd_k = (f(x0[0], x0[1], h) - f(x0[0], x0[1], -h)) / (2 * h)
        for got, fd in ((grads[0], fd_a), (grads[1][0], fd_b), (grads[2], fd_k)):
            assert abs(float(got) - float(fd)) <= 1e-6 * abs(float(fd)), (float(got), float(fd))
            assert float(fd) != 0.0


def test_monte_carlo_route_equals_a_direct_monte_carlo_call(volume):
    from jaxdrr.scatter import MonteCarloConfig, monte_carlo

    sc = estimate.ScatterConfig(method="mc", mc_photons=20_000, grid_side=8, sdd_mm=1100.0)
    config = jaxdrr.RenderConfig(height=32, width=32, output="transmission", scatter=sc)
    params = jaxdrr.default_params(config)
    P = _carm(volume)
    key = jax.random.key(7)
    total = np.asarray(jaxdrr.make_renderer(config)(params, volume, P, key), np.float64)
    primary = np.asarray(
        jaxdrr.make_renderer(config.replace(scatter=None))(params, volume, P, key), np.float64
    )
    P_low = estimate.low_res_projection(P, 32, 32, 8, 8)
    dens = jaxdrr.material_densities(volume, config.materials)
    dens_vol = jaxdrr.Volume.create(dens, volume.affine, kind="density", channel_names=config.materials.names)
    out = monte_carlo(
        dens_vol,
        P_low,
        8,
        8,
        photons=20_000,
        key=jax.random.fold_in(key, 0x5CA7),
        params=params,
        config=MonteCarloConfig(sdd_mm=1100.0, photons_per_pixel=1.0),
    )
    e_mean = float(jnp.sum(params["spectrum"] * params["energies"]))
    s_low = np.asarray(out["scatter_ei"], np.float64) / e_mean
    assert s_low.max() > 0
    expected = np.asarray(estimate.upsample(jnp.asarray(s_low, jnp.float32), 32, 32), np.float64)
    np.testing.assert_allclose(total - primary, expected, rtol=0, atol=8 * EPS32 * total.max())
    grad = jax.grad(lambda d: jnp.sum(jaxdrr.make_renderer(config)(params, volume.replace(data=d), P, key)))(
        volume.data
    )
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_scatter_errors_noise_correction_is_unbiased():
    from jaxdrr.training.train_scatter import scatter_errors

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16] / 16.0
    s = np.stack([0.01 * (1.2 + np.sin(3 * xx + k) * np.cos(2 * yy)) for k in range(200)])
    pred = s * 1.05
    a = s + rng.normal(0, 0.2, s.shape) * s
    b = s + rng.normal(0, 0.2, s.shape) * s
    mc = (a + b) / 2
    t = np.full_like(s, 0.1)
    err = scatter_errors(pred, mc, t, a, b)
    # true NMSE 0.0025; the noise terms are estimated from 51,200 pixels: standard error ~2e-4
    assert abs(err["nmse_noise_corrected"] - 0.0025) < 1e-3
    assert err["nmse"] > 0.01  # the raw NMSE is dominated by the Monte Carlo noise (var 0.02)
    exact = scatter_errors(s, s, t)
    assert exact["nmse"] == 0.0 and exact["mape_shadow_binned"] == 0.0 and exact["mape_total"] == 0.0


def test_weights_round_trip_and_mismatch(tmp_path, small_weights):
    path = sn.save_weights(tmp_path / "w", small_weights, SMALL, {"note": "x"})
    config, weights, meta = sn.load_weights(path)
    assert (
        config == SMALL and meta["note"] == "x" and meta["parameters"] == sn.count_parameters(small_weights)
    )
    for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(small_weights), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    meta_path = tmp_path / "w.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["widths"] = [8, 32]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(JaxdrrError, match="do not match"):
        sn.load_weights(path)
    assert sn.config_from_weights(small_weights) == SMALL


def test_shipped_network_is_small_and_has_its_training_record():
    config, weights = sn.load_pretrained()
    n = sn.count_parameters(weights)
    assert n < 1_000_000
    record = sn.pretrained_record()
    assert record["parameters"] == n
    assert record["data_budget"]["train"]["samples"] > 0 and record["data_budget"]["train"]["photons"] > 0


def test_shipped_weights_reproduce_the_logged_heldout_error():
    from jaxdrr.training.train_scatter import evaluate

    config, weights = sn.load_pretrained()
    record = sn.pretrained_record()["heldout"]
    data = dict(np.load(HELDOUT))
    got = evaluate(weights, config, data, halves=True)
    for readout in ("ei", "pc"):
        for key in ("nmse", "nmse_noise_corrected", "mape_shadow_binned", "mape_total"):
            assert got[readout][key] == pytest.approx(record[readout][key], rel=1e-3), (readout, key)


def test_shipped_network_places_scatter_better_than_a_flat_image():
    # A flat image at each held-out image's true mean scatter (an oracle for the level) is the
    # simplest estimate of the shape; the network must place the scatter better than that inside
    # the object shadow (MAPE on 4x4-binned images).
    from jaxdrr.training.train_scatter import scatter_errors

    config, weights = sn.load_pretrained()
    data = dict(np.load(HELDOUT))
    pred = np.asarray(sn.apply(weights, data["low"], data["cond"], config))[..., 0]
    mc, t = data["s"][..., 0], data["low"][..., 0]
    flat = np.broadcast_to(mc.mean(axis=(1, 2), keepdims=True), mc.shape)
    net_err = scatter_errors(pred, mc, t)["mape_shadow_binned"]
    flat_err = scatter_errors(flat, mc, t)["mape_shadow_binned"]
    assert net_err < flat_err


def test_cli_renders_with_scatter(tmp_path):
    from jaxdrr.cli import main

    out = tmp_path / "x.npy"
    small = ["--phantom", "analytic", "--phantom-size", "40", "32", "28", "--height", "32", "--width", "32"]
    args = ["render", *small, "--pixel-size", "10", "--no-noise", "--output", "transmission"]
    assert main([*args, "--out", str(out), "--scatter", "net"]) == 0
    assert main([*args, "--out", str(tmp_path / "p.npy")]) == 0
    total, primary = np.load(out), np.load(tmp_path / "p.npy")
    assert np.all(total > primary)


def test_data_generation_is_deterministic_and_resumes(tmp_path):
    from jaxdrr.training import scatter_data

    assert scatter_data.sample_spec(0, "train", 3) == scatter_data.sample_spec(0, "train", 3)
    assert scatter_data.sample_spec(0, "train", 3) != scatter_data.sample_spec(0, "test", 3)
    scatter_data.generate(tmp_path, "train", 0, 1, photons=4000)
    path = tmp_path / "train" / "00000.npz"
    first = path.stat().st_mtime_ns
    scatter_data.generate(tmp_path, "train", 0, 1, photons=4000)
    assert path.stat().st_mtime_ns == first  # finished samples are skipped
    data = scatter_data.load(tmp_path, "train")
    assert data["low"].shape == (1, 32, 32, 3) and data["s"].shape == (1, 32, 32, 2)
    assert np.all(np.isfinite(data["s"])) and data["s"].min() >= 0
    assert not list(tmp_path.rglob("*.tmp*"))
