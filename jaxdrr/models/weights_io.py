"""Reading and writing network weights: ``name.msgpack`` (the pure-dict pytree, float32) beside
``name.json`` (architecture config, parameter count and the training record), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from jaxdrr.atomic import write_bytes, write_json
from jaxdrr.errors import JaxdrrError


def count_parameters(weights: dict) -> int:
    return int(sum(np.prod(np.shape(a)) for a in jax.tree.leaves(weights)))


def save(path: str | Path, weights: dict, config_json: dict, record: dict | None = None) -> Path:
    """Writes ``path.msgpack`` and ``path.json``, each atomically (:mod:`jaxdrr.atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = serialization.msgpack_serialize(jax.tree.map(lambda a: np.asarray(a, np.float32), weights))
    meta = {"config": config_json, "parameters": count_parameters(weights), **(record or {})}
    write_bytes(path.with_suffix(".msgpack"), blob)
    write_json(path.with_suffix(".json"), meta, indent=2)
    return path.with_suffix(".msgpack")


def load(path: str | Path, what: str, expected_shapes: dict | None = None) -> tuple[dict, dict]:
    """Reads (raw weights, metadata); checks the weights' tree and shapes when given."""
    path = Path(path)
    blob, meta_path = path.with_suffix(".msgpack"), path.with_suffix(".json")
    if not blob.exists() or not meta_path.exists():
        raise JaxdrrError(f"{what} weights not found: need {blob} and {meta_path}")
    meta = json.loads(meta_path.read_text())
    weights = serialization.msgpack_restore(blob.read_bytes())
    return weights, meta


def check_shapes(weights: dict, expected: dict, what: str, where) -> None:
    """Raises unless ``weights`` has the tree structure and leaf shapes of ``expected``."""
    exp = jax.tree.map(np.shape, expected)
    got = jax.tree.map(np.shape, weights)
    if jax.tree.structure(exp) != jax.tree.structure(got) or jax.tree.leaves(exp) != jax.tree.leaves(got):
        raise JaxdrrError(f"{what} weights in {where} do not match the architecture in its .json")
