"""Photon interaction data for the Monte Carlo engine: cross sections and sampling tables per material.

An :class:`InteractionTables` holds, for every material of a simulation, everything the transport
needs (NumPy float64 here; :func:`device_tables` turns it into float32 JAX arrays):

* partial mass attenuation coefficients (cm^2/g) for photoelectric absorption, incoherent
  (Compton) and coherent (Rayleigh) scattering on a log-uniform energy grid, 1-150 keV
  (:data:`NUM_ENERGIES` points, 0.25 % apart). The transport interpolates them log-log; an
  absorption edge is smeared over one grid interval (at most 0.37 keV at 150 keV, 0.08 keV at the
  iodine K edge);
* the molecular incoherent scattering function ``S(x) / Z`` (Klein-Nishina rejection weight, in
  [0, 1]) and the squared molecular form factor ``F^2(x) / F^2(0)`` on a uniform grid of the momentum
  transfer ``x = sin(theta / 2) / lambda`` (1/Angstrom, xraylib's ``MomentTransf``), 0-12.5 1/A;
* the Rayleigh inverse cumulative table: x^2 as a function of the normalised cumulative
  ``C(x^2) = int_0^{x^2} F^2 d(x^2)``, on :data:`NUM_INVERSE` uniform probabilities.

Molecular quantities follow the independent-atom (mixture) rule: per gram, element i with mass
fraction w_i and atomic weight A_i contributes ``w_i / A_i`` atoms (times Avogadro's number), so
``S_mol = sum_i (w_i / A_i) S_i(x, Z_i)``, ``Z_mol = sum_i (w_i / A_i) Z_i`` and
``F^2_mol = sum_i (w_i / A_i) F_i(x, Z_i)^2``.

Sources: xraylib (Schoonjans et al. 2011; ``CS_Photo``, ``CS_Compt``, ``CS_Rayl`` from the
Brunetti/Elam-based cross sections, ``SF_Compt`` and ``FF_Rayl`` from Hubbell et al. 1975 /
Cullen EPDL97). The shipped file ``physics/data/interactions_xraylib.npz`` covers every material of
:data:`jaxdrr.physics.COMPOSITIONS` and is made by ``tools/make_interaction_tables.py``, which calls
:func:`compute_tables` (the one place the formulas live). Materials that are not shipped (a user
:class:`jaxdrr.physics.Composition`) are computed at run time with xraylib.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from jaxdrr.atomic import write_npz
from jaxdrr.errors import JaxdrrError
from jaxdrr.physics.attenuation import EnergyRangeError
from jaxdrr.physics.compositions import COMPOSITIONS, Composition, UnknownMaterialError
from jaxdrr.physics.shipped import data_path, load_npz

TABLE_FILE = "interactions_xraylib.npz"
TABLE_PATH = data_path(TABLE_FILE)

E_MIN_KEV, E_MAX_KEV = 1.0, 150.0
NUM_ENERGIES = 2048
X_MAX_INV_A = 12.5  # > x at 180 degrees for 150 keV: 150 / 12.398 = 12.10 1/A
NUM_X = 4096
NUM_INVERSE = 8192
# hc in keV * Angstrom: x = sin(theta/2) * E / HC (xraylib MomentTransf uses the same constant).
HC_KEV_A = 12.39841875


# Detector and grid materials shipped with the tables (not attenuation-table materials of the renderer).
CSI = Composition("csi", 4.51, {"Cs": 0.511549, "I": 0.488451}, "CsI, stoichiometric")
LEAD = Composition("lead", 11.35, {"Pb": 1.0}, "element")
EXTRA_MATERIALS = (CSI, LEAD)


def shipped_compositions() -> list[Composition]:
    """The compositions the shipped file covers: jaxdrr.physics.COMPOSITIONS plus EXTRA_MATERIALS."""
    return [*COMPOSITIONS.values(), *EXTRA_MATERIALS]


class InteractionDataError(JaxdrrError):
    """Interaction tables cannot be built or loaded (xraylib missing, unknown element)."""


def energy_grid() -> np.ndarray:
    """The log-uniform energy grid [NUM_ENERGIES] in keV."""
    return np.exp(np.linspace(np.log(E_MIN_KEV), np.log(E_MAX_KEV), NUM_ENERGIES))


def x_grid() -> np.ndarray:
    """The uniform momentum-transfer grid [NUM_X] in 1/Angstrom."""
    return np.linspace(0.0, X_MAX_INV_A, NUM_X)


@dataclasses.dataclass(frozen=True, eq=False)
class InteractionTables:
    """Interaction data of the materials of one simulation, in channel order.

    Attributes:
      materials: material names [M].
      energies_keV: log-uniform grid [E].
      mu_photo, mu_compton, mu_rayleigh: partial mass attenuation [M, E], cm^2/g.
      x: momentum-transfer grid [X], 1/Angstrom.
      s_norm: S_mol(x) / Z_mol [M, X], in [0, 1].
      f2_norm: F^2_mol(x) / F^2_mol(0) [M, X].
      rayleigh_cdf: normalised cumulative of F^2 in x^2 at the grid points [M, X] (1 at X_MAX).
      rayleigh_inverse: x^2 at the uniform probabilities linspace(0, 1, NUM_INVERSE) [M, NUM_INVERSE].
      provenance: where the data came from.
    """

    materials: tuple[str, ...]
    energies_keV: np.ndarray
    mu_photo: np.ndarray
    mu_compton: np.ndarray
    mu_rayleigh: np.ndarray
    x: np.ndarray
    s_norm: np.ndarray
    f2_norm: np.ndarray
    rayleigh_cdf: np.ndarray
    rayleigh_inverse: np.ndarray
    provenance: str = ""

    @property
    def mu_total(self) -> np.ndarray:
        """Total mass attenuation [M, E] (cm^2/g)."""
        return self.mu_photo + self.mu_compton + self.mu_rayleigh

    def subset(self, names: Sequence[str]) -> InteractionTables:
        """The tables of the named materials, in that order."""
        idx = [self.materials.index(n) for n in names]
        return dataclasses.replace(
            self,
            materials=tuple(names),
            mu_photo=self.mu_photo[idx],
            mu_compton=self.mu_compton[idx],
            mu_rayleigh=self.mu_rayleigh[idx],
            s_norm=self.s_norm[idx],
            f2_norm=self.f2_norm[idx],
            rayleigh_cdf=self.rayleigh_cdf[idx],
            rayleigh_inverse=self.rayleigh_inverse[idx],
        )

    def cross_sections(self, energies) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(photo, Compton, Rayleigh) mass attenuation [M, E'] at energies (keV), log-log interpolated
        exactly as the transport does (float64)."""
        e = check_energies(energies)
        u = (np.log(e) - np.log(E_MIN_KEV)) / _log_step()
        i = np.clip(np.floor(u).astype(int), 0, NUM_ENERGIES - 2)
        t = u - i
        out = []
        for table in (self.mu_photo, self.mu_compton, self.mu_rayleigh):
            lg = np.log(np.maximum(table, 1e-30))
            out.append(np.exp(lg[:, i] * (1 - t) + lg[:, i + 1] * t))
        return tuple(out)


def _log_step() -> float:
    return (np.log(E_MAX_KEV) - np.log(E_MIN_KEV)) / (NUM_ENERGIES - 1)


def check_energies(energies) -> np.ndarray:
    """Validates energies (keV) against the table range; raises EnergyRangeError outside 1-150 keV."""
    e = np.atleast_1d(np.asarray(energies, dtype=np.float64))
    if not np.all(np.isfinite(e)):
        raise EnergyRangeError("energies contain NaN or Inf")
    bad = (e < E_MIN_KEV * (1 - 1e-9)) | (e > E_MAX_KEV * (1 + 1e-9))
    if bad.any():
        raise EnergyRangeError(
            f"energies {e[bad][:5].tolist()} keV are outside the Monte Carlo interaction tables "
            f"[{E_MIN_KEV:g}, {E_MAX_KEV:g}] keV"
        )
    return np.clip(e, E_MIN_KEV, E_MAX_KEV)


def _xraylib():
    try:
        import xraylib
        import xraylib_np
    except ImportError:
        raise InteractionDataError(
            "xraylib is needed to compute interaction tables for materials that are not shipped; "
            'install it with `pip install xraylib` (or `pip install "jaxdrr[mc]"`)'
        ) from None
    return xraylib, xraylib_np


def _rayleigh_cumulative(x: np.ndarray, f2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised cumulative of F^2 in the variable x^2, and its inverse on uniform probabilities.

    The cumulative is integrated with the trapezoid rule in x^2 (the grid is fine enough that F^2 is
    close to linear over each interval); the inverse is the piecewise-linear inverse of it.
    """
    x2 = x**2
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (f2[1:] + f2[:-1]) * np.diff(x2))])
    cum = cum / cum[-1]
    probs = np.linspace(0.0, 1.0, NUM_INVERSE)
    inverse = np.interp(probs, cum, x2)
    return cum, inverse


def compute_tables(compositions: Mapping[str, Composition] | Sequence[Composition]) -> InteractionTables:
    """Computes the interaction tables of compositions with xraylib.

    Args:
      compositions: :class:`jaxdrr.physics.Composition` objects (a sequence, or a name -> Composition
        mapping). Only the mass fractions are used; densities come from the volume.

    Returns:
      :class:`InteractionTables` in the given order.

    Raises:
      InteractionDataError: xraylib is not installed, or an element symbol is unknown.
    """
    xrl, xnp = _xraylib()
    if isinstance(compositions, Mapping):
        compositions = list(compositions.values())
    energies, x = energy_grid(), x_grid()
    photo, compt, rayl, s_norm, f2_norm, cdf, inverse = [], [], [], [], [], [], []
    for comp in compositions:
        fractions = dict(comp.mass_fractions)
        total_w = sum(fractions.values())
        zs, ws = [], []
        for symbol, w in fractions.items():
            try:
                z = xrl.SymbolToAtomicNumber(symbol)
            except ValueError:
                raise InteractionDataError(f"material {comp.name!r}: unknown element {symbol!r}") from None
            zs.append(z)
            ws.append(w / total_w)
        zs_a = np.array(zs, dtype=np.int64)
        ws_a = np.array(ws)
        atoms = ws_a / np.array([xrl.AtomicWeight(int(z)) for z in zs])  # mol atoms per gram
        photo.append(ws_a @ xnp.CS_Photo(zs_a, energies))
        compt.append(ws_a @ xnp.CS_Compt(zs_a, energies))
        rayl.append(ws_a @ xnp.CS_Rayl(zs_a, energies))
        # SF_Compt raises below x = 1e-3 1/A; S(0) = 0 exactly.
        s = np.zeros((len(zs), x.size))
        s[:, 1:] = xnp.SF_Compt(zs_a, x[1:])
        s_mol = atoms @ s
        s_norm.append(np.clip(s_mol / (atoms @ zs_a.astype(float)), 0.0, 1.0))
        f2 = atoms @ xnp.FF_Rayl(zs_a, x) ** 2
        f2n = f2 / f2[0]
        f2_norm.append(f2n)
        c, inv = _rayleigh_cumulative(x, f2n)
        cdf.append(c)
        inverse.append(inv)
    provenance = (
        f"xraylib {getattr(xrl, '__version__', '?')}: CS_Photo, CS_Compt, CS_Rayl (cm^2/g), "
        "SF_Compt, FF_Rayl; mixture rule"
    )
    return InteractionTables(
        materials=tuple(c.name for c in compositions),
        energies_keV=energies,
        mu_photo=np.stack(photo),
        mu_compton=np.stack(compt),
        mu_rayleigh=np.stack(rayl),
        x=x,
        s_norm=np.stack(s_norm),
        f2_norm=np.stack(f2_norm),
        rayleigh_cdf=np.stack(cdf),
        rayleigh_inverse=np.stack(inverse),
        provenance=provenance,
    )


def save_tables(
    tables: InteractionTables,
    path: pathlib.Path,
    extra_provenance: dict | None = None,
    compositions: dict | None = None,
) -> None:
    """Writes tables as the shipped .npz (the Rayleigh cumulative tables are recomputed on load).

    ``compositions`` (name -> mass fractions) is stored so that a user :class:`Composition` with a
    shipped name but other fractions is recomputed rather than silently replaced.
    """
    prov = {"data": tables.provenance, **(extra_provenance or {})}
    write_npz(
        path,
        materials=np.array(tables.materials),
        energies_keV=tables.energies_keV,
        mu_photo_cm2_g=tables.mu_photo,
        mu_compton_cm2_g=tables.mu_compton,
        mu_rayleigh_cm2_g=tables.mu_rayleigh,
        x_inv_angstrom=tables.x,
        s_norm=tables.s_norm,
        f2_norm=tables.f2_norm,
        provenance_json=np.array(json.dumps(prov)),
        compositions_json=np.array(json.dumps(compositions or {})),
    )


def _shipped_arrays() -> dict:
    return load_npz(
        TABLE_FILE,
        what="interaction table",
        regenerate="python tools/make_interaction_tables.py",
        missing_error=InteractionDataError,
    )


@functools.lru_cache(maxsize=1)
def load_shipped() -> InteractionTables:
    """Loads (once) the shipped tables (:func:`shipped_compositions`); the arrays are read-only."""
    a = _shipped_arrays()
    x = a["x_inv_angstrom"]
    if x.size != NUM_X or a["energies_keV"].size != NUM_ENERGIES:
        raise InteractionDataError(f"{TABLE_PATH} does not match this jaxdrr version; regenerate it")
    cdf, inv = zip(*[_rayleigh_cumulative(x, f2) for f2 in a["f2_norm"]], strict=True)
    return InteractionTables(
        materials=tuple(str(s) for s in a["materials"]),
        energies_keV=a["energies_keV"],
        mu_photo=a["mu_photo_cm2_g"],
        mu_compton=a["mu_compton_cm2_g"],
        mu_rayleigh=a["mu_rayleigh_cm2_g"],
        x=x,
        s_norm=a["s_norm"],
        f2_norm=a["f2_norm"],
        rayleigh_cdf=np.stack(cdf),
        rayleigh_inverse=np.stack(inv),
        provenance=str(a["provenance_json"]),
    )


@functools.lru_cache(maxsize=1)
def _shipped_fractions() -> dict:
    a = _shipped_arrays()
    return json.loads(str(a["compositions_json"])) if "compositions_json" in a else {}


def _normalised(fractions) -> dict:
    total = sum(fractions.values())
    return {k: round(v / total, 9) for k, v in fractions.items()}


def tables_for(materials: Sequence) -> InteractionTables:
    """Interaction tables for a list of materials: shipped names and/or :class:`Composition` objects.

    Args:
      materials: each a material name of :data:`jaxdrr.physics.COMPOSITIONS` (shipped data) or a
        :class:`jaxdrr.physics.Composition` (computed with xraylib, which must be installed).

    Returns:
      :class:`InteractionTables` in the given order.

    Raises:
      UnknownMaterialError: a name is not a known material.
      InteractionDataError: a custom composition needs xraylib and it is missing.
    """
    if isinstance(materials, (str, Composition)):
        materials = [materials]
    if len(materials) == 0:
        raise JaxdrrError("at least one material is needed")
    shipped = load_shipped()
    parts: list[InteractionTables] = []
    for m in materials:
        if isinstance(m, Composition):
            known = _shipped_fractions().get(m.name)
            if known is not None and _normalised(known) == _normalised(dict(m.mass_fractions)):
                parts.append(shipped.subset([m.name]))
            else:
                parts.append(compute_tables([m]))
        elif isinstance(m, str):
            if m not in shipped.materials:
                raise UnknownMaterialError(
                    f"unknown material {m!r}; valid names: {', '.join(shipped.materials)} "
                    "(or pass a jaxdrr.physics.Composition with elemental mass fractions)"
                )
            parts.append(shipped.subset([m]))
        else:
            raise JaxdrrError(
                f"a material must be a name or a jaxdrr.physics.Composition, got {type(m).__name__}"
            )
    first = parts[0]
    cat = functools.partial(np.concatenate, axis=0)
    return dataclasses.replace(
        first,
        materials=tuple(n for p in parts for n in p.materials),
        mu_photo=cat([p.mu_photo for p in parts]),
        mu_compton=cat([p.mu_compton for p in parts]),
        mu_rayleigh=cat([p.mu_rayleigh for p in parts]),
        s_norm=cat([p.s_norm for p in parts]),
        f2_norm=cat([p.f2_norm for p in parts]),
        rayleigh_cdf=cat([p.rayleigh_cdf for p in parts]),
        rayleigh_inverse=cat([p.rayleigh_inverse for p in parts]),
        provenance="; ".join(sorted({p.provenance for p in parts})),
    )
