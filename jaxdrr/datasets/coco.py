"""COCO-style annotations of a dataset: keypoints per image, and masks as uncompressed RLE.

``coco.json`` follows the COCO keypoint format: ``images`` (``id`` = the global sample index,
``file_name`` = the shard file, ``shard_row``, ``ct``, ``width``, ``height``), ``categories`` (one
``"landmarks"`` category per distinct landmark-name list, with its ``keypoints`` names and an
empty ``skeleton``; one category per label name), and ``annotations``:

* keypoints: ``keypoints`` = [x, y, v] * L in pixel coordinates with COCO's origin (the top-left
  corner of the image, so x = column + 0.5), ``v = 2`` for landmarks in the image and in front of
  the source, else ``v = 0`` with x = y = 0 (not in the image; occlusion is not modelled);
  ``num_keypoints``; ``bbox`` [x, y, w, h] of the visible keypoints.
* masks: ``segmentation`` as uncompressed RLE (``{"size": [H, W], "counts": [...]}``, column-major
  runs starting with background, as ``pycocotools.mask.frPyObjects`` reads it), ``area`` (pixels)
  and ``bbox``; ``iscrowd`` 0. Empty masks are left out.
* tools (``[[tools]]``): one annotation per tool present in the image with a non-empty mask or a
  visible keypoint, in a category per tool (``name`` = the tool's name, ``supercategory`` ``"tool"``,
  ``kind``, ``keypoints`` = its landmark names, e.g. ``base``, ``tip``): ``segmentation`` (RLE of
  the tool mask: path length > 0, the pixels whose ray crosses the tool), ``area``, ``bbox`` (of the
  mask, else of the visible keypoints), ``keypoints`` [x, y, v] * K with ``v = 2`` for a keypoint in
  front of the source and inside the detector, else ``v = 0`` and x = y = 0, ``num_keypoints``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a binary [H, W] mask (column-major runs, background first)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode`."""
    h, w = rle["size"]
    values = np.zeros(h * w, bool)
    pos, on = 0, False
    for c in rle["counts"]:
        if on:
            values[pos : pos + c] = True
        pos += c
        on = not on
    return values.reshape((h, w), order="F")


def _bbox(mask: np.ndarray) -> list[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _keypoint_list(xy: np.ndarray, visible: np.ndarray) -> list[float]:
    """COCO ``[x, y, v] * K`` (COCO coordinates: the image's top-left corner is (0, 0))."""
    kps = np.where(visible[:, None], xy + 0.5, 0.0)
    flat = np.concatenate([kps, np.where(visible, 2, 0)[:, None]], axis=1).ravel().tolist()
    return [round(x, 3) for x in flat]


def _tool_annotations(f, row: int, image_id: int, annotations: list, category) -> None:
    """Appends the tool annotations of one image (see the module doc)."""
    names = json.loads(f.attrs["tool_names"])
    kinds = json.loads(f.attrs["tool_kinds"])
    keypoint_names = json.loads(f.attrs["tool_keypoint_names"])
    present = np.asarray(f["tool_present"][row])
    masks = np.asarray(f["tool_masks"][row]).astype(bool)
    xy_all = np.asarray(f["tool_keypoints_2d"][row], np.float64)
    vis_all = np.asarray(f["tool_keypoints_visible"][row])
    for t, name in enumerate(names):
        count = len(keypoint_names[t])
        mask, xy, vis = masks[t], xy_all[t, :count], vis_all[t, :count]
        if not present[t] or not (mask.any() or vis.any()):
            continue
        cid = category(
            ("tool", name),
            {
                "name": name,
                "supercategory": "tool",
                "kind": kinds[t],
                "keypoints": list(keypoint_names[t]),
                "skeleton": [],
            },
        )
        if mask.any():
            bbox = _bbox(mask)
        else:
            lo, hi = xy[vis].min(axis=0) + 0.5, xy[vis].max(axis=0) + 0.5
            bbox = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cid,
                "segmentation": rle_encode(mask),
                "area": int(mask.sum()),
                "bbox": bbox,
                "keypoints": _keypoint_list(xy, vis),
                "num_keypoints": int(vis.sum()),
                "iscrowd": 0,
            }
        )


def coco_dict(dataset) -> dict:
    """The COCO dictionary of an opened dataset (:func:`jaxdrr.datasets.open`)."""
    from jaxdrr.datasets.store import read_field

    images, annotations, categories = [], [], []
    category_ids: dict[tuple, int] = {}

    def category(key, entry):
        if key not in category_ids:
            category_ids[key] = len(categories) + 1
            categories.append({"id": category_ids[key], **entry})
        return category_ids[key]

    fields = set(dataset.fields())
    for entry in dataset.entries:
        f = dataset._file(entry)
        names = tuple(json.loads(f.attrs.get("landmark_names", "[]")))
        labels = tuple(json.loads(f.attrs.get("label_names", "[]")))
        index = np.asarray(f["index"])
        H, W = f["image"].shape[1:]
        lm = np.asarray(f["landmarks_2d"]) if "landmarks_2d" in fields and names else None
        vis = np.asarray(f["landmarks_visible"]) if lm is not None else None
        for row, sample_index in enumerate(index.tolist()):
            images.append(
                {
                    "id": int(sample_index),
                    "file_name": f"shards/{entry['file']}",
                    "shard_row": row,
                    "ct": entry["ct"],
                    "width": int(W),
                    "height": int(H),
                }
            )
            if lm is not None:
                cid = category(
                    ("landmarks", names),
                    {
                        "name": "landmarks",
                        "supercategory": "anatomy",
                        "keypoints": list(names),
                        "skeleton": [],
                    },
                )
                xy = lm[row] + 0.5  # COCO coordinates: the image's top-left corner is (0, 0)
                v = vis[row]
                kps = np.where(v[:, None], xy, 0.0)
                flat = np.concatenate([kps, np.where(v, 2, 0)[:, None]], axis=1).ravel().tolist()
                if v.any():
                    lo, hi = xy[v].min(axis=0), xy[v].max(axis=0)
                    bbox = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
                else:
                    bbox = [0.0, 0.0, 0.0, 0.0]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(sample_index),
                        "category_id": cid,
                        "keypoints": [round(x, 3) for x in flat],
                        "num_keypoints": int(v.sum()),
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": 0,
                    }
                )
            if "masks" in fields and labels:
                masks = read_field(f, "masks", row).astype(bool)
                for k, name in enumerate(labels):
                    m = masks[k]
                    if not m.any():
                        continue
                    cid = category(("label", name), {"name": name, "supercategory": "label"})
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": int(sample_index),
                            "category_id": cid,
                            "segmentation": rle_encode(m),
                            "area": int(m.sum()),
                            "bbox": _bbox(m),
                            "iscrowd": 0,
                        }
                    )
            if "tool_masks" in fields:
                _tool_annotations(f, row, int(sample_index), annotations, category)
    return {
        "info": {"description": "jaxdrr synthetic X-ray dataset", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(out) -> Path:
    """Writes ``coco.json`` for the finished shards of the dataset in ``out`` (atomically)."""
    from jaxdrr.datasets.store import open_dataset, write_json_atomic

    out = Path(out)
    with open_dataset(out, allow_incomplete=True) as ds:
        data = coco_dict(ds)
    write_json_atomic(out / "coco.json", data)
    return out / "coco.json"
