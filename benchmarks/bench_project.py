#!/usr/bin/env python
"""Projector and renderer benchmark for jaxdrr (the "Performance" targets of the spec).

For an N^3 volume (the built-in pelvis phantom, isotropic voxels) and an M x M detector at
0.5-voxel steps, a C-arm view (LAO 30, CRAN 10) with the pixel pitch chosen so the volume fills the
detector, measures (jit, warm-up excluded, median of --repeats, ``block_until_ready``):

  (a) single-channel forward projection time and trilinear samples/s, both "computed" samples
      (what the chunked marcher evaluates: every ray of a chunk runs to that chunk's longest ray)
      and "useful" samples (sum of ``detector_rays(...).num_steps``);
  (b) three channels in one pass vs one channel;
  (c) forward + pose gradient (``jax.value_and_grad`` of a scalar loss w.r.t. P) vs forward;
  (d) peak memory of each (fresh subprocess per measurement; see ``benchmarks/common.py``);
  (e) a full render (3 materials, 1 keV IPEM spectrum, noise) vs the 3-channel projection;
  plus a breakdown of the forward into ray set-up, pad/transpose and march.

Usage (main venv)::

    python benchmarks/bench_project.py                  # 256^3, 256x256, 5 repeats
    python benchmarks/bench_project.py --quick          # 64^3, 64x64 smoke run
    python benchmarks/bench_project.py --size 128 --detector 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from jaxdrr.ops.project import BACKENDS  # noqa: E402

LAO, CRAN = 30.0, 10.0
TARGETS = {
    "samples_per_s": 25e6,
    "three_channel_ratio": 1.5,
    "grad_ratio": 4.0,
    "grad_peak_mb": 1024.0,
    "render_ratio": 1.3,
}


# ----------------------------------------------------------------------------- inputs


def volume_cache_path(size: int) -> Path:
    return common.CACHE_DIR / f"phantom_{size}.npz"


def make_volume(size: int):
    """The pelvis phantom on an isotropic size^3 grid that holds its whole 380 mm field of view."""
    import numpy as np

    import jaxdrr

    path = volume_cache_path(size)
    if path.exists():
        z = np.load(path)
        return jaxdrr.Volume.create(z["data"], z["affine"])
    spacing = 384.0 / size  # the phantom's largest extent is 380 mm
    vol = jaxdrr.phantom(shape=(size,) * 3, spacing=spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=np.asarray(vol.data, np.float32), affine=vol.affine)
    return vol


def geometry(vol, detector: int):
    """C-arm geometry whose pixel pitch makes the volume's largest extent span the detector."""
    import numpy as np

    from jaxdrr.geometry import CArmGeometry

    g = CArmGeometry()
    lo, hi = vol.world_bounds()
    extent = float(np.max(hi - lo))
    pixel = extent * (g.sdd_mm / g.sid_mm) / detector
    return CArmGeometry(
        sdd_mm=g.sdd_mm, sid_mm=g.sid_mm, height=detector, width=detector, pixel_size_mm=pixel
    )


def projection_matrix(vol, detector: int):
    import jax.numpy as jnp

    import jaxdrr

    return jnp.asarray(
        jaxdrr.geometry.carm(LAO, CRAN, isocenter=vol.center, geometry=geometry(vol, detector))
    )


def densities(vol, channels: int):
    """[C, I, J, K] material densities (C=3) or their sum, total density (C=1)."""
    import jax.numpy as jnp

    import jaxdrr

    d = jaxdrr.material_densities(vol, jaxdrr.MaterialConfig())
    if channels == 1:
        return jnp.sum(d, axis=0, keepdims=True)
    if channels == d.shape[0]:
        return d
    raise ValueError(f"channels must be 1 or {d.shape[0]}")


def sample_counts(vol, P, detector: int, step_mm: float) -> dict:
    import numpy as np

    from jaxdrr.ops import march, rays

    grid = rays.VolumeGrid.create(vol.shape, vol.affine)
    r = rays.detector_rays(P, grid, detector, detector, step_mm)
    n = np.asarray(r.num_steps, np.int64)
    chunk = max(1, min(march.DEFAULT_CHUNK, n.size))
    pad = (-n.size) % chunk
    per_chunk = np.pad(n, (0, pad)).reshape(-1, chunk).max(axis=1)
    return {
        "useful_samples": int(n.sum()),
        "computed_samples": int(per_chunk.sum() * chunk),
        "rays": int(n.size),
        "rays_hit": int((n > 0).sum()),
        "max_steps": int(n.max()),
        "chunk": chunk,
    }


# ----------------------------------------------------------------------------- worker


def worker(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdrr
    from jaxdrr.ops import march as march_lib
    from jaxdrr.ops import rays as rays_lib

    size, det, repeats, kind = spec["size"], spec["detector"], spec["repeats"], spec["kind"]
    vol = make_volume(size)
    P = projection_matrix(vol, det)
    step = "planes" if spec.get("step") == "planes" else 0.5 * float(np.min(vol.spacing))
    affine = vol.affine
    grid = rays_lib.VolumeGrid.create(vol.shape, affine)
    ch = spec.get("channels", 1)

    if kind == "render":
        config = jaxdrr.RenderConfig(
            height=det, width=det, step_mm=step, noise=jaxdrr.NoiseConfig(), backend=spec["backend"]
        )
        params = jaxdrr.default_params(config)
        render = jax.jit(jaxdrr.make_renderer(config))
        data = jax.block_until_ready(vol.data)
        key = jax.random.key(0)
        meter = common.MemoryMeter()
        fn = lambda: render(params, vol, P, key)  # noqa: E731
        extra = {"energies": int(params["energies"].shape[0]), "materials": list(config.materials.names)}
    else:
        data = jax.block_until_ready(densities(vol, ch))
        extra = {}
        if kind == "fwd":
            f = jax.jit(
                lambda d, P: jaxdrr.project(d, affine, P, det, det, step_mm=step, backend=spec["backend"])
            )
            meter = common.MemoryMeter()
            fn = lambda: f(data, P)  # noqa: E731
        elif kind == "grad":
            # target: the same view 1 degree off, so the loss and its gradient are non-trivial
            P_t = jaxdrr.geometry.carm(LAO + 1.0, CRAN, isocenter=vol.center, geometry=geometry(vol, det))
            target = jax.block_until_ready(
                jax.jit(
                    lambda d, P: jaxdrr.project(d, affine, P, det, det, step_mm=step, backend=spec["backend"])
                )(data, P_t)
            )

            def loss(P, d):
                img = jaxdrr.project(d, affine, P, det, det, step_mm=step, backend=spec["backend"])
                return 0.5 * jnp.mean((img - target) ** 2)

            f = jax.jit(jax.value_and_grad(loss))
            meter = common.MemoryMeter()
            fn = lambda: f(P, data)  # noqa: E731
            val, gP = f(P, data)
            extra = {
                "loss": float(val),
                "grad_norm": float(jnp.linalg.norm(gP)),
                "grad_finite": bool(jnp.all(jnp.isfinite(gP))),
            }
        elif kind == "rays":
            f = jax.jit(lambda P: rays_lib.detector_rays(P, grid, det, det, step))
            meter = common.MemoryMeter()
            fn = lambda: f(P)  # noqa: E731
        elif kind == "pad":
            f = jax.jit(march_lib.pad_channels_last)
            meter = common.MemoryMeter()
            fn = lambda: f(data)  # noqa: E731
        elif kind == "march":
            rays = jax.block_until_ready(
                jax.jit(lambda P: rays_lib.detector_rays(P, grid, det, det, step))(P)
            )
            flat = jax.block_until_ready(jax.jit(march_lib.pad_channels_last)(data))
            f = jax.jit(
                lambda flat, rays: march_lib.march(flat, grid.padded_shape, rays, planes=(step == "planes"))
            )
            meter = common.MemoryMeter()
            fn = lambda: f(flat, rays)  # noqa: E731
        else:
            raise ValueError(kind)

    # compile + first run, then warm-up is excluded from the timed repeats
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    meter.mark_warm()
    times, _ = common.time_repeats(fn, repeats, warmup=1, sync=jax.block_until_ready)
    out = {
        "kind": kind,
        "channels": ch,
        "first_call_s": round(first, 3),
        "times_s": [round(t, 4) for t in times],
        "median_s": common.median(times),
        **extra,
        **meter.result(),
    }
    if kind == "fwd" and spec.get("counts"):
        out.update(sample_counts(vol, P, det, step))
    return out


# ----------------------------------------------------------------------------- driver


def run(args) -> dict:
    script = str(Path(__file__).resolve())
    base = {
        "size": args.size,
        "detector": args.detector,
        "repeats": args.repeats,
        "step": args.step,
        "backend": args.backend,
    }
    print(f"# preparing {args.size}^3 phantom (cached in {common.CACHE_DIR}) ...", flush=True)
    make_volume(args.size)
    plan = [
        ("fwd1", {"kind": "fwd", "channels": 1, "counts": True}),
        ("fwd3", {"kind": "fwd", "channels": 3}),
        ("grad1", {"kind": "grad", "channels": 1}),
        ("grad3", {"kind": "grad", "channels": 3}),
        ("render", {"kind": "render", "channels": 3}),
        ("rays", {"kind": "rays", "channels": 1}),
        ("pad1", {"kind": "pad", "channels": 1}),
        ("march1", {"kind": "march", "channels": 1}),
        ("pad3", {"kind": "pad", "channels": 3}),
        ("march3", {"kind": "march", "channels": 3}),
    ]
    if args.only:
        plan = [p for p in plan if p[0] in args.only.split(",")]
    results = {}
    for rnd in range(args.rounds):
        for name, spec in plan:
            if rnd > 0 and name not in ("fwd1", "fwd3", "grad1", "render"):
                continue
            print(f"# [{rnd + 1}/{args.rounds}] {name} (load {common.load_average()}) ...", flush=True)
            r = common.run_worker(script, {**base, **spec})
            results.setdefault(name, []).append(r)
            if "error" in r:
                print(f"   ERROR: {r['error']}\n   " + "\n   ".join(r.get("stderr_tail", [])))
            else:
                print(
                    f"   median {r['median_s']:.4f} s, peak {r['peak_mb']} MB "
                    f"(exec {r.get('exec_peak_mb')} MB), first call {r['first_call_s']} s"
                )
    return results


def summarise(results: dict, args, info: dict) -> tuple[dict, str]:
    def med(name, key="median_s"):
        rs = [r for r in results.get(name, []) if "error" not in r]
        return common.median([r[key] for r in rs]) if rs else float("nan")

    def mem(name, key="peak_mb"):
        rs = [r for r in results.get(name, []) if "error" not in r and key in r]
        return common.median([r[key] for r in rs]) if rs else float("nan")

    def paired(num, den):
        a, b = results.get(num, []), results.get(den, [])
        rs = [x["median_s"] / y["median_s"] for x, y in zip(a, b) if "error" not in x and "error" not in y]
        return common.median(rs) if rs else float("nan")

    f1 = results.get("fwd1", [{}])[0]
    useful, computed = f1.get("useful_samples", 0), f1.get("computed_samples", 0)
    t1, t3, tg, tg3, tr = med("fwd1"), med("fwd3"), med("grad1"), med("grad3"), med("render")
    trays, tpad, tmarch = med("rays"), med("pad1"), med("march1")
    tpad3, tmarch3 = med("pad3"), med("march3")
    summary = {
        "fwd1_s": t1,
        "fwd3_s": t3,
        "grad1_s": tg,
        "grad3_s": tg3,
        "render_s": tr,
        "rays_s": trays,
        "pad1_s": tpad,
        "march1_s": tmarch,
        "pad3_s": tpad3,
        "march3_s": tmarch3,
        "useful_samples": useful,
        "computed_samples": computed,
        "useful_samples_per_s": useful / t1 if t1 else float("nan"),
        "computed_samples_per_s": computed / t1 if t1 else float("nan"),
        "march_computed_samples_per_s": computed / tmarch if tmarch else float("nan"),
        "three_channel_ratio": t3 / t1,
        "grad_ratio": tg / t1,
        "grad3_ratio": tg3 / t3,
        "render_ratio": tr / t3,
        # the same ratios per round (both from the same round, so under similar load), median
        "paired_three_channel_ratio": paired("fwd3", "fwd1"),
        "paired_grad_ratio": paired("grad1", "fwd1"),
        "paired_render_ratio": paired("render", "fwd3"),
        "peak_mb": {k: mem(k) for k in results},
        "exec_peak_mb": {k: mem(k, "exec_peak_mb") for k in results},
    }
    T = TARGETS

    def ok(cond):
        return "met" if cond else "**missed**"

    rows = [
        [
            "(a) 1-channel forward",
            t1,
            summary["peak_mb"].get("fwd1"),
            summary["exec_peak_mb"].get("fwd1"),
            f"{summary['computed_samples_per_s'] / 1e6:.1f}M computed, "
            f"{summary['useful_samples_per_s'] / 1e6:.1f}M useful samples/s",
            f">= 25M samples/s: {ok(summary['computed_samples_per_s'] >= T['samples_per_s'])} "
            f"(computed), {ok(summary['useful_samples_per_s'] >= T['samples_per_s'])} (useful)",
        ],
        [
            "(b) 3-channel forward",
            t3,
            summary["peak_mb"].get("fwd3"),
            summary["exec_peak_mb"].get("fwd3"),
            f"{summary['three_channel_ratio']:.2f}x 1-channel (per-round paired: "
            f"{summary['paired_three_channel_ratio']:.2f}x)",
            f"<= 1.5x: {ok(summary['three_channel_ratio'] <= T['three_channel_ratio'])} "
            f"(paired: {ok(summary['paired_three_channel_ratio'] <= T['three_channel_ratio'])})",
        ],
        [
            "(c) 1-channel fwd + pose grad",
            tg,
            summary["peak_mb"].get("grad1"),
            summary["exec_peak_mb"].get("grad1"),
            f"{summary['grad_ratio']:.2f}x forward (paired: {summary['paired_grad_ratio']:.2f}x)",
            f"<= 4x: {ok(summary['grad_ratio'] <= T['grad_ratio'])}; < 1 GB: "
            f"{ok(summary['peak_mb'].get('grad1', 1e9) < T['grad_peak_mb'])}",
        ],
        [
            "(c') 3-channel fwd + pose grad",
            tg3,
            summary["peak_mb"].get("grad3"),
            summary["exec_peak_mb"].get("grad3"),
            f"{summary['grad3_ratio']:.2f}x 3-ch forward",
            "",
        ],
        [
            "(e) full render (3 mat, 1 keV, noise)",
            tr,
            summary["peak_mb"].get("render"),
            summary["exec_peak_mb"].get("render"),
            f"{summary['render_ratio']:.2f}x 3-ch projection (paired: {summary['paired_render_ratio']:.2f}x)",
            f"<= 1.3x: {ok(summary['render_ratio'] <= T['render_ratio'])} "
            f"(paired: {ok(summary['paired_render_ratio'] <= T['render_ratio'])})",
        ],
        [
            "XLA breakdown: detector_rays",
            trays,
            summary["peak_mb"].get("rays"),
            summary["exec_peak_mb"].get("rays"),
            "",
            "",
        ],
        [
            "XLA breakdown: pad_channels_last (1 ch)",
            tpad,
            summary["peak_mb"].get("pad1"),
            summary["exec_peak_mb"].get("pad1"),
            "",
            "",
        ],
        [
            "XLA breakdown: march only (1 ch)",
            tmarch,
            summary["peak_mb"].get("march1"),
            summary["exec_peak_mb"].get("march1"),
            f"{summary['march_computed_samples_per_s'] / 1e6:.1f}M computed samples/s",
            "",
        ],
        [
            "XLA breakdown: pad_channels_last (3 ch)",
            tpad3,
            summary["peak_mb"].get("pad3"),
            summary["exec_peak_mb"].get("pad3"),
            "",
            "",
        ],
        [
            "XLA breakdown: march only (3 ch)",
            tmarch3,
            summary["peak_mb"].get("march3"),
            summary["exec_peak_mb"].get("march3"),
            f"{tmarch3 / tmarch:.2f}x 1-ch march",
            "",
        ],
    ]
    n_runs = {k: len(v) for k, v in results.items()}
    md = [
        f"# jaxdrr projector benchmark ({info['date']})",
        "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['cpus']} CPUs, {info['platform']}, Python {info['python']}, "
        f"jax {info.get('jax')} ({info.get('jax_backend')}); projector: {info.get('projector', 'xla')}  ",
        f"Load average at start: {info['loadavg']}; at end: {info.get('loadavg_end')} "
        "(the machine is shared; other jobs were running)  ",
        f"Volume: pelvis phantom {args.size}^3, isotropic {384.0 / args.size:.3f} mm; detector "
        f"{args.detector}x{args.detector}, C-arm LAO {LAO} CRAN {CRAN}, sampling "
        f"{'0.5 voxel steps' if args.step == 'half' else 'voxel planes'}; "
        f"{f1.get('rays_hit')} / {f1.get('rays')} rays hit the volume, longest "
        f"{f1.get('max_steps')} steps; useful samples {useful:,}, computed samples "
        f"{computed:,} (chunks of {f1.get('chunk')} rays run to their longest ray).  ",
        f"Times: median of {args.repeats} repeats after warm-up, per fresh subprocess; runs per "
        f"measurement (median taken across them): {n_runs}.  ",
        "Memory: peak RSS over the loaded-input baseline (VmHWM - VmRSS, incl. compile) and "
        "execution-only transient (VmHWM reset after warm-up via /proc/self/clear_refs).",
        "",
        common.md_table(
            ["measurement", "median s", "peak MB (incl. compile)", "exec peak MB", "rate / ratio", "target"],
            rows,
        ),
        "",
    ]
    return summary, "\n".join(md)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="volume edge (voxels)")
    ap.add_argument("--detector", type=int, default=256, help="detector edge (pixels)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--step",
        choices=("half", "planes"),
        default="half",
        help="ray sampling: half-voxel steps (the spec's setting) or one sample per "
        "voxel plane (step_mm='planes', the renderer's default)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the headline measurements (fresh processes) and take the median",
    )
    ap.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="projector backend of (a)-(e); the breakdown is always the XLA path's",
    )
    ap.add_argument("--quick", action="store_true", help="64^3 volume, 64x64 detector, 2 repeats")
    ap.add_argument("--only", default="", help="comma-separated subset, e.g. fwd1,fwd3")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    ap.add_argument("--from-json", help="re-make the markdown summary from a results .json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        common.emit(worker(json.loads(args.worker)))
        return
    if args.from_json:
        payload = json.loads(Path(args.from_json).read_text())
        saved = argparse.Namespace(**payload["args"])
        summary, md = summarise(payload["runs"], saved, payload["info"])
        payload["summary"] = summary
        print(md)
        if not args.no_write:
            common.write_results(Path(args.from_json).stem, payload, md)
        return
    if args.quick:
        args.size, args.detector, args.repeats = 64, 64, 2
    info = common.machine_info()
    from jaxdrr.ops import project_backend

    info["projector"] = args.backend if args.backend != "auto" else " ".join(project_backend())
    info["command"] = "python benchmarks/bench_project.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    results = run(args)
    info["loadavg_end"] = common.load_average()
    summary, md = summarise(results, args, info)
    print()
    print(md)
    if not args.no_write and not args.quick:
        stem = f"project_{common.today()}_{args.step}"
        payload = {"info": info, "args": vars(args), "summary": summary, "runs": results, "targets": TARGETS}
        paths = common.write_results(stem, payload, md)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
