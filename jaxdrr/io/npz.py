"""The render bundle: an ``.npz`` of the image, its 3x4 projection matrix ``P``, height, width and metadata.

:func:`save_npz` stores numeric metadata as arrays, strings as string arrays and anything else
(dicts, dataclasses such as a RenderConfig, mixed lists) as JSON, which :func:`load_npz` decodes
again. Writes are atomic (:func:`jaxdrr.atomic.atomic_path`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxdrr.atomic import write_npz
from jaxdrr.errors import LoadError
from jaxdrr.io.write import check_finite

__all__ = ["save_npz", "load_npz"]

_BUNDLE_KEYS = ("image", "P", "height", "width")
_JSON_KEYS_FIELD = "__json_keys__"


def _json_default(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in the npz metadata (not JSON-serialisable)")


def save_npz(path: str | os.PathLike, image, P, **metadata) -> Path:
    """Writes the render output bundle as an ``.npz`` (atomic write).

    Stored keys: ``image`` (as given, float32 for floating images), ``P`` (float64, [..., 3, 4]),
    ``height`` and ``width`` (ints, the last two image axes) and one key per metadata item.
    Numeric metadata (numbers, arrays, nested lists of numbers) is stored as an array; strings as a
    string array; anything else (dicts, dataclasses such as a RenderConfig, mixed lists) as a JSON
    string, listed in the ``__json_keys__`` entry so that :func:`load_npz` decodes it again.

    Args:
      path: the output file (``.npz`` is appended by nothing: name it as you want it).
      image: the rendered image [..., H, W]; must be finite.
      P: the projection matrix/matrices [..., 3, 4]; must be finite.
      **metadata: e.g. ``K=..., pose=..., config={...}``.

    Returns:
      The written path.
    """
    path = Path(path)
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"save_npz expects an image [..., H, W], got shape {image.shape}")
    check_finite(image, "image")
    if np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    P = np.asarray(P, dtype=np.float64)
    if P.shape[-2:] != (3, 4):
        raise ValueError(f"P must be a 3x4 projection matrix (or [..., 3, 4]), got shape {P.shape}")
    check_finite(P, "P")

    arrays: dict[str, np.ndarray] = {
        "image": image,
        "P": P,
        "height": np.asarray(image.shape[-2], dtype=np.int64),
        "width": np.asarray(image.shape[-1], dtype=np.int64),
    }
    json_keys = []
    for key, value in metadata.items():
        if key in _BUNDLE_KEYS or key in (_JSON_KEYS_FIELD, "file", "allow_pickle"):
            raise ValueError(f"metadata key {key!r} is reserved in the npz bundle; rename it")
        if isinstance(value, str):
            arrays[key] = np.asarray(value)
            continue
        try:
            candidate = np.asarray(value)
        except Exception:
            candidate = None
        if candidate is not None and candidate.dtype.kind in "biufc":
            arrays[key] = candidate
        else:
            arrays[key] = np.asarray(json.dumps(value, default=_json_default))
            json_keys.append(key)
    arrays[_JSON_KEYS_FIELD] = np.asarray(json.dumps(json_keys))

    write_npz(path, **arrays)
    return path


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a bundle written by :func:`save_npz`.

    Args:
      path: the ``.npz`` file.

    Returns:
      A dict with ``image`` and ``P`` (arrays), ``height`` and ``width`` (ints), array metadata as
      arrays, string metadata as ``str`` and JSON metadata decoded (dicts/lists).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"npz file does not exist: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
    except Exception as exc:
        raise LoadError(f"cannot read npz file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in _BUNDLE_KEYS if k not in raw]
    if missing:
        raise LoadError(f"{str(path)!r} is not a jaxdrr render bundle: missing {missing}")
    json_keys = set(json.loads(str(raw.pop(_JSON_KEYS_FIELD)))) if _JSON_KEYS_FIELD in raw else set()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("height", "width"):
            out[key] = int(value)
        elif key in json_keys:
            out[key] = json.loads(str(value))
        elif value.dtype.kind == "U" and value.ndim == 0:
            out[key] = str(value)
        else:
            out[key] = value
    return out
