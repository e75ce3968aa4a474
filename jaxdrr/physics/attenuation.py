"""Mass attenuation coefficients mu/rho(E) of the materials jaxdrr knows, from a shipped table.

The table ``physics/data/attenuation.npz`` (made by ``tools/make_attenuation_tables.py`` from
xraydb; see ``physics/data/PROVENANCE.md``) holds total mu/rho (cm^2/g, with coherent scattering)
on a dense grid from 1 to 150 keV with every absorption edge resolved by a grid point just below
and one just above it. :func:`mass_attenuation` interpolates it log-log, and never across an edge:
an energy in the (sub-meV) gap of an edge takes the value of the side of the edge it lies on.

Everything here is NumPy (float64): the coefficients are constants computed once per render
configuration, then handed to the JAX code as arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence

import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.physics.compositions import UnknownMaterialError
from jaxdrr.physics.shipped import data_path, load_npz

TABLE_FILE = "attenuation.npz"
TABLE_PATH = data_path(TABLE_FILE)


class EnergyRangeError(JaxdrrError):
    """An energy lies outside the range of the shipped attenuation table."""


@dataclasses.dataclass(frozen=True, eq=False)
class AttenuationTable:
    """The shipped table, as loaded.

    Attributes:
      energies_keV: strictly increasing grid [E].
      mu_rho: total mass attenuation [M, E] (cm^2/g).
      materials: material names [M].
      density_g_cm3: nominal densities [M].
      edge_energies_keV: absorption edges inside the range [K].
      edge_elements: element of each edge [K].
      muen_air_energies_keV, muen_air: NIST mu_en/rho of dry air (cm^2/g) at its own nodes.
      compositions: name -> {"density_g_cm3", "mass_fractions", "source"} as used to build it.
      provenance: generator, date, xraydb version, sources.
    """

    energies_keV: np.ndarray
    mu_rho: np.ndarray
    materials: tuple[str, ...]
    density_g_cm3: np.ndarray
    edge_energies_keV: np.ndarray
    edge_elements: tuple[str, ...]
    muen_air_energies_keV: np.ndarray
    muen_air: np.ndarray
    compositions: dict
    provenance: dict

    @property
    def energy_range_keV(self) -> tuple[float, float]:
        return float(self.energies_keV[0]), float(self.energies_keV[-1])


@functools.lru_cache(maxsize=1)
def load_table() -> AttenuationTable:
    """Loads (once) and returns the shipped attenuation table (its arrays are read-only)."""
    arrays = load_npz(
        TABLE_FILE, what="attenuation table", regenerate="python tools/make_attenuation_tables.py"
    )
    return AttenuationTable(
        energies_keV=arrays["energies_keV"],
        mu_rho=arrays["mu_rho_cm2_g"],
        materials=tuple(str(s) for s in arrays["materials"]),
        density_g_cm3=arrays["density_g_cm3"],
        edge_energies_keV=arrays["edge_energies_keV"],
        edge_elements=tuple(str(s) for s in arrays["edge_elements"]),
        muen_air_energies_keV=arrays["muen_air_energies_keV"],
        muen_air=arrays["muen_air_cm2_g"],
        compositions=json.loads(str(arrays["compositions_json"])),
        provenance=json.loads(str(arrays["provenance_json"])),
    )


def available_materials() -> tuple[str, ...]:
    """Names accepted by :func:`mass_attenuation`."""
    return load_table().materials


def _material_indices(materials: Sequence[str]) -> list[int]:
    if isinstance(materials, str):
        materials = [materials]
    names = available_materials()
    out = []
    for m in materials:
        if m not in names:
            raise UnknownMaterialError(f"unknown material {m!r}; valid names: {', '.join(names)}")
        out.append(names.index(m))
    return out


def _check_energies(energies, lo: float, hi: float, what: str) -> np.ndarray:
    e = np.asarray(energies, dtype=np.float64)
    if e.ndim > 1:
        raise EnergyRangeError(f"energies must be a scalar or 1-D array (keV), got shape {e.shape}")
    e = np.atleast_1d(e)
    if not np.all(np.isfinite(e)):
        raise EnergyRangeError("energies contain NaN or Inf")
    # Tolerate float rounding at the table ends (e.g. 150.0000001 from a float32 grid).
    tol = 1e-6 * hi
    bad = (e < lo - tol) | (e > hi + tol)
    if bad.any():
        raise EnergyRangeError(
            f"energies {e[bad][:5].tolist()} keV are outside the {what} range [{lo:g}, {hi:g}] keV"
        )
    return np.clip(e, lo, hi)


def _loglog_interp(grid: np.ndarray, values: np.ndarray, edges: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Log-log interpolation of values [..., G] at e [N] on a grid that brackets every edge.

    The interval holding a query is found with ``searchsorted``; if that interval contains an edge
    (the tiny below/above gap), the query takes the grid value on its own side of the edge instead
    of a value interpolated through the jump.
    """
    i = np.clip(np.searchsorted(grid, e, side="right") - 1, 0, grid.size - 2)
    x0, x1 = grid[i], grid[i + 1]
    t = (np.log(e) - np.log(x0)) / (np.log(x1) - np.log(x0))
    if edges.size:
        j = np.searchsorted(edges, x0, side="right")  # first edge above x0
        has_edge = j < edges.size
        edge_here = np.where(has_edge, edges[np.minimum(j, edges.size - 1)], np.inf)
        in_gap = edge_here <= x1
        t = np.where(in_gap, (e >= edge_here).astype(np.float64), t)
    logv = np.log(values)
    return np.exp(logv[..., i] * (1.0 - t) + logv[..., i + 1] * t)


def mass_attenuation(materials: Sequence[str], energies) -> np.ndarray:
    """Total mass attenuation coefficients mu/rho (cm^2/g) of materials at energies.

    Args:
      materials: material names (see :func:`available_materials`), or one name.
      energies: photon energies in keV, scalar or 1-D, within the table range (1..150 keV).

    Returns:
      float64 array [M, E] (M = number of materials, E = number of energies).

    Raises:
      UnknownMaterialError: a name is not in the table (the message lists the valid names).
      EnergyRangeError: an energy is outside the table range or not finite.
    """
    table = load_table()
    idx = _material_indices(materials)
    e = _check_energies(energies, *table.energy_range_keV, what="attenuation table")
    return _loglog_interp(table.energies_keV, table.mu_rho[idx], table.edge_energies_keV, e)


def linear_attenuation(materials: Sequence[str], energies, densities_g_cm3=None) -> np.ndarray:
    """Linear attenuation coefficients mu (1/cm) = (mu/rho) * rho.

    Args:
      materials: material names.
      energies: keV, scalar or 1-D.
      densities_g_cm3: densities [M]; defaults to each material's nominal density.

    Returns:
      float64 array [M, E] in 1/cm.
    """
    if isinstance(materials, str):
        materials = [materials]
    mu_rho = mass_attenuation(materials, energies)
    if densities_g_cm3 is None:
        table = load_table()
        densities_g_cm3 = table.density_g_cm3[_material_indices(materials)]
    return mu_rho * np.asarray(densities_g_cm3, dtype=np.float64).reshape(-1, 1)


def air_mass_energy_absorption(energies) -> np.ndarray:
    """NIST mass energy-absorption coefficient mu_en/rho of dry air (cm^2/g), for air kerma.

    Log-log interpolation between the NIST nodes (the NIST-recommended scheme); the Ar K edge at
    3.2029 keV is a duplicated node and is not interpolated across.

    Args:
      energies: keV, scalar or 1-D, within 1..150 keV.

    Returns:
      float64 array [E].
    """
    table = load_table()
    grid, values = table.muen_air_energies_keV, table.muen_air
    e = _check_energies(energies, float(grid[0]), float(grid[-1]), what="NIST air mu_en/rho")
    # The duplicated edge node becomes a strictly increasing below/above pair for the interpolator.
    dup = np.flatnonzero(np.diff(grid) == 0)
    grid = grid.copy()
    grid[dup] *= 1 - 1e-9
    edges = grid[dup + 1] * 1.0
    return _loglog_interp(grid, values, edges, e)
