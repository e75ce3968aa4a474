"""The single entry point of material decomposition: ``segment(volume, method, ...)``.

Every route returns fractions [M, I, J, K] of the configuration's channels that lie in [0, 1] and
sum to 1 per voxel; :func:`segment` hands them out as ``{material name: [I, J, K]}`` and
:func:`material_fractions` as one stacked array (what :func:`jaxdrr.decompose` and the renderer use).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax

from jaxdrr.errors import JaxdrrError, VolumeError
from jaxdrr.materials.config import METHODS, MaterialConfig, as_material_config
from jaxdrr.materials.labels import check_label_map, label_fractions, mapping_table
from jaxdrr.materials.thresholds import threshold_fractions
from jaxdrr.materials.vnet_route import vnet_fractions
from jaxdrr.volume import Volume


def vnet_weights(params):
    """The network weights in ``params``: ``params["vnet"]`` of a render-params pytree, the
    weights themselves, or None (the shipped weights)."""
    if params is None:
        return None
    if isinstance(params, Mapping) and "mu_rho" in params:  # a render-params pytree
        if "vnet" not in params:
            raise JaxdrrError(
                "params has no 'vnet' entry: build them with jaxdrr.default_params(config) for a "
                "config whose materials method is 'vnet', or pass params=None for the shipped weights"
            )
        return params["vnet"]
    if isinstance(params, Mapping) and set(params) == {"vnet"}:
        return params["vnet"]
    return params


def _check_hu_volume(volume) -> None:
    if not isinstance(volume, Volume):
        raise VolumeError(
            f"expected a jaxdrr.Volume of HU, got {type(volume).__name__}; build one with "
            "jaxdrr.load_volume, jaxdrr.phantom or Volume.create(data, affine)"
        )
    if volume.kind != "hu":
        raise VolumeError(f"material decomposition needs a volume of HU, got kind={volume.kind!r}")


def material_fractions(
    volume: Volume,
    config: MaterialConfig | str | None = None,
    *,
    labels=None,
    mapping=None,
    params=None,
) -> jax.Array:
    """Fractions [M, I, J, K] of ``config``'s channels for an HU volume (see :func:`segment`)."""
    _check_hu_volume(volume)
    config = as_material_config(config)
    hu = volume.data
    if config.method != "labels" and (labels is not None or mapping is not None):
        raise JaxdrrError(
            f"a label map / mapping was given but the materials method is {config.method!r}; use method 'labels'"
        )
    if config.method == "thresholds":
        return threshold_fractions(hu, config.thresholds_hu, config.softness_hu)
    if config.method == "labels":
        if labels is None or mapping is None:
            raise JaxdrrError(
                "materials method 'labels' needs a label map (labels=Volume or array on the CT grid) "
                "and mapping={label id: material} (see load_label_mapping, totalsegmentator_mapping)"
            )
        table = mapping_table(mapping, config.names)
        label_data = check_label_map(labels, volume)
        return label_fractions(hu, label_data, table, config.thresholds_hu, config.softness_hu)
    if config.method == "vnet":
        spacing = tuple(float(s) for s in volume.spacing)
        return vnet_fractions(hu, spacing, config.names, vnet_weights(params))
    raise JaxdrrError(f"unknown decomposition method {config.method!r}; choose one of {METHODS}")


def segment(
    volume: Volume,
    method: str | None = None,
    *,
    labels=None,
    mapping=None,
    params=None,
    config: MaterialConfig | str | None = None,
) -> dict[str, jax.Array]:
    """Splits a CT into material fractions: ``{material name: fractions [I, J, K]}``.

    The fractions lie in [0, 1] and sum to 1 in every voxel. Pure JAX: works under ``jit`` (make
    ``method``, ``mapping`` and ``config`` static), ``vmap`` over the volume data, and ``grad``
    w.r.t. the HU for the threshold and V-Net routes (and for the unlabelled voxels of the label
    route).

    Args:
      volume: a :class:`jaxdrr.Volume` of HU.
      method: ``"thresholds"`` (soft HU thresholds), ``"vnet"`` (the network of
        :mod:`jaxdrr.models.vnet`) or ``"labels"`` (a user label map; thresholds where a voxel
        has label 0 or an unmapped label). Default: ``config.method``, else ``"labels"`` when
        ``labels`` is given, else ``"thresholds"``. Overrides ``config.method``.
      labels: the label map for ``"labels"``: a Volume on the CT grid (affine within 1e-3 mm) or
        an integer array of the CT's shape.
      mapping: ``{label id: material name or None}`` or ``{material name: [label ids]}`` (see
        :func:`load_label_mapping`, :func:`totalsegmentator_mapping`).
      params: for ``"vnet"``: the network weights, or a render-params pytree holding them under
        ``"vnet"``; None for the shipped weights.
      config: the channels; default the four-channel set (air, soft_tissue, bone, metal) of
        :meth:`MaterialConfig.with_metal` (metal: titanium). A preset name is accepted too.

    Returns:
      ``{name: [I, J, K]}`` in the configuration's channel order.
    """
    if config is None:
        if method is None:
            method = "labels" if labels is not None else "thresholds"
        if method not in METHODS:
            raise JaxdrrError(f"unknown decomposition method {method!r}; choose one of {METHODS}")
        config = MaterialConfig.with_metal(method=method)
    else:
        config = as_material_config(config)
        if method is not None and method != config.method:
            if method not in METHODS:
                raise JaxdrrError(f"unknown decomposition method {method!r}; choose one of {METHODS}")
            config = config.replace(method=method)
    fractions = material_fractions(volume, config, labels=labels, mapping=mapping, params=params)
    return {name: fractions[m] for m, name in enumerate(config.names)}
