"""Time estimates for the CLI's long single steps, learnt from this machine's previous runs.

A V-Net decomposition or a Monte Carlo scatter image is one opaque jitted call: the command
cannot count progress inside it, but it can say how long the step should take. The estimate is
``amount x seconds per unit``: the rate measured by the last run of the same step on this machine
(stored in ``$XDG_CACHE_HOME/jaxdrr/timings.json``, else ``~/.cache/jaxdrr/timings.json``,
beside the compilation cache), or, before any run, a reference rate measured on a 2-core
x86 CPU (see :data:`REFERENCE_SECONDS_PER_UNIT`). The first run includes compilation, so its
estimate errs long.

The file is a convenience: a missing, unreadable or unwritable file never stops a command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jaxdrr import atomic

TIMINGS_FILE = "timings.json"

# Seconds per unit on the project's 2-core reference CPU (README "Timings"), compilation included:
# "vnet": per million CT voxels (512x512x133, 34.9 M voxels, ~110 s); "mc": per million Monte Carlo
# histories on a clinical CT (~8e4 histories/s analog).
REFERENCE_SECONDS_PER_UNIT = {"vnet": 3.2, "mc": 12.0}


def timings_path(environ=None) -> Path:
    """``$XDG_CACHE_HOME/jaxdrr/timings.json`` (absolute XDG only), else ``~/.cache/jaxdrr/timings.json``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "jaxdrr" / TIMINGS_FILE


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def estimate_seconds(step: str, amount: float, *, path: Path | None = None) -> float | None:
    """Expected seconds for ``amount`` units of ``step`` (None for an unknown step)."""
    rate = _read(path or timings_path()).get(step, REFERENCE_SECONDS_PER_UNIT.get(step))
    if not isinstance(rate, (int, float)) or rate <= 0:
        return None
    return float(rate) * float(amount)


def record_seconds(step: str, amount: float, seconds: float, *, path: Path | None = None) -> None:
    """Stores the measured rate of ``step`` for the next estimate (best effort: errors are ignored)."""
    if amount <= 0 or seconds <= 0:
        return
    path = path or timings_path()
    data = _read(path)
    data[step] = seconds / amount
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, data, indent=1, sort_keys=True)
    except OSError:
        pass
