"""MaterialConfig: the static description of a material decomposition (hashable, a jit static).

A configuration fixes the material channels (names, in channel order, and the attenuation-table
material of each), the route that computes their fractions (``method``), the thresholds of the
threshold route, the HU -> density curve and which channels take a nominal density instead of
the curve (metal). Two presets:

* ``MaterialConfig()``: DeepDRR's three channels (air, soft_tissue, bone), thresholds
  (-800, 350) HU, softness 10 HU, tables (air, soft_tissue, cortical_bone). The renderer default.
* ``MaterialConfig.with_metal(metal="titanium", method=...)``: four channels
  (air, soft_tissue, bone, metal), thresholds (-800, 350, 2500) HU; the metal channel's table is
  one of :data:`METALS`. This is the channel set of the V-Net.

:func:`as_material_config` turns the short names ``"thresholds"``, ``"thresholds+metal"``,
``"vnet"`` and ``"labels"`` into configurations (``RenderConfig(materials="vnet")`` uses it).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.materials.hu_density import DEFAULT_HU_TO_DENSITY, channel_densities, check_hu_to_density
from jaxdrr.materials.thresholds import (
    DEFAULT_SOFTNESS_HU,
    DEFAULT_THRESHOLDS_HU,
    METAL_THRESHOLD_HU,
    check_thresholds,
    threshold_fractions,
)
from jaxdrr.physics.attenuation import available_materials, mass_attenuation
from jaxdrr.physics.compositions import density as nominal_density

METHODS = ("thresholds", "vnet", "labels")
MATERIAL_NAMES = ("air", "soft_tissue", "bone")
TABLE_NAMES = ("air", "soft_tissue", "cortical_bone")
METAL_MATERIAL_NAMES = (*MATERIAL_NAMES, "metal")
METAL_THRESHOLDS_HU = (*DEFAULT_THRESHOLDS_HU, METAL_THRESHOLD_HU)
# Attenuation-table materials accepted for the metal channel (jaxdrr.physics.available_materials).
METALS = ("titanium", "ti6al4v", "stainless_steel_316l", "iron", "cobalt_chrome", "tungsten")
DEFAULT_METAL = "titanium"
# Channels (by name) whose density is the nominal density of their table material, not density(HU).
NOMINAL_DENSITY_NAMES = ("metal",)
# Short names accepted by as_material_config / RenderConfig(materials=...).
PRESETS = ("thresholds", "thresholds+metal", "vnet", "vnet+metal", "labels", "labels+metal")


@dataclasses.dataclass(frozen=True)
class MaterialConfig:
    """Static material-model choices (hashable, usable as a jit static argument).

    Attributes:
      names: channel (material) names, in channel order; any number >= 2.
      table_names: attenuation-table material of each channel (see
        :func:`jaxdrr.physics.available_materials`).
      thresholds_hu: M - 1 increasing HU thresholds between the channels, for the threshold
        route and the label route's fallback (ignored by the V-Net).
      softness_hu: logistic softness of the thresholds (0 = hard, DeepDRR's rule).
      hu_to_density: key of :data:`jaxdrr.materials.HU_TO_DENSITY`.
      method: how fractions are computed: ``"thresholds"`` (soft HU thresholds), ``"vnet"``
        (the network in :mod:`jaxdrr.models.vnet`) or ``"labels"`` (a user label map, with
        thresholds where it has no label).
      nominal_density_names: channels whose density is ``fraction * nominal density`` of their
        table material (:func:`jaxdrr.physics.density`) instead of ``fraction * density(HU)``.
        Default ("metal",): CT numbers saturate at 3071 HU (12-bit storage, and beam hardening
        and photon starvation corrupt them around metal), so no HU -> density curve gives the
        4.4-8 g/cm^3 of implant metals; the DeepDRR curve would give about 2.8 g/cm^3.
    """

    names: tuple[str, ...] = MATERIAL_NAMES
    table_names: tuple[str, ...] = TABLE_NAMES
    thresholds_hu: tuple[float, ...] = DEFAULT_THRESHOLDS_HU
    softness_hu: float = DEFAULT_SOFTNESS_HU
    hu_to_density: str = DEFAULT_HU_TO_DENSITY
    method: str = "thresholds"
    nominal_density_names: tuple[str, ...] = NOMINAL_DENSITY_NAMES

    def __post_init__(self):
        for field in ("names", "table_names", "thresholds_hu", "nominal_density_names"):
            value = getattr(self, field)
            if isinstance(value, str):
                raise JaxdrrError(f"MaterialConfig.{field} must be a sequence, got the string {value!r}")
            object.__setattr__(self, field, tuple(value))
        if len(self.names) != len(self.table_names):
            raise JaxdrrError(f"{len(self.names)} channel names but {len(self.table_names)} table names")
        if len(self.names) < 2:
            raise JaxdrrError(f"a decomposition needs at least 2 materials, got {self.names}")
        if len(set(self.names)) != len(self.names):
            raise JaxdrrError(f"material names must be unique, got {self.names}")
        if self.method not in METHODS:
            raise JaxdrrError(f"unknown decomposition method {self.method!r}; choose one of {METHODS}")
        check_hu_to_density(self.hu_to_density)
        # The V-Net ignores the thresholds, so any increasing set is accepted there.
        needed = None if self.method == "vnet" else len(self.names)
        thresholds = check_thresholds(self.thresholds_hu, self.softness_hu, needed)
        object.__setattr__(self, "thresholds_hu", thresholds)
        object.__setattr__(self, "softness_hu", float(self.softness_hu))
        unknown = [n for n in self.table_names if n not in available_materials()]
        if unknown:
            raise JaxdrrError(
                f"unknown attenuation-table materials {unknown}; valid: {', '.join(available_materials())}"
            )

    @classmethod
    def with_metal(cls, metal: str = DEFAULT_METAL, method: str = "thresholds", **changes) -> MaterialConfig:
        """The four-channel preset (air, soft_tissue, bone, metal).

        Args:
          metal: attenuation-table material of the metal channel, one of :data:`METALS`.
          method: ``"thresholds"``, ``"vnet"`` or ``"labels"``.
          **changes: other fields (e.g. ``softness_hu``, ``hu_to_density``).

        Returns:
          A MaterialConfig with thresholds (-800, 350, 2500) HU and table names
          (air, soft_tissue, cortical_bone, ``metal``); the metal channel's density is
          ``fraction * nominal density of metal``.
        """
        if metal not in METALS:
            raise JaxdrrError(f"unknown metal {metal!r}; choose one of {', '.join(METALS)}")
        fields = dict(
            names=METAL_MATERIAL_NAMES,
            table_names=(*TABLE_NAMES, metal),
            thresholds_hu=METAL_THRESHOLDS_HU,
            method=method,
        )
        fields.update(changes)
        return cls(**fields)

    @property
    def num_materials(self) -> int:
        return len(self.names)

    @property
    def metal(self) -> str | None:
        """Attenuation-table material of the ``"metal"`` channel, or None without one."""
        return self.table_names[self.names.index("metal")] if "metal" in self.names else None

    def replace(self, **changes) -> MaterialConfig:
        return dataclasses.replace(self, **changes)

    def nominal_densities(self) -> tuple[float | None, ...]:
        """Per channel: the nominal density (g/cm^3) used instead of density(HU), or None."""
        return tuple(
            nominal_density(t) if n in self.nominal_density_names else None
            for n, t in zip(self.names, self.table_names, strict=True)
        )

    def threshold_fractions(self, hu: jax.Array) -> jax.Array:
        """Threshold-route fractions [M, *hu.shape] with this configuration's thresholds."""
        return threshold_fractions(hu, self.thresholds_hu, self.softness_hu)

    def density_channels(self, hu: jax.Array) -> jax.Array:
        """Per-channel densities [M, *hu.shape] (g/cm^3) of the threshold route, voxel by voxel.

        Only the threshold route is a function of each voxel's HU alone; the V-Net needs the
        whole volume and its spacing and the label route a label map, so use
        :func:`jaxdrr.materials.segment` / :func:`jaxdrr.decompose` for them.
        """
        if self.method != "thresholds":
            raise JaxdrrError(
                f"MaterialConfig.density_channels is the per-voxel threshold route; method "
                f"{self.method!r} needs the whole volume: use jaxdrr.decompose(params, volume, config)"
            )
        return channel_densities(
            hu, self.threshold_fractions(hu), self.hu_to_density, self.nominal_densities()
        )

    def mass_attenuation(self, energies) -> np.ndarray:
        """mu/rho [M, E] (cm^2/g) of the channels' table materials at energies (keV)."""
        return mass_attenuation(self.table_names, energies)


def as_material_config(
    materials: MaterialConfig | str | None = None,
    *,
    metal: str | None = None,
    hu_to_density: str | None = None,
) -> MaterialConfig:
    """A MaterialConfig from a configuration or a short name.

    Args:
      materials: a MaterialConfig (returned as is, apart from the overrides), None (the default
        three channels) or one of :data:`PRESETS`: ``"thresholds"`` (the default three channels),
        ``"thresholds+metal"`` (four channels with metal), ``"vnet"`` and ``"labels"`` (always
        the four channels with metal: the network predicts them, and label maps may mark
        implants); ``"vnet+metal"``/``"labels+metal"`` are the same.
      metal: attenuation-table material of the metal channel (:data:`METALS`); default titanium.
      hu_to_density: overrides the HU -> density curve.
    """
    if materials is None:
        materials = "thresholds"
    if isinstance(materials, MaterialConfig):
        cfg = materials
        if metal is not None:
            if cfg.metal is None:
                raise JaxdrrError(
                    f"metal={metal!r} given but the material channels {cfg.names} have no metal"
                )
            if metal not in METALS:
                raise JaxdrrError(f"unknown metal {metal!r}; choose one of {', '.join(METALS)}")
            tables = list(cfg.table_names)
            tables[cfg.names.index("metal")] = metal
            cfg = cfg.replace(table_names=tuple(tables))
    elif isinstance(materials, str):
        if materials not in PRESETS:
            raise JaxdrrError(f"unknown materials {materials!r}; choose one of {', '.join(PRESETS)}")
        method, _, plus = materials.partition("+")
        if method == "thresholds" and not plus:
            if metal is not None:
                raise JaxdrrError(f"metal={metal!r} needs materials 'thresholds+metal', not 'thresholds'")
            cfg = MaterialConfig()
        else:
            cfg = MaterialConfig.with_metal(metal=metal or DEFAULT_METAL, method=method)
    else:
        raise JaxdrrError(
            f"materials must be a MaterialConfig or one of {', '.join(PRESETS)}, got {type(materials).__name__}"
        )
    if hu_to_density is not None and hu_to_density != cfg.hu_to_density:
        cfg = cfg.replace(hu_to_density=hu_to_density)
    return cfg
