"""The V-Net route: material fractions from the network in :mod:`jaxdrr.models.vnet`.

The network predicts fractions of its classes (``vnet_config.classes``, by default
air, soft_tissue, bone, metal) from the whole HU volume and its voxel spacing. They are picked
by *name* for the configuration's channels, so a configuration may order its channels differently;
every channel must be a network class and every class a channel (otherwise the fractions would not
sum to 1). The model module is imported lazily: it needs flax, and only this route uses it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import jax
import numpy as np

from jaxdrr.errors import JaxdrrError

VNET_CLASSES = ("air", "soft_tissue", "bone", "metal")


def vnet_module():
    """:mod:`jaxdrr.models.vnet`, imported on first use."""
    try:
        return importlib.import_module("jaxdrr.models.vnet")
    except ImportError as exc:
        raise JaxdrrError(
            f"materials method 'vnet' needs jaxdrr.models.vnet, which cannot be imported: {exc}"
        ) from exc


def pretrained():
    """(vnet_config, weights) of the shipped network."""
    return vnet_module().load_pretrained()


def class_indices(names: Sequence[str], classes: Sequence[str]) -> tuple[int, ...]:
    """Index of each channel name among the network classes (a JaxdrrError if they differ)."""
    names, classes = tuple(names), tuple(classes)
    missing = [n for n in names if n not in classes]
    extra = [c for c in classes if c not in names]
    if missing or extra:
        raise JaxdrrError(
            f"the V-Net predicts {', '.join(classes)}; the material channels {', '.join(names)} "
            + (f"include {missing}, which it does not predict" if missing else f"lack {extra}")
            + " (use MaterialConfig.with_metal(method='vnet') or materials='vnet')"
        )
    return tuple(classes.index(n) for n in names)


def vnet_fractions(hu: jax.Array, spacing_mm, names: Sequence[str], weights=None) -> jax.Array:
    """Fractions [M, I, J, K] of the channels ``names`` predicted by the V-Net.

    Args:
      hu: Hounsfield units [I, J, K].
      spacing_mm: voxel spacing, 3 floats (static).
      names: channel names (each a network class).
      weights: network weights pytree; None for the shipped ones.
    """
    module = vnet_module()
    vnet_config, pretrained_weights = module.load_pretrained()
    weights = pretrained_weights if weights is None else weights
    spacing = tuple(float(s) for s in spacing_mm)
    fractions = module.predict_fractions(weights, hu, spacing, config=vnet_config)
    classes = tuple(getattr(vnet_config, "classes", VNET_CLASSES))
    if fractions.shape[0] != len(classes):
        raise JaxdrrError(f"the V-Net returned {fractions.shape[0]} channels for its {len(classes)} classes")
    index = class_indices(names, classes)
    if index == tuple(range(len(classes))):
        return fractions
    return fractions[np.asarray(index)]
