"""The data files shipped in ``jaxdrr/physics/data``: their paths and the one ``.npz`` reader.

Two tables are shipped as ``.npz`` files, each made by a script in ``tools/`` (provenance in
``physics/data/PROVENANCE.md``): ``attenuation.npz`` (total mass attenuation, read by
:mod:`jaxdrr.physics.attenuation`) and ``interactions_xraylib.npz`` (the Monte Carlo's interaction
tables, read by :mod:`jaxdrr.scatter.interactions`). :func:`load_npz` reads one of them once per
process: every array comes back read-only, because the arrays are shared by all callers (a write
into one would silently change every later render).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

__all__ = ["DATA_DIR", "data_path", "load_npz"]

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"


def data_path(filename: str) -> pathlib.Path:
    """The path of a shipped data file (it may be missing: :func:`load_npz` says how to make it)."""
    return DATA_DIR / filename


@functools.cache
def _read(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def load_npz(
    filename: str, *, what: str, regenerate: str, missing_error: type[Exception] = FileNotFoundError
) -> dict:
    """The arrays of a shipped ``.npz`` table, read once per process.

    Args:
      filename: the file name inside ``physics/data``.
      what: what the table is, for the error message (e.g. ``"attenuation table"``).
      regenerate: the command that remakes the file, quoted in the error when it is missing.
      missing_error: the exception raised when the file is missing (a reader's own error type).

    Returns:
      A new dict ``{array name: read-only array}`` (the arrays are shared between calls).

    Raises:
      missing_error: the file does not exist.
    """
    path = data_path(filename)
    if not path.exists():
        raise missing_error(f"{what} {path} is missing; regenerate it with `{regenerate}`")
    return dict(_read(path))
