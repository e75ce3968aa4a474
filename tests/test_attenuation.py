"""Shipped attenuation tables vs freshly computed xraydb values; interpolation; errors."""

import numpy as np
import pytest
import xraydb  # noqa: E402  (test dependency: the independent reference)

from jaxdrr.errors import JaxdrrError
from jaxdrr.physics import attenuation, compositions
from jaxdrr.physics.attenuation import (
    EnergyRangeError,
    air_mass_energy_absorption,
    available_materials,
    linear_attenuation,
    load_table,
    mass_attenuation,
)
from jaxdrr.physics.compositions import COMPOSITIONS, UnknownMaterialError

RTOL = 1e-3  # 0.1 %


def fresh_mu_rho(material: str, energies_kev) -> np.ndarray:
    """Mixture rule applied to xraydb element data, computed now (not from the shipped table)."""
    fractions = COMPOSITIONS[material].mass_fractions
    e_ev = np.asarray(energies_kev, float) * 1000.0
    return sum(w * xraydb.mu_elam(el, e_ev, kind="total") for el, w in fractions.items())


def test_every_section3_material_is_shipped():
    expected = {
        "air",
        "water",
        "soft_tissue",
        "cortical_bone",
        "lung",
        "adipose",
        "muscle",
        "blood",
        "pmma",
        "titanium",
        "ti6al4v",
        "iron",
        "stainless_steel_316l",
        "iodine",
        "aluminium",
        # Implant and instrument materials (jaxdrr.instruments).
        "cobalt_chrome",
        "peek",
        "tungsten",
    }
    assert set(available_materials()) == expected
    assert set(COMPOSITIONS) == expected


def test_implant_materials_follow_their_sources():
    # ASTM F75 cobalt-chrome: Cr 27-30 %, Mo 5-7 %, Co balance; 8.3 g/cm^3.
    cocr = COMPOSITIONS["cobalt_chrome"]
    assert 0.27 <= cocr.mass_fractions["Cr"] <= 0.30 and 0.05 <= cocr.mass_fractions["Mo"] <= 0.07
    assert cocr.density_g_cm3 == 8.3
    # PEEK is C19H12O3: the mass fractions follow from xraydb's atomic masses (stoichiometry).
    atoms = {"C": 19, "H": 12, "O": 3}
    molar = sum(n * xraydb.atomic_mass(el) for el, n in atoms.items())
    for el, n in atoms.items():
        assert COMPOSITIONS["peek"].mass_fractions[el] == pytest.approx(
            n * xraydb.atomic_mass(el) / molar, abs=1e-6
        )
    assert COMPOSITIONS["peek"].density_g_cm3 == 1.32
    assert dict(COMPOSITIONS["tungsten"].mass_fractions) == {"W": 1.0}
    assert COMPOSITIONS["tungsten"].density_g_cm3 == pytest.approx(xraydb.atomic_density("W"), abs=0.06)
    # The tungsten K edge (69.5 keV) and the cobalt K edge (7.71 keV) are resolved in the shipped table.
    edges = set(zip(load_table().edge_elements, np.round(load_table().edge_energies_keV, 1)))
    assert ("W", 69.5) in edges and ("Co", 7.7) in edges
    below, above = mass_attenuation(["tungsten"], [69.4, 69.6])[0]
    assert 4.0 < above / below < 6.0


def test_compositions_are_normalised_and_match_table_metadata():
    table = load_table()
    for name, comp in COMPOSITIONS.items():
        assert sum(comp.mass_fractions.values()) == pytest.approx(1.0, abs=5e-4), name
        shipped = table.compositions[name]
        assert shipped["density_g_cm3"] == comp.density_g_cm3
        assert shipped["mass_fractions"] == dict(comp.mass_fractions)
    assert table.provenance["xraydb_version"]
    assert "created" in table.provenance


def test_grid_covers_range_finely_and_resolves_edges():
    table = load_table()
    e = table.energies_keV
    assert e[0] == pytest.approx(1.0) and e[-1] == pytest.approx(150.0)
    assert np.all(np.diff(e) > 0)
    assert np.max(np.diff(e)) <= 0.5 + 1e-9
    edges = dict(zip(table.edge_elements, table.edge_energies_keV))
    assert edges["I"] == pytest.approx(33.17, abs=0.01)  # the iodine K edge is resolved
    for edge in table.edge_energies_keV:  # a grid point just below and just above each edge
        below = e[e < edge].max()
        above = e[e > edge].min()
        assert edge - below < 1e-3 * edge and above - edge < 1e-3 * edge


@pytest.mark.parametrize("material", sorted(COMPOSITIONS))
def test_shipped_table_matches_fresh_xraydb(material):
    table = load_table()
    row = table.mu_rho[table.materials.index(material)]
    np.testing.assert_allclose(row, fresh_mu_rho(material, table.energies_keV), rtol=RTOL)


@pytest.mark.parametrize("material", sorted(COMPOSITIONS))
def test_off_grid_interpolation_matches_xraydb(material):
    table = load_table()
    rng = np.random.default_rng(0)
    e = np.sort(rng.uniform(1.0, 150.0, 400))
    # Away from edges: xraydb's own spline is only smooth between edges.
    dist = np.min(np.abs(e[:, None] - table.edge_energies_keV[None, :]), axis=1)
    e = e[dist > 0.02]
    got = mass_attenuation([material], e)[0]
    np.testing.assert_allclose(got, fresh_mu_rho(material, e), rtol=RTOL)


def test_no_interpolation_across_edges():
    table = load_table()
    for edge, element in zip(table.edge_energies_keV, table.edge_elements):
        # Energies inside the tiny below/above gap: a naive interpolation would give a value
        # between the two branches; edge-aware interpolation gives the branch of its own side.
        e = np.array([edge * (1 - 5e-7), edge * (1 + 5e-7)])
        material = next(n for n, c in COMPOSITIONS.items() if element in c.mass_fractions)
        np.testing.assert_allclose(
            mass_attenuation([material], e)[0],
            fresh_mu_rho(material, e),
            rtol=RTOL,
            err_msg=f"{element} edge {edge} keV in {material}",
        )


def test_iodine_k_edge_jump():
    below, above = mass_attenuation(["iodine"], [33.1, 33.3])[0]
    assert 4.5 < above / below < 6.5


def test_water_60kev_reference_value():
    # PHYSICS.md section 5: mu/rho(water, 60 keV) = 0.20587 cm^2/g.
    assert mass_attenuation(["water"], 60.0)[0, 0] == pytest.approx(0.20587, rel=2e-3)


def test_shapes_and_linear_attenuation():
    mu = mass_attenuation(["water", "cortical_bone", "air"], np.arange(10.0, 20.0))
    assert mu.shape == (3, 10) and mu.dtype == np.float64
    assert mass_attenuation("water", 30.0).shape == (1, 1)
    lin = linear_attenuation(["cortical_bone"], [60.0])
    assert lin[0, 0] == pytest.approx(1.92 * mass_attenuation(["cortical_bone"], 60.0)[0, 0])
    assert np.all(np.diff(mass_attenuation(["water"], np.arange(1.0, 150.0))[0]) < 0)  # no edges: monotone


def test_unknown_material_error_lists_valid_names():
    with pytest.raises(UnknownMaterialError, match="soft_tissue") as info:
        mass_attenuation(["water", "bone_marrow"], 60.0)
    assert "bone_marrow" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, JaxdrrError)
    with pytest.raises(UnknownMaterialError):
        compositions.composition("unobtainium")


@pytest.mark.parametrize("energies", [0.5, [10.0, 151.0], [np.nan], [[10.0, 20.0]]])
def test_energy_outside_table_is_an_error(energies):
    with pytest.raises(EnergyRangeError):
        mass_attenuation(["water"], energies)


def test_table_ends_tolerate_rounding():
    assert np.all(np.isfinite(mass_attenuation(["water"], [1.0, np.float32(150.0)])))


def test_air_mu_en_reproduces_nist_nodes():
    table = load_table()
    nodes = table.muen_air_energies_keV
    unique = np.concatenate([np.diff(nodes) != 0, [True]]) & np.concatenate([[True], np.diff(nodes) != 0])
    np.testing.assert_allclose(air_mass_energy_absorption(nodes[unique]), table.muen_air[unique], rtol=1e-9)
    assert air_mass_energy_absorption(60.0)[0] == pytest.approx(0.03041)
    # mu_en <= mu for air (part of the attenuated energy is scattered away).
    e = np.arange(5.0, 150.0)
    assert np.all(air_mass_energy_absorption(e) < mass_attenuation(["air"], e)[0])


def test_table_is_read_only():
    with pytest.raises(ValueError):
        attenuation.load_table().mu_rho[0, 0] = 1.0
