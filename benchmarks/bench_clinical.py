#!/usr/bin/env python
"""Memory and time at clinical size: a 512 x 512 x 500 CT and a 1024 x 1024 detector.

Renders the built-in phantom voxelised at 512 x 512 x 500 (0.74 x 0.59 x 0.48 mm) with the full
physics (3 materials, 1 keV IPEM spectrum, noise) at 1024 x 1024, then the pose gradient of a
noise-free render. Reports wall time and the process's peak RSS (VmHWM), which includes the HU
volume, its three density channels and their padded copy.

    python benchmarks/bench_clinical.py [--step planes|half] [--backend auto|xla|native]
"""

import argparse
import time


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", choices=("planes", "half"), default="planes")
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 500))
    ap.add_argument("--detector", type=int, default=1024)
    ap.add_argument("--backend", default="auto", help="projector backend (auto: native on CPU when built)")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp

    import jaxdrr
    from jaxdrr.ops import project_backend

    which = " ".join(project_backend()) if args.backend == "auto" else args.backend
    print(f"jax {jax.__version__}; projector: {which}", flush=True)

    t = time.perf_counter()
    vol = jaxdrr.phantom(shape=tuple(args.shape))
    print(
        f"phantom {vol.shape}: {time.perf_counter() - t:.1f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True
    )
    g = jaxdrr.geometry.CArmGeometry(
        height=args.detector, width=args.detector, pixel_size_mm=0.8 * 512 / args.detector
    )
    P = jaxdrr.geometry.carm(30.0, 10.0, isocenter=vol.center, geometry=g)
    step = "planes" if args.step == "planes" else None
    cfg = jaxdrr.RenderConfig(
        height=g.height, width=g.width, step_mm=step, noise=jaxdrr.NoiseConfig(), backend=args.backend
    )
    params = jaxdrr.default_params(cfg)
    render = jax.jit(jaxdrr.make_renderer(cfg))
    for label in ("render (compile + run)", "render"):
        t = time.perf_counter()
        img = jax.block_until_ready(render(params, vol, P, jax.random.key(0)))
        print(
            f"{label}: {time.perf_counter() - t:.1f} s, finite={bool(jnp.all(jnp.isfinite(img)))}, "
            f"peak RSS {peak_rss_gb():.2f} GB",
            flush=True,
        )
    clean = jaxdrr.make_renderer(cfg.replace(noise=None))
    target = img
    # The volume is an argument, not a closure: a closed-over array becomes an XLA constant that
    # the compiler tries to fold (minutes and many GB for a clinical CT).
    grad = jax.jit(jax.grad(lambda P, vol: jnp.mean((clean(params, vol, P, None) - target) ** 2)))
    for label in ("pose gradient (compile + run)", "pose gradient"):
        t = time.perf_counter()
        gP = jax.block_until_ready(grad(P, vol))
        print(
            f"{label}: {time.perf_counter() - t:.1f} s, finite={bool(jnp.all(jnp.isfinite(gP)))}, "
            f"peak RSS {peak_rss_gb():.2f} GB",
            flush=True,
        )


if __name__ == "__main__":
    main()
