"""Monte Carlo X-ray transport: scatter images, dose, and the reference for learned scatter models.

* :func:`monte_carlo` (:mod:`jaxdrr.scatter.monte_carlo`): the public entry point, same inputs as the
  renderer; returns primary / single-Compton / single-Rayleigh / multiple-scatter images in renderer
  units and the deposited energy per voxel.
* :mod:`jaxdrr.scatter.transport`: the jittable photon-lane kernel (Woodcock tracking, interaction
  sampling, tallies).
* :mod:`jaxdrr.scatter.majorants`: local (per-block) Woodcock majorants
  (``MonteCarloConfig(tracking="local")``).
* :mod:`jaxdrr.scatter.forced_detection`: forced detection of the scatter images
  (``MonteCarloConfig(forced_detection=ForcedDetection())``).
* :mod:`jaxdrr.scatter.interactions`: cross sections and sampling tables from xraylib (shipped for
  the built-in materials, computed at run time for user compositions).

* :mod:`jaxdrr.scatter.estimate`: scatter inside the renderer (``RenderConfig(scatter=...)``): the
  scatter ConvNet (:mod:`jaxdrr.models.scatter_net`) or the Monte Carlo on a low-resolution detector.

See docs/monte_carlo.md for the method, units and validation.
"""

from jaxdrr.scatter.estimate import ScatterConfig, check_range, conditioning, mc_scatter, net_scatter
from jaxdrr.scatter.forced_detection import ForcedDetection
from jaxdrr.scatter.interactions import InteractionDataError, InteractionTables, compute_tables, tables_for
from jaxdrr.scatter.monte_carlo import (
    CSI,
    IMAGE_NAMES,
    LEAD,
    DetectorAbsorption,
    GridConfig,
    MonteCarloConfig,
    monte_carlo,
    prepare,
    woodcock_majorant,
)

__all__ = [
    "ScatterConfig",
    "net_scatter",
    "mc_scatter",
    "conditioning",
    "check_range",
    "monte_carlo",
    "MonteCarloConfig",
    "DetectorAbsorption",
    "GridConfig",
    "ForcedDetection",
    "CSI",
    "LEAD",
    "IMAGE_NAMES",
    "prepare",
    "woodcock_majorant",
    "InteractionTables",
    "InteractionDataError",
    "compute_tables",
    "tables_for",
]
