"""``jaxdrr segment``: a CT -> material fractions (4-D NIfTI, 8 bits) and an argmax label map.

    jaxdrr segment [CT | --ct CT] --out materials.nii.gz [--method thresholds|vnet|labels]
        [--labels seg.nii.gz (--mapping map.json | --structures structures.csv)] [--metal titanium]

Writes, each atomically (:mod:`jaxdrr.atomic`):

* ``<out>``: fractions [I, J, K, M] on the CT grid (the CT's affine); the last axis is the
  material, named in the header description and in the sidecar JSON. Stored as uint8 with the
  NIfTI scale ``scl_slope = 1/255`` (readers such as nibabel's ``get_fdata`` apply it): each
  fraction is within 1/255 of the computed one and the fractions of a voxel sum to exactly 1
  (largest-remainder rounding, :func:`quantise_fractions`), a quarter of the float32 size before
  compression and far less after it;
* ``<out stem>_labels<ext>``: uint8 argmax material index [I, J, K] (0 = the first material);
* ``<out stem>.json``: material names, table materials, method, label values, the storage scale
  and the CT selection (:meth:`jaxdrr.cli.common.CtSelection.record`).

Options, inputs and outputs are checked before the CT is loaded.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdrr
from jaxdrr.atomic import atomic_path, write_text
from jaxdrr.cli.common import (
    CtOptions,
    HelpFormatter,
    add_ct_options,
    add_material_options,
    check_material_options,
    check_output,
    ct_selection,
    long_step,
    make_parent_dir,
    materials_from_args,
)
from jaxdrr.cli.timings import estimate_seconds, record_seconds
from jaxdrr.errors import JaxdrrError
from jaxdrr.materials import material_fractions
from jaxdrr.materials.vnet_route import pretrained

NIFTI_DESCRIP_BYTES = 80
NIFTI_SUFFIXES = (".nii.gz", ".nii")
FRACTION_LEVELS = 255  # uint8: fraction = stored / 255
CT_OPTIONS = CtOptions(positional=True)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``segment`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "segment",
        help="split a CT into material fractions (air, soft tissue, bone, metal) -> 4-D NIfTI",
        description="Material decomposition of a CT: soft HU thresholds, the V-Net, or a label "
        "map (e.g. TotalSegmentator) with thresholds where unlabelled. Writes the fractions as a "
        "4-D NIfTI (last axis = material; uint8 with scale 1/255, so each fraction is within 1/255 "
        "and a voxel's fractions sum to 1), an argmax label map and a JSON sidecar.",
        formatter_class=HelpFormatter,
    )
    add_ct_options(p, CT_OPTIONS)
    p.add_argument(
        "--out",
        required=True,
        help="output fractions, .nii.gz or .nii (also <stem>_labels<ext> and <stem>.json); missing "
        "folders are created, existing files replaced",
    )
    p.add_argument(
        "--method",
        choices=("thresholds", "vnet", "labels"),
        default=None,
        help="decomposition route (default: labels with --labels, else thresholds)",
    )
    p.add_argument("--labels", default=None, help="label map NIfTI on the CT grid (method labels)")
    add_material_options(p, render=False)
    return p


def split_nifti_name(path: Path) -> tuple[str, str]:
    """(stem, ".nii.gz" or ".nii") of a NIfTI file name; JaxdrrError for other names."""
    name = path.name
    for ext in NIFTI_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    raise JaxdrrError(f"--out must be a NIfTI file (.nii.gz or .nii), got {str(path)!r}")


def output_paths(out) -> list[Path]:
    """The three files ``segment`` writes: fractions, label map, sidecar JSON."""
    out = Path(out)
    stem, ext = split_nifti_name(out)
    return [out, out.with_name(f"{stem}_labels{ext}"), out.with_name(f"{stem}.json")]


def _descrip(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw[:NIFTI_DESCRIP_BYTES]


@functools.partial(jax.jit, static_argnames="levels")
def _largest_remainder(fractions, levels: int):
    scaled = jnp.clip(fractions.astype(jnp.float32), 0.0, 1.0) * levels
    q = jnp.floor(scaled)
    remainder = scaled - q
    # 0 .. M - 1 units short per voxel: float32 fractions sum to 1 within far less than one unit.
    missing = jnp.clip(levels - q.sum(axis=0), 0, None)
    count = q.shape[0]
    # rank[m]: how many materials come first (a larger remainder, or an equal one and a lower index).
    rank = [
        sum(
            (remainder[k] > remainder[m]) if k > m else (remainder[k] >= remainder[m])
            for k in range(count)
            if k != m
        )
        for m in range(count)
    ]
    return q + (jnp.stack(rank) < missing)


def quantise_fractions(fractions, levels: int = FRACTION_LEVELS) -> np.ndarray:
    """Fractions [M, ...] (summing to 1 per voxel) as integers in 0..levels that sum to ``levels``.

    Largest-remainder rounding: every value is floored, and the voxel's missing units go to the
    materials with the largest remainders. Each stored ``q / levels`` is within ``1 / levels`` of
    the fraction, and a voxel's stored fractions sum to exactly 1.
    """
    dtype = np.uint8 if levels <= 255 else np.uint16
    return np.asarray(_largest_remainder(jnp.asarray(fractions), levels)).astype(dtype)


def write_segmentation(out, fractions: np.ndarray, affine: np.ndarray, config, metadata: dict) -> list[Path]:
    """Writes the fractions [M, I, J, K] (uint8, scale 1/255), the argmax label map and the JSON
    sidecar, each atomically.

    Returns:
      The paths written: fractions, label map, sidecar.
    """
    import nibabel as nib

    out, labels_path, sidecar = output_paths(out)
    make_parent_dir(out)
    names = tuple(config.names)
    fractions = np.asarray(fractions, np.float32)
    stored = quantise_fractions(fractions)
    img = nib.Nifti1Image(np.moveaxis(stored, 0, -1), affine)  # [I, J, K, M]
    img.header.set_slope_inter(1.0 / FRACTION_LEVELS, 0.0)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = _descrip("jaxdrr fractions x1/255, last axis: " + ",".join(names))
    labels = np.argmax(fractions, axis=0).astype(np.uint8)
    lab = nib.Nifti1Image(labels, affine)
    lab.header.set_xyzt_units("mm")
    lab.header["descrip"] = _descrip(
        "jaxdrr argmax material: " + ",".join(f"{i}={n}" for i, n in enumerate(names))
    )
    info = {
        "fractions_file": out.name,
        "labels_file": labels_path.name,
        "axis": "the last axis of the fractions file is the material, in the order of 'materials'",
        "storage": f"uint8 with NIfTI scl_slope 1/{FRACTION_LEVELS}: fraction = stored / "
        f"{FRACTION_LEVELS}, within 1/{FRACTION_LEVELS} of the computed value; a voxel's fractions "
        "sum to exactly 1",
        "materials": list(names),
        "label_values": {str(i): n for i, n in enumerate(names)},
        "table_names": list(config.table_names),
        "method": config.method,
        "metal": config.metal,
        "thresholds_hu": list(config.thresholds_hu),
        "softness_hu": config.softness_hu,
        "shape": list(fractions.shape[1:]),
        **metadata,
    }
    with atomic_path(out) as tmp:
        nib.save(img, str(tmp))
    with atomic_path(labels_path) as tmp:
        nib.save(lab, str(tmp))
    write_text(sidecar, json.dumps(info, indent=2) + "\n")
    return [out, labels_path, sidecar]


def compute_fractions(volume, config, labels=None, mapping=None) -> np.ndarray:
    """Fractions [M, I, J, K] (NumPy float32) of a CT, jitted (network weights as an argument)."""
    weights = pretrained()[1] if config.method == "vnet" else None

    def fractions(vol, lab, w):
        return material_fractions(vol, config, labels=lab, mapping=mapping, params=w)

    return np.asarray(jax.jit(fractions)(volume, labels, weights), np.float32)


def run(args) -> int:
    """Runs ``jaxdrr segment``; returns the process exit code."""
    method = args.method or ("labels" if args.labels else "thresholds")
    # The fractions file always has the four channels (air, soft tissue, bone, metal).
    spec = "thresholds+metal" if method == "thresholds" else method
    selection = ct_selection(args)
    check_material_options(args, spec, args.labels)
    inputs = [selection.path, args.labels, args.mapping, args.structures]
    for path, what in zip(output_paths(args.out), ("--out", "label map", "sidecar"), strict=True):
        check_output(path, what, NIFTI_SUFFIXES if what != "sidecar" else (".json",), inputs=inputs)
    t0 = time.perf_counter()
    with long_step(f"loading {selection.describe()}"):
        volume = selection.load()
    print(
        f"loaded {selection.describe()}: shape {tuple(volume.shape)}, spacing "
        f"{np.round(volume.spacing, 4).tolist()} mm in {time.perf_counter() - t0:.2f} s"
    )
    config, labels, mapping, source = materials_from_args(args, volume, spec, args.labels)
    t1 = time.perf_counter()
    megavoxels = float(np.prod(volume.shape)) / 1e6
    estimate = estimate_seconds("vnet", megavoxels) if config.method == "vnet" else None
    with long_step(
        f"segmenting ({config.method}, {'x'.join(map(str, volume.shape))} voxels)", estimate_s=estimate
    ):
        fractions = compute_fractions(volume, config, labels, mapping)
    if config.method == "vnet":
        record_seconds("vnet", megavoxels, time.perf_counter() - t1)
    share = fractions.reshape(len(config.names), -1).mean(axis=1)
    print(
        f"segmented into {', '.join(config.names)} ({config.method}"
        + (f", {source}" if source else "")
        + f") in {time.perf_counter() - t1:.2f} s; mean fractions "
        + ", ".join(f"{n} {100 * s:.1f} %" for n, s in zip(config.names, share, strict=True))
    )
    metadata = {
        "ct": selection.record(volume),
        "label_map": args.labels,
        "mapping_source": source,
        "jaxdrr_version": jaxdrr.__version__,
    }
    t2 = time.perf_counter()
    with long_step("writing the fractions (gzip)" if str(args.out).endswith(".gz") else "writing"):
        written = write_segmentation(args.out, fractions, volume.affine, config, metadata)
    size_mb = sum(p.stat().st_size for p in written) / 1e6
    print(
        "wrote "
        + ", ".join(str(p) for p in written)
        + f" ({size_mb:.1f} MB in {time.perf_counter() - t2:.1f} s)"
    )
    return 0
