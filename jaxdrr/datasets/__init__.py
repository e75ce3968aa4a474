"""Synthetic X-ray training sets at scale: spec -> sharded, annotated, resumable datasets.

A dataset is fixed by a spec (:mod:`jaxdrr.datasets.spec`: CTs with landmarks and label maps,
pose and physics distributions, annotations, storage). Sample ``i`` is a pure function of the
spec and ``i`` (its random draws come from ``fold_in(key(seed), i)``), so it is the same whatever
the process count, batch size or restart history. Data flow::

    spec -> sources (CT, landmarks, labels; decomposed once per CT)
         -> sampling (pose + physics of sample i) -> pipeline (one vmapped, jitted render per batch:
            image, P/K/R/t, 2D landmarks + visibility, heatmaps, projected masks)
         -> store (one HDF5 shard per (process, shard index), atomic, manifest entries) -> coco

Entry points::

    jaxdrr.datasets.write_example_spec("pelvis.toml")     # or: jaxdrr dataset init pelvis.toml
    jaxdrr.datasets.generate("pelvis.toml", "data/")      # or: jaxdrr dataset --config ... --out ...
    samples = jaxdrr.datasets.open("data/")               # samples[i]["image"], ["P"], ...

Surgical tools (``[[tools]]``: K-wires, screws, plates, guidewires, mesh files) are placed per image
(fixed, or drawn: entry region, direction cone, depth), rendered as scene objects
(:mod:`jaxdrr.scene`) and annotated (masks, keypoints, path lengths): :mod:`jaxdrr.datasets.tools`.
"""

from jaxdrr.datasets.coco import coco_dict, rle_decode, rle_encode, write_coco
from jaxdrr.datasets.generate import Report, Shard, finalize, generate, plan_shards
from jaxdrr.datasets.sampling import draw, draw_tools, sample_key
from jaxdrr.datasets.spec import (
    EXAMPLE_SPEC,
    AnnotationSpec,
    CTEntry,
    DatasetSpec,
    DetectorSpec,
    OutputSpec,
    PhysicsSpec,
    PoseSpec,
    SpecError,
    ToolPlacement,
    ToolPose,
    ToolSpec,
    load_spec,
    spec_digest,
    spec_from_dict,
    write_example_spec,
)
from jaxdrr.datasets.store import Dataset, DatasetError, DatasetWriteError, open_dataset
from jaxdrr.datasets.tools import ToolGeometry, build_tools, ct_bounds

open = open_dataset  # noqa: A001 - jaxdrr.datasets.open(path), as the issue names it

__all__ = [
    "DatasetSpec",
    "CTEntry",
    "DetectorSpec",
    "PoseSpec",
    "PhysicsSpec",
    "AnnotationSpec",
    "OutputSpec",
    "ToolSpec",
    "ToolPose",
    "ToolPlacement",
    "ToolGeometry",
    "build_tools",
    "ct_bounds",
    "draw_tools",
    "SpecError",
    "EXAMPLE_SPEC",
    "load_spec",
    "spec_from_dict",
    "spec_digest",
    "write_example_spec",
    "generate",
    "finalize",
    "plan_shards",
    "Shard",
    "Report",
    "sample_key",
    "draw",
    "open",
    "open_dataset",
    "Dataset",
    "DatasetError",
    "DatasetWriteError",
    "coco_dict",
    "write_coco",
    "rle_encode",
    "rle_decode",
]
