"""Regenerates jaxdrr/physics/data/attenuation.npz and PROVENANCE.md from xraydb.

The shipped table holds total mass attenuation coefficients mu/rho (cm^2/g, photoelectric + coherent
+ incoherent, Elam/Ravel/Sieber data via xraydb) for every material of
:mod:`jaxdrr.physics.compositions`, on a dense energy grid from 1 to 150 keV (0.1 keV steps) with the
absorption edges resolved: for every edge of a constituent element inside the range there is a grid
point just below and one just above it, so interpolation never straddles an edge. Mixtures follow
the mixture rule ``(mu/rho)_mix = sum_i w_i (mu/rho)_i``.

It also ships NIST (Hubbell & Seltzer, NISTIR 5632 / SRD-126 Table 4) mass energy-absorption
coefficients mu_en/rho of dry air, which xraydb does not provide, for air-kerma weighting (HVL).

Usage: ``python tools/make_attenuation_tables.py [--out-dir jaxdrr/physics/data]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxdrr.physics.compositions import COMPOSITIONS  # noqa: E402

E_MIN_KEV, E_MAX_KEV, STEP_KEV = 1.0, 150.0, 0.1
# Grid points sit this far (relative) either side of an edge: far enough to land on the right
# branch of xraydb's spline, close enough that the gap is physically irrelevant.
EDGE_OFFSET_REL = 1e-6
# A duplicated node in the Elam table is an edge only if mu/rho jumps across it; the 1 keV table
# boundary is duplicated for every element without a jump.
MIN_EDGE_JUMP = 1.01

# NIST mu_en/rho of air, dry (near sea level), NISTIR 5632 Table 4 (public domain), 1..150 keV.
# The duplicated 3.2029 keV node is the Ar K edge (below, above).
NIST_MUEN_AIR_KEV = np.array(
    [
        1.0,
        1.5,
        2.0,
        3.0,
        3.2029,
        3.2029,
        4.0,
        5.0,
        6.0,
        8.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        80.0,
        100.0,
        150.0,
    ]
)
NIST_MUEN_AIR_CM2_G = np.array(
    [
        3599.0,
        1188.0,
        526.2,
        161.4,
        133.0,
        146.0,
        76.36,
        39.31,
        22.70,
        9.446,
        4.742,
        1.334,
        0.5389,
        0.1537,
        0.06833,
        0.04098,
        0.03041,
        0.02407,
        0.02325,
        0.02496,
    ]
)


def _element_mu(symbol: str, energies_kev: np.ndarray) -> np.ndarray:
    import xraydb

    return np.asarray(xraydb.mu_elam(symbol, np.asarray(energies_kev, float) * 1000.0, kind="total"))


def element_edges_kev(symbol: str) -> list[float]:
    """Absorption edges (keV) of an element inside the table range, where xraydb's data jump."""
    import xraydb

    xdb = xraydb.get_xraydb()
    row = xdb.get_cache("photoabsorption", column="element", value=symbol)[0]
    table_kev = np.exp(np.array(json.loads(row.log_energy))) / 1000.0
    duplicated = table_kev[1:][np.diff(table_kev) == 0]
    edges = []
    for e in duplicated:
        if not (E_MIN_KEV < e < E_MAX_KEV):
            continue
        below, above = _element_mu(symbol, np.array([e * (1 - EDGE_OFFSET_REL), e * (1 + EDGE_OFFSET_REL)]))
        if above / below > MIN_EDGE_JUMP:
            edges.append(float(e))
    return edges


def build_grid(edges_kev: np.ndarray) -> np.ndarray:
    """Regular grid plus a below/above pair at each edge; regular points too close to an edge go."""
    regular = np.round(np.arange(E_MIN_KEV, E_MAX_KEV + STEP_KEV / 2, STEP_KEV), 6)
    keep = np.ones(regular.shape, bool)
    for e in edges_kev:
        keep &= np.abs(regular - e) > 10 * EDGE_OFFSET_REL * e
    pairs = np.concatenate([edges_kev * (1 - EDGE_OFFSET_REL), edges_kev * (1 + EDGE_OFFSET_REL)])
    grid = np.unique(np.concatenate([regular[keep], pairs]))
    assert np.all(np.diff(grid) > 0)
    return grid


def mixture_mu_rho(mass_fractions, energies_kev: np.ndarray) -> np.ndarray:
    """Mixture rule: (mu/rho)_mix = sum_i w_i (mu/rho)_i, cm^2/g."""
    return sum(w * _element_mu(el, energies_kev) for el, w in mass_fractions.items())


def _check_muen_against_spekpy() -> str:
    """Cross-checks the hard-coded NIST air mu_en/rho against SpekPy's copy, if installed."""
    try:
        import spekpy
    except ImportError:
        return "not cross-checked (spekpy not installed)"
    path = pathlib.Path(spekpy.__file__).parent / "data" / "tables" / "nist_muen_air.dat"
    data = json.loads(path.read_text())
    e = np.array(data["photon energy"]) * 1000.0
    v = np.array(data["muen_over_rho_air"])
    sel = (e >= E_MIN_KEV - 1e-9) & (e <= E_MAX_KEV + 1e-9)
    if not (
        np.allclose(e[sel], NIST_MUEN_AIR_KEV, rtol=1e-4)
        and np.allclose(v[sel], NIST_MUEN_AIR_CM2_G, rtol=1e-6)
    ):
        raise SystemExit("NIST air mu_en/rho differs from SpekPy's copy: check the hard-coded table")
    return "identical to the copy shipped with SpekPy (spekpy/data/tables/nist_muen_air.dat)"


OWN_SECTIONS = ("## attenuation.npz", "## ipem78_*.csv")


def _foreign_sections(text: str) -> str:
    """The ``## `` sections of an existing PROVENANCE.md that this script does not write, verbatim."""
    sections = text.split("\n## ")
    foreign = ["## " + sec for sec in sections[1:] if not ("## " + sec).startswith(OWN_SECTIONS)]
    return "".join("\n" + sec.rstrip("\n") + "\n" for sec in foreign)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=pathlib.Path, default=REPO / "jaxdrr" / "physics" / "data")
    args = parser.parse_args(argv)
    import xraydb

    elements = sorted({el for c in COMPOSITIONS.values() for el in c.mass_fractions})
    edge_list = sorted({(e, el) for el in elements for e in element_edges_kev(el)})
    edges = np.array([e for e, _ in edge_list])
    edge_labels = np.array([el for _, el in edge_list])
    grid = build_grid(edges)
    names = list(COMPOSITIONS)
    mu_rho = np.stack([mixture_mu_rho(COMPOSITIONS[n].mass_fractions, grid) for n in names])
    muen_check = _check_muen_against_spekpy()

    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    compositions_json = json.dumps(
        {
            n: {
                "density_g_cm3": c.density_g_cm3,
                "mass_fractions": dict(c.mass_fractions),
                "source": c.source,
            }
            for n, c in COMPOSITIONS.items()
        },
        indent=1,
    )
    provenance = {
        "generator": "tools/make_attenuation_tables.py",
        "created": created,
        "xraydb_version": xraydb.__version__,
        "data": "xraydb.mu_elam(kind='total'): Elam, Ravel & Sieber photoabsorption + coherent + "
        "incoherent cross sections; mixtures by the mixture rule",
        "grid": f"{E_MIN_KEV}..{E_MAX_KEV} keV step {STEP_KEV} keV plus edge pairs at E*(1 -/+ {EDGE_OFFSET_REL})",
        "muen_air": "NIST NISTIR 5632 Table 4, air dry near sea level; " + muen_check,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out_dir / "attenuation.npz",
        energies_keV=grid,
        mu_rho_cm2_g=mu_rho,
        materials=np.array(names),
        density_g_cm3=np.array([COMPOSITIONS[n].density_g_cm3 for n in names]),
        edge_energies_keV=edges,
        edge_elements=edge_labels,
        muen_air_energies_keV=NIST_MUEN_AIR_KEV,
        muen_air_cm2_g=NIST_MUEN_AIR_CM2_G,
        compositions_json=np.array(compositions_json),
        provenance_json=np.array(json.dumps(provenance)),
    )

    edge_text = ", ".join(f"{el} {e:.4f}" for e, el in edge_list)
    material_lines = "\n".join(
        f"  - `{n}` ({c.density_g_cm3} g/cm^3): {c.source}." for n, c in COMPOSITIONS.items()
    )
    provenance_path = args.out_dir / "PROVENANCE.md"
    # Sections written by other generators or by hand (e.g. interactions_xraylib.npz) are kept.
    kept = _foreign_sections(provenance_path.read_text() if provenance_path.exists() else "")
    provenance_path.write_text(f"""# Provenance of jaxdrr/physics/data

## attenuation.npz
Generated {created} by `{provenance["generator"]}` with xraydb {xraydb.__version__}.

- `mu_rho_cm2_g` [M, E]: total mass attenuation coefficient mu/rho (cm^2/g), including coherent
  scattering, from `xraydb.mu_elam(element, E, kind='total')` (Elam, Ravel & Sieber tables), mixed by
  mass fraction: (mu/rho)_mix = sum_i w_i (mu/rho)_i.
- `energies_keV` [E] ({grid.size} points): {provenance["grid"]}.
- Absorption edges resolved (keV, element): {edge_text}.
- `muen_air_energies_keV`, `muen_air_cm2_g`: mass energy-absorption coefficient of dry air from NIST
  (Hubbell & Seltzer, NISTIR 5632, Table 4; public domain), used for air-kerma weighting of HVLs;
  {muen_check}.
- `materials`, `density_g_cm3`, `compositions_json`: PHYSICS.md section 3 (NIST SRD-126 Table 2,
  ICRU Report 44 tissues) and the implant/instrument materials, as in
  `jaxdrr/physics/compositions.py`; source of each composition and density:
{material_lines}

```json
{compositions_json}
```

## ipem78_*.csv
IPEM Report 78 tungsten spectra (see the header lines of each file), copied from the project's
shared/data/spectra.
{kept}""")
    print(
        f"wrote {args.out_dir / 'attenuation.npz'}: {len(names)} materials x {grid.size} energies, "
        f"{len(edges)} edges"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
