"""HU -> density conversions, the soft-threshold route for any number of materials, the metal
channel's nominal density and MaterialConfig.

Float tolerances come from float32 rounding analysis (``U32`` = unit roundoff 2**-24):

* a threshold fraction is ``S_m - S_{m+1}`` (or ``1 - S_1``, ``S_{M-1}``) of logistic steps
  ``S = sigmoid((HU - t) / s)``. The argument is two roundings from exact (relative 2u); as
  ``|x| sigmoid'(x) <= 0.224`` that moves S by < u. XLA's float32 logistic (exp or tanh based) is
  within a few ulps of 1 in absolute terms; we allow ``SIGMOID_ULPS`` = 8. So each S is within
  9u of the float64 value and each fraction within 2 * 9u + u (the subtraction).
* the fractions' sum telescopes: the same rounded S_k enters two fractions with opposite signs,
  so only the M - 1 subtractions and M - 1 additions round: ``|sum - 1| <= (2M - 2) u <= M eps``.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdrr.errors import JaxdrrError
from jaxdrr.materials import (
    HU_TO_DENSITY,
    MATERIAL_NAMES,
    METAL_THRESHOLDS_HU,
    METALS,
    SCHNEIDER_DENSITY,
    SCHNEIDER_HU,
    MaterialConfig,
    as_material_config,
    density_channels,
    hu_to_density,
    hu_to_density_deepdrr,
    hu_to_density_schneider,
    threshold_fractions,
)
from jaxdrr.physics import available_materials, density

U32 = 2.0**-24  # float32 unit roundoff
EPS32 = 2.0**-23  # float32 machine epsilon
SIGMOID_ULPS = 8  # allowance for XLA's float32 logistic (absolute, in units of u), see the docstring
FRACTION_TOL = (2 * (SIGMOID_ULPS + 1) + 1) * U32


@pytest.mark.parametrize(
    "hu, rho",
    [
        (0.0, 1.030),
        (1000.0, 0.0005886 * 1000 + 1.030),  # bone branch (shallower slope above the knee)
        (-500.0, 0.001029 * -500 + 1.030),  # soft/air branch below the knee
        (-1000.0, 0.001),
        (-1100.0, 0.0),  # clipped at zero
        (3000.0, 0.0005886 * 3000 + 1.030),
    ],
)
def test_deepdrr_formula(hu, rho):
    assert float(hu_to_density_deepdrr(hu)) == pytest.approx(rho, abs=1e-6)


def test_schneider_nodes_and_segments():
    nodes = np.array(SCHNEIDER_HU)
    np.testing.assert_allclose(hu_to_density_schneider(nodes), SCHNEIDER_DENSITY, rtol=1e-6)
    assert float(hu_to_density_schneider(-1000.0)) == pytest.approx(0.00121)
    assert float(hu_to_density_schneider(1600.0)) == pytest.approx(1.9642)
    # Linear between nodes.
    assert float(hu_to_density_schneider(800.0)) == pytest.approx(
        1.0762 + (1.9642 - 1.0762) * 699 / 1499, rel=1e-6
    )
    # Clamped below air, extrapolated (not saturated) above 3000 HU for metal.
    assert float(hu_to_density_schneider(-1024.0)) == pytest.approx(0.00121)
    assert float(hu_to_density_schneider(4400.0)) == pytest.approx(2.8 + (2.8 - 1.9642), rel=1e-5)


def test_deepdrr_and_schneider_agreement_as_physics_md_states():
    hu = np.arange(-1000.0, 3001.0)
    d = np.asarray(hu_to_density_deepdrr(hu), np.float64)
    s = np.asarray(hu_to_density_schneider(hu), np.float64)
    rel = np.abs(s - d) / d
    in_0_100 = (hu >= 0) & (hu <= 100)
    near_air = hu < -980
    # PHYSICS.md: within 1.3 % outside 0..100 HU, 2.8 % inside. The 1.3 % does not hold for air
    # (-1000 HU: 0.00121 vs 0.00100 g/cm^3, 21 %), where the densities are ~0 and the absolute
    # difference is below 3e-4 g/cm^3.
    assert rel[~in_0_100 & ~near_air].max() < 0.013
    assert rel[in_0_100].max() < 0.029
    assert np.abs(s - d)[near_air].max() < 3e-4


def test_registry_and_dispatch():
    assert set(HU_TO_DENSITY) == {"deepdrr", "schneider"}
    hu = jnp.linspace(-1000, 2000, 7)
    chex.assert_trees_all_close(hu_to_density(hu, "schneider"), hu_to_density_schneider(hu))
    with pytest.raises(JaxdrrError, match="deepdrr"):
        hu_to_density(hu, "linear")


def _expit64(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def reference_fractions(hu, thresholds, softness):
    """Float64 NumPy threshold fractions [M, ...] (an independent implementation)."""
    hu = np.asarray(hu, np.float64)
    t = np.asarray(thresholds, np.float64).reshape((-1,) + (1,) * hu.ndim)
    if softness == 0:
        steps = (hu[None] > t).astype(np.float64)
    else:
        steps = _expit64((hu[None] - t) / softness)
    upper = np.concatenate([np.ones((1,) + hu.shape), steps])
    lower = np.concatenate([steps, np.zeros((1,) + hu.shape)])
    return upper - lower


def deepdrr_rule(hu, thresholds):
    """Index of the material of each voxel by DeepDRR's rule: material m where t_m < HU <= t_{m+1}."""
    return np.searchsorted(np.asarray(thresholds, np.float64), np.asarray(hu, np.float64), side="left")


@pytest.fixture
def hu_volume():
    return jax.random.uniform(jax.random.PRNGKey(0), (6, 5, 4), minval=-1100.0, maxval=3071.0)


@pytest.mark.parametrize(
    "thresholds", [(-800.0, 350.0), METAL_THRESHOLDS_HU], ids=["3 materials", "4 materials"]
)
def test_fractions_match_float64_reference_sum_to_one_and_are_bounded(hu_volume, thresholds):
    num = len(thresholds) + 1
    # Include values at and around every threshold, where the fractions are not one-hot.
    hu = jnp.concatenate(
        [hu_volume.ravel(), jnp.asarray([t + d for t in thresholds for d in (-13, -1, 0, 2, 25)])]
    )
    f = threshold_fractions(hu, thresholds, 10.0)
    chex.assert_shape(f, (num, hu.size))
    ref = reference_fractions(np.asarray(hu), thresholds, 10.0)
    np.testing.assert_allclose(np.asarray(f, np.float64), ref, rtol=0, atol=FRACTION_TOL)
    sum_error = np.abs(np.asarray(f, np.float64).sum(axis=0) - 1.0)
    assert sum_error.max() <= num * EPS32
    assert bool(jnp.all((f >= 0) & (f <= 1)))


def test_fractions_near_one_hot_far_from_thresholds():
    hu = np.array([-1000.0, -600.0, 0.0, 150.0, 600.0, 2000.0])
    f = threshold_fractions(jnp.asarray(hu))
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], float).T
    # 100 HU or more from both thresholds, 10 HU softness: off by at most the logistic tail
    # sigmoid(-10) (the float64 value), per neighbouring threshold.
    tail = 2 * float(_expit64(-100.0 / 10.0))
    np.testing.assert_allclose(f, expected, atol=tail + FRACTION_TOL)
    # At a threshold the two neighbours share the voxel equally (the other threshold is >= 1150 HU away).
    np.testing.assert_allclose(
        threshold_fractions(jnp.array([-800.0, 350.0])), [[0.5, 0], [0.5, 0.5], [0, 0.5]], atol=FRACTION_TOL
    )


@pytest.mark.parametrize(
    "thresholds", [(-800.0, 350.0), METAL_THRESHOLDS_HU], ids=["3 materials", "4 materials"]
)
def test_hard_threshold_limit_is_deepdrrs_rule(thresholds):
    hu = np.array(
        [t + d for t in thresholds for d in (-1.0, -0.5, 0.0, 0.5, 1.0)] + [-1024.0, 0.0, 1200.0, 3071.0]
    )
    rule = deepdrr_rule(hu, thresholds)  # air <= -800 < soft <= 350 < bone [<= 2500 < metal]
    hard = np.asarray(threshold_fractions(jnp.asarray(hu), thresholds, softness_hu=0.0))
    np.testing.assert_array_equal(hard, np.eye(len(thresholds) + 1)[rule].T)
    # The soft fractions tend to it: 1 HU from every threshold with softness 1e-3 HU, the logistic
    # argument is >= 1000, where float32 sigmoid is exactly 0 or 1.
    away = np.all(np.abs(hu[:, None] - np.asarray(thresholds)[None]) >= 1.0, axis=1)
    soft = np.asarray(threshold_fractions(jnp.asarray(hu[away]), thresholds, softness_hu=1e-3))
    np.testing.assert_array_equal(soft, hard[:, away])
    np.testing.assert_array_equal(np.argmax(hard, axis=0), rule)


def test_gradients_finite_and_nonzero_near_thresholds():
    bone_fraction = lambda hu: threshold_fractions(hu)[2]
    air_fraction = lambda hu: threshold_fractions(hu)[0]
    g_bone = jax.jit(jax.grad(bone_fraction))(350.0)
    g_air = jax.jit(jax.grad(air_fraction))(-800.0)
    # sigmoid'(0) / softness = 1 / 40 (the other threshold's term is ~exp(-115)); the float32
    # derivative s (1 - s) / softness is within (SIGMOID_ULPS + 3) u relative of it.
    rel = 4 * (SIGMOID_ULPS + 3) * U32
    assert np.isfinite(g_bone) and g_bone == pytest.approx(1 / (4 * 10.0), rel=rel)
    assert np.isfinite(g_air) and g_air == pytest.approx(-1 / (4 * 10.0), rel=rel)
    # 850 HU from the bone threshold: the derivative is sigmoid'(-85) / 10 ~ 1e-38 (or 0 in float32).
    assert abs(float(jax.jit(jax.grad(bone_fraction))(-500.0))) <= float(_expit64(-85.0)) / 10.0 + 1e-45
    # Through the full density channels, for a whole volume.
    hu = jnp.linspace(-1000.0, 1500.0, 64).reshape(4, 4, 4)
    g = jax.jit(jax.grad(lambda h: density_channels(h).sum()))(hu)
    assert bool(jnp.all(jnp.isfinite(g)))
    g_bone_channel = jax.jit(jax.grad(lambda h: density_channels(h)[2].sum()))(jnp.full((2, 2, 2), 350.0))
    assert bool(jnp.all(g_bone_channel > 0.01))


@pytest.mark.parametrize("method", ["deepdrr", "schneider"])
def test_density_channels_sum_to_density(hu_volume, method):
    ch = density_channels(hu_volume, method=method)
    chex.assert_shape(ch, (3, 6, 5, 4))
    # sum_m rho f_m = rho sum_m f_m: the fractions' sum error (M eps), one rounding per product and
    # M - 1 per sum, all relative to rho.
    rho = np.asarray(hu_to_density(hu_volume, method), np.float64)
    err = np.abs(np.asarray(ch, np.float64).sum(axis=0) - rho)
    assert np.all(err <= (3 * EPS32 + 3 * U32) * rho)
    assert bool(jnp.all(ch >= 0))


def test_jit_vmap_and_dtype(hu_volume):
    f = jax.jit(density_channels, static_argnames=("method", "thresholds", "softness_hu"))
    # jit may fuse differently from eager; both are within the analysed bound of the float64 value.
    jitted = np.asarray(f(hu_volume, method="schneider"), np.float64)
    rho = np.asarray(hu_to_density(hu_volume, "schneider"), np.float64)
    ref = rho[None] * reference_fractions(np.asarray(hu_volume), (-800.0, 350.0), 10.0)
    # rho itself: interpolation is a few roundings (allow 16 u relative), plus the fraction error.
    assert np.all(np.abs(jitted - ref) <= (16 * U32 + U32 + FRACTION_TOL) * rho[None])
    batched = jax.vmap(density_channels)(jnp.stack([hu_volume, hu_volume + 100.0]))
    chex.assert_shape(batched, (2, 3, 6, 5, 4))
    chex.assert_type(density_channels(jnp.zeros((2, 2, 2), jnp.int16)), jnp.float32)
    with jax.enable_x64(True):
        chex.assert_type(density_channels(jnp.zeros((2, 2, 2), jnp.float64)), jnp.float64)


def test_material_config():
    cfg = MaterialConfig()
    assert cfg.names == MATERIAL_NAMES == ("air", "soft_tissue", "bone")
    assert cfg.table_names == ("air", "soft_tissue", "cortical_bone")
    assert cfg.thresholds_hu == (-800.0, 350.0) and cfg.softness_hu == 10.0 and cfg.method == "thresholds"
    assert cfg.metal is None
    assert set(cfg.table_names) <= set(available_materials())
    hash(cfg)  # usable as a static jit argument
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.softness_hu = 1.0
    assert cfg.mass_attenuation([60.0]).shape == (3, 1)
    hu = jnp.array([[[-900.0, 40.0], [700.0, 349.0]]])
    # The default configuration computes exactly what density_channels does (renders unchanged).
    np.testing.assert_array_equal(cfg.density_channels(hu), density_channels(hu))
    with pytest.raises(JaxdrrError, match="jaxdrr.decompose"):
        MaterialConfig.with_metal(method="vnet").density_channels(hu)  # not a per-voxel function of HU
    for bad, match in [
        (dict(table_names=("air", "soft_tissue", "bone_marrow")), "bone_marrow"),
        (dict(thresholds_hu=(350.0, -800.0)), "increase"),
        (dict(thresholds_hu=(-800.0, 350.0, 2500.0)), "3 materials need 2"),
        (dict(softness_hu=-1.0), "softness"),
        (dict(hu_to_density="nope"), "nope"),
        (dict(method="cnn"), "cnn"),
        (dict(names=("air", "air", "bone")), "unique"),
        (dict(names=("air", "bone")), "2 channel names but 3 table names"),
    ]:
        with pytest.raises(JaxdrrError, match=match):
            MaterialConfig(**bad)


def test_metal_preset_and_presets_by_name():
    cfg = MaterialConfig.with_metal()
    assert cfg.names == ("air", "soft_tissue", "bone", "metal")
    assert cfg.table_names == ("air", "soft_tissue", "cortical_bone", "titanium")
    assert cfg.thresholds_hu == (-800.0, 350.0, 2500.0) and cfg.metal == "titanium"
    hash(cfg)
    for metal in METALS:
        assert MaterialConfig.with_metal(metal=metal, method="vnet").table_names[-1] == metal
    with pytest.raises(JaxdrrError, match="unknown metal"):
        MaterialConfig.with_metal(metal="gold")
    assert as_material_config("thresholds") == MaterialConfig()
    assert as_material_config("thresholds+metal") == MaterialConfig.with_metal()
    assert as_material_config("vnet") == MaterialConfig.with_metal(method="vnet")
    assert as_material_config("labels", metal="iron") == MaterialConfig.with_metal(
        metal="iron", method="labels"
    )
    assert as_material_config(cfg, metal="iron").metal == "iron"
    with pytest.raises(JaxdrrError, match="thresholds\\+metal"):
        as_material_config("thresholds", metal="iron")
    with pytest.raises(JaxdrrError, match="unknown materials"):
        as_material_config("watershed")


def test_metal_density_is_nominal_not_from_hu():
    """CT numbers saturate at 3071 HU: the metal channel is fraction x the metal's nominal density."""
    hu = jnp.array([-1000.0, 0.0, 1200.0, 2490.0, 2500.0, 2510.0, 3071.0])
    for metal in ("titanium", "stainless_steel_316l"):
        cfg = MaterialConfig.with_metal(metal=metal)
        ch = np.asarray(cfg.density_channels(hu), np.float64)
        f = np.asarray(threshold_fractions(hu, cfg.thresholds_hu, cfg.softness_hu), np.float64)
        rho_hu = np.asarray(hu_to_density(hu), np.float64)
        # One float32 rounding per product (the factors are the float32 values used).
        np.testing.assert_allclose(ch[3], f[3] * np.float32(density(metal)), rtol=U32, atol=0)
        np.testing.assert_allclose(ch[:3], f[:3] * rho_hu[None], rtol=U32, atol=0)
        # At 3071 HU the voxel is metal: its density is the nominal one (4.54 / 8.06 g/cm^3),
        # not density(3071 HU) = 2.84 g/cm^3.
        assert ch[:, -1].sum() == pytest.approx(density(metal), rel=FRACTION_TOL + U32)
        assert density(metal) > 1.5 * rho_hu[-1]
    # The metal channel's gradient w.r.t. HU flows through its fraction.
    g = jax.grad(lambda h: cfg.density_channels(h)[3].sum())(jnp.array([2500.0]))
    assert float(g[0]) == pytest.approx(
        density("stainless_steel_316l") / 40.0, rel=4 * (SIGMOID_ULPS + 3) * U32
    )
