"""Monte Carlo variance reduction: local Woodcock majorants and forced detection against the analog
references (global majorant, analog detector scoring) and the NumPy single-scatter integral.

Statistical tests use fixed keys and a false-alarm rate ALPHA each. Every comparison is of *batch
means*: the analog runs are K independent batches (one vmapped call), the forced-detection runs a few
calls with the keys of the first analog batches (the same histories: correlated estimates, which
only makes the comparison conservative). Per image, the statistic
``sum_bins (mean_a - mean_b)^2 / (s_a^2 / K_a + s_b^2 / K_b)`` is compared with the 1 - ALPHA quantile
of its own null distribution (normal batch values with the observed variances, simulated with NumPy,
so the estimated variances' noise is accounted for), and the image totals with Welch's t test.

All runs share one geometry (a 40 x 40 x 10 cm water slab with an optional 10 x 10 x 5 cm cortical
bone insert, 16 x 16 x 8 voxels, 30 x 30 cm field at 1 m, 8 x 8 pixels), a focused grid and a CsI
detector (except the comparison with the ideal-detector NumPy integral) and one history count, so
only four programs are compiled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xraylib
import xraylib_np
from scipy import stats

import jaxdrr
from jaxdrr.scatter import (
    DetectorAbsorption,
    ForcedDetection,
    GridConfig,
    MonteCarloConfig,
    forced_detection,
    interactions,
    majorants,
    monte_carlo,
    transport,
)

ALPHA = 1e-3
HD = 8
N_ANALOG, K_ANALOG = 30_000, 10  # histories per batch, batches (one vmapped call)
K_FD = 3  # forced-detection calls of N_ANALOG histories, with the first K_FD analog batch keys
MATERIALS = ["water", "cortical_bone"]
SCATTER = ("single_compton", "single_rayleigh", "multiple")
FD = ForcedDetection(cell_voxels=1, site_spacing_mm=12.5)
# A grid and a CsI detector in the analog / forced-detection comparisons (each configuration is a
# separately compiled program; these tests need four).
DETECTOR = dict(grid=GridConfig(ratio=8.0, lines_per_cm=40.0), absorption=DetectorAbsorption())


def _pinhole(height, width, pixel_mm, sdd_mm):
    K = np.array(
        [[sdd_mm / pixel_mm, 0, (width - 1) / 2], [0, sdd_mm / pixel_mm, (height - 1) / 2], [0, 0, 1]]
    )
    return K @ np.concatenate([np.eye(3), np.zeros((3, 1))], 1)


def _phantom(insert: bool):
    """Water slab z = 850-950 mm, 400 mm wide; with ``insert`` a cortical-bone block in the middle."""
    dens = np.zeros((2, 16, 16, 8), np.float32)
    dens[0] = 1.0
    if insert:
        dens[0, 6:10, 6:10, 2:6] = 0.0
        dens[1, 6:10, 6:10, 2:6] = 1.92
    aff = np.diag([25.0, 25.0, 12.5, 1.0])
    aff[:3, 3] = [-187.5, -187.5, 856.25]
    return jaxdrr.Volume.create(dens, aff, kind="density", channel_names=("water", "bone"))


P = _pinhole(HD, HD, 300.0 / HD, 1000.0)


def _config(**kw):
    return MonteCarloConfig(sdd_mm=1000.0, lanes=1 << 12, majorant_block=4, **kw)


def _analog_batches(vol, cfg, seed):
    """K_ANALOG independent batches of N_ANALOG histories (one vmapped call): dict of [K, H, W]."""

    def run(key):
        return monte_carlo(vol, P, HD, HD, photons=N_ANALOG, key=key, config=cfg, materials=MATERIALS)

    keys = jax.random.split(jax.random.key(seed), K_ANALOG)
    return jax.tree_util.tree_map(np.asarray, jax.jit(jax.vmap(run))(keys))


def _fd_runs(vol, cfg, seed):
    """K_FD independent forced-detection calls: dict of [K, H, W] (a loop: vmap would turn the
    buffer flush's cond into a select). The keys are those of the first K_FD analog batches of
    ``seed``: the same histories, so the primary images must agree, and the scatter estimates are
    positively correlated with the analog ones (which only makes the comparisons conservative)."""
    keys = jax.random.split(jax.random.key(seed), K_ANALOG)[:K_FD]
    outs = [
        monte_carlo(vol, P, HD, HD, photons=N_ANALOG, key=k, config=cfg, materials=MATERIALS) for k in keys
    ]
    return {k: np.stack([np.asarray(o[k]) for o in outs]) for k in outs[0]}


def _compare(a, b, names, label):
    """Batch-mean comparison of images ``names`` of runs a and b ([K, H, W] each), see module doc."""
    diffs, var_a, var_b, ka, kb = [], [], [], None, None
    for name in names:
        xa, xb = a[name].reshape(a[name].shape[0], -1), b[name].reshape(b[name].shape[0], -1)
        ka, kb = xa.shape[0], xb.shape[0]
        diffs.append(xa.mean(0) - xb.mean(0))
        var_a.append(xa.var(0, ddof=1) / ka)
        var_b.append(xb.var(0, ddof=1) / kb)
    for name in names:
        # Whole-image totals: Welch's t test (sensitive to a small bias common to all bins).
        ta, tb = a[name].reshape(a[name].shape[0], -1).sum(1), b[name].reshape(b[name].shape[0], -1).sum(1)
        sa2, sb2 = ta.var(ddof=1) / ta.size, tb.var(ddof=1) / tb.size
        dof = (sa2 + sb2) ** 2 / (sa2**2 / (ta.size - 1) + sb2**2 / (tb.size - 1))
        t = (ta.mean() - tb.mean()) / np.sqrt(sa2 + sb2)
        lim = stats.t.isf(ALPHA / 2, dof)
        print(f"{label}, total {name}: ratio {ta.mean() / tb.mean():.4f}, t {t:+.2f} (limit {lim:.2f})")
        assert abs(t) < lim, f"{label}: total {name} ratio {ta.mean() / tb.mean():.4f}, t = {t:.2f}"
    d, va, vb = (np.concatenate(x) for x in (diffs, var_a, var_b))
    keep = (va + vb) > 0
    d, va, vb = d[keep], va[keep], vb[keep]
    stat = float(np.sum(d**2 / (va + vb)))
    # Null distribution: normal batch values with the observed per-bin variances (the plug-in
    # bootstrap of the statistic, so the estimated variances' own noise is accounted for).
    rng = np.random.default_rng(0)
    sa, sb = np.sqrt(va * ka), np.sqrt(vb * kb)
    null = []
    for _ in range(10):
        za = rng.standard_normal((1000, ka, d.size)) * sa
        zb = rng.standard_normal((1000, kb, d.size)) * sb
        num = (za.mean(1) - zb.mean(1)) ** 2
        den = za.var(1, ddof=1) / ka + zb.var(1, ddof=1) / kb
        null.append(np.sum(num / den, axis=1))
    limit = float(np.quantile(np.concatenate(null), 1 - ALPHA))
    print(f"{label}: statistic {stat:.1f}, limit {limit:.1f} ({d.size} bins)")
    assert stat < limit, f"{label}: statistic {stat:.1f} > {limit:.1f} ({d.size} bins)"
    return stat, limit


# ---------------------------------------------------------------------------------------------
# Local majorants


def test_block_maxima_bound_every_voxel():
    rng = np.random.default_rng(3)
    shape = (13, 10, 7)  # partial blocks on every axis
    dens = rng.uniform(0.0, 1.5, (2,) + shape).astype(np.float32)
    dens[1, 12, 9, 6] = 9.0  # a hot voxel in the last (partial) block
    block = 4
    maxima, mean = majorants.block_statistics(jnp.asarray(dens.reshape(2, -1).T), shape, block)
    nb = majorants.block_shape(shape, block)
    idx = np.stack(np.meshgrid(*[np.arange(n) // block for n in shape], indexing="ij"), -1)
    flat = (idx[..., 0] * nb[1] + idx[..., 1]) * nb[2] + idx[..., 2]
    ref_max = np.zeros((np.prod(nb), 2))
    ref_sum = np.zeros((np.prod(nb), 2))
    cnt = np.zeros(np.prod(nb))
    for m in range(2):
        np.maximum.at(ref_max[:, m], flat.ravel(), dens[m].ravel())
        np.add.at(ref_sum[:, m], flat.ravel(), dens[m].ravel())
    np.add.at(cnt, flat.ravel(), 1)
    np.testing.assert_array_equal(np.asarray(maxima), ref_max)
    np.testing.assert_allclose(np.asarray(mean), ref_sum / cnt[:, None], rtol=1e-5)
    # The bound holds at every energy for every voxel (mass attenuation >= 0).
    mu = interactions.tables_for(MATERIALS).mu_total  # [M, E]
    bound = np.asarray(maxima)[flat.ravel()] @ mu  # [V, E]
    att = dens.reshape(2, -1).T @ mu
    assert np.all(att <= bound * (1 + 1e-6))


def test_block_maxima_of_hu_volume_bound_decomposed_voxels():
    vol = jaxdrr.phantom(shape=(20, 18, 12), fov_mm=(380.0, 300.0, 240.0))
    cfg = MonteCarloConfig()
    decompose = cfg.materials.density_channels
    hu = jnp.asarray(vol.data).reshape(-1, 1)
    maxima, _ = majorants.block_statistics(hu, vol.shape, 8, decompose)
    dens = np.asarray(decompose(jnp.asarray(vol.data)))  # [M, I, J, K]
    nb = majorants.block_shape(vol.shape, 8)
    idx = np.stack(np.meshgrid(*[np.arange(n) // 8 for n in vol.shape], indexing="ij"), -1)
    flat = ((idx[..., 0] * nb[1] + idx[..., 1]) * nb[2] + idx[..., 2]).ravel()
    ref = np.zeros((np.prod(nb), dens.shape[0]))
    for m in range(dens.shape[0]):
        np.maximum.at(ref[:, m], flat, dens[m].ravel())
    np.testing.assert_allclose(np.asarray(maxima), ref, rtol=1e-5, atol=1e-9)


@pytest.fixture(scope="module")
def analog_local():
    return {
        name: _analog_batches(_phantom(insert), _config(tracking="local", **DETECTOR), seed=10 + insert)
        for name, insert in (("slab", False), ("insert", True))
    }


@pytest.fixture(scope="module")
def analog_global():
    return _analog_batches(_phantom(True), _config(tracking="global", **DETECTOR), seed=20)


def test_local_majorants_match_global(analog_local, analog_global):
    ref = analog_global
    loc = analog_local["insert"]
    assert int(ref["majorant_violations"].sum()) == 0 and int(loc["majorant_violations"].sum()) == 0
    assert int(ref["truncated"].sum()) == 0 and int(loc["truncated"].sum()) == 0
    _compare(loc, ref, ("primary_pc", *(f"{s}_pc" for s in SCATTER)), "local vs global majorant")
    _compare(loc, ref, ("primary_ei", "scatter_ei"), "local vs global majorant (EI)")
    # Dense bone sets the global majorant: in water, local majorants waste fewer virtual events.
    assert loc["iterations"].mean() < ref["iterations"].mean()


# ---------------------------------------------------------------------------------------------
# Forced detection


@pytest.fixture(scope="module")
def fd_local():
    """Forced detection with the grid and CsI detector (slab, insert), and without (slab)."""
    with_detector = _config(tracking="local", forced_detection=FD, **DETECTOR)
    out = {
        name: _fd_runs(_phantom(insert), with_detector, seed=10 + insert)
        for name, insert in (("slab", False), ("insert", True))
    }
    out["slab_ideal"] = _fd_runs(_phantom(False), _config(tracking="local", forced_detection=FD), seed=30)
    return out


@pytest.mark.parametrize("phantom", ["slab", "insert"])
def test_forced_detection_matches_analog(analog_local, fd_local, phantom):
    """Forced detection against the analog estimator, both with a grid and a CsI detector."""
    fd, ref = fd_local[phantom], analog_local[phantom]
    assert int(fd["majorant_violations"].sum()) == 0 and int(fd["truncated"].sum()) == 0
    _compare(fd, ref, tuple(f"{s}_pc" for s in SCATTER), f"FD vs analog, {phantom} (PC)")
    _compare(fd, ref, tuple(f"{s}_ei" for s in SCATTER), f"FD vs analog, {phantom} (EI)")
    # The primary and the dose stay analog: the same keys give the same transport (vmapped or not).
    # (Per-voxel deposits differ by float32 scatter-add order under vmap: compare totals.)
    for k in ("primary_pc", "primary_ei", "deposited_total_keV"):
        np.testing.assert_allclose(fd[k], ref[k][:K_FD], rtol=1e-5, atol=1e-6 * float(np.abs(ref[k]).max()))
    # Forced detection's relative error per pixel is far below the analog one.
    for name in ("single_compton_pc", "multiple_pc"):
        rel_fd = np.mean(fd[name].std(0, ddof=1) / fd[name].mean(0))
        rel_a = np.mean(ref[name].std(0, ddof=1) / ref[name].mean(0))
        print(f"{phantom} {name}: relative sd per pixel and batch, FD {rel_fd:.4f}, analog {rel_a:.4f}")
        assert rel_fd < 0.3 * rel_a, (name, rel_fd, rel_a)


def test_forced_detection_single_scatter_matches_numpy_integral(fd_local):
    """The forced-detection single-scatter images of the 10 cm water slab against the independent
    NumPy integral (tests/reference/single_scatter.py) over the central 2 x 2 pixels (15 x 15 cm)."""
    from reference.single_scatter import slab_single_scatter

    fd = fd_local["slab_ideal"]
    params = jaxdrr.default_params()
    pix = 300.0 / HD
    sl = slice(HD // 2 - 1, HD // 2 + 1)
    idx = np.arange(HD)[sl]
    pts = np.array([[(j - (HD - 1) / 2) * pix, (i - (HD - 1) / 2) * pix] for i in idx for j in idx])
    ref = slab_single_scatter(
        pts,
        z0_mm=850.0,
        z1_mm=950.0,
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
    n0 = MonteCarloConfig().photons_per_pixel
    z_lim = stats.t.isf(ALPHA / 2, K_FD - 1)
    for proc in ("compton", "rayleigh"):
        for readout in ("ei", "pc"):
            runs = fd[f"single_{proc}_{readout}"][:, sl, sl].mean(axis=(1, 2)) / n0
            ref_mean = ref[f"{proc}_{readout}"].mean()
            rel = runs.mean() / ref_mean - 1.0
            sigma = runs.std(ddof=1) / np.sqrt(K_FD) / ref_mean
            # 1 % for table interpolation and pixel-average vs pixel-centre, as the analog test.
            assert abs(rel) < 0.01 + z_lim * sigma, (
                f"{proc} {readout}: FD/ref - 1 = {rel:+.4f}, sigma {sigma:.4f}"
            )


def test_angular_density_matches_xraylib():
    """Forced detection's normalised angular densities vs xraylib's DCS / CS (water, 20-100 keV)."""
    tab = interactions.tables_for(["water"])
    tables = transport.device_tables(tab)
    norm = np.asarray(forced_detection.angular_normalisation(tables))  # [E, 2]
    comp = jaxdrr.physics.composition("water")
    zs = np.array([xraylib.SymbolToAtomicNumber(s) for s in comp.mass_fractions])
    ws = np.array(list(comp.mass_fractions.values()))
    ws = ws / ws.sum()
    theta = np.radians([5.0, 30.0, 60.0, 90.0, 150.0])
    grid = interactions.energy_grid()
    for energy in (20.0, 60.0, 100.0):
        e_idx = int(np.argmin(np.abs(grid - energy)))
        e = grid[e_idx]
        for proc, dcs_fn, cs_fn, col in (
            (1, xraylib_np.DCS_Compt, xraylib_np.CS_Compt, 0),
            (2, xraylib_np.DCS_Rayl, xraylib_np.CS_Rayl, 1),
        ):
            w, _ = forced_detection.angular_weights(
                tables, jnp.zeros_like(theta, dtype=jnp.int32), jnp.full(theta.shape, proc), e, jnp.cos(theta)
            )
            ours = np.asarray(w) / norm[e_idx, col]
            ref = ws @ dcs_fn(zs, np.array([e]), theta)[:, 0, :] / (ws @ cs_fn(zs, np.array([e])))[0]
            # xraylib's tabulated CS and the integral of its DCS differ by up to 0.3 %.
            np.testing.assert_allclose(ours, ref, rtol=0.01, err_msg=f"process {proc} at {e:.1f} keV")


def test_line_integrals_are_exact_on_the_voxel_grid():
    """The DDA line integrals equal dense midpoint sums over the nearest-voxel field."""
    rng = np.random.default_rng(5)
    shape = (5, 4, 3)
    coarse = rng.uniform(0, 2, (np.prod(shape), 2)).astype(np.float32)
    aff = np.diag([10.0, 12.0, 8.0, 1.0])
    aff[:3, 3] = [3.0, -4.0, 100.0]
    inv = np.linalg.inv(aff)
    start = rng.uniform([-10, -20, 80], [60, 50, 130], (50, 3)).astype(np.float32)
    end = rng.uniform([-10, -20, 80], [60, 50, 130], (50, 3)).astype(np.float32)
    got = forced_detection.segment_line_integrals(
        jnp.asarray(coarse),
        shape,
        1,
        shape,
        jnp.asarray(inv[:3, :3], jnp.float32),
        jnp.asarray(inv[:3, 3], jnp.float32),
        jnp.asarray(start),
        jnp.asarray(end),
    )
    s = (np.arange(20000) + 0.5) / 20000
    pts = start[:, None, :] + s[None, :, None] * (end - start)[:, None, :]
    idx = np.floor(pts @ inv[:3, :3].T + inv[:3, 3] + 0.5).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=-1)
    flat = (np.clip(idx[..., 0], 0, 4) * 4 + np.clip(idx[..., 1], 0, 3)) * 3 + np.clip(idx[..., 2], 0, 2)
    length = np.linalg.norm(end - start, axis=-1)
    ref = np.sum(np.where(inside[..., None], coarse[flat], 0.0), axis=1) * (length / 20000)[:, None]
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2e-3, atol=0.05)
