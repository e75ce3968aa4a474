"""``jaxdrr segment``: a CT -> material fractions (4-D NIfTI) and an argmax label map.

    jaxdrr segment ct.nii.gz --out materials.nii.gz [--method thresholds|vnet|labels]
        [--labels seg.nii.gz (--mapping map.json | --structures structures.csv)] [--metal titanium]

Writes, each atomically (temporary file + rename):

* ``<out>``: float32 fractions [I, J, K, M] on the CT grid (the CT's affine); the last axis is the
  material, named in the header description and in the sidecar JSON;
* ``<out stem>_labels<ext>``: uint8 argmax material index [I, J, K] (0 = the first material);
* ``<out stem>.json``: material names, table materials, method, label values, source files.

Also the material options of ``jaxdrr render`` (``--materials``, ``--mapping``, ``--structures``,
``--metal``) and their conversion to a configuration, label map and mapping
(:func:`materials_from_args`). Wired into ``jaxdrr/cli.py`` through :func:`add_parser`/:func:`run`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

NIFTI_DESCRIP_BYTES = 80


def add_material_options(group, *, render: bool) -> None:
    """Adds --mapping/--structures/--metal (and --materials for render) to an argument group."""
    from jaxdrr.materials.config import METALS

    if render:
        group.add_argument(
            "--materials",
            default="thresholds",
            help="material decomposition: 'thresholds' (air/soft tissue/bone, DeepDRR's soft "
            "thresholds), 'thresholds+metal' (adds a metal channel above 2500 HU), 'vnet' (the "
            "V-Net, 4 channels) or 'labels:SEG.nii.gz' (a label map on the CT grid with --mapping "
            "or --structures; thresholds where unlabelled)",
        )
    group.add_argument(
        "--mapping",
        default=None,
        help='JSON label mapping, e.g. {"bone": [25, 26], "air": [16], "metal": [99]}',
    )
    group.add_argument(
        "--structures",
        default=None,
        help="CSV with columns structure,id (TotalSegmentator names): bones -> bone, airways -> "
        "air, implants -> metal, the rest left to the thresholds",
    )
    group.add_argument(
        "--metal",
        choices=METALS,
        default=None,
        help="attenuation material of the metal channel (default titanium)",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``segment`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "segment",
        help="split a CT into material fractions (air, soft tissue, bone, metal) -> 4-D NIfTI",
        description="Material decomposition of a CT: soft HU thresholds, the V-Net, or a label "
        "map (e.g. TotalSegmentator) with thresholds where unlabelled. Writes the fractions as a "
        "4-D NIfTI (last axis = material), an argmax label map and a JSON sidecar.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("ct", help="NIfTI file, DICOM series directory, or 'phantom'")
    p.add_argument("--series-uid", default=None, help="DICOM SeriesInstanceUID")
    p.add_argument("--phantom-size", type=int, nargs=3, default=(192, 160, 128), metavar=("I", "J", "K"))
    p.add_argument("--out", required=True, help="output fractions, .nii.gz or .nii")
    p.add_argument(
        "--method",
        choices=("thresholds", "vnet", "labels"),
        default=None,
        help="decomposition route (default: labels with --labels, else thresholds)",
    )
    p.add_argument("--labels", default=None, help="label map NIfTI on the CT grid (method labels)")
    add_material_options(p, render=False)
    return p


def _mapping(args):
    from jaxdrr.errors import JaxdrrError
    from jaxdrr.materials.labels import load_label_mapping, read_structures_csv, totalsegmentator_mapping

    if args.mapping and args.structures:
        raise JaxdrrError("give either --mapping or --structures, not both")
    if args.mapping:
        return load_label_mapping(args.mapping), f"mapping {args.mapping}"
    if args.structures:
        mapping = totalsegmentator_mapping(read_structures_csv(args.structures))
        return mapping, f"structures {args.structures}"
    return None, None


def materials_from_args(args, volume, method: str | None, labels_path: str | None):
    """(MaterialConfig, label Volume or None, mapping or None, description of the mapping)."""
    import jaxdrr
    from jaxdrr.errors import JaxdrrError
    from jaxdrr.materials.config import MaterialConfig, as_material_config
    from jaxdrr.materials.labels import check_label_map, mapping_table

    hu_to_density = getattr(args, "hu_to_density", None)
    mapping, source = _mapping(args)
    if method == "labels":
        if labels_path is None:
            raise JaxdrrError("method labels needs a label map (segment: --labels SEG; render: labels:SEG)")
        if mapping is None:
            raise JaxdrrError("a label map needs --mapping map.json or --structures structures.csv")
        config = MaterialConfig.with_metal(metal=args.metal or "titanium", method="labels")
        labels = jaxdrr.load_volume(labels_path)
        try:
            check_label_map(labels, volume)  # eagerly: under jit the integer check cannot run
            mapping_table(mapping, config.names)
        except JaxdrrError as exc:
            raise JaxdrrError(f"label map {labels_path}: {exc}") from exc
        config = as_material_config(config, hu_to_density=hu_to_density)
        return config, labels, mapping, source
    if labels_path is not None:
        raise JaxdrrError(f"a label map was given but the method is {method!r}; use labels")
    if mapping is not None:
        raise JaxdrrError("--mapping/--structures apply to label maps only (method labels)")
    if method == "vnet":
        config = MaterialConfig.with_metal(metal=args.metal or "titanium", method="vnet")
    elif method in ("thresholds", "thresholds+metal"):
        config = as_material_config(method, metal=args.metal)
    else:
        raise JaxdrrError(f"unknown materials {method!r}")
    return as_material_config(config, hu_to_density=hu_to_density), None, None, None


def _split_nifti_name(path: Path) -> tuple[str, str]:
    from jaxdrr.errors import JaxdrrError

    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    raise JaxdrrError(f"--out must be a NIfTI file (.nii.gz or .nii), got {str(path)!r}")


def _descrip(text: str) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw[:NIFTI_DESCRIP_BYTES]


def write_segmentation(out, fractions: np.ndarray, affine: np.ndarray, config, metadata: dict) -> list[Path]:
    """Writes the fractions [M, I, J, K], the argmax label map and the JSON sidecar (atomically).

    Returns:
      The paths written: fractions, label map, sidecar.
    """
    import nibabel as nib

    from jaxdrr.io import _atomic_path

    out = Path(out)
    stem, ext = _split_nifti_name(out)
    labels_path = out.with_name(f"{stem}_labels{ext}")
    sidecar = out.with_name(f"{stem}.json")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {str(out.parent)!r}")
    names = tuple(config.names)
    fractions = np.asarray(fractions, np.float32)
    data = np.moveaxis(fractions, 0, -1)  # [I, J, K, M]
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = _descrip("jaxdrr fractions, last axis: " + ",".join(names))
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
    with _atomic_path(out) as tmp:
        nib.save(img, str(tmp))
    with _atomic_path(labels_path) as tmp:
        nib.save(lab, str(tmp))
    with _atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return [out, labels_path, sidecar]


def compute_fractions(volume, config, labels=None, mapping=None) -> np.ndarray:
    """Fractions [M, I, J, K] (NumPy float32) of a CT, jitted (network weights as an argument)."""
    import jax

    from jaxdrr.materials.network import pretrained
    from jaxdrr.materials.segmentation import material_fractions

    weights = pretrained()[1] if config.method == "vnet" else None

    def fractions(vol, lab, w):
        return material_fractions(vol, config, labels=lab, mapping=mapping, params=w)

    return np.asarray(jax.jit(fractions)(volume, labels, weights), np.float32)


def run(args) -> int:
    """Runs ``jaxdrr segment``; returns the process exit code."""
    from jaxdrr import __version__
    from jaxdrr.cli import _load_ct

    method = args.method or ("labels" if args.labels else "thresholds")
    _split_nifti_name(Path(args.out))  # fail before the work
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    volume = _load_ct(args)
    print(
        f"loaded {args.ct}: shape {tuple(volume.shape)}, spacing "
        f"{np.round(volume.spacing, 4).tolist()} mm in {time.perf_counter() - t0:.2f} s"
    )
    # The fractions file always has the four channels (air, soft tissue, bone, metal).
    spec = "thresholds+metal" if method == "thresholds" else method
    config, labels, mapping, source = materials_from_args(args, volume, spec, args.labels)
    t1 = time.perf_counter()
    fractions = compute_fractions(volume, config, labels, mapping)
    share = fractions.reshape(len(config.names), -1).mean(axis=1)
    print(
        f"segmented into {', '.join(config.names)} ({config.method}"
        + (f", {source}" if source else "")
        + f") in {time.perf_counter() - t1:.2f} s; mean fractions "
        + ", ".join(f"{n} {100 * s:.1f} %" for n, s in zip(config.names, share, strict=True))
    )
    metadata = {
        "ct": str(args.ct),
        "label_map": args.labels,
        "mapping_source": source,
        "jaxdrr_version": __version__,
    }
    written = write_segmentation(args.out, fractions, volume.affine, config, metadata)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
