"""Material decomposition routes behind ``jaxdrr.materials.segment``: thresholds, user label maps
(mapping forms, fallback, validation, TotalSegmentator presets), the V-Net plumbing (with a fake
network standing in for ``jaxdrr.models.vnet``), jit/vmap/grad, ``jaxdrr.decompose`` and the
``jaxdrr segment`` command.

Tolerances (``U32`` = float32 unit roundoff 2**-24), derived as in tests/test_materials.py:
each threshold fraction is within ``FRACTION_TOL`` = (2 (SIGMOID_ULPS + 1) + 1) u of the float64
value, and the fractions of M materials sum to 1 within M eps (only the M - 1 subtractions and
M - 1 additions round; the rounded logistic steps cancel in the telescoping sum).
"""

import json
import sys
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdrr
from jaxdrr.errors import JaxdrrError, LoadError
from jaxdrr.materials import (
    METAL_MATERIAL_NAMES,
    METAL_THRESHOLDS_HU,
    MaterialConfig,
    load_label_mapping,
    read_structures_csv,
    segment,
    threshold_fractions,
    totalsegmentator_mapping,
)

U32 = 2.0**-24
EPS32 = 2.0**-23
SIGMOID_ULPS = 8  # XLA's float32 logistic: a few ulps of 1 (absolute), see tests/test_materials.py
FRACTION_TOL = (2 * (SIGMOID_ULPS + 1) + 1) * U32
SHAPE = (10, 9, 8)


def _expit64(x):
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def reference_fractions(hu, thresholds=METAL_THRESHOLDS_HU, softness=10.0):
    """Float64 NumPy threshold fractions [M, ...]."""
    hu = np.asarray(hu, np.float64)
    t = np.asarray(thresholds, np.float64).reshape((-1,) + (1,) * hu.ndim)
    steps = _expit64((hu[None] - t) / softness)
    ones, zeros = np.ones((1,) + hu.shape), np.zeros((1,) + hu.shape)
    return np.concatenate([ones, steps]) - np.concatenate([steps, zeros])


def _affine(spacing=(1.5, 2.0, 2.5)):
    A = np.diag([*spacing, 1.0])
    A[:3, 3] = [-7.0, 3.0, 11.0]
    return A


@pytest.fixture(scope="module")
def ct():
    """A small HU volume spanning air to metal, with values at and around every threshold."""
    hu = np.array(jax.random.uniform(jax.random.key(3), SHAPE, minval=-1024.0, maxval=3071.0))
    near = np.array([t + d for t in METAL_THRESHOLDS_HU for d in (-20.0, -3.0, 0.0, 4.0, 30.0)])
    hu.reshape(-1)[: near.size] = near
    return jaxdrr.Volume.create(hu, _affine())


def gamma(n):
    return n * U32 / (1.0 - n * U32)


def render_difference_bound(params, density_volume, cfg, P, scale_max):
    """Bound on |-ln T| differences between two float32 renders whose density inputs each lie
    within ``FRACTION_TOL * scale + u * density`` of the same exact densities (two decompositions
    evaluated in different XLA graphs).

    Per channel m, densities differ by at most 2 (FRACTION_TOL + u) scale_max[m] (scale: density(HU)
    or the nominal metal density), so the line integrals by that times the chord (< the box
    diagonal), plus the projector's own rounding in each, gamma(n + 16) L with n samples per ray
    (one per voxel plane). -ln T moves by its float64 slope d(-ln T)/dL_m (the transmitted-spectrum
    mean of mu_m) times that, plus the second-order term (max mu . dL)^2, plus the rounding of the
    spectral sums in each render (gamma(E + 16) relative in numerator and denominator).
    """
    L = np.asarray(jaxdrr.line_integrals(cfg, density_volume, P), np.float64)  # [H, W, M] g/cm^2
    weights = np.asarray(params["spectrum"])
    mu_max = np.asarray(params["mu_rho"], np.float64)[:, weights > 0].max(axis=1)  # cm^2/g
    lo, hi = density_volume.world_bounds()
    chord_cm = np.linalg.norm(hi - lo) / 10.0
    n = max(density_volume.shape) + 2
    dL = 2 * (FRACTION_TOL + U32) * np.asarray(scale_max) * chord_cm + 2 * gamma(n + 16) * L
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, np.float64)), params)
        image = lambda L: jaxdrr.image_from_line_integrals(cfg.replace(noise=None), p64, L, None)
        slope = np.asarray(jax.grad(lambda L: jnp.sum(image(L)))(jnp.asarray(L)))
    return np.sum(np.abs(slope) * dL, -1) + np.sum(mu_max * dL, -1) ** 2 + 4 * gamma(weights.size + 16)


def _assert_partition(fractions: dict, names):
    assert tuple(fractions) == tuple(names)
    stack = np.stack([np.asarray(fractions[n], np.float64) for n in names])
    assert stack.shape == (len(names), *SHAPE)
    assert np.abs(stack.sum(axis=0) - 1.0).max() <= len(names) * EPS32
    assert stack.min() >= 0.0 and stack.max() <= 1.0
    return stack


# --------------------------------------------------------------------------------------------
# Thresholds


def test_thresholds_route_four_materials_against_float64(ct):
    out = segment(ct)  # default: the four-channel set, thresholds
    stack = _assert_partition(out, METAL_MATERIAL_NAMES)
    np.testing.assert_allclose(stack, reference_fractions(ct.data), rtol=0, atol=FRACTION_TOL)
    three = segment(ct, config=MaterialConfig())
    stack3 = _assert_partition(three, ("air", "soft_tissue", "bone"))
    np.testing.assert_allclose(
        stack3, reference_fractions(ct.data, (-800.0, 350.0)), rtol=0, atol=FRACTION_TOL
    )


def test_segment_jit_vmap_grad(ct):
    eager = segment(ct, "thresholds")
    jitted = jax.jit(segment, static_argnames="method")(ct, method="thresholds")
    ref = reference_fractions(ct.data)
    for m, name in enumerate(METAL_MATERIAL_NAMES):
        np.testing.assert_allclose(np.asarray(jitted[name], np.float64), ref[m], rtol=0, atol=FRACTION_TOL)
        np.testing.assert_allclose(np.asarray(eager[name], np.float64), ref[m], rtol=0, atol=FRACTION_TOL)
    # vmap over the HU data (the affine is static metadata).
    batch = jnp.stack([ct.data, ct.data + 150.0])
    bone = jax.vmap(lambda d: segment(ct.replace(data=d))["bone"])(batch)
    chex.assert_shape(bone, (2, *SHAPE))
    for b in range(2):
        np.testing.assert_allclose(
            np.asarray(bone[b], np.float64), reference_fractions(batch[b])[2], rtol=0, atol=FRACTION_TOL
        )
    # grad w.r.t. HU: d bone / d HU = (S_2' - S_3') / softness with S' = S (1 - S). Float32
    # autodiff evaluates S (1 - S) within (SIGMOID_ULPS + 2) u of it, per step, then one division.
    g = jax.jit(jax.grad(lambda d: jnp.sum(segment(ct.replace(data=d))["bone"])))(ct.data)
    s = _expit64(
        (np.asarray(ct.data, np.float64)[None] - np.array([350.0, 2500.0])[:, None, None, None]) / 10.0
    )
    expected = (s[0] * (1 - s[0]) - s[1] * (1 - s[1])) / 10.0
    np.testing.assert_allclose(
        np.asarray(g, np.float64), expected, rtol=0, atol=(2 * (SIGMOID_ULPS + 3) * U32) / 10.0
    )
    assert np.abs(expected).max() > 0.01  # the volume has voxels in the transition bands


# --------------------------------------------------------------------------------------------
# Labels


@pytest.fixture(scope="module")
def label_map(ct):
    labels = np.zeros(SHAPE, np.int32)
    labels[:3] = 25  # bone
    labels[3:5] = 16  # air
    labels[5, :4] = 99  # metal
    labels[6] = 7  # an unmapped organ: thresholds
    labels[7, :2] = 117  # explicitly None: thresholds
    return labels


MAPPING = {25: "bone", 16: "air", 99: "metal", 117: None}


def test_label_route_mapping_and_threshold_fallback(ct, label_map):
    out = segment(ct, "labels", labels=label_map, mapping=MAPPING)
    stack = _assert_partition(out, METAL_MATERIAL_NAMES)
    thresholds = np.asarray(threshold_fractions(ct.data, METAL_THRESHOLDS_HU), np.float64)
    material = {25: 2, 16: 0, 99: 3}
    for label, m in material.items():
        where = label_map == label
        assert where.any()
        np.testing.assert_array_equal(stack[:, where], np.eye(4)[m][:, None] * np.ones((1, where.sum())))
    fallback = ~np.isin(label_map, list(material))
    assert fallback.sum() > 100
    np.testing.assert_array_equal(stack[:, fallback], thresholds[:, fallback])  # same code, same values
    # The other mapping form, a label Volume, float labels and the inferred method agree.
    by_material = {"bone": [25], "air": [16], "metal": [99]}
    shifted = ct.affine.copy()
    shifted[:3, 3] += 2e-4  # within the 1e-3 mm tolerance
    label_volume = jaxdrr.Volume.create(label_map.astype(np.float32), shifted)
    for kw in (
        dict(labels=label_map, mapping=by_material),
        dict(labels=label_volume, mapping=MAPPING),
        dict(labels=label_map.astype(np.float32), mapping={"25": "bone", "16": "air", "99": "metal"}),
    ):
        again = segment(ct, **kw)
        for name in METAL_MATERIAL_NAMES:
            np.testing.assert_array_equal(again[name], out[name])


def test_label_route_jit_and_grad(ct, label_map):
    f = jax.jit(lambda v, lab: segment(v, "labels", labels=lab, mapping=MAPPING)["bone"])
    # jit fuses differently from eager (XLA versions and CPUs differ), so both are compared with the
    # float64 answer: one-hot where a label is mapped, the float64 threshold fraction elsewhere, within
    # the analysed bound of the float32 logistic (FRACTION_TOL).
    mapped = np.isin(label_map, [25, 16, 99])
    expected = np.where(mapped, (label_map == 25).astype(np.float64), reference_fractions(ct.data)[2])
    for got in (f(ct, jnp.asarray(label_map)), segment(ct, labels=label_map, mapping=MAPPING)["bone"]):
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=0, atol=FRACTION_TOL)
        np.testing.assert_array_equal(np.asarray(got)[mapped], expected[mapped])  # one-hot is exact
    g = jax.grad(lambda d: jnp.sum(segment(ct.replace(data=d), labels=label_map, mapping=MAPPING)["bone"]))(
        ct.data
    )
    g = np.asarray(g)
    assert np.all(g[mapped] == 0.0)  # labelled voxels do not depend on HU
    assert np.abs(g[~mapped]).max() > 0.01  # the threshold fallback does


def test_label_route_errors(ct, label_map):
    with pytest.raises(JaxdrrError, match="differs from the CT's by"):
        segment(
            ct, labels=jaxdrr.Volume.create(label_map, ct.affine + np.diag([0, 0, 0.01, 0])), mapping=MAPPING
        )
    with pytest.raises(JaxdrrError, match="shape"):
        segment(ct, labels=label_map[:-1], mapping=MAPPING)
    with pytest.raises(JaxdrrError, match="integer"):
        segment(ct, labels=label_map + 0.5, mapping=MAPPING)
    with pytest.raises(JaxdrrError, match="unknown material 'cartilage'"):
        segment(ct, labels=label_map, mapping={25: "cartilage"})
    with pytest.raises(JaxdrrError, match="label 0 is background"):
        segment(ct, labels=label_map, mapping={0: "air"})
    with pytest.raises(JaxdrrError, match="both 'bone' and 'air'"):
        segment(ct, labels=label_map, mapping={"bone": [25], "air": [25]})
    with pytest.raises(JaxdrrError, match="needs a label map"):
        segment(ct, "labels", mapping=MAPPING)
    with pytest.raises(JaxdrrError, match="use method 'labels'"):
        segment(ct, "thresholds", labels=label_map, mapping=MAPPING)
    with pytest.raises(JaxdrrError, match="unknown decomposition method"):
        segment(ct, "watershed")
    with pytest.raises(JaxdrrError, match="kind='density'"):
        segment(jaxdrr.decompose(None, ct))


def test_load_label_mapping_and_structures_csv(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"bone": [25, 26], "metal": [99], "air": [16]}))
    assert load_label_mapping(path) == {25: "bone", 26: "bone", 99: "metal", 16: "air"}
    path.write_text(json.dumps({"25": "bone", "10": None}))
    assert load_label_mapping(path) == {25: "bone"}
    path.write_text("{not json")
    with pytest.raises(LoadError, match="map.json"):
        load_label_mapping(path)
    path.write_text(json.dumps({"bone": [25, "x"]}))
    with pytest.raises(JaxdrrError, match="'x'"):
        load_label_mapping(path)
    with pytest.raises(FileNotFoundError):
        load_label_mapping(tmp_path / "missing.json")
    csv = tmp_path / "structures.csv"
    csv.write_text("group,original_idx,structure,id\norgans,1,spleen,1\nbones,25,sacrum,25\n")
    assert read_structures_csv(csv) == {1: "spleen", 25: "sacrum"}
    csv.write_text("name,label\nspleen,1\n")
    with pytest.raises(LoadError, match="structure"):
        read_structures_csv(csv)


def test_totalsegmentator_mapping_by_pattern():
    names = {
        1: "spleen",
        5: "liver",
        10: "lung_upper_lobe_left",
        14: "lung_lower_lobe_right",
        16: "trachea",
        20: "colon",
        25: "sacrum",
        27: "vertebrae_L5",
        50: "vertebrae_C1",
        69: "humerus_left",
        71: "scapula_left",
        73: "clavicula_right",
        75: "femur_left",
        77: "hip_right",
        91: "skull",
        92: "rib_left_1",
        115: "rib_right_12",
        116: "sternum",
        117: "costal_cartilages",
        118: "carpal",
        119: "patella",
        120: "tibia",
        121: "fibula",
        122: "ulna",
        123: "radius",
        124: "intervertebral_discs",
        125: "hip_implant",
        126: "lung_trachea_bronchia",
        127: "spinal_cord",
    }
    got = totalsegmentator_mapping(names)
    bone = {25, 27, 50, 69, 71, 73, 75, 77, 91, 92, 115, 116, 118, 119, 120, 121, 122, 123}
    assert {i for i, m in got.items() if m == "bone"} == bone
    assert {i for i, m in got.items() if m == "air"} == {16, 126}
    assert {i for i, m in got.items() if m == "metal"} == {125}
    assert {i for i, m in got.items() if m == "soft_tissue"} == {117}
    assert all(got[i] is None for i in (1, 5, 10, 14, 20, 124, 127))  # left to the thresholds


# --------------------------------------------------------------------------------------------
# V-Net plumbing (a fake network: the real one is tested with jaxdrr.models.vnet)


class FakeVNetConfig:
    classes = ("metal", "bone", "air", "soft_tissue")  # not the channel order: picked by name

    def __hash__(self):
        return 0


@pytest.fixture
def fake_vnet(monkeypatch):
    """Replaces jaxdrr.models.vnet by a stand-in: threshold fractions of gain * HU in the order of
    FakeVNetConfig.classes, recording the spacing it is given."""
    calls = []
    order = [METAL_MATERIAL_NAMES.index(c) for c in FakeVNetConfig.classes]

    def load_pretrained():
        return FakeVNetConfig(), {"gain": jnp.asarray(1.0, jnp.float32)}

    def predict_fractions(weights, hu, spacing_mm, *, config):
        assert isinstance(config, FakeVNetConfig) and hu.ndim == 3
        calls.append(tuple(spacing_mm))
        return threshold_fractions(hu * weights["gain"], METAL_THRESHOLDS_HU)[jnp.asarray(order)]

    module = types.ModuleType("jaxdrr.models.vnet")
    module.load_pretrained = load_pretrained
    module.predict_fractions = predict_fractions
    monkeypatch.setitem(sys.modules, "jaxdrr.models.vnet", module)
    return calls


def test_vnet_route_maps_classes_by_name(ct, fake_vnet):
    out = segment(ct, "vnet")
    assert fake_vnet[-1] == tuple(float(s) for s in ct.spacing) == (1.5, 2.0, 2.5)
    thresholds = segment(ct, "thresholds")
    for name in METAL_MATERIAL_NAMES:
        np.testing.assert_array_equal(out[name], thresholds[name])
    # Weights: given directly, or in a render-params pytree, they are used (gain 0.5 halves HU).
    half = segment(ct, "vnet", params={"gain": jnp.asarray(0.5)})
    np.testing.assert_array_equal(
        np.stack([half[n] for n in METAL_MATERIAL_NAMES]),
        threshold_fractions(ct.data * 0.5, METAL_THRESHOLDS_HU),
    )
    params = jaxdrr.default_params(jaxdrr.RenderConfig(materials="vnet"))
    assert set(params) == {"energies", "spectrum", "mu_rho", "vnet"} and params["mu_rho"].shape[0] == 4
    with pytest.raises(JaxdrrError, match="no 'vnet' entry"):
        segment(ct, "vnet", params=jaxdrr.default_params())
    # Channels the network does not predict, or classes without a channel: an error, not a guess.
    with pytest.raises(JaxdrrError, match="lack \\['metal'\\]"):
        segment(ct, config=MaterialConfig(method="vnet"))
    # jit, vmap and grad (w.r.t. HU and the weights) through the network route.
    f = jax.jit(lambda w, d: segment(ct.replace(data=d), "vnet", params=w)["bone"])
    w = {"gain": jnp.asarray(1.0)}
    # jit vs eager: both within the float32 logistic's bound of the float64 fraction (not bit-equal).
    np.testing.assert_allclose(
        np.asarray(f(w, ct.data), np.float64), reference_fractions(ct.data)[2], rtol=0, atol=FRACTION_TOL
    )
    chex.assert_shape(jax.vmap(f, in_axes=(None, 0))(w, jnp.stack([ct.data, ct.data])), (2, *SHAPE))
    gw, gd = jax.grad(lambda w, d: jnp.sum(f(w, d)), argnums=(0, 1))(w, ct.data)
    assert np.isfinite(float(gw["gain"])) and float(gw["gain"]) != 0.0
    assert np.abs(np.asarray(gd)).max() > 0.01


def test_vnet_render_and_decompose(fake_vnet):
    """A render with materials='vnet' runs the network inside (jit/vmap/grad); decompose() runs it
    once, and rendering its density volume gives the same image."""
    vol = jaxdrr.phantom(shape=(24, 20, 16))
    g = jaxdrr.geometry.CArmGeometry(sdd_mm=1020, sid_mm=700, height=8, width=10, pixel_size_mm=30.0)
    cfg = jaxdrr.RenderConfig(height=8, width=10, materials="vnet")
    params = jaxdrr.default_params(cfg)
    render = jaxdrr.make_renderer(cfg)
    Ps = jnp.stack([jaxdrr.geometry.carm(a, 0.0, geometry=g) for a in (0.0, 40.0)])
    images = jax.jit(jax.vmap(render, in_axes=(None, None, 0, None)))(params, vol, Ps, None)
    dens = jaxdrr.decompose(params, vol, cfg.materials)
    assert dens.kind == "density" and dens.channel_names == METAL_MATERIAL_NAMES
    again = jax.jit(jax.vmap(render, in_axes=(None, None, 0, None)))(params, dens, Ps, None)
    # The same as rendering with the thresholds (the fake network is the thresholds).
    metal = jaxdrr.RenderConfig(height=8, width=10, materials="thresholds+metal")
    ref = jax.jit(jax.vmap(jaxdrr.make_renderer(metal), in_axes=(None, None, 0, None)))(params, vol, Ps, None)
    scale_max = max(
        float(jnp.max(jaxdrr.materials.hu_to_density(vol.data))), jaxdrr.physics.density("titanium")
    )
    for i, P in enumerate(Ps):
        bound = render_difference_bound(params, dens, cfg, P, scale_max)
        assert np.all(np.abs(np.asarray(again[i], np.float64) - np.asarray(images[i], np.float64)) <= bound)
        assert np.all(np.abs(np.asarray(ref[i], np.float64) - np.asarray(images[i], np.float64)) <= bound)
    assert float(jnp.max(images)) > 1.0
    grad = jax.grad(lambda p: jnp.sum(render(p, vol, Ps[1], None)))(params)
    assert float(jnp.abs(grad["vnet"]["gain"])) > 0


def test_real_vnet_module_contract(ct, monkeypatch):
    """The route against the real jaxdrr.models.vnet (a tiny randomly initialised network, so the
    test needs no trained weights): the (config, weights) / predict_fractions interface, class
    names and the sum-to-one partition (jit/vmap/grad through the route are tested with the fake
    above; through the network itself in the network's own tests)."""
    from jaxdrr.models import vnet

    config = vnet.VNetConfig(
        widths=(4, 8), convs_per_stage=(1, 1), groups=2, patch=16, overlap=4, spacing_mm=4.0
    )
    rng = np.random.default_rng(0)  # random weights of the right shapes (nnx init is slow on a busy CPU)
    weights = jax.tree_util.tree_map(
        lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), jnp.float32),
        vnet.init_weights_shapes(config),
    )
    monkeypatch.setattr(vnet, "load_pretrained", lambda *a, **k: (config, weights))
    assert tuple(config.classes) == METAL_MATERIAL_NAMES
    # predict_fractions renormalises: M divisions and M - 1 additions round, (2M - 1) u <= M eps.
    _assert_partition(segment(ct, "vnet"), METAL_MATERIAL_NAMES)


# --------------------------------------------------------------------------------------------
# decompose() and the labels route in the renderer


def test_decompose_labels_and_render_errors(ct, label_map):
    cfg = MaterialConfig.with_metal(metal="iron", method="labels")
    dens = jaxdrr.decompose(None, ct, cfg, labels=label_map, mapping=MAPPING)
    assert dens.kind == "density" and dens.channel_names == METAL_MATERIAL_NAMES
    assert dens.affine_key == ct.affine_key
    metal = label_map == 99
    # Labelled metal: the nominal density of iron (7.874 g/cm^3), whatever the HU.
    np.testing.assert_allclose(np.asarray(dens.data[3])[metal], jaxdrr.physics.density("iron"), rtol=U32)
    np.testing.assert_array_equal(np.asarray(dens.data[:3])[:, metal], 0.0)
    render_cfg = jaxdrr.RenderConfig(height=4, width=4, materials=cfg)
    P = jaxdrr.geometry.carm(0, 0, isocenter=ct.center)
    with pytest.raises(JaxdrrError, match="jaxdrr.decompose"):
        jaxdrr.make_renderer(render_cfg)(jaxdrr.default_params(render_cfg), ct, P, None)
    image = jaxdrr.make_renderer(render_cfg)(jaxdrr.default_params(render_cfg), dens, P, None)
    assert np.all(np.isfinite(np.asarray(image)))
    # decompose() accepts a preset name or a RenderConfig; a density volume passes through.
    assert jaxdrr.decompose(None, ct, "thresholds+metal").data.shape == (4, *SHAPE)
    assert jaxdrr.decompose(None, ct, jaxdrr.RenderConfig()).channel_names == ("air", "soft_tissue", "bone")
    assert jaxdrr.decompose(None, dens, cfg) is dens
    with pytest.raises(JaxdrrError, match="4 channels"):
        jaxdrr.decompose(None, dens, MaterialConfig())


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_segment_writes_readable_nifti(tmp_path, capsys):
    import nibabel as nib

    from jaxdrr.cli import main

    vol = jaxdrr.phantom(shape=(20, 16, 12))
    out = tmp_path / "seg" / "materials.nii.gz"
    args = ["segment", "phantom", "--phantom", "analytic", "--phantom-size", "20", "16", "12"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "segmented into air, soft_tissue, bone, metal (thresholds)" in printed and "wrote" in printed
    img = nib.load(str(out))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    assert data.shape == (20, 16, 12, 4)
    np.testing.assert_allclose(img.affine, vol.affine, rtol=0, atol=1e-4)  # stored as float32 sform
    assert "air,soft_tissue,bone,metal" in img.header["descrip"].item().decode()
    # Stored as uint8 x 1/255 (largest-remainder rounding): the stored units sum to 255 exactly,
    # and each fraction is within one unit of the computed one.
    stored = np.asarray(img.dataobj.get_unscaled())
    assert stored.dtype == np.uint8 and np.all(stored.astype(int).sum(-1) == 255)
    assert np.abs(data.astype(np.float64).sum(-1) - 1.0).max() <= 4 * EPS32
    ref = np.moveaxis(reference_fractions(vol.data), 0, -1)
    np.testing.assert_allclose(data, ref, rtol=0, atol=FRACTION_TOL + 1 / 255)
    labels = np.asarray(nib.load(str(tmp_path / "seg" / "materials_labels.nii.gz")).dataobj)
    np.testing.assert_array_equal(labels, np.argmax(data, axis=-1))
    sidecar = json.loads((tmp_path / "seg" / "materials.json").read_text())
    assert sidecar["materials"] == list(METAL_MATERIAL_NAMES) and sidecar["method"] == "thresholds"
    assert sidecar["label_values"]["3"] == "metal" and sidecar["metal"] == "titanium"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_segment_and_render_with_a_label_map(tmp_path, capsys):
    import nibabel as nib

    from jaxdrr.cli import main

    vol = jaxdrr.phantom(shape=(20, 16, 12))
    labels = np.zeros(vol.shape, np.int16)
    labels[8:12, 6:10, 4:8] = 99
    seg = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, vol.affine), str(seg))
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"metal": [99]}))
    out = tmp_path / "m.nii"
    args = [
        "segment",
        "phantom",
        "--phantom",
        "analytic",
        "--phantom-size",
        "20",
        "16",
        "12",
        "--out",
        str(out),
    ]
    assert main([*args, "--labels", str(seg), "--mapping", str(mapping), "--metal", "iron"]) == 0
    data = np.asarray(nib.load(str(out)).get_fdata(dtype=np.float32))
    # uint8 x float32(1/255): 255 units read back as 1 within the float32 rounding of the scale.
    expected = np.eye(4)[3][None].repeat((labels == 99).sum(), 0)
    np.testing.assert_allclose(data[labels == 99], expected, rtol=0, atol=4 * EPS32)
    assert json.loads((tmp_path / "m.json").read_text())["metal"] == "iron"
    assert (tmp_path / "m_labels.nii").exists()
    # Render: the label map is decomposed once; metal darkens the image.
    small = ["--phantom", "analytic", "--phantom-size", "20", "16", "12"]
    small += ["--height", "12", "--width", "16", "--pixel-size", "20"]
    render = ["render", *small, "--no-noise", "--save-npz"]
    assert main([*render, str(tmp_path / "a.npz"), "--out", str(tmp_path / "a.png")]) == 0
    capsys.readouterr()
    lab = ["--materials", f"labels:{seg}", "--mapping", str(mapping)]
    assert main([*render, str(tmp_path / "b.npz"), "--out", str(tmp_path / "b.png"), *lab]) == 0
    assert "decomposed the CT into air, soft_tissue, bone, metal (labels" in capsys.readouterr().out
    a, b = jaxdrr.load_npz(tmp_path / "a.npz"), jaxdrr.load_npz(tmp_path / "b.npz")
    assert b["materials"] == f"labels:{seg}" and b["image"].max() > a["image"].max() + 1.0
    # Errors are reported, not raised.
    bad = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(labels, vol.affine + np.diag([0, 0, 0.5, 0])), str(bad))
    assert main([*args, "--labels", str(bad), "--mapping", str(mapping)]) == 2
    assert "differs from the CT's" in capsys.readouterr().err
    assert main([*args, "--labels", str(seg)]) == 2
    assert "--mapping" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "m.png")]) == 2
    assert "NIfTI" in capsys.readouterr().err
