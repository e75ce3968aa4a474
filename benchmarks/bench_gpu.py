"""GPU throughput of the projector: images/s for the XLA and Pallas backends, forward and backward.

Ready to run on a machine with an NVIDIA GPU and ``jax[cuda12]`` (the project has NOT run it on a
GPU: see docs/gpu.md for the expected numbers from first principles)::

    python benchmarks/bench_gpu.py                      # 256x256 and 620x480, xla and pallas
    python benchmarks/bench_gpu.py --batch 32 --volume 512,512,300 --channels 3
    python benchmarks/bench_gpu.py --smoke              # tiny problem; on CPU uses pallas_interpret

Each measurement is ``jit(vmap(f))`` over ``--batch`` poses (one kernel launch per batch), with f:

* ``fwd``: ``project(volume, affine, P, H, W)`` -> [H, W, C];
* ``fwd+bwd(P)``: value and gradient w.r.t. P of ``sum(exp(-project(...)))`` (the registration case:
  forward kernel + gather-only geometry kernel);
* ``fwd+bwd(P+vol)``: gradient w.r.t. P and the volume (adds the atomic scatter kernel).

Compilation is excluded (one warm-up call); the timed loop blocks on every result. Samples/s counts
the trilinear samples actually taken (sum of per-ray step counts), which is what the first-principles
estimate in docs/gpu.md is about.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxdrr import geometry as G  # noqa: E402
from jaxdrr.ops import project  # noqa: E402
from jaxdrr.ops.rays import VolumeGrid, detector_rays, resolve_step  # noqa: E402


def make_problem(shape, channels, spacing, height, width, batch, seed=0):
    rng = np.random.default_rng(seed)
    vol = jnp.asarray(rng.random((channels,) + tuple(shape), dtype=np.float32))
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = -0.5 * (np.array(shape) - 1) * np.array(spacing)  # centred on the origin
    det_mm = 1.2 * max(np.array(shape) * np.array(spacing)) * 2  # magnification 2
    g = G.CArmGeometry(
        sdd_mm=1020.0, sid_mm=510.0, height=height, width=width, pixel_size_mm=det_mm / max(height, width)
    )
    angles = np.linspace(-60, 60, batch)
    Ps = jnp.stack(
        [G.carm(float(a), 0.3 * float(a), isocenter=(0.0, 0.0, 0.0), geometry=g) for a in angles]
    ).astype(jnp.float32)
    return vol, affine, Ps


def count_samples(vol, affine, Ps, height, width, step_mm):
    grid = VolumeGrid.create(vol.shape[1:], affine)
    step = resolve_step(grid, step_mm)
    n = jax.jit(jax.vmap(lambda P: jnp.sum(detector_rays(P, grid, height, width, step).num_steps)))(Ps)
    return int(np.sum(np.asarray(n, dtype=np.int64)))


def make_fn(mode, backend, vol, affine, height, width, step_mm):
    proj = lambda v, P: project(v, affine, P, height, width, step_mm=step_mm, backend=backend)
    loss = lambda v, P: jnp.sum(jnp.exp(-0.01 * proj(v, P)))
    if mode == "fwd":
        return jax.jit(jax.vmap(lambda P: proj(vol, P)))
    if mode == "fwd+bwd(P)":
        return jax.jit(jax.vmap(lambda P: jax.value_and_grad(loss, argnums=1)(vol, P)))
    if mode == "fwd+bwd(P+vol)":
        return jax.jit(jax.vmap(lambda P: jax.value_and_grad(loss, argnums=(0, 1))(vol, P)))
    raise ValueError(mode)


def bench(fn, Ps, iters, min_time):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(Ps))
    compile_s = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while n < iters or time.perf_counter() - t0 < min_time:
        jax.block_until_ready(fn(Ps))
        n += 1
    return (time.perf_counter() - t0) / n, compile_s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--detectors",
        default="256x256,620x480",
        help="comma-separated WIDTHxHEIGHT list (default: 256x256,620x480)",
    )
    p.add_argument(
        "--backends",
        default=None,
        help="comma-separated; default 'xla,pallas' on GPU, 'xla,pallas_interpret' else",
    )
    p.add_argument("--modes", default="fwd,fwd+bwd(P),fwd+bwd(P+vol)")
    p.add_argument("--volume", default="256,256,256", help="I,J,K voxels")
    p.add_argument("--spacing", default="0.8,0.8,1.0", help="mm")
    p.add_argument("--channels", type=int, default=2, help="materials (C)")
    p.add_argument("--batch", type=int, default=8, help="poses per call (vmap)")
    p.add_argument("--step-mm", type=float, default=None, help="default: half the finest spacing")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (runs anywhere, numbers meaningless)")
    args = p.parse_args(argv)

    on_gpu = jax.default_backend() == "gpu"
    if args.smoke:
        args.detectors, args.volume, args.batch, args.iters, args.min_time = "16x12", "12,10,9", 2, 1, 0.0
    backends = (args.backends or ("xla,pallas" if on_gpu else "xla,pallas_interpret")).split(",")
    if not on_gpu and not args.smoke:
        print(
            "WARNING: no GPU: these are CPU numbers (pallas_interpret is an emulator, not a "
            "kernel); use --smoke to just check the script runs.",
            file=sys.stderr,
        )
    shape = tuple(int(v) for v in args.volume.split(","))
    spacing = tuple(float(v) for v in args.spacing.split(","))
    dev = jax.devices()[0]
    print(
        f"# jaxdrr GPU benchmark: jax {jax.__version__}, device {dev.device_kind} ({dev.platform}), "
        f"volume {shape} x C={args.channels}, spacing {spacing} mm, batch {args.batch} poses, "
        f"step {args.step_mm or 'default'}"
    )
    header = (
        "| detector | backend | mode | ms / batch | images/s | Gsamples/s | compile s |\n"
        "|---|---|---|---:|---:|---:|---:|"
    )
    print(header)
    for det in args.detectors.split(","):
        width, height = (int(v) for v in det.lower().split("x"))
        vol, affine, Ps = make_problem(shape, args.channels, spacing, height, width, args.batch)
        samples = count_samples(vol, affine, Ps, height, width, args.step_mm)
        for backend in backends:
            for mode in args.modes.split(","):
                try:
                    fn = make_fn(mode, backend, vol, affine, height, width, args.step_mm)
                    sec, compile_s = bench(fn, Ps, args.iters, args.min_time)
                except Exception as e:  # noqa: BLE001 - keep the table going
                    print(
                        f"| {width}x{height} | {backend} | {mode} | FAILED: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:120]} | | | |"
                    )
                    continue
                print(
                    f"| {width}x{height} | {backend} | {mode} | {sec * 1e3:.2f} | "
                    f"{args.batch / sec:.1f} | {samples / sec / 1e9:.3f} | {compile_s:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
