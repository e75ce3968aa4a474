"""The material-decomposition V-Net: architecture, patch inference, weights, and the shipped model.

Tolerances:
* fractions sum to one: the final renormalisation divides 4 float32 terms by their sum, so the
  sum is 1 within a few float32 ulps (4 eps);
* single-patch inference vs a direct forward: the same operations in the same order except the
  window weight w and the division by the accumulated w (an exact power-of-two-free product and
  quotient): 2 roundings per value, so 4 eps on values <= 1;
* finite differences run in float64 (x64), where the central difference has truncation error
  O(h^2 f''') and rounding O(eps64 f / h); with h = 1e-3 HU both are far below 1e-6 relative;
* the shipped weights' validation scores: a voxel's argmax can only change between machines if its
  top-2 probabilities are closer than the float32 forward-pass error (bounded here by 1e-4, orders
  above eps32 x depth), so the number of changed voxels is bounded by the near-tie count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr.errors import JaxdrrError
from jaxdrr.models import vnet

EPS32 = float(np.finfo(np.float32).eps)
SMALL = vnet.VNetConfig(widths=(4, 8), convs_per_stage=(1, 1), groups=2, patch=8, overlap=2)


@pytest.fixture(scope="module")
def small_weights():
    return vnet.init_weights(SMALL, seed=1)


def _hu(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(0.0, 600.0, shape).astype(np.float32))


def test_config_validation():
    with pytest.raises(JaxdrrError, match="groups"):
        vnet.VNetConfig(widths=(6, 8), convs_per_stage=(1, 1), groups=4)
    with pytest.raises(JaxdrrError, match="patch"):
        vnet.VNetConfig(patch=60)
    with pytest.raises(JaxdrrError, match="overlap"):
        vnet.VNetConfig(patch=64, overlap=64)
    with pytest.raises(JaxdrrError, match="same length"):
        vnet.VNetConfig(widths=(8, 16), convs_per_stage=(1,))


def test_forward_shapes_and_parameter_count(small_weights):
    x = vnet.hu_features(_hu((1, 8, 8, 8)))
    assert x.shape == (1, 8, 8, 8, SMALL.in_channels)
    logits = vnet.apply(small_weights, x, SMALL)
    assert logits.shape == (1, 8, 8, 8, 4)
    assert vnet.count_parameters(small_weights) == sum(a.size for a in jax.tree.leaves(small_weights))


def test_single_patch_inference_equals_a_direct_forward(small_weights):
    hu = _hu((8, 8, 8), seed=2)
    grid = vnet.predict_probabilities_grid(small_weights, hu, SMALL)
    direct = jax.nn.softmax(vnet.apply(small_weights, vnet.hu_features(hu)[None], SMALL)[0], axis=-1)
    np.testing.assert_allclose(
        np.asarray(grid), np.moveaxis(np.asarray(direct), -1, 0), rtol=0, atol=4 * EPS32
    )


def test_overlapping_patches_blend_to_a_weighted_mean(small_weights):
    """Each voxel's output is the window-weighted mean of the patches that cover it (rebuilt in numpy)."""
    hu = _hu((13, 8, 10), seed=3)
    got = np.asarray(vnet.predict_probabilities_grid(small_weights, hu, SMALL))
    p, stride = SMALL.patch, SMALL.patch - SMALL.overlap
    window = vnet._blend_window(p, SMALL.overlap).astype(np.float64)
    acc = np.zeros((4, 13, 8, 10))
    norm = np.zeros((13, 8, 10))
    for a in vnet._patch_starts(13, p, stride):
        for b in vnet._patch_starts(8, p, stride):
            for c in vnet._patch_starts(10, p, stride):
                block = hu[a : a + p, b : b + p, c : c + p]
                probs = jax.nn.softmax(
                    vnet.apply(small_weights, vnet.hu_features(block)[None], SMALL)[0], axis=-1
                )
                acc[:, a : a + p, b : b + p, c : c + p] += (
                    np.moveaxis(np.asarray(probs, np.float64), -1, 0) * window
                )
                norm[a : a + p, b : b + p, c : c + p] += window
    # float32 accumulation of <= 8 weighted terms per voxel, values <= 1: 16 eps is generous.
    np.testing.assert_allclose(got, acc / norm, rtol=0, atol=16 * EPS32)


def test_predict_fractions_resamples_and_sums_to_one(small_weights):
    hu = _hu((9, 7, 5), seed=4)
    fractions = jax.jit(lambda w, h: vnet.predict_fractions(w, h, (1.0, 1.5, 3.0), config=SMALL))(
        small_weights, hu
    )
    assert fractions.shape == (4, 9, 7, 5)
    assert fractions.dtype == jnp.float32
    assert float(jnp.min(fractions)) >= 0.0
    np.testing.assert_allclose(np.asarray(fractions.sum(0)), 1.0, rtol=0, atol=4 * EPS32)


def test_predict_fractions_vmaps(small_weights):
    hus = jnp.stack([_hu((6, 6, 6), seed=s) for s in range(2)])
    f = jax.vmap(lambda h: vnet.predict_fractions(small_weights, h, (2.0, 2.0, 2.0), config=SMALL))(hus)
    one = vnet.predict_fractions(small_weights, hus[1], (2.0, 2.0, 2.0), config=SMALL)
    np.testing.assert_allclose(np.asarray(f[1]), np.asarray(one), rtol=0, atol=8 * EPS32)


def test_gradient_wrt_hu_matches_finite_differences(small_weights):
    with jax.enable_x64(True):
        w64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), small_weights)
        hu = jnp.asarray(np.random.default_rng(5).normal(200.0, 300.0, (6, 5, 4)))
        direction = jnp.asarray(np.random.default_rng(6).normal(size=hu.shape))
        weights_out = jnp.asarray(np.random.default_rng(7).normal(size=(4, *hu.shape)))

        def f(h):
            return jnp.sum(weights_out * vnet.predict_fractions(w64, h, (1.5, 2.0, 2.5), config=SMALL))

        grad = jax.grad(f)(hu)
        assert grad.dtype == jnp.float64
        h = 1e-3
        fd = (f(hu + h * direction) - f(hu - h * direction)) / (2 * h)
        np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=1e-6, atol=1e-12)


def test_bad_inputs_raise(small_weights):
    with pytest.raises(JaxdrrError, match="HU"):
        vnet.predict_fractions(small_weights, jnp.zeros((4, 4)), (1, 1, 1), config=SMALL)
    with pytest.raises(JaxdrrError, match="spacing"):
        vnet.predict_fractions(small_weights, jnp.zeros((4, 4, 4)), (1, 0, 1), config=SMALL)


def test_weights_round_trip_and_mismatch(tmp_path, small_weights):
    path = vnet.save_weights(tmp_path / "w", small_weights, SMALL, {"note": "x"})
    config, weights, meta = vnet.load_weights(path)
    assert config == SMALL and meta["note"] == "x"
    for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(small_weights), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = vnet.VNetConfig(widths=(4, 8), convs_per_stage=(1, 2), groups=2, patch=8, overlap=2)
    vnet.save_weights(tmp_path / "v", small_weights, other)
    with pytest.raises(JaxdrrError, match="do not match"):
        vnet.load_weights(tmp_path / "v")
    with pytest.raises(JaxdrrError, match="not found"):
        vnet.load_weights(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# The shipped network


def test_shipped_weights_load():
    config, weights = vnet.load_pretrained()
    assert config.classes == vnet.CLASS_NAMES
    record = vnet.pretrained_record()
    assert record["parameters"] == vnet.count_parameters(weights)
    assert "no real CT" in record["trained_on"]


def test_shipped_weights_reproduce_the_logged_validation_score():
    from jaxdrr.training import train_vnet

    config, weights = vnet.load_pretrained()
    record = vnet.pretrained_record()["validation"]
    val = train_vnet.validation_set(
        record["seeds"][1] - record["seeds"][0], record["shape"], config.spacing_mm
    )
    now = train_vnet.evaluate(weights, config, val)
    voxels = now["vnet"]["voxels"]
    assert voxels == record["vnet"]["voxels"]
    flips = max(now["near_ties"], record["near_ties"])
    # Thresholds involve no network: identical.
    assert now["thresholds"]["misclassification"] == pytest.approx(
        record["thresholds"]["misclassification"], abs=0
    )
    assert (
        abs(now["vnet"]["misclassification"] - record["vnet"]["misclassification"]) <= flips / voxels + 1e-12
    )
    for name, logged in record["vnet"]["dice"].items():
        got = now["vnet"]["dice"][name]
        if logged is None or np.isnan(logged):
            assert got is None or np.isnan(got)
            continue
        # k flipped voxels move TP and the predicted count P by <= k each, so
        # |dDice| = |d(2 TP / (P + T))| <= 4 k / (T - k) with T the (fixed) truth count.
        truth = record["vnet"]["truth_voxels"][name]
        bound = 4 * flips / (truth - flips) if truth > flips else 1.0
        assert abs(got - logged) <= bound + 1e-12, (name, got, logged, flips)


def test_shipped_network_beats_thresholds_on_validation_record():
    """The record itself (not recomputed): the network was selected because it beats the baseline."""
    record = vnet.pretrained_record()["validation"]
    assert record["vnet"]["misclassification"] < record["thresholds"]["misclassification"]
    assert record["vnet"]["dice"]["bone"] > record["thresholds"]["dice"]["bone"]


def test_render_through_the_network_under_jit_vmap_and_grad(monkeypatch, small_weights):
    """materials="vnet": the network runs inside the render; decompose() once gives the same image.

    The real inference code with a small network (the shipped one makes this test take minutes on
    two cores: each of the four programs compiles and runs 64^3 patches, forward and backward).
    """
    import jaxdrr

    # A coarse grid (8 mm, 16^3 patches): a handful of patches instead of thousands of 8^3 ones.
    coarse = vnet.VNetConfig(
        widths=(4, 8), convs_per_stage=(1, 1), groups=2, patch=16, overlap=4, spacing_mm=8.0
    )
    monkeypatch.setattr(vnet, "load_pretrained", lambda *a, **k: (coarse, small_weights))
    ct = jaxdrr.phantom(shape=(20, 16, 12))
    g = jaxdrr.geometry.CArmGeometry(sdd_mm=1020, sid_mm=700, height=6, width=8, pixel_size_mm=40.0)
    config = jaxdrr.RenderConfig(height=6, width=8, materials="vnet")
    params = jaxdrr.default_params(config)
    render = jaxdrr.make_renderer(config)
    Ps = jnp.stack([jaxdrr.geometry.carm(a, 0.0, geometry=g) for a in (0.0, 30.0)])
    images = jax.jit(jax.vmap(render, in_axes=(None, None, 0, None)))(params, ct, Ps, None)
    assert images.shape == (2, 6, 8) and bool(jnp.all(jnp.isfinite(images)))
    density = jax.jit(jaxdrr.decompose, static_argnums=2)(params, ct, config.materials)
    assert density.kind == "density" and density.channel_names == vnet.CLASS_NAMES
    assert set(params) == {"energies", "spectrum", "mu_rho", "vnet"}
    again = jax.jit(render)(params, density, Ps[1])
    # The two programs compute the same fractions up to a few float32 ulps each (different fusion);
    # -ln T is linear in them to first order, so the images agree to ~eps x (number of terms ~ 64)
    # relative to the largest value.
    scale = float(jnp.max(jnp.abs(images[1])))
    np.testing.assert_allclose(np.asarray(again), np.asarray(images[1]), rtol=0, atol=64 * EPS32 * scale)
    # jit: op-by-op execution of the network's backward pass would take minutes.
    grad = jax.jit(jax.grad(lambda d: jnp.sum(render(params, ct.replace(data=d), Ps[0]))))(ct.data)
    assert grad.shape == ct.data.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.max(jnp.abs(grad))) > 0
