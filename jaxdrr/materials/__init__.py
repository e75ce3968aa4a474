"""Material decomposition: from a CT in Hounsfield units to per-material density channels.

The abstraction
---------------
A **material decomposition** assigns every voxel of an HU volume a vector of *fractions* over an
ordered list of M materials (channels): each fraction in [0, 1], summing to 1 per voxel. What the
ray marcher integrates is then a *density* per channel (g/cm^3)::

    density_m = fraction_m * density(HU)              (air, soft tissue, bone, ...)
    density_m = fraction_m * nominal density(table)   (metal: CT numbers saturate at 3071 HU)

and each channel is attenuated with the mass attenuation of its table material. A static,
hashable :class:`MaterialConfig` holds the channel names, their table materials, the route that
computes fractions (``method``) and the route's parameters.

Three routes compute fractions, behind one entry point (:mod:`.segmentation`) :func:`segment`
(fractions as a dict) / :func:`material_fractions` (stacked [M, I, J, K]):

* ``"thresholds"`` (:mod:`.thresholds`): M - 1 increasing HU thresholds with a shared logistic
  softness (DeepDRR's air <= -800 < soft tissue <= 350 < bone, plus bone < 2500 < metal for the
  four-channel set); smooth in HU, so renders are differentiable w.r.t. the CT.
* ``"labels"`` (:mod:`.labels`): a user label map (e.g. TotalSegmentator) with a mapping label id ->
  material; unlabelled voxels fall back to the thresholds.
* ``"vnet"`` (:mod:`.vnet_route`): the 3D network of :mod:`jaxdrr.models.vnet`, which uses context to
  separate what thresholds confuse (trabecular bone vs soft tissue, contrast vs bone).

HU -> density curves and the fractions -> densities formula live in :mod:`.hu_density` (DeepDRR
bilinear, Schneider 2000; :data:`HU_TO_DENSITY`), the configuration in :mod:`.config`, and the one
HU -> density path in :mod:`.decomposition`: :func:`material_densities` (what the renderer and the
Monte Carlo integrate, re-exported as ``jaxdrr.material_densities``) and :func:`decompose` (an HU
volume -> a density Volume, "decompose once, render many", re-exported as ``jaxdrr.decompose``).
The ``jaxdrr segment`` command is :mod:`jaxdrr.cli.segment`. Everything is pure ``jax.numpy`` and
works under ``jit``/``vmap``/``grad``.

Decompose once, render many: rendering an HU volume runs the decomposition inside every render
(differentiable w.r.t. the HU; with ``"vnet"`` the whole network, slow); :func:`decompose` runs it
once and returns a density volume that renders identically and fast. The label route works only
through :func:`decompose` (the renderer has no label map).
"""

from jaxdrr.materials.config import (
    DEFAULT_METAL,
    MATERIAL_NAMES,
    METAL_MATERIAL_NAMES,
    METAL_THRESHOLDS_HU,
    METALS,
    METHODS,
    PRESETS,
    TABLE_NAMES,
    MaterialConfig,
    as_material_config,
)
from jaxdrr.materials.decomposition import (
    decompose,
    densities_from_fractions,
    density_channels,
    material_densities,
)
from jaxdrr.materials.hu_density import (
    DEFAULT_HU_TO_DENSITY,
    HU_TO_DENSITY,
    SCHNEIDER_DENSITY,
    SCHNEIDER_HU,
    hu_to_density,
    hu_to_density_deepdrr,
    hu_to_density_schneider,
)
from jaxdrr.materials.labels import (
    label_fractions,
    load_label_mapping,
    read_structures_csv,
    totalsegmentator_mapping,
)
from jaxdrr.materials.segmentation import material_fractions, segment
from jaxdrr.materials.thresholds import (
    DEFAULT_SOFTNESS_HU,
    DEFAULT_THRESHOLDS_HU,
    METAL_THRESHOLD_HU,
    threshold_fractions,
)
from jaxdrr.materials.vnet_route import VNET_CLASSES

__all__ = [
    "MaterialConfig",
    "as_material_config",
    "segment",
    "material_fractions",
    "decompose",
    "material_densities",
    "threshold_fractions",
    "label_fractions",
    "load_label_mapping",
    "read_structures_csv",
    "totalsegmentator_mapping",
    "densities_from_fractions",
    "density_channels",
    "hu_to_density",
    "hu_to_density_deepdrr",
    "hu_to_density_schneider",
    "HU_TO_DENSITY",
    "DEFAULT_HU_TO_DENSITY",
    "SCHNEIDER_HU",
    "SCHNEIDER_DENSITY",
    "DEFAULT_THRESHOLDS_HU",
    "DEFAULT_SOFTNESS_HU",
    "METAL_THRESHOLD_HU",
    "METAL_THRESHOLDS_HU",
    "MATERIAL_NAMES",
    "METAL_MATERIAL_NAMES",
    "TABLE_NAMES",
    "METALS",
    "DEFAULT_METAL",
    "METHODS",
    "PRESETS",
    "VNET_CLASSES",
]
