"""Material compositions: the elemental make-up of every material jaxdrr can attenuate with.

A :class:`Composition` is a material's nominal density (g/cm^3) and its elemental mass fractions.
The table :data:`COMPOSITIONS` is PHYSICS.md section 3: NIST SRD-126 Table 2, with the tissue
compositions of ICRU Report 44, plus iodine (contrast), aluminium (HVL filters) and the implant and
instrument materials (titanium, Ti-6Al-4V, 316L steel, cobalt-chrome, PEEK, tungsten; each entry's
``source`` names where its composition and density come from). Mass
attenuation coefficients of a material follow from the mixture rule
``(mu/rho)_mix = sum_i w_i (mu/rho)_i``; ``tools/make_attenuation_tables.py`` applies it to the
Elam/xraydb element data and ships the result in ``physics/data/attenuation.npz``.

Material names are lower-case snake_case (``"soft_tissue"``, ``"cortical_bone"``); these are the
names accepted by :func:`jaxdrr.physics.mass_attenuation`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

from jaxdrr.errors import JaxdrrError


class UnknownMaterialError(JaxdrrError):
    """A material name is not in the composition / attenuation table."""


@dataclasses.dataclass(frozen=True)
class Composition:
    """A material's nominal density and elemental mass fractions.

    Attributes:
      name: table name, e.g. ``"cortical_bone"``.
      density_g_cm3: nominal density (g/cm^3).
      mass_fractions: element symbol -> mass fraction (sums to 1 within the source's rounding).
      source: where the numbers come from.
    """

    name: str
    density_g_cm3: float
    mass_fractions: Mapping[str, float]
    source: str

    def __post_init__(self):
        # A read-only view keeps the frozen dataclass genuinely immutable.
        object.__setattr__(self, "mass_fractions", types.MappingProxyType(dict(self.mass_fractions)))


_NIST = "NIST SRD-126 Table 2"
_ICRU44 = "NIST SRD-126 Table 2 (ICRU Report 44 composition)"

COMPOSITIONS: Mapping[str, Composition] = types.MappingProxyType(
    {
        c.name: c
        for c in [
            Composition(
                "air",
                0.001205,
                {"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827},
                _NIST + ", air dry near sea level",
            ),
            Composition("water", 1.00, {"H": 0.111898, "O": 0.888102}, _NIST + ", liquid water"),
            Composition(
                "soft_tissue",
                1.06,
                {
                    "H": 0.102,
                    "C": 0.143,
                    "N": 0.034,
                    "O": 0.708,
                    "Na": 0.002,
                    "P": 0.003,
                    "S": 0.003,
                    "Cl": 0.002,
                    "K": 0.003,
                },
                _ICRU44,
            ),
            Composition(
                "cortical_bone",
                1.92,
                {
                    "H": 0.034,
                    "C": 0.155,
                    "N": 0.042,
                    "O": 0.435,
                    "Na": 0.001,
                    "Mg": 0.002,
                    "P": 0.103,
                    "S": 0.003,
                    "Ca": 0.225,
                },
                _ICRU44,
            ),
            Composition(
                "lung",
                1.05,
                {
                    "H": 0.103,
                    "C": 0.105,
                    "N": 0.031,
                    "O": 0.749,
                    "Na": 0.002,
                    "P": 0.002,
                    "S": 0.003,
                    "Cl": 0.003,
                    "K": 0.002,
                },
                _ICRU44,
            ),
            Composition(
                "adipose",
                0.95,
                {"H": 0.114, "C": 0.598, "N": 0.007, "O": 0.278, "Na": 0.001, "S": 0.001, "Cl": 0.001},
                _ICRU44,
            ),
            Composition(
                "muscle",
                1.05,
                {
                    "H": 0.102,
                    "C": 0.143,
                    "N": 0.034,
                    "O": 0.710,
                    "Na": 0.001,
                    "P": 0.002,
                    "S": 0.003,
                    "Cl": 0.001,
                    "K": 0.004,
                },
                _ICRU44,
            ),
            Composition(
                "blood",
                1.06,
                {
                    "H": 0.102,
                    "C": 0.110,
                    "N": 0.033,
                    "O": 0.745,
                    "Na": 0.001,
                    "P": 0.001,
                    "S": 0.002,
                    "Cl": 0.003,
                    "K": 0.002,
                    "Fe": 0.001,
                },
                _ICRU44,
            ),
            Composition(
                "pmma",
                1.19,
                {"H": 0.080541, "C": 0.599846, "O": 0.319613},
                _NIST + ", polymethyl methacrylate",
            ),
            Composition("titanium", 4.54, {"Ti": 1.0}, "element; density NIST SRD-126 Table 1"),
            Composition(
                "ti6al4v",
                4.43,
                {"Ti": 0.90, "Al": 0.06, "V": 0.04},
                "Ti-6Al-4V alloy (ASTM F136 / F1472), nominal Al 6 %, V 4 %, Ti balance; "
                "density 4.43 g/cm^3 (ASTM F1472 typical)",
            ),
            Composition("iron", 7.874, {"Fe": 1.0}, "element"),
            Composition(
                "stainless_steel_316l",
                8.06,
                {"Si": 0.007, "Cr": 0.17, "Mn": 0.01, "Fe": 0.668, "Ni": 0.12, "Mo": 0.025},
                "316L stainless steel (AISI 316L), nominal Cr 17 %, Ni 12 %, Mo 2.5 %, Mn 1 %, "
                "Si 0.7 %, Fe balance (C, P, S < 0.05 % omitted)",
            ),
            # Iodine contrast is modelled as a separate channel of iodine concentration c_I (g/cm^3):
            # mu = mu_water * rho_w + c_I * (mu/rho)_I. 4.93 g/cm^3 is solid iodine, for reference only.
            Composition("iodine", 4.93, {"I": 1.0}, "element (contrast agent channel)"),
            Composition("aluminium", 2.699, {"Al": 1.0}, "element (HVL filter material)"),
            # Implant and instrument materials (jaxdrr.instruments), appended so earlier table rows keep their index.
            Composition(
                "cobalt_chrome",
                8.3,
                {"Co": 0.655, "Cr": 0.285, "Mo": 0.06},
                "Co-28Cr-6Mo casting alloy (ASTM F75): mid-range Cr 28.5 % (27-30), Mo 6 % (5-7), "
                "Co balance (Ni, Fe, Si, Mn <= 1 % and C <= 0.35 % omitted); density 8.3 g/cm^3 "
                "(ASTM F75 typical)",
            ),
            Composition(
                "peek",
                1.32,
                {"C": 0.791569, "H": 0.041948, "O": 0.166483},
                "polyether ether ketone, stoichiometric C19H12O3 (xraydb atomic masses); density "
                "1.32 g/cm^3 (semi-crystalline PEEK, Victrex 450G datasheet)",
            ),
            Composition("tungsten", 19.3, {"W": 1.0}, "element; density NIST SRD-126 Table 1"),
        ]
    }
)


def material_names() -> tuple[str, ...]:
    """Names of all materials with a composition (and a shipped attenuation table)."""
    return tuple(COMPOSITIONS)


def composition(name: str) -> Composition:
    """Looks up a material's composition.

    Args:
      name: material table name, e.g. ``"water"``.

    Returns:
      The :class:`Composition`.

    Raises:
      UnknownMaterialError: the name is not in the table (the message lists valid names).
    """
    try:
        return COMPOSITIONS[name]
    except (KeyError, TypeError):
        raise UnknownMaterialError(
            f"unknown material {name!r}; valid names: {', '.join(COMPOSITIONS)}"
        ) from None


def density(name: str) -> float:
    """Nominal density (g/cm^3) of a material from the table."""
    return composition(name).density_g_cm3
