"""The two-scale V-Net (context network + fine network), adaptive tiling, fast resampling, its data.

Tiny networks (widths 4-8) on tiny grids keep every case to seconds. Float tolerances: float32 eps
(EPS32) times the number of rounded operations between the two computations compared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr.models import vnet
from jaxdrr.training import train_vnet2, vnet_data

EPS32 = float(np.finfo(np.float32).eps)
TINY = train_vnet2.TrainConfig(
    batch=1,
    patch=24,
    context_patch=16,
    widths=(4, 8),
    convs_per_stage=(1, 1),
    context_widths=(4, 8),
    context_convs=(1, 1),
    groups=2,
)


@pytest.fixture(scope="module")
def tiny():
    net = TINY.network()
    return net, vnet.init_weights(net, seed=1)


def test_old_configuration_is_one_scale_and_new_fields_default():
    old = vnet.VNetConfig.from_json(
        {"widths": [8, 16], "convs_per_stage": [1, 1], "groups": 4, "classes": list(vnet.CLASS_NAMES)}
    )
    assert old.context_factor == 0 and old.tile_voxels == 0 and old.top_decoder_kernel == 3
    assert "context" not in vnet.init_weights_shapes(old)
    net = TINY.network()
    assert net.in_channels == vnet.N_HU_FEATURES + len(net.classes)
    assert "context" in vnet.init_weights_shapes(net)


@pytest.mark.parametrize("n, size", [(5, 15), (7, 16), (3, 3), (4, 11)])
def test_resize_axis_linear_equals_jax_image_resize_when_upsampling(n, size):
    x = jnp.asarray(np.random.default_rng(n).random((n, 3)), jnp.float32)
    got = vnet.resize_axis_linear(x, 0, size)
    want = jax.image.resize(x, (size, 3), method="linear", antialias=True)
    # Two products and a sum each side, on values in [0, 1].
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=4 * EPS32)


@pytest.mark.parametrize("shape", [(180, 180, 166), (180, 180, 625), (30, 9, 70)])
def test_tiling_covers_the_grid_within_the_budget(shape):
    box, padded, starts = vnet.tiling(shape, 64, 16, 8, 2_000_000)
    assert np.prod(box) <= 2_000_000 and all(b % 8 == 0 for b in box)
    covered = np.zeros(padded, bool)
    for a, b, c in starts:
        covered[a : a + box[0], b : b + box[1], c : c + box[2]] = True
    assert covered.all()
    for axis in range(3):  # neighbours overlap by at least the requested voxels
        s = sorted(set(starts[:, axis].tolist()))
        assert all(box[axis] - (t - u) >= 16 for u, t in zip(s, s[1:]))


def test_cubic_tiling_is_the_old_one():
    box, padded, starts = vnet.tiling((70, 40, 100), 64, 16, 8, 0)
    assert box == (64, 64, 64) and padded == (70, 64, 100)
    assert sorted(set(starts[:, 2].tolist())) == vnet._patch_starts(100, 64, 48)


def test_two_scale_probabilities_partition_and_differentiate(tiny):
    net, weights = tiny
    hu = jnp.asarray(np.random.default_rng(0).normal(0, 400, (20, 14, 17)), jnp.float32)
    probs = jax.jit(lambda w, h: vnet.predict_probabilities_grid(w, h, net))(weights, hu)
    assert probs.shape == (4, 20, 14, 17)
    np.testing.assert_allclose(np.asarray(probs.sum(0)), 1.0, rtol=0, atol=8 * EPS32)
    fractions = vnet.predict_fractions(weights, hu, (1.0, 3.0, 2.0), config=net)
    assert fractions.shape == (4, 20, 14, 17)
    np.testing.assert_allclose(np.asarray(fractions.sum(0)), 1.0, rtol=0, atol=4 * EPS32)
    g = jax.grad(lambda h: vnet.predict_fractions(weights, h, (2.0, 2.0, 2.0), config=net)[2].sum())(hu)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0


def test_training_crop_matches_the_whole_volume_upsampling():
    """The fine patch reads the context exactly as inference would from the whole context grid."""
    data = TINY.data()
    r, p, q = TINY.context_factor, TINY.patch, TINY.context_patch
    ctx = jnp.asarray(np.random.default_rng(3).random((1, 4, q, q, q)), jnp.float32)
    got = train_vnet2.context_for_fine_patch(ctx, TINY)[0]
    whole = vnet.upsample_context(ctx[0], r, (q * r,) * 3)
    o = data.context_offset * r
    want = jnp.moveaxis(whole[:, o : o + p, o : o + p, o : o + p], 0, -1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2 * EPS32)


def test_training_pair_is_deterministic_aligned_and_labelled():
    data = TINY.data()
    a = vnet_data.training_pair((5, 2, 0), data)
    b = vnet_data.training_pair((5, 2, 0), data)
    for key in ("hu", "fractions", "hu_context", "fractions_context"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["hu"].shape == (24, 24, 24) and a["fractions_context"].shape == (16, 16, 16, 4)
    for key in ("fractions", "fractions_context"):
        np.testing.assert_allclose(a[key].sum(-1), 1.0, atol=1e-5)
    # Same subject at both scales: the fine patch's class make-up is close to the context voxels
    # under it (different painting grids, so partial volume differs at the edges only).
    o, n = data.context_offset, TINY.patch // TINY.context_factor
    under = a["fractions_context"][o : o + n, o : o + n, o : o + n].reshape(-1, 4).mean(0)
    np.testing.assert_allclose(a["fractions"].reshape(-1, 4).mean(0), under, atol=0.05)


def test_loss_and_gradients_are_finite(tiny):
    net, weights = tiny
    pair = vnet_data.training_pair((6, 0, 0), TINY.data())
    batch = {k: jnp.asarray(v)[None] for k, v in pair.items() if k != "family"}
    (loss, parts), grads = jax.value_and_grad(train_vnet2.loss_fn, has_aux=True)(weights, batch, net, TINY)
    assert np.isfinite(float(loss)) and set(parts) == {"ce", "dice_loss", "context_ce", "context_dice_loss"}
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(grads["context"]))
