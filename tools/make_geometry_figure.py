"""Draws docs/geometry.png: the world frame, the C-arm at AP and LAO 30 / CRAN 15, and the image axes.

Run: python tools/make_geometry_figure.py
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import jaxdrr
from jaxdrr import geometry as G

OUT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "geometry.png"


def detector_corners(P, g):
    src = np.asarray(G.source_position(P))
    pts = np.array(
        [[0, 0, 1], [g.width - 1, 0, 1], [g.width - 1, g.height - 1, 1], [0, g.height - 1, 1]], float
    )
    dirs = np.asarray(G.ray_directions(P, pts))
    # Detector plane at SDD along the principal axis.
    axis = np.asarray(G.ray_directions(P, np.array([(g.width - 1) / 2, (g.height - 1) / 2, 1.0])))
    scale = g.sdd_mm / (dirs @ axis)
    return src, src + dirs * scale[:, None]


def main():
    g = G.CArmGeometry(sdd_mm=1020, sid_mm=700, height=512, width=512, pixel_size_mm=0.8)
    fig = plt.figure(figsize=(12, 5.5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    for (lao, cran), color in [((0, 0), "tab:blue"), ((30, 15), "tab:orange")]:
        P = G.carm(lao, cran, geometry=g)
        src, corners = detector_corners(P, g)
        ax.scatter(*src, color=color, s=40)
        ax.text(*src, f" source\n LAO {lao} CRAN {cran}", color=color, fontsize=8)
        loop = np.vstack([corners, corners[:1]])
        ax.plot(*loop.T, color=color)
        ax.text(*corners[0], "pixel (0,0)", color=color, fontsize=7)
        for c in corners:
            ax.plot(*np.stack([src, c]).T, color=color, lw=0.4, alpha=0.5)
    for v, name in [((200, 0, 0), "+x Right"), ((0, 200, 0), "+y Anterior"), ((0, 0, 200), "+z Superior")]:
        ax.quiver(0, 0, 0, *v, color="k")
        ax.text(*v, name, fontsize=8)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_zlabel("z (mm)")
    ax.set_title("World RAS+ and the C-arm (isocentre at the origin)")
    ax.view_init(elev=20, azim=-60)

    ax2 = fig.add_subplot(1, 2, 2)
    vol = jaxdrr.phantom(shape=(96, 80, 64))
    gs = g.scaled(4)
    img = jaxdrr.render(
        vol, G.carm(0, 0, geometry=gs), config=jaxdrr.RenderConfig(height=gs.height, width=gs.width)
    )
    ax2.imshow(np.asarray(img), cmap="gray")
    xy, _ = G.project_points(G.carm(0, 0, geometry=gs), np.array([[100.0, 0, 0], [0, 0, 80.0]]))
    ax2.annotate("patient right (+x)", xy=np.asarray(xy[0]), color="yellow", fontsize=8)
    ax2.annotate("head (+z)", xy=np.asarray(xy[1]), color="yellow", fontsize=8)
    ax2.set_xlabel("column x (image point x = c)")
    ax2.set_ylabel("row y (image point y = r)")
    ax2.set_title("AP view (LAO 0, CRAN 0): radiological display, -ln T")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
