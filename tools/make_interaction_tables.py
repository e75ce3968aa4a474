"""Regenerates jaxdrr/physics/data/interactions_xraylib.npz (Monte Carlo interaction tables) from xraylib.

For every material of :mod:`jaxdrr.physics.compositions`, plus CsI and lead (detector and grid
materials, :data:`jaxdrr.scatter.interactions.EXTRA_MATERIALS`), it stores partial mass attenuation
coefficients (photoelectric, Compton, Rayleigh; cm^2/g) on a log-uniform 1-150 keV grid, and the
molecular incoherent scattering function S(x)/Z and squared form factor F^2(x)/F^2(0) on a uniform
momentum-transfer grid. The formulas live in :func:`jaxdrr.scatter.interactions.compute_tables`;
this script only calls it and writes the file. Provenance goes to PROVENANCE.md by hand (see the
"interactions_xraylib.npz" section there).

Usage: ``python tools/make_interaction_tables.py [--out jaxdrr/physics/data/interactions_xraylib.npz]``
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxdrr.scatter import interactions  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=interactions.TABLE_PATH)
    args = parser.parse_args(argv)
    import xraylib

    comps = interactions.shipped_compositions()
    tables = interactions.compute_tables(comps)
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    interactions.save_tables(
        tables,
        args.out,
        {
            "generator": "tools/make_interaction_tables.py",
            "created": created,
            "xraylib_version": xraylib.__version__,
            "energy_grid": f"{interactions.NUM_ENERGIES} log-uniform points {interactions.E_MIN_KEV}.."
            f"{interactions.E_MAX_KEV} keV",
            "x_grid": f"{interactions.NUM_X} uniform points 0..{interactions.X_MAX_INV_A} 1/Angstrom",
        },
        compositions={c.name: dict(c.mass_fractions) for c in comps},
    )
    print(f"wrote {args.out} ({len(tables.materials)} materials, xraylib {xraylib.__version__}, {created})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
