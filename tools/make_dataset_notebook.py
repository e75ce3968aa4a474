"""Writes notebooks/03_dataset.ipynb, executed (outputs and figures stored; the test suite runs it again).

Run: python tools/make_dataset_notebook.py
"""

from notebook_util import write_notebook

CELLS = [
    (
        "md",
        """# Generating a landmark dataset

`jaxdrr.datasets` turns a spec (CTs, pose and physics distributions, annotations, storage) into a sharded,
annotated training set. Here we generate a small landmark dataset from the built-in analytic pelvis phantom:
images with 2D landmarks, visibility flags, heatmaps and projected bone masks, plus a COCO file.

* **Reproducible**: sample `i` is a pure function of the spec and `i`, whatever the batch size, process count or
  restart history.
* **Resumable**: each shard is written atomically; rerunning the same command renders only the missing shards.

The same from the command line:

```bash
jaxdrr dataset init pelvis.toml                       # a runnable example spec
jaxdrr dataset --config pelvis.toml --out data/       # generate (or resume)
```

Sizes are small so this runs in well under a minute on a laptop CPU; raise `N_IMAGES` (and the detector size)
for real work.""",
    ),
    (
        "code",
        """import dataclasses, json, pathlib, pickle, shutil
import numpy as np
import matplotlib.pyplot as plt
import jaxdrr
import jaxdrr.datasets

N_IMAGES = 8        # images of the CT: raise it for a real dataset
OUT = "data"        # output directory
shutil.rmtree(OUT, ignore_errors=True)   # start fresh each run (a changed spec refuses an old directory)""",
    ),
    (
        "md",
        """## The spec
`write_example_spec` writes the same TOML file as `jaxdrr dataset init`; `load_spec` validates it (every error
names the offending key). Specs are frozen dataclasses, so `dataclasses.replace` makes a smaller one for this
demo: fewer images, a 96 x 96 detector whose pixel pitch is scaled so the field of view stays about 400 mm, and a
coarser phantom grid.""",
    ),
    (
        "code",
        """spec_path = pathlib.Path("pelvis.toml")
if not spec_path.exists():
    jaxdrr.datasets.write_example_spec(spec_path)
print(spec_path.read_text()[:400], "...")

spec = jaxdrr.datasets.load_spec(spec_path)
spec = dataclasses.replace(
    spec,
    images_per_ct=N_IMAGES,
    cts=(dataclasses.replace(spec.cts[0], shape=(64, 56, 48)),),
    detector=dataclasses.replace(spec.detector, height=96, width=96, pixel_mm=(4.0, 4.8)),
    output=dataclasses.replace(spec.output, shard_size=4, batch_size=4),
)
d = spec.to_dict()
for section in ("pose", "physics"):
    print(f"[{section}]")
    for key, value in d[section].items():
        print(f"  {key} = {json.dumps(value)}")
print(f"{spec.num_samples} samples, {len(jaxdrr.datasets.plan_shards(spec))} shards")""",
    ),
    (
        "md",
        """## Generate
One jitted, vmapped call renders each batch (image, projection matrix, landmarks, masks); a writer thread stores
whole shards as HDF5 files while the next batch renders. The first batch includes the compilation.""",
    ),
    (
        "code",
        """report = jaxdrr.datasets.generate(spec, OUT, progress=False)
print(f"{report.samples_written} images in {report.seconds:.1f} s "
      f"({report.images_per_second:.2f} images/s, including compilation)")
print(f"shards written: {report.shards_written} of {report.shards_total}; complete: {report.complete}")
print(sorted(p.name for p in pathlib.Path(OUT).iterdir()))""",
    ),
    (
        "md",
        """## Read it back
`jaxdrr.datasets.open` returns a sequence of samples in sample-index order; each sample is a dict of NumPy
arrays plus the CT's name, landmark names and label names.""",
    ),
    (
        "code",
        """samples = jaxdrr.datasets.open(OUT)
print(len(samples), "samples; fields:", ", ".join(samples.fields()))
s = samples[0]
np.set_printoptions(precision=3, suppress=True)
print("CT:", s["ct"])
print("P =\\n", s["P"])
print("kVp:", int(s["kvp"]), " photons/pixel:", float(s["photons_per_pixel"]))
print(f"landmarks visible: {int(s['landmarks_visible'].sum())} of {len(s['landmark_names'])}", s["landmark_names"])
print("masks:", s["masks"].shape, s["masks"].dtype, s["label_names"])""",
    ),
    (
        "md",
        """## A look at the images
Visible landmarks (`landmarks_2d` is (column, row), pixel centres on integers) and the outlines of the projected
bone masks.""",
    ),
    (
        "code",
        """n_show = min(8, len(samples))
colors = plt.cm.tab10(np.arange(10))
fig, axes = plt.subplots(2, 4, figsize=(10, 6), dpi=72)  # dpi: a small stored notebook
for ax in axes.flat:
    ax.axis("off")
for ax, s in zip(axes.flat, samples[:n_show]):
    ax.imshow(jaxdrr.display.window(s["image"], percentiles=(20, 99.8)), cmap="gray", interpolation="nearest")   # -ln T: bone bright
    for k, mask in enumerate(s["masks"]):
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=[colors[k % 10]], linewidths=0.8)
    vis = s["landmarks_visible"]
    ax.scatter(*s["landmarks_2d"][vis].T, s=12, c="yellow", edgecolors="black", linewidths=0.5)
    lao, cran = float(s["lao_deg"]), float(s["cran_deg"])
    ax.set_title(f"{'LAO' if lao >= 0 else 'RAO'} {abs(lao):.0f}, {'CRAN' if cran >= 0 else 'CAUD'} "
                 f"{abs(cran):.0f}, {int(s['kvp'])} kVp", fontsize=9)
handles = [plt.Line2D([], [], color=colors[k % 10]) for k in range(len(s["label_names"]))]
fig.legend(handles, s["label_names"], loc="lower center", ncol=len(handles), fontsize=8)
plt.tight_layout(rect=(0, 0.04, 1, 1))
plt.show()""",
    ),
    (
        "md",
        """## Consistency checks
The stored annotations agree with the geometry: projecting the phantom's 3D landmarks with each sample's `P`
reproduces `landmarks_2d`, and the femoral head centres fall inside the projected femur masks.""",
    ),
    (
        "code",
        """from jaxdrr.geometry import project_points

landmarks_3d = jaxdrr.phantoms.pelvis_landmarks()      # name -> (x, y, z) world mm
femur_checks = 0
for s in samples:
    names = list(s["landmark_names"])
    assert names == list(landmarks_3d), names
    pts = np.stack([landmarks_3d[n] for n in names])
    xy, depth = project_points(s["P"], pts)
    err = float(np.abs(np.asarray(xy) - s["landmarks_2d"]).max())
    assert err < 1e-2, f"sample {int(s['index'])}: landmarks off by {err} px"
    for landmark, label in (("FH-l", "left femur"), ("FH-r", "right femur")):
        i, k = names.index(landmark), s["label_names"].index(label)
        if s["landmarks_visible"][i]:
            col, row = np.rint(s["landmarks_2d"][i]).astype(int)
            assert s["masks"][k, row, col] == 1, f"sample {int(s['index'])}: {landmark} outside the {label} mask"
            femur_checks += 1
assert femur_checks > 0
print(f"dataset checks passed: {len(samples)} samples ({femur_checks} femoral heads inside their masks)")""",
    ),
    (
        "md",
        """## Resuming, and the COCO file
Rerunning `generate` with the same spec and directory skips every finished shard (after a crash it renders
only the missing ones). `coco.json` holds COCO keypoints and RLE masks for tools that read COCO.""",
    ),
    (
        "code",
        """shard_files = sorted(pathlib.Path(OUT, "shards").glob("*.h5"))
mtimes = [p.stat().st_mtime_ns for p in shard_files]
again = jaxdrr.datasets.generate(spec, OUT, progress=False)
print(f"second run: {again.shards_already_done} of {again.shards_total} shards already done, "
      f"{again.shards_written} written, {again.seconds:.2f} s")
assert again.shards_already_done == report.shards_total and again.shards_written == 0
assert [p.stat().st_mtime_ns for p in shard_files] == mtimes

coco = json.loads(pathlib.Path(OUT, "coco.json").read_text())
print(f"coco.json: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
      f"categories: {[c['name'] for c in coco['categories']]}")
assert len(coco["images"]) == len(samples)""",
    ),
    (
        "md",
        """## Reading from PyTorch
The `Dataset` is a picklable `Sequence` (open HDF5 handles are dropped when pickled), so it serves directly as a
map-style PyTorch dataset, also in `DataLoader` worker processes:

```python
import torch
loader = torch.utils.data.DataLoader(samples, batch_size=16, shuffle=True, num_workers=4,
                                     collate_fn=lambda b: {k: torch.as_tensor(np.stack([s[k] for s in b]))
                                                           for k in ("image", "landmarks_2d", "masks")})
```

Without torch, `samples.batches(batch_size, shuffle=True)` iterates over stacked NumPy batches.""",
    ),
    (
        "code",
        """clone = pickle.loads(pickle.dumps(samples))
assert len(clone) == len(samples)
for batch in samples.batches(4, shuffle=True, fields=["index", "image", "landmarks_2d", "landmarks_visible", "masks"]):
    print({k: (v.shape, str(v.dtype)) for k, v in batch.items()})
    break""",
    ),
]


def main():
    write_notebook(CELLS, "03_dataset.ipynb")


if __name__ == "__main__":
    main()
