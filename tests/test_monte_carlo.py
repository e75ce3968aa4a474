"""Monte Carlo transport: tables vs xraylib, sampled angular distributions vs xraylib's differential
cross sections, MC primary vs the analytic renderer, determinism / jit / vmap, bad input.

Statistical tests use fixed keys and a stated false-alarm rate ALPHA per test: a chi-square (or
z-score) threshold at the 1 - ALPHA quantile, so a correct engine fails a given test with
probability ALPHA on a fresh key (and never on the fixed key, once it passes).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The independent references use xraylib, which the "test" extra installs: a missing xraylib is a
# failed test run, not a skip.
import xraylib  # noqa: E402
import xraylib_np  # noqa: E402
from scipy import stats

import jaxdrr
from jaxdrr.errors import GeometryError, JaxdrrError, VolumeError
from jaxdrr.physics import Composition, EnergyRangeError, UnknownMaterialError
from jaxdrr.scatter import MonteCarloConfig, interactions, monte_carlo, transport

ALPHA = 1e-3  # false-alarm rate of each statistical test


def _edge(z, shell):
    try:
        return xraylib.EdgeEnergy(int(z), shell)
    except ValueError:  # no such shell for a light element
        return np.inf


def _zs_ws(name):
    comp = jaxdrr.physics.composition(name)
    zs = np.array([xraylib.SymbolToAtomicNumber(s) for s in comp.mass_fractions])
    ws = np.array(list(comp.mass_fractions.values()))
    return zs, ws / ws.sum()


# ---------------------------------------------------------------------------------------------
# Tables against xraylib (and the renderer's xraydb table)


@pytest.mark.parametrize("name", ["water", "cortical_bone", "iodine", "stainless_steel_316l"])
def test_cross_sections_match_xraylib(name):
    tab = interactions.tables_for([name])
    rng = np.random.default_rng(0)
    e = np.sort(rng.uniform(1.0, 150.0, 200))
    photo, compt, rayl = (v[0] for v in tab.cross_sections(e))
    zs, ws = _zs_ws(name)
    ref_c = ws @ xraylib_np.CS_Compt(zs, e)
    ref_r = ws @ xraylib_np.CS_Rayl(zs, e)
    ref_p = ws @ xraylib_np.CS_Photo(zs, e)
    np.testing.assert_allclose(compt, ref_c, rtol=2e-4)
    np.testing.assert_allclose(rayl, ref_r, rtol=2e-4)
    # Photoelectric: an edge is smeared over one grid interval (0.25 % in energy); elsewhere 2e-4.
    edges = np.array([_edge(z, s) for z in zs for s in range(9)])  # K, L1-L3, M1-M5
    far = np.all(np.abs(e[:, None] / edges[None, :] - 1) > 0.003, axis=1)
    np.testing.assert_allclose(photo[far], ref_p[far], rtol=2e-4)


def test_total_attenuation_matches_renderer_table():
    """xraylib (MC) and xraydb (renderer) totals agree at the spectrum's integer-keV bins."""
    names = ("air", "water", "soft_tissue", "cortical_bone")
    e = np.arange(10.0, 151.0)
    tab = interactions.tables_for(names)
    mc = sum(tab.cross_sections(e))
    ref = jaxdrr.physics.mass_attenuation(names, e)
    np.testing.assert_allclose(mc, ref, rtol=2e-3)


def test_scattering_functions_match_xraylib():
    tab = interactions.tables_for(["water"])
    zs, ws = _zs_ws("water")
    atoms = ws / np.array([xraylib.AtomicWeight(int(z)) for z in zs])
    x = np.array([0.01, 0.1, 0.35, 1.0, 3.0, 8.0])
    s_ref = atoms @ xraylib_np.SF_Compt(zs, x) / (atoms @ zs)
    f2_ref = atoms @ xraylib_np.FF_Rayl(zs, x) ** 2 / (atoms @ zs**2)
    np.testing.assert_allclose(
        np.interp(x, tab.x, tab.s_norm[0]), s_ref, rtol=2e-3, atol=1e-4
    )  # S ~ x^2 near 0: linear interpolation
    np.testing.assert_allclose(np.interp(x, tab.x, tab.f2_norm[0]), f2_ref, rtol=3e-3, atol=1e-7)


def test_custom_composition_computed_at_run_time():
    water_like = Composition("my_water", 1.0, {"H": 0.111898, "O": 0.888102}, "test")
    tab = interactions.tables_for([water_like, "water"])
    np.testing.assert_allclose(tab.mu_compton[0], tab.mu_compton[1], rtol=1e-12)
    np.testing.assert_allclose(tab.s_norm[0], tab.s_norm[1], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Angular distributions of single interactions vs xraylib's differential cross sections


def _sample_cos(process, name, energy, n, key):
    tables = transport.device_tables(interactions.tables_for([name]))
    mat = jnp.zeros((n,), jnp.int32)
    e = jnp.full((n,), energy, jnp.float32)
    u = jax.random.uniform(key, (n, 3), minval=1e-12)
    if process == "compton":
        acc, cos, _ = jax.jit(transport.sample_compton)(tables, mat, e, u)
    else:
        acc, cos = jax.jit(transport.sample_rayleigh)(tables, mat, e, u[:, :2])
    return np.asarray(cos)[np.asarray(acc)]


def _expected_bins(process, name, energy, nbins):
    zs, ws = _zs_ws(name)
    theta = np.linspace(0.0, np.pi, 20001)[1:]  # xraylib's SF_Compt refuses x < 1e-3 at theta = 0
    fn = xraylib_np.DCS_Compt if process == "compton" else xraylib_np.DCS_Rayl
    dcs = np.einsum("z,zet->t", ws, fn(zs, np.array([energy]), theta))
    pdf_mu = 2 * np.pi * dcs  # per unit cos(theta)
    mu = np.cos(theta)[::-1]
    pdf_mu = pdf_mu[::-1]
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf_mu[1:] + pdf_mu[:-1]) * np.diff(mu))])
    cdf /= cdf[-1]
    edges = np.interp(np.linspace(0, 1, nbins + 1), cdf, mu)  # equal-probability bins
    edges[0], edges[-1] = -1.0, 1.0
    return edges


@pytest.mark.parametrize("process", ["compton", "rayleigh"])
@pytest.mark.parametrize("name,energy", [("water", 20.0), ("water", 60.0), ("cortical_bone", 100.0)])
def test_angular_distribution_chi_square(process, name, energy):
    nbins = 40
    cos = _sample_cos(process, name, energy, 400_000, jax.random.key(7))
    edges = _expected_bins(process, name, energy, nbins)
    counts, _ = np.histogram(cos, edges)
    expected = np.full(nbins, cos.size / nbins)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    limit = stats.chi2.isf(ALPHA, nbins - 1)
    assert chi2 < limit, f"{process} {name} {energy} keV: chi2 {chi2:.1f} > {limit:.1f} ({nbins - 1} dof)"


def test_compton_energy_follows_compton_formula():
    tables = transport.device_tables(interactions.tables_for(["water"]))
    n = 1000
    e = jnp.full((n,), 60.0)
    acc, cos, tau = transport.sample_compton(
        tables, jnp.zeros((n,), jnp.int32), e, jax.random.uniform(jax.random.key(1), (n, 3))
    )
    ref = np.asarray([xraylib.ComptonEnergy(60.0, float(np.arccos(c))) for c in np.asarray(cos)])
    np.testing.assert_allclose(60.0 * np.asarray(tau), ref, rtol=2e-4)


def test_rotate_preserves_angle():
    key = jax.random.key(3)
    d = jax.random.normal(key, (500, 3))
    d = d.at[:5].set(jnp.array([0.0, 0.0, 1.0]))
    d = d.at[5:10].set(jnp.array([0.0, 0.0, -1.0]))
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    cos = jax.random.uniform(jax.random.key(4), (500,), minval=-1, maxval=1)
    phi = jax.random.uniform(jax.random.key(5), (500,), maxval=2 * np.pi)
    out = transport.rotate(d, cos, phi)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(np.asarray(out) * np.asarray(d), -1), cos, atol=2e-5)


# ---------------------------------------------------------------------------------------------
# MC primary against the analytic renderer


def _layered_volume():
    """Air / soft tissue / cortical bone layers perpendicular to the beam, wider than the field.

    Layer interfaces perpendicular to the rays make nearest-voxel (MC) and trilinear (renderer)
    integrals identical, so any difference is the MC's own error.
    """
    n_xy, n_z, sp = 40, 24, 8.0
    dens = np.zeros((3, n_xy, n_xy, n_z), np.float32)
    dens[1, :, :, 2:10] = 1.06
    dens[2, :, :, 10:13] = 1.92
    dens[0, :, :, 13:15] = 0.001205
    dens[1, :, :, 15:22] = 1.0
    aff = np.diag([sp, sp, sp, 1.0])
    aff[:3, 3] = [-(n_xy - 1) * sp / 2, -(n_xy - 1) * sp / 2, 600.0]
    return jaxdrr.Volume.create(dens, aff, kind="density", channel_names=("air", "soft_tissue", "bone"))


def _pinhole(height, width, pixel_mm, sdd_mm):
    K = np.array(
        [[sdd_mm / pixel_mm, 0, (width - 1) / 2], [0, sdd_mm / pixel_mm, (height - 1) / 2], [0, 0, 1]]
    )
    return K @ np.concatenate([np.eye(3), np.zeros((3, 1))], 1)


H_PRIM, W_PRIM, N_PRIM = 12, 12, 400_000


@pytest.fixture(scope="module")
def primary_run():
    vol = _layered_volume()
    P = _pinhole(H_PRIM, W_PRIM, 16.0, 1000.0)
    cfg = MonteCarloConfig(sdd_mm=1000.0, lanes=1 << 15, detector="pc")
    out = monte_carlo(vol, P, H_PRIM, W_PRIM, photons=N_PRIM, key=jax.random.key(11), config=cfg)
    return vol, P, jax.tree_util.tree_map(np.asarray, out)


def test_primary_matches_renderer_chi_square(primary_run):
    vol, P, out = primary_run
    n0 = MonteCarloConfig().photons_per_pixel
    rc = jaxdrr.RenderConfig(
        height=H_PRIM, width=W_PRIM, output="intensity", detector="pc", photons_per_pixel=n0
    )
    ref = np.asarray(jaxdrr.render(vol, P, config=rc))
    # Photon-counting tallies of unit-weight-ish hits: Var(image) = E[image] * N0 * H * W / N
    # (the cos^3 weights vary by < 3 % over this detector; their square is folded into the mean).
    var = ref * n0 * H_PRIM * W_PRIM / N_PRIM
    z = (out["primary_pc"] - ref) / np.sqrt(var)
    chi2 = float(np.sum(z**2))
    limit = stats.chi2.isf(ALPHA, z.size)
    assert chi2 < limit, (
        f"primary chi2 {chi2:.1f} > {limit:.1f} for {z.size} pixels; max |z| {np.abs(z).max():.2f}"
    )
    total_z = float(np.sum(out["primary_pc"] - ref) / np.sqrt(np.sum(var)))
    assert abs(total_z) < stats.norm.isf(ALPHA / 2), total_z


def test_energy_integrating_primary_matches_renderer(primary_run):
    vol, P, out = primary_run
    rc = jaxdrr.RenderConfig(height=H_PRIM, width=W_PRIM, output="intensity", detector="ei")
    ref = np.asarray(jaxdrr.render(vol, P, config=rc))
    # EI relative error per pixel is about that of the counts: 1 / sqrt(counts).
    counts = out["primary_pc"] / MonteCarloConfig().photons_per_pixel * N_PRIM / (H_PRIM * W_PRIM)
    rel = np.sum(out["primary_ei"]) / np.sum(ref) - 1
    sigma = 1.0 / np.sqrt(np.sum(counts))
    assert abs(rel) < stats.norm.isf(ALPHA / 2) * sigma * 1.2, (rel, sigma)


def test_diagnostics_and_scatter_present(primary_run):
    _, _, out = primary_run
    assert int(out["majorant_violations"]) == 0
    assert int(out["truncated"]) == 0
    assert int(out["photons"]) == N_PRIM
    np.testing.assert_allclose(
        out["scatter_pc"],
        out["single_compton_pc"] + out["single_rayleigh_pc"] + out["multiple_pc"],
        rtol=1e-6,
    )
    assert out["single_compton_pc"].sum() > out["single_rayleigh_pc"].sum() > 0
    assert out["deposited_energy_keV"].shape == _layered_volume().shape
    # Energy deposited only where there is matter; the bone layer absorbs most per voxel.
    dep = out["deposited_energy_keV"].sum(axis=(0, 1))
    assert dep[:2].sum() == 0 and dep[22:].sum() == 0
    assert dep[10:13].mean() > dep[15:22].mean()


# ---------------------------------------------------------------------------------------------
# Determinism, jit, vmap


def _tiny():
    dens = np.ones((1, 6, 6, 6), np.float32)
    aff = np.diag([10.0, 10.0, 10.0, 1.0])
    aff[:3, 3] = [-25.0, -25.0, 500.0]
    return jaxdrr.Volume.create(dens, aff, kind="density", channel_names=("water",)), _pinhole(
        4, 4, 40.0, 1000.0
    )


def test_same_key_same_result_jit_and_vmap():
    vol, P = _tiny()
    cfg = MonteCarloConfig(sdd_mm=1000.0, lanes=512)

    def run(key):
        return monte_carlo(vol, P, 4, 4, photons=3000, key=key, config=cfg, materials=["water"])

    jrun = jax.jit(run)
    a = run(jax.random.key(5))  # eager
    b = jrun(jax.random.key(5))
    c = jrun(jax.random.key(6))
    keys = jax.random.split(jax.random.key(0), 2)
    batched = jax.jit(jax.vmap(run))(keys)
    np.testing.assert_allclose(np.asarray(a["scatter"]), np.asarray(b["scatter"]), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(a["deposited_energy_keV"]), np.asarray(b["deposited_energy_keV"]), rtol=1e-5
    )
    assert not np.allclose(np.asarray(a["scatter"]), np.asarray(c["scatter"]))
    single = jrun(keys[1])
    np.testing.assert_allclose(np.asarray(batched["primary"][1]), np.asarray(single["primary"]), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(batched["deposited_energy_keV"][1]), np.asarray(single["deposited_energy_keV"]), rtol=1e-5
    )
    assert a["primary"].dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_errors():
    vol, P = _tiny()
    cfg = MonteCarloConfig(sdd_mm=1000.0, lanes=64)
    kw = dict(key=jax.random.key(0), config=cfg, materials=["water"])
    with pytest.raises(JaxdrrError, match="photons"):
        monte_carlo(vol, P, 4, 4, photons=0, **kw)
    neg = jaxdrr.Volume.create(-np.ones((1, 6, 6, 6)), vol.affine, kind="density")
    with pytest.raises(VolumeError, match="negative density"):
        monte_carlo(neg, P, 4, 4, photons=10, **kw)
    with pytest.raises(UnknownMaterialError, match="unobtainium"):
        monte_carlo(vol, P, 4, 4, photons=10, key=jax.random.key(0), config=cfg, materials=["unobtainium"])
    with pytest.raises(VolumeError, match="channels"):
        monte_carlo(vol, P, 4, 4, photons=10, key=jax.random.key(0), config=cfg, materials=["water", "air"])
    params = {"energies": jnp.array([0.5, 60.0]), "spectrum": jnp.array([0.5, 0.5])}
    with pytest.raises(EnergyRangeError, match="outside"):
        monte_carlo(vol, P, 4, 4, photons=10, params=params, **kw)
    params = {"energies": jnp.array([60.0, 200.0]), "spectrum": jnp.array([0.5, 0.5])}
    with pytest.raises(EnergyRangeError, match="outside"):
        monte_carlo(vol, P, 4, 4, photons=10, params=params, **kw)
    # The detector plane cuts through the volume: the source cannot image it.
    with pytest.raises(GeometryError, match="detector plane"):
        monte_carlo(
            vol,
            P,
            4,
            4,
            photons=10,
            key=jax.random.key(0),
            config=MonteCarloConfig(sdd_mm=520.0),
            materials=["water"],
        )
    with pytest.raises(GeometryError):
        monte_carlo(vol, np.zeros((3, 4)), 4, 4, photons=10, **kw)
    with pytest.raises(GeometryError):
        monte_carlo(vol, P, 0, 4, photons=10, **kw)
    with pytest.raises(JaxdrrError):
        MonteCarloConfig(sdd_mm=-1.0)
    with pytest.raises(JaxdrrError):
        MonteCarloConfig(cutoff_keV=0.1)


# ---------------------------------------------------------------------------------------------
# First-order scatter of a water slab vs an independent deterministic single-scatter integral


def test_slab_single_scatter_matches_numpy_integral():
    """10 cm water slab, 30x30 cm field at 100 cm, 5 cm air gap, IPEM 120 kVp.

    The MC's single-Compton and single-Rayleigh images over the central 10x10 cm must match the
    NumPy integral (tests/reference/single_scatter.py, xraylib DCS) within a 1 % allowance for
    table interpolation plus the MC's statistical error at false-alarm rate ALPHA.
    """
    from reference.single_scatter import slab_single_scatter

    thickness, z1, hd, n = 100.0, 950.0, 15, 1_500_000
    z0 = z1 - thickness
    aff = np.diag([25.0, 25.0, thickness / 2, 1.0])
    aff[:3, 3] = [-187.5, -187.5, z0 + thickness / 4]
    vol = jaxdrr.Volume.create(
        np.ones((1, 16, 16, 2), np.float32), aff, kind="density", channel_names=("water",)
    )
    pix = 300.0 / hd
    P = _pinhole(hd, hd, pix, 1000.0)
    params = jaxdrr.default_params()
    cfg = MonteCarloConfig(sdd_mm=1000.0, lanes=1 << 15)
    out = monte_carlo(vol, P, hd, hd, photons=n, key=jax.random.key(21), config=cfg, materials=["water"])
    out = jax.tree_util.tree_map(np.asarray, out)
    n0 = cfg.photons_per_pixel
    sl = slice(hd // 2 - 2, hd // 2 + 3)
    idx = np.arange(hd)[sl]
    pts = np.array([[(j - (hd - 1) / 2) * pix, (i - (hd - 1) / 2) * pix] for i in idx for j in idx])
    ref = slab_single_scatter(
        pts,
        z0_mm=z0,
        z1_mm=z1,
        sdd_mm=1000.0,
        half_field_mm=150.0,
        mass_fractions=dict(jaxdrr.physics.composition("water").mass_fractions),
        density_g_cm3=1.0,
        energies=np.asarray(params["energies"]),
        weights=np.asarray(params["spectrum"]),
        n_z=8,
        n_r=16,
        n_phi=8,
    )
    z_lim = stats.norm.isf(ALPHA / 2)
    for proc in ("compton", "rayleigh"):
        # Counts behind the region: image_pc / N0 * (histories per pixel), summed over the region.
        counts = out[f"single_{proc}_pc"][sl, sl].sum() / n0 * n / hd**2
        sigma = 1.0 / np.sqrt(counts)
        for readout in ("ei", "pc"):
            mc = out[f"single_{proc}_{readout}"][sl, sl].mean() / n0
            rel = mc / ref[f"{proc}_{readout}"].mean() - 1.0
            assert abs(rel) < 0.01 + z_lim * sigma * 1.1, (
                f"{proc} {readout}: MC/ref - 1 = {rel:+.4f}, sigma {sigma:.4f}"
            )


# ---------------------------------------------------------------------------------------------
# Detector absorption and anti-scatter grid


def _water_slab_volume(thickness=100.0, z1=950.0):
    aff = np.diag([25.0, 25.0, thickness / 2, 1.0])
    aff[:3, 3] = [-187.5, -187.5, z1 - thickness + thickness / 4]
    return jaxdrr.Volume.create(
        np.ones((1, 16, 16, 2), np.float32), aff, kind="density", channel_names=("water",)
    )


def test_detector_absorption_primary_matches_numpy():
    """CsI 0.5 mm: flat-field-normalised primary = N0 sum_E w E T(E) eta(E) / sum_E w E eta(E) * sum_E w E,
    with T and eta from xraylib attenuation along each pixel's ray (independent NumPy)."""
    from jaxdrr.scatter import CSI, DetectorAbsorption

    hd, n = 6, 400_000
    vol = _water_slab_volume()
    P = _pinhole(hd, hd, 50.0, 1000.0)
    params = jaxdrr.default_params()
    cfg = MonteCarloConfig(sdd_mm=1000.0, lanes=1 << 15, absorption=DetectorAbsorption(thickness_mm=0.5))
    out = monte_carlo(vol, P, hd, hd, photons=n, key=jax.random.key(31), config=cfg, materials=["water"])
    e, w = np.asarray(params["energies"], float), np.asarray(params["spectrum"], float)
    zs, ws = _zs_ws("water")
    mu_w = ws @ xraylib_np.CS_Total(zs, e) * 1.0
    csi_z = np.array([55, 53])
    csi_w = np.array([CSI.mass_fractions["Cs"], CSI.mass_fractions["I"]])
    mu_d = csi_w @ xraylib_np.CS_Total(csi_z, e) * CSI.density_g_cm3
    c = (np.arange(hd) - (hd - 1) / 2) * 50.0
    cos = 1000.0 / np.sqrt(1000.0**2 + c[:, None] ** 2 + c[None, :] ** 2)
    T = np.exp(-mu_w * 10.0 / cos[..., None])
    eta = -np.expm1(-mu_d * 0.05 / cos[..., None])
    n0 = cfg.photons_per_pixel
    ref = n0 * (T * eta) @ (w * e) / (eta @ (w * e)) * np.sum(w * e)
    mc = np.asarray(out["primary_ei"])
    counts = np.asarray(out["primary_pc"]).sum() / n0 * n / hd**2
    rel = mc.sum() / ref.sum() - 1
    assert abs(rel) < 0.002 + stats.norm.isf(ALPHA / 2) * 1.2 / np.sqrt(counts), rel
    # Absorption makes the primary spectrum count less at high energy: the EI primary must be
    # below the ideal detector's (the renderer's) for this hard beam.
    ideal = n0 * T @ (w * e)
    assert mc.sum() < ideal.sum()


def test_grid_weight_matches_ray_marching():
    """Mean grid transmission over the entry offset vs explicit marching through the septa pattern."""
    from jaxdrr.scatter.monte_carlo import GridConfig

    g = GridConfig(ratio=10.0, lines_per_cm=40.0, septum_mm=0.05)
    mu_lead, mu_gap = 5.0, 0.05  # 1/mm
    geo = {
        "normal": jnp.array([0.0, 0.0, 1.0]),
        "e_x": jnp.array([1.0, 0.0, 0.0]),
        "source": jnp.zeros(3),
        "grid_mu": jnp.tile(jnp.array([[mu_lead, mu_gap]]), (interactions.NUM_ENERGIES, 1)),
    }
    grid = {"height_mm": g.height_mm, "period_mm": g.period_mm, "septum_mm": g.septum_mm}
    q = 2048
    x0 = (np.arange(q) + 0.5) / q
    gap = g.period_mm - g.septum_mm
    for ang in (0.0, 0.3, 1.5, 5.0, 20.0):
        d = np.array([np.sin(np.radians(ang)), 0.0, np.cos(np.radians(ang))])
        pos = jnp.tile(jnp.array([[0.0, 0.0, 1000.0]]), (q, 1))  # on the axis: focal direction = normal
        wgt = transport._grid_weight(
            geo,
            grid,
            pos,
            jnp.tile(jnp.asarray(d), (q, 1)),
            jnp.full((q,), 60.0),
            jnp.asarray(x0, jnp.float32),
        )
        # Independent: march 4000 points along the path through the grid height.
        s = (np.arange(4000) + 0.5) / 4000
        lateral = x0[:, None] * g.period_mm + s[None, :] * g.height_mm * np.tan(np.radians(ang))
        in_lead = np.mod(lateral, g.period_mm) >= gap
        path = g.height_mm / np.cos(np.radians(ang))
        ref = np.exp(-(mu_lead * in_lead.mean(1) + mu_gap * (1 - in_lead.mean(1))) * path)
        np.testing.assert_allclose(float(np.mean(np.asarray(wgt))), ref.mean(), rtol=2e-3, atol=1e-5)


def test_grid_keeps_primary_and_removes_scatter():
    from jaxdrr.scatter.monte_carlo import GridConfig

    hd, n = 8, 120_000
    vol = _layered_volume()
    P = _pinhole(hd, hd, 300.0 / hd, 1000.0)
    base = MonteCarloConfig(sdd_mm=1000.0, lanes=1 << 15)
    runs = {}
    for name, cfg in (
        ("none", base),
        ("grid", MonteCarloConfig(sdd_mm=1000.0, lanes=1 << 15, grid=GridConfig())),
    ):
        out = monte_carlo(vol, P, hd, hd, photons=n, key=jax.random.key(41), config=cfg)
        runs[name] = jax.tree_util.tree_map(np.asarray, out)
    n0 = base.photons_per_pixel
    # The flat field divides by the grid's primary transmission Tp(E) of the unattenuated beam; behind
    # the object the beam is harder and Tp(E) rises with E, so the expected primary is
    # N0 sum_E w T(E) Tp(E) / sum_E w Tp(E): T from the renderer's line integrals, Tp from xraylib.
    params = jaxdrr.default_params()
    e, w = np.asarray(params["energies"], float), np.asarray(params["spectrum"], float)
    rc = jaxdrr.RenderConfig(height=hd, width=hd)
    L = np.asarray(jaxdrr.line_integrals(rc, vol, P))
    T = np.exp(-L @ rc.materials.mass_attenuation(e))  # [H, W, E]
    g = GridConfig()
    al_z, al_rho = 13, jaxdrr.physics.density("aluminium")
    mu_pb = xraylib_np.CS_Total(np.array([82]), e)[0] * 11.35 / 10.0  # 1/mm
    mu_al = xraylib_np.CS_Total(np.array([al_z]), e)[0] * al_rho / 10.0
    c = (np.arange(hd) - (hd - 1) / 2) * 300.0 / hd
    cos = 1000.0 / np.sqrt(1000.0**2 + c[:, None] ** 2 + c[None, :] ** 2)
    path = g.height_mm / cos[..., None]
    frac = g.septum_mm / g.period_mm
    tp = frac * np.exp(-mu_pb * path) + (1 - frac) * np.exp(-mu_al * path)
    ref = n0 * (T * tp) @ w / (tp @ w)
    counts = ref.sum() / n0 * n / hd**2
    rel = runs["grid"]["primary_pc"].sum() / ref.sum() - 1
    # Statistical error grows by about 1/Tp (weights < 1): allow 1.5x the unit-weight sigma.
    assert abs(rel) < 0.002 + stats.norm.isf(ALPHA / 2) * 1.5 / np.sqrt(counts), rel
    rel_none = runs["none"]["primary_pc"].sum() / (n0 * T @ w).sum() - 1
    assert abs(rel_none) < stats.norm.isf(ALPHA / 2) / np.sqrt(counts), rel_none
    spr = {k: r["scatter"].sum() / r["primary"].sum() for k, r in runs.items()}
    assert spr["grid"] < 0.35 * spr["none"], spr


# ---------------------------------------------------------------------------------------------
# Command line (the `jaxdrr mc` sub-command module)


def test_mc_cli_writes_npz(tmp_path):
    import argparse
    import json

    from jaxdrr.cli import mc as mc_cli

    parser = argparse.ArgumentParser()
    mc_cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "mc.npz"
    args = parser.parse_args(
        [
            "mc",
            "--phantom-size",
            "24",
            "24",
            "16",
            "--height",
            "8",
            "--width",
            "8",
            "--pixel-size",
            "40",
            "--photons",
            "20000",
            "--batch",
            "10000",
            "--lanes",
            "4096",
            "--out",
            str(out),
        ]
    )
    assert mc_cli.run(args) == 0
    with np.load(out) as z:
        meta = json.loads(str(z["metadata"]))
        assert meta["photons"] == 20000 and meta["majorant_violations"] == 0
        assert z["primary"].shape == (8, 8) and z["deposited_energy_keV"].shape == (24, 24, 16)
        np.testing.assert_allclose(
            z["scatter"], z["single_compton"] + z["single_rayleigh"] + z["multiple"], rtol=1e-5
        )
        assert z["primary"].sum() > 0 and z["scatter"].sum() > 0


def test_single_scatter_reference_thin_slab_limit():
    """The reference integral of a 0.01 mm slab equals its thin-slab limit: no attenuation, so
    S_D = rho t int_field dsigma/dOmega(theta) cos(beta) / (|r|^2 |D - r|^2) dA (per photon per sr),
    evaluated here on a plain Cartesian midpoint grid (a check of the reference's polar quadrature)."""
    from reference.single_scatter import slab_single_scatter

    t, z1, sdd, hf = 0.01, 950.0, 1000.0, 150.0
    e = np.array([30.0, 60.0, 100.0])
    w = np.array([0.3, 0.5, 0.2])
    zs, ws = _zs_ws("water")
    d = np.array([[0.0, 0.0], [90.0, -40.0]])
    ref = slab_single_scatter(
        d,
        z0_mm=z1 - t,
        z1_mm=z1,
        sdd_mm=sdd,
        half_field_mm=hf,
        mass_fractions=dict(jaxdrr.physics.composition("water").mass_fractions),
        density_g_cm3=1.0,
        energies=e,
        weights=w,
        n_z=2,
        n_r=24,
        n_phi=12,
    )
    n = 500
    h = hf * z1 / sdd / 10.0  # cm
    xs = (np.arange(n) + 0.5) / n * 2 * h - h
    X, Y = np.meshgrid(xs, xs, indexing="ij")
    r = np.stack([X.ravel(), Y.ravel(), np.full(X.size, z1 / 10.0)], -1)
    da = (2 * h / n) ** 2
    rs = np.linalg.norm(r, axis=-1)
    for k, dk in enumerate(d):
        D = np.array([dk[0] / 10.0, dk[1] / 10.0, sdd / 10.0])
        v = D - r
        dist = np.linalg.norm(v, axis=-1)
        theta = np.arccos(np.clip(np.sum(r * v, -1) / (rs * dist), -1, 1))
        geom = da * (t / 10.0) * (v[:, 2] / dist) / (dist**2 * rs**2)
        p_d = D[2] / np.linalg.norm(D) ** 3
        for proc, fn in (("compton", xraylib_np.DCS_Compt), ("rayleigh", xraylib_np.DCS_Rayl)):
            dcs = np.einsum("z,zet->et", ws, fn(zs, e, np.clip(theta, 1e-4, np.pi)))
            limit = w @ (dcs @ geom) / p_d
            np.testing.assert_allclose(ref[f"{proc}_pc"][k], limit, rtol=1e-3)  # attenuation < 0.05 %


# ---------------------------------------------------------------------------------------------
# Energy deposition: AAPM TG-195 Case 2 (cheap version; the full one is benchmarks/bench_monte_carlo.py tg195)

# Sechopoulos et al., Med Phys 42:5679 (2015) (AAPM Report 195), Case 2, radiography, 56.4 keV: energy
# deposited in the 39x39x20 cm soft-tissue slab, eV per history, EGSnrc / Geant4 / MCNP / PENELOPE.
TG195_CASE2_56KEV_EV = (33171.0, 33205.4, 33134.9, 33174.3)
TG195_SOFT_TISSUE = Composition(
    "tg195_soft_tissue",
    1.03,
    {"H": 10.5, "C": 25.6, "N": 2.7, "O": 60.2, "Na": 0.1, "P": 0.2, "S": 0.3, "Cl": 0.2, "K": 0.2},
    "AAPM TG-195 soft tissue",
)


def test_tg195_case2_total_energy_deposit():
    """Source at the origin, slab at z = 155-175 cm in air, field 39x39 cm at 180 cm, 56.4 keV.

    Coarse voxels (the total does not depend on them): 13 cm laterally, 5 cm in depth. 1e5 histories
    give a statistical error of about 0.25 %; the tolerance is the issue's 1 % goal (4 sigma).
    """
    dens = np.zeros((2, 3, 3, 36), np.float32)
    dens[0] = 0.001205
    dens[0, :, :, 31:35] = 0.0
    dens[1, :, :, 31:35] = 1.03
    aff = np.diag([130.0, 130.0, 50.0, 1.0])
    aff[:3, 3] = [-130.0, -130.0, 25.0]
    vol = jaxdrr.Volume.create(dens, aff, kind="density", channel_names=("air", "tissue"))
    P = _pinhole(13, 13, 30.0, 1800.0)
    params = {"energies": np.array([56.4]), "spectrum": np.array([1.0])}
    n = 100_000
    out = monte_carlo(
        vol,
        P,
        13,
        13,
        photons=n,
        key=jax.random.key(195),
        params=params,
        config=MonteCarloConfig(sdd_mm=1801.0, lanes=1 << 15),
        materials=["air", TG195_SOFT_TISSUE],
    )
    dep = np.asarray(out["deposited_energy_keV"], np.float64)[:, :, 31:35].sum() / n * 1000.0
    ref = np.mean(TG195_CASE2_56KEV_EV)
    assert int(out["majorant_violations"]) == 0
    print(f"TG-195 Case 2, 56.4 keV: {dep:.1f} eV/history vs {ref:.1f} ({dep / ref - 1:+.4f})")
    assert abs(dep / ref - 1) < 0.01, f"{dep:.1f} eV/history vs TG-195 {ref:.1f}"


def test_source_inside_volume_primary_is_beer_lambert():
    """A source inside a 20 cm water cube: primary = N0 exp(-mu(60 keV) L), L from the source to the cube's
    exit (NumPy)."""
    hd, n, n0 = 6, 120_000, MonteCarloConfig().photons_per_pixel
    aff = np.diag([20.0, 20.0, 20.0, 1.0])
    aff[:3, 3] = [-90.0, -90.0, -90.0]  # 10^3 voxels of 2 cm: the cube [-100, 100]^3 mm
    vol = jaxdrr.Volume.create(
        np.ones((1, 10, 10, 10), np.float32), aff, kind="density", channel_names=("water",)
    )
    src = np.array([0.0, 0.0, -50.0])
    K = np.array([[600 / 40.0, 0, (hd - 1) / 2], [0, 600 / 40.0, (hd - 1) / 2], [0, 0, 1]])
    P = K @ np.concatenate([np.eye(3), -src[:, None]], 1)
    params = {"energies": np.array([60.0]), "spectrum": np.array([1.0])}
    cfg = MonteCarloConfig(sdd_mm=600.0, lanes=1 << 15, detector="pc")
    out = monte_carlo(
        vol, P, hd, hd, photons=n, key=jax.random.key(51), params=params, config=cfg, materials=["water"]
    )
    zs, ws = _zs_ws("water")
    mu = float(ws @ xraylib_np.CS_Total(zs, np.array([60.0]))[:, 0]) / 10.0  # 1/mm
    c = (np.arange(hd) - (hd - 1) / 2) * 40.0
    d = np.stack(np.broadcast_arrays(c[None, :], c[:, None], np.full((hd, hd), 600.0)), -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        t_exit = np.min(np.where(d != 0, (np.sign(d) * 100.0 - src) / d, np.inf), axis=-1)
    ref = n0 * np.exp(-mu * t_exit)
    mc = np.asarray(out["primary_pc"])
    var = ref * n0 * hd * hd / n  # as in test_primary_matches_renderer_chi_square
    chi2 = float(np.sum((mc - ref) ** 2 / var))
    assert chi2 < stats.chi2.isf(ALPHA, hd * hd), chi2
