"""Compile jaxdrr's Pallas/Triton kernels to GPU machine code on a machine without a GPU.

Not part of the default test suite: it needs the CUDA plugin wheels, which the main (CPU-only)
environment does not have. Run it from a separate environment::

    python -m venv /work/gpuvenv
    /work/gpuvenv/bin/pip install 'jax[cuda12]==0.10.2'    # or jax-cuda12-plugin[with-cuda]
    /work/gpuvenv/bin/pip install -e /work/main            # or its dependencies + PYTHONPATH
    /work/gpuvenv/bin/python tools/gpu_compile_check.py [--out DIR] [--ptxas PATH]

What it does, in order (each step prints its result and a failure in one step does not stop the
next):

1. lowers forward, grad-wrt-P, grad-wrt-volume and vmapped forms of ``project(..., backend="pallas")``
   for the ``cuda`` platform and extracts every ``__gpu$xla.gpu.triton`` custom call's Triton
   module (the ``ir`` field of its backend config);
2. compiles each kernel to PTX with the CUDA plugin's Triton pipeline
   (``jax._src.lib.triton.compile``: Triton -> TritonGPU -> LLVM -> PTX), for sm_90a (H100) and
   sm_80 (A100);
3. assembles each PTX file with ``ptxas -v`` and reports registers per thread, spills, stack and
   shared memory;
4. tries an ahead-of-time XLA compile of ``jit(vmap(grad(loss)))`` for an H100 *without a device*
   (a compile-only CUDA topology built from a GPU target description).

The CUDA plugin refuses to initialise without a driver (``cuInit`` fails); with
``JAX_PLATFORMS=cpu`` it skips that check yet still registers its Triton compiler, which is all
steps 1-3 need.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported: see the module docstring

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax._src.lib import triton as jax_triton  # noqa: E402
from jax._src.lib.mlir import ir  # noqa: E402

from jaxdrr import geometry as G  # noqa: E402
from jaxdrr._compat import TRITON_CUSTOM_CALL_TARGET, gpu_lowering_context  # noqa: E402
from jaxdrr.ops import project  # noqa: E402

ARCHES = {"sm_90a": "9.0", "sm_80": "8.0"}

# A GPU target description of an H100 SXM (the fields XLA's deviceless compile reads), after
# XLA's own specs (xla/tools/hlo_opt/gpu_specs).
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {
    major: 9
  }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
runtime_version: {
  major: 12
  minor: 8
  patch: 0
}
platform_name: "CUDA"
dnn_version_info {
  major: 9
  minor: 7
}
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def _problem(channels=2, shape=(64, 60, 50), height=64, width=64):
    affine = np.array([[0.8, 0.05, 0, -25], [0, 0.8, 0.02, -24], [0.01, 0, 1.0, -25], [0, 0, 0, 1.0]])
    vol = jnp.ones((channels,) + shape, jnp.float32)
    g = G.CArmGeometry(sdd_mm=1000, sid_mm=600, height=height, width=width, pixel_size_mm=1.0)
    P = G.carm(20.0, 10.0, isocenter=(0.0, 0.0, 0.0), geometry=g).astype(jnp.float32)
    return affine, vol, P, height, width


def _functions():
    affine, vol, P, H, W = _problem()
    Ps = jnp.stack([P, P * 1.001, P * 0.999, P])
    proj = lambda v, P: project(v, affine, P, H, W, backend="pallas")
    loss = lambda v, P: jnp.sum(jnp.exp(-proj(v, P)))
    return {
        "forward": (proj, (vol, P)),
        "grad_P": (jax.grad(loss, argnums=1), (vol, P)),
        "grad_volume": (jax.grad(loss, argnums=0), (vol, P)),
        "vmap_forward": (jax.vmap(proj, in_axes=(None, 0)), (vol, Ps)),
        "vmap_grad_P_and_volume": (jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0)), (vol, Ps)),
    }


def triton_calls(lowered):
    """[(kernel name, Triton module bytes, num_warps, grid)] of a lowered computation."""
    found = []

    def walk(op):
        for region in op.regions:
            for block in region.blocks:
                for o in block.operations:
                    if o.operation.name == "stablehlo.custom_call":
                        target = ir.StringAttr(o.attributes["call_target_name"]).value
                        if target == TRITON_CUSTOM_CALL_TARGET:
                            cfg = ir.DictAttr(o.attributes["mhlo.backend_config"])
                            grid = tuple(ir.IntegerAttr(cfg[k]).value for k in ("grid_x", "grid_y", "grid_z"))
                            found.append(
                                (
                                    ir.StringAttr(cfg["name"]).value,
                                    ir.StringAttr(cfg["ir"]).value_bytes,
                                    ir.IntegerAttr(cfg["num_warps"]).value,
                                    ir.IntegerAttr(cfg["num_stages"]).value,
                                    grid,
                                )
                            )
                    walk(o.operation)

    walk(lowered.compiler_ir("stablehlo").operation)
    return found


def ptxas_report(ptxas, ptx_path: Path, arch: str) -> str:
    cubin = ptx_path.with_suffix(".cubin")
    r = subprocess.run(
        [ptxas, f"-arch={arch}", "-v", "-o", str(cubin), str(ptx_path)], capture_output=True, text=True
    )
    text = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        return f"ptxas FAILED ({r.returncode}): {text}"
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    sass = sass_summary(cubin)
    return (
        f"registers={regs.group(1) if regs else '?'} "
        f"stack={spill.group(1) if spill else '?'}B spill_stores={spill.group(2) if spill else '?'}B "
        f"spill_loads={spill.group(3) if spill else '?'}B smem={smem.group(1) if smem else 0}B "
        f"cubin={cubin.stat().st_size}B{sass}"
    )


def _find_nvdisasm():
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:  # the nvidia-cuda-nvdisasm wheel
        import nvidia

        for base in nvidia.__path__:
            for cand in Path(base).glob("*/bin/nvdisasm"):
                return str(cand)
    except ImportError:
        pass
    return None


def sass_summary(cubin: Path) -> str:
    """SASS instruction counts of the sample loop (the longest backward-branching block)."""
    nvdisasm = _find_nvdisasm()
    if nvdisasm is None:
        return ""
    r = subprocess.run([nvdisasm, "-c", str(cubin)], capture_output=True, text=True)
    if r.returncode != 0:
        return f" (nvdisasm failed: {r.stderr.strip()[:100]})"
    lines = r.stdout.splitlines()
    labels = {}
    body = []
    loop = None
    for line in lines:
        m = re.match(r"^(\.L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(body)
        ins = re.match(r"^\s*/\*[0-9a-f]+\*/\s*(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)", line)
        if ins:
            body.append(ins.group(1))
            bra = re.search(r"BRA `\((\.L_x_\d+)\)", line)
            if bra and bra.group(1) in labels and labels[bra.group(1)] < len(body) - 1:
                start = labels[bra.group(1)]
                loop = body[start:]
    if loop is None:
        loop = body
    count = lambda *ops: sum(1 for o in loop if o in ops)
    return (
        f" | SASS total={len(body)} loop={len(loop)} (LDG={count('LDG')}, "
        f"RED/ATOM={count('RED', 'ATOM', 'ATOMG', 'REDG')} in whole kernel="
        f"{sum(1 for o in body if o in ('RED', 'ATOM', 'ATOMG', 'REDG'))}, "
        f"FFMA={count('FFMA')}, FMUL={count('FMUL')}, FADD={count('FADD')})"
    )


def aot_h100():
    """Deviceless XLA compile of jit(vmap(grad(loss))) for an H100 target."""
    from jax.experimental import topologies
    from jax.sharding import NamedSharding, PartitionSpec

    topo = topologies.get_topology_desc("h100", "cuda", target_config=H100_TARGET_CONFIG, topology="1x1x1")
    mesh = jax.sharding.Mesh(np.array(topo.devices), ("b",))
    rep = NamedSharding(mesh, PartitionSpec())
    fns = _functions()
    fn, (vol, Ps) = fns["vmap_grad_P_and_volume"]
    compiled = (
        jax.jit(fn, in_shardings=(rep, rep), out_shardings=(rep, rep))
        .trace(jax.ShapeDtypeStruct(vol.shape, vol.dtype), jax.ShapeDtypeStruct(Ps.shape, Ps.dtype))
        .lower(lowering_platforms=("cuda",))
        .compile()
    )
    text = compiled.as_text()
    return compiled, text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/jaxdrr_gpu_compile", help="output directory")
    parser.add_argument("--ptxas", default=shutil.which("ptxas") or "ptxas")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print(
        f"jax {jax.__version__}, devices {jax.devices()}, "
        f"Triton compilation handler for CUDA: {jax_triton.has_compilation_handler('cuda')}"
    )
    try:
        ptxas_version = (
            subprocess.run([args.ptxas, "--version"], capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
    except OSError as e:
        ptxas_version = f"unavailable: {e}"
    print(f"ptxas: {args.ptxas} ({ptxas_version})")

    kernels = {}
    print("\n== 1. cross-lowering for cuda: Triton custom calls per function")
    for name, (fn, fargs) in _functions().items():
        with gpu_lowering_context():
            lowered = jax.jit(fn).trace(*fargs).lower(lowering_platforms=("cuda",))
        calls = triton_calls(lowered)
        print(
            f"{name:24s} {len(calls)} call(s): "
            + ", ".join(f"{k}[grid={g}, warps={w}]" for k, _, w, _, g in calls)
        )
        for kname, module, warps, stages, _ in calls:
            kernels.setdefault((kname, name.startswith("vmap")), (module, warps, stages))

    print("\n== 2-3. Triton -> PTX (CUDA plugin) -> ptxas -v")
    ok = True
    for (kname, batched), (module, warps, stages) in sorted(kernels.items()):
        label = kname + ("_vmapped" if batched else "")
        for arch, cc in ARCHES.items():
            try:
                res = jax_triton.compile("cuda", module, cc, num_warps=warps, num_ctas=1, num_stages=stages)
            except Exception as e:  # noqa: BLE001 - report and go on
                ok = False
                print(f"{label:40s} {arch:7s} Triton->PTX FAILED: {type(e).__name__}: {e}")
                continue
            ptx = out / f"{label}.{arch}.ptx"
            ptx.write_text(res.asm)
            n_ld = len(re.findall(r"\bld\.global", res.asm))
            n_atom = len(re.findall(r"\b(?:atom|red)\.global", res.asm))
            report = ptxas_report(args.ptxas, ptx, arch)
            ok &= "FAILED" not in report
            print(
                f"{label:40s} {arch:7s} ptx={len(res.asm)}B ld.global={n_ld} "
                f"atom/red.global={n_atom} | {report}"
            )

    print("\n== 4. deviceless AOT compile of jit(vmap(grad(loss))) for an H100")
    try:
        _, text = aot_h100()
        n = text.count(TRITON_CUSTOM_CALL_TARGET) + len(re.findall(r"kind=kCustom.*triton", text))
        (out / "aot_h100_vmap_grad.hlo.txt").write_text(text)
        print(
            f"AOT compile OK: optimized HLO {len(text)} chars, Triton mentions {n}; "
            f"written to {out / 'aot_h100_vmap_grad.hlo.txt'}"
        )
    except Exception as e:  # noqa: BLE001 - the point is to report the exact error
        msg = "".join(traceback.format_exception_only(type(e), e)).strip()
        print(f"AOT compile FAILED: {msg[:3000]}")

    print(f"\noutputs in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
