"""The label route: a user label map (e.g. TotalSegmentator's) decides the material where it can.

Inputs: an integer label map on the CT grid (a :class:`jaxdrr.Volume` whose affine matches the
CT's, or an array of the CT's shape) and a mapping from label ids to material names, written
either way round::

    {25: "bone", 26: "bone", 16: "air"}          # label id -> material (None: not mapped)
    {"bone": [25, 26], "air": [16]}              # material -> label ids (the JSON file form)

A voxel whose label is mapped gets that material with fraction 1. Label 0 (background) and
unmapped labels fall back to the threshold route: segmentation models label organs and bones, not
fat, muscle, air or lung parenchyma, and the thresholds handle those well. The fallback keeps the
fractions differentiable with respect to HU there; mapped voxels have zero HU gradient.

:func:`totalsegmentator_mapping` classifies TotalSegmentator structure names by pattern,
:func:`read_structures_csv` reads the ``structure,id`` CSV shipped next to such masks, and
:func:`load_label_mapping` reads a JSON mapping file.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr._compat import is_tracer
from jaxdrr.errors import JaxdrrError, LoadError
from jaxdrr.materials.thresholds import threshold_fractions
from jaxdrr.volume import Volume

AFFINE_TOLERANCE_MM = 1e-3

# TotalSegmentator structure-name patterns (regular expressions on the lower-case name), checked in
# this order; the first match decides. Metal first ("hip_implant" is not bone), airways before the
# lungs ("lung_trachea_bronchia" is air), "intervertebral_discs" is not a vertebra.
_TOTALSEG_RULES: tuple[tuple[str, str | None], ...] = (
    (r"implant|prosthes|metal|screw|stent|(^|_)nail(_|$)|(^|_)plate(_|$)|(^|_)wire(_|$)", "metal"),
    (r"trachea|airway|bronch", "air"),
    # Lung parenchyma is a mixture of tissue and air (-900..-500 HU): the thresholds split it.
    (r"^lung", None),
    (r"cartilag", "soft_tissue"),
    (
        r"^vertebra|^sacrum|^coccyx|^ribs?(_|$)|^sternum|^humerus|^scapula|^clavic|^femur|^hip(_|$)"
        r"|^pelvi(s|c)_?bone|^skull|^mandible|^patella|^tibia|^fibula|^ulna|^radius|carpal|tarsal"
        r"|phalang|^calcaneus|^talus",
        "bone",
    ),
)


def _material_for_name(name: str) -> str | None:
    key = name.strip().lower()
    for pattern, material in _TOTALSEG_RULES:
        if re.search(pattern, key):
            return material
    return None


def totalsegmentator_mapping(names: Mapping[int, str]) -> dict[int, str | None]:
    """Classifies TotalSegmentator structure names into materials by pattern.

    * bones -> ``"bone"``: vertebrae_*, sacrum, coccyx, rib_left_*/rib_right_*, sternum, humerus_*,
      scapula_*, clavicula_*, femur_*, hip_*, skull, mandible, patella, tibia, fibula, ulna,
      radius, carpal/metacarpal, tarsal/metatarsal, phalanges;
    * costal_cartilages (any cartilage) -> ``"soft_tissue"``;
    * trachea, airways, bronchi -> ``"air"``;
    * implants, prostheses, screws, stents, metal -> ``"metal"``;
    * lung lobes -> None: lung parenchyma is a tissue/air mixture, left to the thresholds;
    * everything else (organs, vessels, muscles, bowel that may hold gas) -> None (thresholds).

    Args:
      names: label id -> structure name (e.g. from :func:`read_structures_csv`).

    Returns:
      label id -> material name or None (None entries fall back to the thresholds).
    """
    return {int(i): _material_for_name(str(n)) for i, n in names.items()}


def read_structures_csv(path: str | os.PathLike) -> dict[int, str]:
    """Reads a structures CSV with (at least) the columns ``structure`` and ``id``: {id: name}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structures CSV does not exist: {str(path)!r}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        if "structure" not in fields or "id" not in fields:
            raise LoadError(f"{str(path)!r}: need columns 'structure' and 'id', found {fields}")
        out: dict[int, str] = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                label = int(row["id"])
            except ValueError:
                raise LoadError(f"{str(path)!r} line {line}: id {row['id']!r} is not an integer") from None
            if label in out and out[label] != row["structure"]:
                raise LoadError(
                    f"{str(path)!r} line {line}: id {label} is both {out[label]!r} and {row['structure']!r}"
                )
            out[label] = row["structure"]
    return out


def _label_id(value, what: str) -> int:
    if isinstance(value, bool):
        raise JaxdrrError(f"{what}: label id {value!r} is not an integer")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\d+\s*", value):
            raise JaxdrrError(f"{what}: label id {value!r} is not a non-negative integer")
        value = int(value)
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise JaxdrrError(f"{what}: label id {value!r} is not an integer") from None
    if not as_float.is_integer() or as_float < 0:
        raise JaxdrrError(f"{what}: label id {value!r} is not a non-negative integer")
    return int(as_float)


def mapping_by_label(mapping: Mapping, what: str = "label mapping") -> dict[int, str | None]:
    """Either form of a mapping as {label id: material name or None}.

    ``{material: [ids]}`` (or ``{material: id}``) is recognised by its keys being names; otherwise
    keys are label ids (ints, or digit strings as JSON writes them).
    """
    if not isinstance(mapping, Mapping):
        raise JaxdrrError(f"{what} must be a dict, got {type(mapping).__name__}")
    by_material = bool(mapping) and all(
        isinstance(k, str) and not re.fullmatch(r"\s*\d+\s*", k) for k in mapping
    )
    out: dict[int, str | None] = {}
    if by_material:
        for material, ids in mapping.items():
            ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
            ids = [ids] if isinstance(ids, (int, np.integer, str)) else ids
            if not isinstance(ids, Sequence) or isinstance(ids, str):
                raise JaxdrrError(f"{what}: {material!r} must map to a list of label ids, got {ids!r}")
            for raw in ids:
                label = _label_id(raw, what)
                if label in out and out[label] != material:
                    raise JaxdrrError(f"{what}: label {label} is both {out[label]!r} and {material!r}")
                out[label] = material
    else:
        for raw, material in mapping.items():
            if material is not None and not isinstance(material, str):
                raise JaxdrrError(f"{what}: label {raw!r} maps to {material!r}, not a material name")
            out[_label_id(raw, what)] = material
    return out


def load_label_mapping(path: str | os.PathLike) -> dict[int, str]:
    """Reads a JSON label mapping: ``{"bone": [25, 26, ...], "metal": [...], "air": [...]}``.

    The ``{"25": "bone", ...}`` form is accepted too. Returns {label id: material name}; material
    names are checked against the channels when the mapping is used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label mapping file does not exist: {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"cannot read label mapping {str(path)!r}: {exc}") from exc
    out = mapping_by_label(data, what=f"label mapping {str(path)!r}")
    return {k: v for k, v in out.items() if v is not None}


def mapping_table(mapping: Mapping, names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """A mapping as sorted static (label id, channel index) pairs; None/unmapped ids are dropped.

    Raises a JaxdrrError for material names that are not channels and for label 0 (background,
    always left to the thresholds).
    """
    names = tuple(names)
    pairs = []
    for label, material in sorted(mapping_by_label(mapping).items()):
        if material is None:
            continue
        if material not in names:
            raise JaxdrrError(
                f"label mapping: unknown material {material!r} (label {label}); "
                f"the material channels are {', '.join(names)}"
            )
        if label == 0:
            raise JaxdrrError("label mapping: label 0 is background (left to the thresholds); do not map it")
        pairs.append((label, names.index(material)))
    return tuple(pairs)


def check_label_map(labels, ct: Volume) -> jax.Array:
    """Validates a label map against the CT and returns its data [I, J, K].

    A Volume must have the CT's shape and affine (within :data:`AFFINE_TOLERANCE_MM` at every
    corner of the grid); an array must have the CT's shape. Concrete labels must be integers.
    """
    if isinstance(labels, Volume):
        if labels.kind != "hu" or labels.data.ndim != 3:
            raise JaxdrrError(f"a label map must be a 3-D volume [I, J, K], got {labels!r}")
        if tuple(labels.shape) != tuple(ct.shape):
            raise JaxdrrError(
                f"label map shape {tuple(labels.shape)} differs from the CT's {tuple(ct.shape)}"
            )
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in ct.shape], indexing="ij")).reshape(3, -1)
        corners = np.vstack([corners, np.ones(corners.shape[1])])
        gap = float(np.max(np.abs((labels.affine - ct.affine) @ corners)))
        if gap > AFFINE_TOLERANCE_MM:
            raise JaxdrrError(
                f"label map affine differs from the CT's by {gap:.4g} mm at a grid corner (tolerance "
                f"{AFFINE_TOLERANCE_MM} mm): resample the label map onto the CT grid (nearest neighbour)"
            )
        data = labels.data
    else:
        data = labels
        if tuple(np.shape(data)) != tuple(ct.shape):
            raise JaxdrrError(
                f"label map shape {tuple(np.shape(data))} differs from the CT's {tuple(ct.shape)}"
            )
    if not is_tracer(data):
        arr = np.asarray(data)
        if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
            raise JaxdrrError(f"label map must hold integer label ids, got dtype {arr.dtype}")
        if not np.issubdtype(arr.dtype, np.integer):
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                raise JaxdrrError(
                    f"label map must hold integer label ids; {int(bad.sum())} voxel(s) are not "
                    f"integers, first {arr[idx]!r} at index {idx}"
                )
        if arr.size and arr.min() < 0:
            raise JaxdrrError(f"label map has negative label {int(arr.min())}; label ids are >= 0")
    return jnp.asarray(data)


def label_fractions(
    hu: jax.Array, labels: jax.Array, table: tuple[tuple[int, int], ...], thresholds, softness_hu
) -> jax.Array:
    """Fractions [M, *hu.shape]: one-hot where ``labels`` is mapped, the thresholds elsewhere.

    Args:
      hu: Hounsfield units [I, J, K].
      labels: label ids, same shape (integer values; floats are rounded).
      table: static (label id, channel index) pairs (:func:`mapping_table`).
      thresholds: M - 1 HU thresholds of the fallback (static).
      softness_hu: their softness (static).
    """
    fractions = threshold_fractions(hu, thresholds, softness_hu)
    if not table:
        return fractions
    num = fractions.shape[0]
    max_id = max(label for label, _ in table)
    lut = np.full(max_id + 1, -1, np.int32)
    for label, index in table:
        lut[label] = index
    lab = jnp.asarray(labels)
    if not jnp.issubdtype(lab.dtype, jnp.integer):
        lab = jnp.round(lab)
    lab = lab.astype(jnp.int32)
    inside = (lab >= 0) & (lab <= max_id)
    channel = jnp.where(inside, jnp.asarray(lut)[jnp.clip(lab, 0, max_id)], -1)
    channels = jnp.arange(num, dtype=jnp.int32).reshape((num,) + (1,) * channel.ndim)
    one_hot = (channel[None] == channels).astype(fractions.dtype)
    return jnp.where(channel[None] >= 0, one_hot, fractions)
