"""The one HU -> density path: an HU volume -> per-material density channels.

:func:`material_densities` (the renderer's and the Monte Carlo's call, re-exported as
``jaxdrr.material_densities``) and :func:`decompose` (decompose once, render many; re-exported as
``jaxdrr.decompose``) both go through one implementation here: fractions from the configured route
(:func:`jaxdrr.materials.material_fractions`), then densities from fractions.

Channel m of a density volume is ``fraction_m * density(HU)`` (g/cm^3), with one exception by
design: channels named in ``MaterialConfig.nominal_density_names`` (the metal channel) use
``fraction_m * nominal density of their table material`` (:func:`jaxdrr.physics.density`).
CT numbers saturate at 3071 HU (12-bit storage; beam hardening and photon starvation make them
unreliable near metal anyway), so an HU -> density curve gives at most ~2.8 g/cm^3, while titanium
is 4.54 g/cm^3 and steel 8.06 g/cm^3: the curve would make implants about half as attenuating as
they are. Fractions are a property of the voxel, densities of the material. The formula itself is
:func:`jaxdrr.materials.hu_density.channel_densities`.
"""

from __future__ import annotations

import jax

from jaxdrr.errors import JaxdrrError, VolumeError
from jaxdrr.materials.config import MaterialConfig, as_material_config
from jaxdrr.materials.hu_density import DEFAULT_HU_TO_DENSITY, channel_densities
from jaxdrr.materials.segmentation import material_fractions
from jaxdrr.materials.thresholds import DEFAULT_SOFTNESS_HU, DEFAULT_THRESHOLDS_HU, threshold_fractions
from jaxdrr.volume import Volume


def densities_from_fractions(hu: jax.Array, fractions: jax.Array, config: MaterialConfig) -> jax.Array:
    """Per-channel densities [M, ...] (g/cm^3) from HU [...] and fractions [M, ...].

    ``fraction_m * density(HU)``, or ``fraction_m * nominal density`` for the channels in
    ``config.nominal_density_names`` (metal). They sum to density(HU) where there is no metal.
    """
    return channel_densities(hu, fractions, config.hu_to_density, config.nominal_densities())


def density_channels(
    hu: jax.Array,
    method: str = DEFAULT_HU_TO_DENSITY,
    thresholds=DEFAULT_THRESHOLDS_HU,
    softness_hu: float = DEFAULT_SOFTNESS_HU,
) -> jax.Array:
    """Threshold-route density channels: density(HU) times the threshold fractions.

    No channel names are known here, so no nominal (metal) densities are applied; use
    :meth:`MaterialConfig.density_channels` or :func:`decompose` for a configuration with metal.

    Args:
      hu: Hounsfield units [I, J, K].
      method: HU -> density method (key of :data:`HU_TO_DENSITY`), static.
      thresholds: M - 1 increasing decomposition thresholds (HU), static.
      softness_hu: decomposition softness (HU), static.

    Returns:
      Densities [M, I, J, K] in g/cm^3 (default: air, soft tissue, bone); they sum to density(HU).
    """
    return channel_densities(hu, threshold_fractions(hu, thresholds, softness_hu), method)


def _check_channels(volume: Volume, config: MaterialConfig) -> None:
    if volume.data.shape[0] != config.num_materials:
        raise VolumeError(
            f"density volume has {volume.data.shape[0]} channels but the material model has "
            f"{config.num_materials} ({', '.join(config.names)})"
        )


def _hu_densities(volume: Volume, config: MaterialConfig, params, labels, mapping) -> jax.Array:
    """The single implementation: fractions of the configured route, then densities [M, I, J, K]."""
    fractions = material_fractions(volume, config, labels=labels, mapping=mapping, params=params)
    return densities_from_fractions(volume.data, fractions, config)


def material_densities(volume: Volume, materials: MaterialConfig | str, params=None) -> jax.Array:
    """[M, I, J, K] densities (g/cm^3) of a volume: decomposed from HU, or as given.

    What the renderer and the Monte Carlo integrate; :func:`decompose` computes the same densities
    once and wraps them in a density Volume.

    Args:
      volume: HU (decomposed here with ``materials``) or densities (``kind="density"``, used as is).
      materials: the material model (a :class:`MaterialConfig` or a preset name).
      params: render params; for ``method="vnet"`` the network weights are ``params["vnet"]``
        (None: the shipped weights). The network then runs here, on every call: decompose once
        with :func:`jaxdrr.decompose` when one CT is rendered many times.

    Raises:
      VolumeError: not a Volume, or a density volume with another number of channels.
      JaxdrrError: ``method="labels"`` with an HU volume (call :func:`jaxdrr.decompose` with the
        label map first).
    """
    if not isinstance(volume, Volume):
        raise VolumeError(
            f"expected a jaxdrr.Volume, got {type(volume).__name__}; build one with "
            "jaxdrr.load_volume, jaxdrr.phantom or Volume.create(data, affine)"
        )
    config = as_material_config(materials)
    if volume.kind == "density":
        _check_channels(volume, config)
        return volume.data
    if config.method == "labels":
        raise JaxdrrError(
            "materials method 'labels' needs the label map: decompose first with "
            "jaxdrr.decompose(params, volume, config, labels=..., mapping=...) and render the "
            "density volume it returns"
        )
    return _hu_densities(volume, config, params, None, None)


def _materials_of(config) -> MaterialConfig:
    materials = getattr(config, "materials", config)  # a RenderConfig works too
    return as_material_config(materials)


def decompose(
    params,
    volume: Volume,
    config: MaterialConfig | str | None = None,
    *,
    labels=None,
    mapping=None,
) -> Volume:
    """Decompose once, render many: an HU volume -> a density volume for the renderer.

    ``render(params, decompose(params, ct, config), P, key)`` gives the same image as
    ``render(params, ct, P, key)`` with ``RenderConfig(materials=config)``, but the decomposition
    (for ``"vnet"``: the whole network) runs once here instead of inside every render call, so
    repeated renders of one CT (many poses, registration iterations) are much faster. It is the
    only way to render with ``method="labels"``. Pure JAX: jit, vmap and grad work (w.r.t. the HU
    and, for ``"vnet"``, ``params["vnet"]``).

    Args:
      params: render params (:func:`jaxdrr.default_params`); for ``"vnet"`` the network weights
        are ``params["vnet"]`` (None: the shipped weights). Unused by the other methods.
      volume: a Volume of HU (a density volume with the right channel count is returned as is).
      config: a :class:`MaterialConfig`, a preset name (``"thresholds"``, ``"thresholds+metal"``,
        ``"vnet"``, ``"labels"``) or a RenderConfig (its ``materials``). Default: ``MaterialConfig()``,
        the renderer's default.
      labels: label map for ``"labels"`` (see :func:`jaxdrr.materials.segment`).
      mapping: label id -> material mapping for ``"labels"``.

    Returns:
      ``Volume(kind="density", channel_names=config.names)`` [M, I, J, K] in g/cm^3, on the CT grid.
    """
    config = _materials_of(config)
    if isinstance(volume, Volume) and volume.kind == "density":
        _check_channels(volume, config)
        return volume
    data = _hu_densities(volume, config, params, labels, mapping)
    return Volume(data=data, affine_key=volume.affine_key, kind="density", channel_names=config.names)
