"""CT sources of a dataset: load a CT (file or built-in phantom), its landmarks and label map.

:func:`load_ct` returns a :class:`CTAssets` with the HU volume, the landmarks (world mm) and the
label map on the CT grid, validated. Every failure raises a :class:`jaxdrr.JaxdrrError` (or
``FileNotFoundError``) whose message names the CT and the file, so the generator can fail that CT
alone and go on with the rest.
"""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np

from jaxdrr.datasets.spec import CTEntry, DatasetSpec
from jaxdrr.errors import JaxdrrError, LoadError
from jaxdrr.volume import Volume


class CTError(JaxdrrError):
    """One CT of a dataset (or its annotations) cannot be used."""


@dataclasses.dataclass(frozen=True)
class CTAssets:
    """A loaded CT and its annotations.

    Attributes:
      volume: HU volume.
      landmarks: [L, 3] world mm (float64), or None.
      landmark_names: L names.
      labels: uint8/int [I, J, K] label map on the CT grid, or None.
      label_ids: label values in mask-channel order (all non-zero values named or present).
      label_names: their names.
    """

    volume: Volume
    landmarks: np.ndarray | None
    landmark_names: tuple[str, ...]
    labels: np.ndarray | None
    label_ids: tuple[int, ...]
    label_names: tuple[str, ...]


def read_landmarks(path) -> tuple[tuple[str, ...], np.ndarray]:
    """Landmarks from a CSV (``name,x,y,z`` rows; a header row is skipped) or JSON file.

    JSON: ``{"name": [x, y, z], ...}`` or ``[{"name": ..., "x": ..., "y": ..., "z": ...}, ...]``.
    Coordinates are world mm (RAS+, the frame of :func:`jaxdrr.load_volume`).
    """
    path = str(path)
    names: list[str] = []
    points: list[list[float]] = []
    try:
        if path.lower().endswith(".json"):
            with open(path) as f:
                data = json.load(f)
            items = (
                data.items()
                if isinstance(data, dict)
                else ((d["name"], [d["x"], d["y"], d["z"]]) for d in data)
            )
            for name, xyz in items:
                names.append(str(name))
                points.append([float(v) for v in xyz])
        else:
            with open(path, newline="") as f:
                for row_number, row in enumerate(csv.reader(f), 1):
                    if not row or row[0].startswith("#"):
                        continue
                    if len(row) != 4:
                        raise LoadError(f"{path}:{row_number}: expected name,x,y,z, got {row}")
                    try:
                        xyz = [float(v) for v in row[1:]]
                    except ValueError:
                        if row_number == 1:  # header
                            continue
                        raise LoadError(f"{path}:{row_number}: coordinates are not numbers: {row}") from None
                    names.append(row[0].strip())
                    points.append(xyz)
    except (KeyError, TypeError, ValueError) as e:
        raise LoadError(f"{path}: not a landmark file (name,x,y,z CSV or JSON): {e}") from e
    if not names:
        raise LoadError(f"{path}: no landmarks found")
    arr = np.asarray(points, np.float64)
    if arr.shape != (len(names), 3) or not np.all(np.isfinite(arr)):
        raise LoadError(f"{path}: landmarks must be finite 3D points")
    if len(set(names)) != len(names):
        raise LoadError(f"{path}: duplicate landmark names")
    return tuple(names), arr


def _read_label_map(path, volume: Volume) -> np.ndarray:
    from jaxdrr import io

    label_volume = io.load_volume(path)  # NIfTI or DICOM, in the same voxel frame as the CT
    data = np.asarray(label_volume.data)
    if data.shape != volume.shape:
        raise LoadError(
            f"{path}: label map shape {data.shape} differs from the CT's {volume.shape}; "
            "resample it onto the CT grid first"
        )
    if not np.allclose(label_volume.affine, volume.affine, atol=1e-3):
        raise LoadError(f"{path}: label map affine differs from the CT's; it must be on the CT grid")
    if np.any(data != np.rint(data)) or np.any(data < 0):
        raise LoadError(f"{path}: a label map must hold non-negative integers")
    return data.astype(np.int32)


def load_ct(spec: DatasetSpec, entry: CTEntry) -> CTAssets:
    """Loads one CT of the spec with its annotations (see the module doc)."""
    from jaxdrr import io, phantoms

    landmarks, landmark_names = None, ()
    labels, label_ids, label_names = None, (), ()
    if entry.path is not None:
        volume = io.load_volume(spec.resolve(entry.path))
    elif entry.phantom == "analytic":
        shape = entry.shape or (128, 128, 96)
        volume = phantoms.phantom(shape=shape)
        if entry.landmarks == "builtin":
            pts = phantoms.pelvis_landmarks()
            landmark_names, landmarks = tuple(pts), np.stack(list(pts.values()))
        if entry.labels == "builtin":
            labels = phantoms.pelvis_label_map(shape, volume.spacing)
            label_ids = tuple(phantoms.PELVIS_LABELS)
            label_names = tuple(phantoms.PELVIS_LABELS.values())
    elif entry.phantom == "synthetic":
        ct = phantoms.synthetic_ct(
            entry.seed, region=entry.region, shape=entry.shape or (96, 96, 96), spacing_mm=(3.0,) * 3
        )
        volume = Volume.create(ct.hu, ct.affine, kind="hu")
        if entry.labels == "builtin":
            labels = ct.tissue.astype(np.int32)
            present = sorted(int(v) for v in np.unique(labels) if v > 0)
            label_ids = tuple(present)
            label_names = tuple(phantoms.TISSUES[v] for v in present)
    else:
        volume = phantoms.phantom(kind=entry.phantom, seed=entry.seed, shape=entry.shape)
    if entry.landmarks is not None and entry.landmarks != "builtin":
        landmark_names, landmarks = read_landmarks(spec.resolve(entry.landmarks))
    if entry.labels is not None and entry.labels != "builtin":
        labels = _read_label_map(spec.resolve(entry.labels), volume)
        named = dict(entry.label_names)
        present = sorted(int(v) for v in np.unique(labels) if v > 0)
        # Named labels select what is projected (each label costs a volume-sized channel: a
        # 100-label segmentation of a clinical CT would not fit in memory); else every label.
        label_ids = tuple(sorted(named)) if named else tuple(present)
        label_names = tuple(named.get(i, f"label{i}") for i in label_ids)
        if not label_ids:
            raise LoadError(f"{entry.labels}: the label map has no non-zero label")
        missing = sorted(set(label_ids) - set(present))
        if missing:
            raise LoadError(
                f"{entry.labels}: label id(s) {missing} named in label_names do not occur in the map"
            )
    return CTAssets(volume, landmarks, landmark_names, labels, label_ids, label_names)


def one_hot(labels: np.ndarray, label_ids) -> np.ndarray:
    """[K, I, J, K] float32 indicator volumes of ``label_ids`` (path length per mm when projected)."""
    return np.stack([(labels == i).astype(np.float32) for i in label_ids])
