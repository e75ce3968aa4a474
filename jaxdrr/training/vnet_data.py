"""Training and validation data of the two-scale V-Net (:mod:`jaxdrr.models.vnet`, ``context_factor > 0``).

The abstraction: a **training pair** is one random CT seen at two scales around the same point, with
exact fractions at both: a fine patch (``patch`` voxels at the network spacing, 2 mm) and a context
patch (``context_patch`` voxels, ``context_factor`` times coarser, 6 mm), both centred on the same
scanner point, so the fine patch is the central ``patch / context_factor`` context voxels. The
same seed gives the same subject, pose, tissue values and scanner at both scales (the generators
draw them before anything that depends on the grid); only the noise realisation differs.

Two families, mixed per sample (:class:`DataConfig.p_anatomy`):

* ``anatomy``: :func:`jaxdrr.phantoms.anatomy.random_ct.random_anatomical_ct`, the detailed anatomy
  (vertebrae with pedicles, hip bones, ribs, scapulae, femurs, knee) randomly posed, deformed, with
  random tissue values, contrast, boluses, implants, table, reconstruction circle and padding;
* ``procedural``: :func:`jaxdrr.phantoms.synthetic.synthetic_ct`, painted primitives with other shapes.

Every sample is a pure function of ``(run seed, step, index in batch)``, so a resumed run sees the
batches it would have seen. Augmentation: the same random axis permutation and flips for both scales
(both grids are centred on the same point, so flips keep them aligned).

The validation set (:func:`validation_set`) is a fixed list of whole-body-width held-out CTs of every
region of both families, from seeds no training sample uses. No real CT is used anywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxdrr.phantoms import synthetic
from jaxdrr.phantoms.anatomy.random_ct import ANATOMY_REGIONS, random_anatomical_ct

FAMILIES = ("anatomy", "procedural")
VAL_SEED_BASE = 20_000_000  # validation seeds: (VAL_SEED_BASE, i) / VAL_SEED_BASE + i; never trained on


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Sizes of a training pair.

    Attributes:
      patch: fine patch edge (voxels); a multiple of ``context_factor``.
      spacing_mm: fine (network) spacing.
      context_factor: context spacing / fine spacing (integer).
      context_patch: context patch edge (voxels); ``context_patch - patch / context_factor`` even.
      p_anatomy: probability that a sample comes from the anatomical family.
    """

    patch: int = 48
    spacing_mm: float = 2.0
    context_factor: int = 3
    context_patch: int = 48
    p_anatomy: float = 0.65

    def __post_init__(self):
        inner = self.patch // self.context_factor
        if self.patch % self.context_factor or (self.context_patch - inner) % 2 or self.context_patch < inner:
            raise ValueError(f"DataConfig: patch {self.patch} / context {self.context_patch} do not align")

    @property
    def context_offset(self) -> int:
        """First context voxel under the fine patch."""
        return (self.context_patch - self.patch // self.context_factor) // 2


def _ct_pair(family: str, seed, config: DataConfig, region=None):
    """(fine CT, context CT) of one subject: objects with .hu, .fractions and .info."""
    s, r = config.spacing_mm, config.context_factor
    fine_shape, ctx_shape = (config.patch,) * 3, (config.context_patch,) * 3
    if family == "anatomy":
        fine = random_anatomical_ct(seed, region=region, shape=fine_shape, spacing_mm=(s,) * 3)
        ctx = random_anatomical_ct(
            seed,
            region=region,
            shape=ctx_shape,
            spacing_mm=(s * r,) * 3,
            center_mm=fine.info["center_mm"],
            fine_mm=s * r / 2,
        )
    else:
        fine = synthetic.synthetic_ct(seed, region=region, shape=fine_shape, spacing_mm=(s,) * 3)
        ctx = synthetic.synthetic_ct(
            seed,
            region=region,
            shape=ctx_shape,
            spacing_mm=(s * r,) * 3,
            center_mm=fine.info["center_mm"],
            fine_mm=s * r / 2,
        )
    return fine, ctx


def training_pair(seed: tuple[int, ...], config: DataConfig) -> dict:
    """One augmented training pair from ``seed`` (e.g. ``(run_seed, step, index)``).

    Returns:
      {"hu": [p, p, p], "fractions": [p, p, p, 4], "hu_context": [q, q, q],
       "fractions_context": [q, q, q, 4], "family": str} (float32, channels last).
    """
    rng = np.random.default_rng([*seed, 99])
    family = "anatomy" if rng.random() < config.p_anatomy else "procedural"
    ct_seed = tuple(int(v) for v in seed) if family == "anatomy" else int(rng.integers(2**62))
    fine, ctx = _ct_pair(family, ct_seed, config)
    perm = rng.permutation(3)
    flips = rng.random(3) < 0.5
    out = {}
    for name, ct in (("", fine), ("_context", ctx)):
        hu = np.transpose(ct.hu, perm)
        frac = np.transpose(np.moveaxis(ct.fractions, 0, -1), (*perm, 3))
        for axis in range(3):
            if flips[axis]:
                hu, frac = np.flip(hu, axis), np.flip(frac, axis)
        out["hu" + name] = np.ascontiguousarray(hu, np.float32)
        out["fractions" + name] = np.ascontiguousarray(frac, np.float32)
    out["family"] = family
    return out


VALIDATION_VOLUMES = (
    # (family, region, shape at 2 mm): body-wide slabs, every region of both families.
    ("anatomy", "pelvis", (112, 80, 48)),
    ("anatomy", "abdomen", (112, 80, 48)),
    ("anatomy", "chest", (112, 80, 48)),
    ("anatomy", "limb", (64, 64, 48)),
    ("procedural", "chest", (112, 80, 48)),
    ("procedural", "abdomen", (112, 80, 48)),
    ("procedural", "pelvis", (112, 80, 48)),
    ("procedural", "limb", (64, 64, 48)),
)


def validation_set(spacing_mm: float = 2.0) -> list[dict]:
    """The held-out CTs: [{"name", "family", "region", "hu" [I, J, K], "fractions" [4, I, J, K]}].

    Centred on the scanner axis (the whole cross-section of the body, or most of it), at the
    network spacing. Seeds are (VAL_SEED_BASE, i) for the anatomy and VAL_SEED_BASE + i for the
    procedural family: disjoint from every training seed.
    """
    out = []
    for i, (family, region, shape) in enumerate(VALIDATION_VOLUMES):
        kw = {"region": region, "shape": shape, "spacing_mm": (spacing_mm,) * 3}
        if family == "anatomy":
            ct = random_anatomical_ct((VAL_SEED_BASE, i), center_mm=(0.0, -20.0, 0.0), **kw)
        else:
            ct = synthetic.synthetic_ct(VAL_SEED_BASE + i, center_mm=(0.0, -30.0, 0.0), **kw)
        out.append(
            {
                "name": f"{family}_{region}",
                "family": family,
                "region": region,
                "hu": ct.hu.astype(np.float32),
                "fractions": ct.fractions.astype(np.float32),
            }
        )
    return out


__all__ = [
    "ANATOMY_REGIONS",
    "DataConfig",
    "FAMILIES",
    "VALIDATION_VOLUMES",
    "training_pair",
    "validation_set",
]
