"""Draws docs/synthetic_ct.png: a gallery of :func:`jaxdrr.phantoms.synthetic_ct` subjects.

For each region in :data:`~jaxdrr.phantoms.synthetic.REGIONS` and two seeds, one row shows an axial
slice of the (degraded) HU image, the material-class label map (argmax of the partial-volume
fractions: air / soft tissue / bone / metal) of the same slice, and a coronal slice of the HU image.
The field of view is centred on the body (``center_mm=(0, 0, 0)``); the coronal slice of the
"spine" rows goes through the plane with the most bone, the others through the body centre.
Axial slices are in the radiological convention (patient right on the left, anterior up).

Generating one volume takes 10-30 s on one CPU core, so the whole figure takes a few minutes.

Run: python tools/make_synthetic_ct_figure.py [--out docs/synthetic_ct.png] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from jaxdrr.phantoms.synthetic import MATERIAL_CLASSES, REGIONS, synthetic_ct

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "synthetic_ct.png"
SHAPE = (160, 128, 80)
SPACING_MM = (2.5, 2.5, 5.0)
WINDOW_HU = (-1000.0, 1500.0)
CLASS_COLORS = ("black", "#d9a066", "white", "#e0201b")  # air, soft tissue, bone, metal


def _axial(a: np.ndarray, k: int) -> np.ndarray:
    """[I, J] slice at z index k as an image: rows anterior->posterior, columns patient right->left."""
    return a[:, :, k].T[::-1, :]


def _coronal(a: np.ndarray, j: int) -> np.ndarray:
    """[I, K] slice at y index j as an image: rows superior->inferior, columns patient right->left."""
    return a[:, j, :].T[::-1, :]


def _row(axes, ct, seed: int):
    region, info = ct.info["region"], ct.info
    i_n, j_n, k_n = ct.hu.shape
    sx, sy, sz = SPACING_MM
    labels = np.argmax(ct.fractions, axis=0)
    k = k_n // 2
    if region == "spine":  # the coronal plane with the most bone goes through the vertebral bodies
        j = int(np.argmax(ct.fractions[2].sum(axis=(0, 2))))
    else:
        j = j_n // 2
    y_mm = ct.affine[1, 3] + j * sy
    extent_axial = (0, i_n * sx, 0, j_n * sy)
    extent_coronal = (0, i_n * sx, 0, k_n * sz)
    hu_kw = {"cmap": "gray", "vmin": WINDOW_HU[0], "vmax": WINDOW_HU[1], "interpolation": "nearest"}
    axes[0].imshow(_axial(ct.hu, k), extent=extent_axial, **hu_kw)
    axes[1].imshow(
        _axial(labels, k),
        extent=extent_axial,
        cmap=ListedColormap(CLASS_COLORS),
        vmin=-0.5,
        vmax=len(MATERIAL_CLASSES) - 0.5,
        interpolation="nearest",
    )
    axes[2].imshow(_coronal(ct.hu, j), extent=extent_coronal, **hu_kw)
    extra = []
    if info["metal"]:
        extra.append(f"metal: {info['metal']}")
    contrast = info["subject_hu"]["contrast"]
    if contrast is not None:
        extra.append(f"contrast {contrast:.0f} HU")
    if info["subject_hu"]["bolus"]:
        extra.append("bolus")
    anatomy = "" if info["anatomy"] == region else f" ({info['anatomy']})"
    axes[0].set_ylabel(f"{region}{anatomy}\nseed {seed}", fontsize=9)
    axes[0].set_title(f"axial z=0, scale {info['scale']:.2f}", fontsize=8)
    axes[1].set_title("classes: " + (", ".join(extra) if extra else "no contrast/metal"), fontsize=8)
    axes[2].set_title(f"coronal y={y_mm:.0f} mm", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"output PNG (default {OUT})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per region")
    parser.add_argument("--dpi", type=int, default=70)
    args = parser.parse_args(argv)

    rows = [(region, seed) for region in REGIONS for seed in args.seeds]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9.0, 2.9 * len(rows)), squeeze=False)
    for row, (region, seed) in zip(axes, rows, strict=True):
        ct = synthetic_ct(seed, region=region, shape=SHAPE, spacing_mm=SPACING_MM, center_mm=(0.0, 0.0, 0.0))
        _row(row, ct, seed)
        print(f"{region} seed {seed}: {ct.info['anatomy']}, metal={ct.info['metal']}", flush=True)
    height = fig.get_figheight()
    top = 1.0 - 0.75 / height  # room for the title and the legend (inches -> figure fraction)
    fig.suptitle(
        f"synthetic_ct: HU window {WINDOW_HU[0]:.0f}..{WINDOW_HU[1]:.0f}, grid {SHAPE} at {SPACING_MM} mm",
        fontsize=10,
        y=1.0 - 0.1 / height,
        va="top",
    )
    handles = [Patch(facecolor=c, edgecolor="gray", label=n) for c, n in zip(CLASS_COLORS, MATERIAL_CLASSES)]
    fig.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0 - 0.35 / height), ncol=4, fontsize=9
    )
    fig.tight_layout(rect=(0, 0, 1, top))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
