#!/usr/bin/env python
"""One-shot GPU check of the projector: Pallas kernels vs the XLA path, correctness and timing.

This is the single prepared script to run on the first GPU machine the project is lent (one attempt,
a few minutes of device time, no network, no install step)::

    PYTHONPATH=. python benchmarks/gpu_check.py --out $OUT/gpu_check.json

and its dry run on a CPU-only machine (tiny sizes, ``backend="pallas_interpret"`` in place of
``"pallas"``; exercises every code path, the numbers mean nothing)::

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/gpu_check.py --quick --out /tmp/gpu_check_dry.json

What it does, in this order (each step is wrapped: a failure is recorded with its traceback and the
script goes on; the JSON is rewritten atomically after every step, so a kill leaves partial results):

0. ``smoke``: a tiny Pallas forward + gradient in a *child process* before the parent touches the
   device. If the child crashes (e.g. an XLA abort on an illegal address) or hangs, the parent skips
   the Pallas backend (``--force-pallas`` overrides) and still measures the XLA path.
1. ``environment``: jax/jaxlib/plugin versions, devices, device kind, memory limit, Python, git commit
   (read from .git, else ``git``), SHA-256 of the projector sources, relevant environment variables.
2. ``lowering``: the custom calls that forward / grad / vmap lower to for CUDA (kernel names).
3. ``correctness``: Pallas vs XLA on a small voxelised phantom (2 channels, oblique anisotropic
   affine, rays that miss): forward, pose gradient, volume gradient (``jax.vjp``, both kernels),
   the same under ``vmap`` over several poses, and with ``step_mm="planes"``. Each is compared to a
   float64 XLA reference (``jax.enable_x64``, same float32-rounded inputs): max |a - b| / max |b| for
   Pallas vs XLA and for each path vs float64. A Pallas result is "within tolerance" when its error
   vs float64 is at most max(4 x the float32 XLA path's own error vs float64, 64 float32 eps). Also
   the repository tests' tolerances (1e-5; pose gradient 1e-4 of the max-norm) for Pallas vs XLA,
   Pallas in float64 vs XLA in float64 (same math: expect ~1e-12), and the float32 XLA path with
   matmul precision "highest" (does TF32 in the ray set-up matter?).
4. ``timing:*``: XLA vs Pallas, forward and forward + pose gradient (``value_and_grad`` of
   ``sum(exp(-0.01 * project))``), one pose, on a 256^3 volume (1.5 mm) and a 512 x 512 x 133 volume
   (0.70 x 0.70 x 2.5 mm, chest CT spacing), 256x256 and 620x480 detectors; then extras: 8 poses under
   ``vmap``, ``step_mm="planes"``, and the volume gradient (atomics). Volumes are the built-in phantom
   voxelised coarsely and resized on the device (nothing is fetched). Per measurement: trace+lower
   and compile times (AOT, ``jit(f).lower(...).compile()``), the first call, then the median of up
   to ``--repeats`` calls (``block_until_ready``; fewer when one call is slow), trilinear samples/s,
   ``compiled.memory_analysis()`` and ``device.memory_stats()`` (peak bytes) before/after, and the
   max relative difference of the Pallas output from the XLA output. Timing sections are skipped
   (and recorded as such) once the elapsed time passes ``--budget-s``; a watchdog writes the JSON
   and exits at ``--hard-limit-s``.

Python warnings (e.g. jax 0.12's deprecation of the Pallas Triton backend) and WARNING log records
are recorded in the JSON with the step they occurred in.

Time: defaults ``--budget-s 180`` (no new timing measurement after that) and ``--hard-limit-s 285``
(watchdog), so give the device command a timeout of at least ~300 s. Exit status: 0 when the script
ran to the end (failures are in the JSON: ``failures``, and ``status``/``error``/``traceback`` of each
step), 2 when jax has no usable backend, 3 when the watchdog stopped it. Without a GPU the run is
always the quick one. ``--sizes`` takes detectors as WIDTHxHEIGHT; ``--volumes`` takes the presets
``cube256``, ``chest`` or ``I,J,K@sx,sy,sz``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: no jax import at module level)

SCHEMA = 1
FLOAT32_EPS = 2.0**-23
QUICK_DIVISOR = 16  # --quick: detectors and volumes scaled down by this factor per axis

# Timing volumes: shape (I, J, K) and spacing (mm). The phantom is voxelised at a coarse grid with
# the same field of view and resized on the device (fast, no files).
VOLUMES = {
    "cube256": ((256, 256, 256), (1.5, 1.5, 1.5)),
    "chest": ((512, 512, 133), (0.70, 0.70, 2.5)),
}
COARSE_PHANTOM = (96, 96, 64)

# Correctness problem (full / quick).
CORRECTNESS = {
    "full": {"shape": (45, 38, 29), "spacing": (7.3, 8.1, 9.7), "height": 40, "width": 52, "poses": 4},
    "quick": {"shape": (15, 13, 11), "spacing": (21.0, 23.0, 25.0), "height": 9, "width": 10, "poses": 3},
}
CORRECTNESS_POSES = [
    (20.0, 10.0, (5.0, -3.0, 2.0)),
    (-35.0, 25.0, (0.0, 0.0, 0.0)),
    (60.0, -15.0, (-8.0, 4.0, 0.0)),
    (5.0, -40.0, (3.0, 3.0, -6.0)),
]
LAO, CRAN = 30.0, 10.0  # timing view (as benchmarks/bench_project.py)


# ============================================================================= report


def _now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _sanitize(x):
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to strings."""
    if isinstance(x, dict):
        return {str(k): _sanitize(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_sanitize(v) for v in x]
    if isinstance(x, (bool, int, str)) or x is None:
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            return _sanitize(x.tolist())
        if isinstance(x, np.generic):
            return _sanitize(x.item())
    except ImportError:  # pragma: no cover
        pass
    return str(x)


class Report:
    """The results dict, its atomic JSON file, progress printing, and error-safe steps."""

    def __init__(self, out: Path, args):
        self.out = out
        self.t0 = time.perf_counter()
        self.lock = threading.RLock()
        self.current = "start"
        self.budget_s = args.budget_s
        self.data = {
            "script": "benchmarks/gpu_check.py",
            "schema": SCHEMA,
            "started_utc": _now_utc(),
            "argv": sys.argv[1:],
            "args": vars(args),
            "finished": False,
            "current_step": None,
            "mode": {},
            "environment": {},
            "sections": {},
            "warnings": [],
            "log_records": [],
            "failures": [],
            "summary": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str):
        print(f"[gpu_check {self.elapsed():7.1f}s] {msg}", flush=True)

    def save(self):
        with self.lock:
            self.data["elapsed_s"] = round(self.elapsed(), 2)
            self.data["current_step"] = self.current
            text = None
            for _ in range(3):  # the watchdog thread may snapshot while the main thread mutates
                try:
                    text = json.dumps(_sanitize(copy.deepcopy(self.data)), indent=1, allow_nan=False)
                    break
                except RuntimeError:
                    time.sleep(0.01)
            if text is None:
                return
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_name(self.out.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.out)

    def fail(self, where: str, exc: BaseException) -> dict:
        tb = traceback.format_exc()
        rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": tb[-6000:]}
        self.data["failures"].append({"where": where, "error": rec["error"][:500]})
        self.log(f"FAILED {where}: {rec['error'][:300]}")
        return rec

    def step(self, where: str, entry: dict, fn, *args, **kwargs):
        """Runs fn(*args) with entry['status'] and timing recorded; failures are caught and saved."""
        prev, self.current = self.current, where
        self.save()
        t = time.perf_counter()
        result = None
        try:
            result = fn(*args, **kwargs)
            entry.setdefault("status", "ok")
        except Exception as e:  # noqa: BLE001 - record and continue
            entry.update(self.fail(where, e))
        entry["wall_s"] = round(time.perf_counter() - t, 3)
        self.current = prev
        self.save()
        return result

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s


class _WarningLog:
    """Records Python warnings and WARNING-level log records (deduplicated, with a count)."""

    def __init__(self, rep: Report):
        self.rep = rep
        self.seen = {}
        self._orig = warnings.showwarning

    def showwarning(self, message, category, filename, lineno, file=None, line=None):
        key = ("warning", category.__name__, str(message), filename, lineno)
        if key in self.seen:
            self.seen[key]["count"] += 1
        else:
            rec = {
                "category": category.__name__,
                "message": str(message)[:2000],
                "where": f"{filename}:{lineno}",
                "step": self.rep.current,
                "count": 1,
            }
            self.seen[key] = rec
            self.rep.data["warnings"].append(rec)
        self._orig(message, category, filename, lineno, file, line)

    def install(self):
        warnings.simplefilter("default")  # show DeprecationWarnings from libraries too (once per site)
        warnings.showwarning = self.showwarning
        log = self

        class Handler(logging.Handler):
            def emit(self, record):
                try:
                    msg = record.getMessage()
                except Exception:  # noqa: BLE001
                    msg = str(record.msg)
                key = ("log", record.name, msg[:300])
                if key in log.seen:
                    log.seen[key]["count"] += 1
                    return
                rec = {
                    "logger": record.name,
                    "level": record.levelname,
                    "message": msg[:2000],
                    "step": log.rep.current,
                    "count": 1,
                }
                log.seen[key] = rec
                log.rep.data["log_records"].append(rec)
                print(f"[log {record.levelname} {record.name}] {msg[:500]}", file=sys.stderr, flush=True)

        logging.getLogger().addHandler(Handler(level=logging.WARNING))


def _start_watchdog(rep: Report, limit_s: float) -> threading.Event:
    done = threading.Event()

    def run():
        if done.wait(max(1.0, limit_s - rep.elapsed())):
            return
        rep.data["aborted"] = {
            "reason": f"hard limit {limit_s} s reached (watchdog)",
            "during": rep.current,
            "elapsed_s": round(rep.elapsed(), 1),
        }
        rep.log(f"WATCHDOG: hard limit {limit_s} s reached during {rep.current}; writing JSON and exiting")
        try:
            if rep.lock.acquire(timeout=5.0):
                rep.lock.release()
            rep.save()
        finally:
            os._exit(3)

    threading.Thread(target=run, name="gpu_check_watchdog", daemon=True).start()
    return done


# ============================================================================= small helpers


def max_rel(a, b) -> float:
    """max |a - b| / max |b| (NaN if either has NaNs; inf if b is all zero and a is not)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    if not (math.isfinite(diff) and math.isfinite(scale)):
        return float("nan")
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def _x64():
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


def _device_memory():
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)[:200]}
    if not stats:
        return {"host_rss_mb": round(common.rss_mb(), 1), "host_hwm_mb": round(common.hwm_mb(), 1)}
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "largest_alloc_size", "num_allocs")
    return {k: int(stats[k]) for k in keys if k in stats}


def _memory_analysis(compiled):
    try:
        m = compiled.memory_analysis()
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)[:200]}
    if m is None:
        return None
    out = {}
    for k in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
        "host_temp_size_in_bytes",
    ):
        v = getattr(m, k, None)
        if v is not None:
            out[k] = int(v)
    return out


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _git_commit() -> dict:
    """HEAD from .git without running git if possible, else via git, else None."""
    out = {}
    git = ROOT / ".git"
    try:
        if git.is_file():  # worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref:"):
            ref = head.split(None, 1)[1]
            out["ref"] = ref
            common_dir = git / "commondir"
            base = (git / common_dir.read_text().strip()).resolve() if common_dir.exists() else git
            for d in (git, base):
                if (d / ref).exists():
                    out["commit"] = (d / ref).read_text().strip()
                    break
            else:
                packed = base / "packed-refs"
                if packed.exists():
                    for line in packed.read_text().splitlines():
                        if line.endswith(" " + ref):
                            out["commit"] = line.split()[0]
        else:
            out["commit"] = head
        out["source"] = ".git"
    except (OSError, IndexError) as e:
        out["git_dir_error"] = str(e)[:200]
    if "commit" not in out:
        try:
            p = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            if p.returncode == 0:
                out["commit"], out["source"] = p.stdout.strip(), "git rev-parse"
        except (OSError, subprocess.SubprocessError) as e:
            out["git_cmd_error"] = str(e)[:200]
    try:
        p = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if p.returncode == 0:
            out["dirty_tracked_files"] = p.stdout.splitlines()[:20]
    except (OSError, subprocess.SubprocessError):
        pass
    out.setdefault("commit", None)
    return out


def _parse_detector(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width)."""
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w


def _quick_detector(h: int, w: int) -> tuple[int, int]:
    return max(4, round(h / QUICK_DIVISOR)), max(4, round(w / QUICK_DIVISOR))


def _volume_spec(name: str, quick: bool):
    """Preset name, or 'I,J,K@sx,sy,sz' -> (shape, spacing); quick mode keeps the extent."""
    if name in VOLUMES:
        shape, spacing = VOLUMES[name]
    else:
        s, sp = name.split("@")
        shape = tuple(int(v) for v in s.split(","))
        spacing = tuple(float(v) for v in sp.split(","))
    if quick:
        small = tuple(max(6, round(n / QUICK_DIVISOR)) for n in shape)
        spacing = tuple(n * s / m for n, s, m in zip(shape, spacing, small, strict=True))
        shape = small
    return tuple(shape), tuple(float(s) for s in spacing)


# ============================================================================= problems


def _density_channels(hu, channels: int):
    """HU [I, J, K] -> [C, I, J, K] densities (g/cm^3) with jaxdrr's material decomposition."""
    import jax.numpy as jnp

    from jaxdrr.materials import density_channels

    dens = density_channels(hu)  # air, soft tissue, bone
    if channels == 1:
        return jnp.sum(dens, axis=0, keepdims=True)
    if channels == 2:
        return dens[1:]
    if channels == 3:
        return dens
    raise ValueError("--channels must be 1, 2 or 3")


def make_timing_volume(shape, spacing, channels: int):
    """Phantom voxelised on a coarse grid with the target field of view, resized on the device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdrr
    from jaxdrr.phantoms import centered_affine

    fov = tuple(n * s for n, s in zip(shape, spacing, strict=True))
    coarse = tuple(min(c, n) for c, n in zip(COARSE_PHANTOM, shape, strict=True))
    hu = jnp.asarray(np.asarray(jaxdrr.phantom(shape=coarse, fov_mm=fov).data, np.float32))
    resize = jax.jit(lambda x: _density_channels(jax.image.resize(x, shape, "linear"), channels))
    vol = jax.block_until_ready(resize(hu).astype(jnp.float32))
    return vol, centered_affine(shape, spacing)


def timing_geometry(shape, spacing, height: int, width: int):
    """C-arm (default distances) whose pixel pitch fits the volume's largest extent in the detector."""
    import numpy as np

    from jaxdrr import geometry as G

    g0 = G.CArmGeometry()
    extent = float(np.max(np.asarray(shape) * np.asarray(spacing)))
    pixel = extent * (g0.sdd_mm / g0.sid_mm) / max(height, width)
    return G.CArmGeometry(sdd_mm=g0.sdd_mm, sid_mm=g0.sid_mm, height=height, width=width, pixel_size_mm=pixel)


def timing_poses(g, batch: int):
    """[B, 3, 4] float32: LAO 30/CRAN 10 for B=1, else LAO -60..60 with CRAN 0.3 x LAO."""
    import jax.numpy as jnp
    import numpy as np

    from jaxdrr import geometry as G

    views = [(LAO, CRAN)] if batch == 1 else [(float(a), 0.3 * float(a)) for a in np.linspace(-60, 60, batch)]
    return jnp.stack([G.carm(a, c, isocenter=(0.0, 0.0, 0.0), geometry=g) for a, c in views]).astype(
        jnp.float32
    )


def correctness_problem(size: dict, channels: int = 2):
    """Small phantom (+ a little texture), oblique anisotropic affine, float64 poses; detector wider
    than the volume's shadow so some rays miss."""
    import jax.numpy as jnp
    import numpy as np

    import jaxdrr
    from jaxdrr import geometry as G
    from jaxdrr.phantoms import centered_affine, rotation_matrix

    shape, spacing = size["shape"], size["spacing"]
    hu = jaxdrr.phantom(shape=shape, spacing=spacing).data
    dens = np.asarray(_density_channels(jnp.asarray(hu), channels), np.float64)
    rng = np.random.default_rng(0)
    vol = (dens + 0.05 * rng.random(dens.shape)).astype(np.float32)
    A = centered_affine(shape, spacing)
    R = rotation_matrix((0.3, -0.5, 0.8), 12.0)
    A[:3, :3] = R @ A[:3, :3]
    A[:3, 3] = R @ A[:3, 3] + np.array([4.0, -3.0, 2.0])
    H, W = size["height"], size["width"]
    extent = float(np.max(np.asarray(shape) * np.asarray(spacing)))
    g0 = G.CArmGeometry()
    g = G.CArmGeometry(height=H, width=W, pixel_size_mm=1.3 * extent * (g0.sdd_mm / g0.sid_mm) / min(H, W))
    with _x64():
        Ps = np.stack(
            [
                np.asarray(G.carm(lao, cran, isocenter=iso, geometry=g), np.float64)
                for lao, cran, iso in CORRECTNESS_POSES[: size["poses"]]
            ]
        )
    weights = rng.normal(size=(H, W, channels)).astype(np.float32)  # exact in both precisions
    return {
        "vol": vol,
        "affine": A,
        "Ps": Ps.astype(np.float32),
        "weights": weights,
        "height": H,
        "width": W,
        "describe": {
            "volume_shape": list(vol.shape),
            "spacing_mm": list(spacing),
            "affine": A.tolist(),
            "detector_hw": [H, W],
            "pixel_size_mm": g.pixel_size_mm,
            "poses": len(Ps),
            "content": "jaxdrr.phantom HU -> density_channels (soft tissue, bone) + 0.05 x U(0,1)",
            "loss": "vjp of project with fixed N(0,1) cotangent weights [H, W, C]",
        },
    }


# ============================================================================= sections


def section_environment(rep: Report, entry: dict):
    import jax
    import jaxlib

    env = common.machine_info()
    env.update(
        {
            "jax": jax.__version__,
            "jaxlib": getattr(jaxlib, "__version__", None),
            "python": sys.version,
            "executable": sys.executable,
            "platform": platform.platform(),
            "default_backend": jax.default_backend(),
        }
    )
    devs = []
    for d in jax.devices():
        devs.append(
            {
                "repr": str(d),
                "platform": d.platform,
                "device_kind": d.device_kind,
                "compute_capability": getattr(d, "compute_capability", None),
                "memory": _device_memory() if d is jax.devices()[0] else None,
            }
        )
    env["devices"] = devs
    env["device_count"] = len(devs)
    pkgs = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if any(
            k in name
            for k in (
                "jax",
                "nvidia",
                "triton",
                "numpy",
                "scipy",
                "ml-dtypes",
                "ml_dtypes",
                "optax",
                "opt-einsum",
            )
        ):
            pkgs[name] = dist.version
    env["packages"] = dict(sorted(pkgs.items()))
    env["env_vars"] = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("JAX_", "XLA_", "CUDA_", "TF_CPP", "NVIDIA_", "PYTHONPATH"))
    }
    env["jax_config"] = {
        k: getattr(jax.config, k, None)
        for k in ("jax_enable_x64", "jax_default_matmul_precision", "jax_platforms")
    }
    env["nvidia_device_files"] = sorted(str(p) for p in Path("/dev").glob("nvidia*"))[:8]
    try:
        env["nvidia_driver"] = Path("/proc/driver/nvidia/version").read_text().strip()[:300]
    except OSError:
        env["nvidia_driver"] = None
    env["git"] = _git_commit()
    env["source_sha256_16"] = {
        str(p.relative_to(ROOT)): _sha256(p)
        for p in [*sorted((ROOT / "jaxdrr" / "ops").glob("*.py")), Path(__file__).resolve()]
    }
    rep.data["environment"] = env
    try:
        rep.data["environment"]["print_environment_info"] = jax.print_environment_info(return_string=True)
    except Exception as e:  # noqa: BLE001
        rep.data["environment"]["print_environment_info"] = f"failed: {e}"[:300]
    from jaxdrr.ops import pallas_project  # noqa: F401 - import now so its warnings are attributed here

    entry["summary"] = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": devs[0]["device_kind"] if devs else None,
    }
    rep.log(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {[d['repr'] for d in devs]}")


def section_lowering(rep: Report, entry: dict, ctx: dict):
    """Custom-call targets of forward / grads / vmap lowered for CUDA (works on any machine)."""
    import jax
    import jax.numpy as jnp

    from jaxdrr.ops import project

    prob = ctx["problem"]
    vol, A, Ps, H, W = (
        jnp.asarray(prob["vol"]),
        prob["affine"],
        jnp.asarray(prob["Ps"]),
        prob["height"],
        prob["width"],
    )

    def proj(v, P):
        return project(v, A, P, H, W, backend="pallas")

    def loss(v, P):
        return jnp.sum(jnp.exp(-proj(v, P)))

    forms = {
        "forward": (proj, (vol, Ps[0])),
        "grad_P": (jax.grad(loss, 1), (vol, Ps[0])),
        "grad_P_and_volume": (jax.grad(loss, (0, 1)), (vol, Ps[0])),
        "vmap_forward": (jax.vmap(proj, (None, 0)), (vol, Ps)),
        "vmap_grad_P_and_volume": (jax.vmap(jax.grad(loss, (0, 1)), (None, 0)), (vol, Ps)),
    }
    # Without a GPU, jax >= 0.11 needs an abstract GPU device to lower Triton kernels for CUDA
    # (jaxdrr._compat.gpu_lowering_context); on a GPU the real device is used.
    lowering_context, entry["context"] = contextlib.nullcontext, "none (real device)"
    if jax.default_backend() != "gpu":
        try:
            from jaxdrr._compat import gpu_lowering_context as lowering_context

            entry["context"] = "jaxdrr._compat.gpu_lowering_context()"
        except ImportError:
            entry["context"] = "none (jaxdrr._compat.gpu_lowering_context not in this tree)"
    try:
        from jaxdrr._compat import TRITON_CUSTOM_CALL_TARGET

        entry["expected_target"] = TRITON_CUSTOM_CALL_TARGET
    except ImportError:
        entry["expected_target"] = None
    entry["forms"] = {}
    for name, (fn, args) in forms.items():
        rec = entry["forms"].setdefault(name, {})

        def lower(fn=fn, args=args, rec=rec):
            with lowering_context():  # the arguments are created before entering it
                text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
            targets = re.findall(r"custom_call @([\w$.\-]+)", text)
            rec["custom_call_targets"] = sorted(set(targets))
            rec["kernels"] = re.findall(r'name = "(jaxdrr_\w+)"', text)
            grids = re.findall(r"grid_y = (\d+)", text)
            if grids:
                rec["grid_y"] = sorted(set(int(g) for g in grids))

        rep.step(f"lowering/{name}", rec, lower)
    ok = [r for r in entry["forms"].values() if r.get("status") == "ok"]
    entry["summary"] = {
        "targets": sorted({t for r in ok for t in r.get("custom_call_targets", [])}),
        "forms_ok": len(ok),
        "forms": len(forms),
    }


def _correctness_variants(pallas_ok: bool, pallas_backend: str):
    # (group, variant, kind, backend, float64?, step, matmul precision)
    v = [
        ("default", "xla32", "single", "xla", False, None, None),
        ("default", "pallas32", "single", pallas_backend, False, None, None),
        ("default", "xla64", "single", "xla", True, None, None),
        ("vmap", "xla32", "vmap", "xla", False, None, None),
        ("vmap", "pallas32", "vmap", pallas_backend, False, None, None),
        ("vmap", "xla64", "vmap", "xla", True, None, None),
        ("planes", "xla32", "single", "xla", False, "planes", None),
        ("planes", "pallas32", "single", pallas_backend, False, "planes", None),
        ("planes", "xla64", "single", "xla", True, "planes", None),
        ("default", "pallas64", "single", pallas_backend, True, None, None),
        ("default", "xla32_highest", "single", "xla", False, None, "highest"),
    ]
    return [x for x in v if pallas_ok or not x[3].startswith("pallas")]


def section_correctness(rep: Report, entry: dict, ctx: dict):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdrr.ops import project

    prob = ctx["problem"]
    entry["problem"] = prob["describe"]
    entry["pallas_backend"] = ctx["pallas_backend"]
    A, H, W = prob["affine"], prob["height"], prob["width"]

    def make(kind, backend, step):
        def single(v, P):
            out, vjp = jax.vjp(lambda v, P: project(v, A, P, H, W, step_mm=step, backend=backend), v, P)
            gv, gP = vjp(jnp.asarray(prob["weights"], out.dtype))
            return {"forward": out, "grad_volume": gv, "grad_P": gP}

        if kind == "single":
            return jax.jit(single)
        return jax.jit(
            lambda v, Ps: {"vmap_" + k: x for k, x in jax.vmap(single, in_axes=(None, 0))(v, Ps).items()}
        )

    results = {}  # group -> variant -> {quantity: float64 ndarray}
    entry["runs"] = {}
    for group, variant, kind, backend, f64, step, precision in _correctness_variants(
        ctx["pallas_ok"], ctx["pallas_backend"]
    ):
        rec = entry["runs"].setdefault(
            f"{group}/{variant}",
            {"backend": backend, "float64": f64, "step_mm": step, "matmul_precision": precision},
        )

        def run(kind=kind, backend=backend, f64=f64, step=step, precision=precision, rec=rec):
            with (
                _x64() if f64 else contextlib.nullcontext(),
                jax.default_matmul_precision(precision) if precision else contextlib.nullcontext(),
            ):
                dtype = jnp.float64 if f64 else jnp.float32
                v = jnp.asarray(prob["vol"]).astype(dtype)  # the same float32-rounded inputs
                P = jnp.asarray(prob["Ps"]).astype(dtype)
                fn = make(kind, backend, step)
                t = time.perf_counter()
                out = jax.block_until_ready(fn(v, P if kind == "vmap" else P[0]))
                rec["first_call_s"] = round(time.perf_counter() - t, 3)
                t = time.perf_counter()
                jax.block_until_ready(fn(v, P if kind == "vmap" else P[0]))
                rec["second_call_s"] = round(time.perf_counter() - t, 4)
                arrs = {k: np.asarray(x, np.float64) for k, x in out.items()}
            rec["dtypes"] = sorted({str(x.dtype) for x in out.values()})
            rec["all_finite"] = bool(all(np.all(np.isfinite(x)) for x in arrs.values()))
            return arrs

        arrs = rep.step(f"correctness/{group}/{variant}", rec, run)
        if arrs is not None:
            results.setdefault(group, {})[variant] = arrs

    checks = entry["checks"] = {}
    floor = 64 * FLOAT32_EPS
    for group, variants in results.items():
        ref = variants.get("xla64")
        x32 = variants.get("xla32")
        for q in sorted(set().union(*[set(a) for a in variants.values()])):
            name = q if group in ("default", "vmap") else f"{group}/{q}"
            c = checks[name] = {}
            try:
                test_tol = 1e-4 if q.endswith("grad_P") else 1e-5
                if ref is not None:
                    c["max_abs_reference"] = float(np.max(np.abs(ref[q])))
                    c["shape"] = list(ref[q].shape)
                if x32 is not None and "pallas32" in variants:
                    c["pallas_vs_xla"] = max_rel(variants["pallas32"][q], x32[q])
                    c["repo_test_tolerance"] = test_tol
                    c["pallas_vs_xla_within_repo_test_tolerance"] = bool(c["pallas_vs_xla"] <= test_tol)
                if ref is not None:
                    for vname, key in (
                        ("xla32", "xla_vs_float64"),
                        ("pallas32", "pallas_vs_float64"),
                        ("pallas64", "pallas64_vs_xla64"),
                        ("xla32_highest", "xla_highest_precision_vs_float64"),
                    ):
                        if vname in variants:
                            c[key] = max_rel(variants[vname][q], ref[q])
                    if "xla_vs_float64" in c:
                        c["tolerance"] = max(4.0 * c["xla_vs_float64"], floor)
                        if "pallas_vs_float64" in c:
                            c["within_tolerance"] = bool(c["pallas_vs_float64"] <= c["tolerance"])
                if q.endswith("grad_P") and "pallas32" in variants and x32 is not None:
                    # per pose / per entry detail for the 3x4 pose gradient
                    c["pallas"] = variants["pallas32"][q].tolist()
                    c["xla"] = x32[q].tolist()
                    if ref is not None:
                        c["float64"] = ref[q].tolist()
            except Exception as e:  # noqa: BLE001
                c.update(rep.fail(f"correctness/compare/{name}", e))
    within = [c.get("within_tolerance") for c in checks.values() if "within_tolerance" in c]
    entry["summary"] = {
        "checks": len(checks),
        "within_tolerance": sum(bool(w) for w in within),
        "compared": len(within),
        "all_within_tolerance": bool(within) and all(within),
        "max_pallas_vs_xla": max(
            [c["pallas_vs_xla"] for c in checks.values() if "pallas_vs_xla" in c] or [None],
            key=lambda x: -1 if x is None else x,
        ),
        "table": {
            k: {
                kk: c.get(kk)
                for kk in (
                    "pallas_vs_xla",
                    "xla_vs_float64",
                    "pallas_vs_float64",
                    "tolerance",
                    "within_tolerance",
                    "pallas64_vs_xla64",
                    "xla_highest_precision_vs_float64",
                )
            }
            for k, c in checks.items()
        },
    }
    nan = float("nan")
    for k, c in checks.items():
        rep.log(
            f"correctness {k:24s} pallas-xla {c.get('pallas_vs_xla', nan):.2e}  "
            f"xla-f64 {c.get('xla_vs_float64', nan):.2e}  pallas-f64 {c.get('pallas_vs_float64', nan):.2e}  "
            f"tol {c.get('tolerance', nan):.2e}  {'OK' if c.get('within_tolerance') else 'CHECK'}"
        )


def _timing_fns(mode: str, backend: str, affine, H: int, W: int, step, batch: int):
    """jit functions of (volume, P) (volume passed as an argument, never closed over: a closed-over
    CT becomes an XLA constant)."""
    import jax
    import jax.numpy as jnp

    from jaxdrr.ops import project

    def proj(v, P):
        return project(v, affine, P, H, W, step_mm=step, backend=backend)

    def loss(v, P):
        return jnp.sum(jnp.exp(-0.01 * proj(v, P)))

    fns = {
        "fwd": proj,
        "fwd+grad_P": jax.value_and_grad(loss, argnums=1),
        "fwd+grad_P_vol": jax.value_and_grad(loss, argnums=(0, 1)),
    }
    f = fns[mode]
    if batch > 1:
        return jax.jit(jax.vmap(f, in_axes=(None, 0)))
    return jax.jit(f)


def measure(fn, args, repeats: int, cap_s: float, device_memory: bool = True):
    """AOT lower + compile (timed), first call, then the median of up to ``repeats`` calls."""
    import jax

    rec = {}
    t = time.perf_counter()
    lowered = fn.lower(*args)
    rec["trace_lower_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    compiled = lowered.compile()
    rec["compile_s"] = round(time.perf_counter() - t, 3)
    rec["memory_analysis"] = _memory_analysis(compiled)
    if device_memory:
        rec["device_memory_before"] = _device_memory()
    holder = {}

    def call():
        holder["out"] = compiled(*args)
        return holder["out"]

    t = time.perf_counter()
    jax.block_until_ready(call())
    rec["first_call_s"] = round(time.perf_counter() - t, 5)
    n = int(max(1, min(repeats, cap_s / max(rec["first_call_s"], 1e-6))))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t)
    rec["times_s"] = [round(x, 6) for x in times]
    rec["repeats"] = n
    rec["median_s"] = common.median(times)
    rec["min_s"] = min(times)
    if device_memory:
        rec["device_memory_after"] = _device_memory()
    return rec, holder.get("out")


def _outputs_to_numpy(mode: str, out):
    import numpy as np

    if mode == "fwd":
        return {"image": np.asarray(out, np.float64)}
    value, grads = out
    d = {"loss": np.asarray(value, np.float64)}
    if mode == "fwd+grad_P":
        d["grad_P"] = np.asarray(grads, np.float64)
    else:
        d["grad_volume"] = np.asarray(grads[0], np.float64)
        d["grad_P"] = np.asarray(grads[1], np.float64)
    return d


def section_timing(rep: Report, entry: dict, ctx: dict, spec: dict):
    import jax.numpy as jnp

    args = ctx["args"]
    vname, (H, W), step, batch, modes = (
        spec["volume"],
        spec["detector_hw"],
        spec["step"],
        spec["batch"],
        spec["modes"],
    )
    if vname not in ctx["volumes"]:
        shape, spacing = _volume_spec(vname, ctx["quick"])
        rep.log(f"building volume {vname}: {shape} x {spacing} mm, C={args.channels}")
        t = time.perf_counter()
        vol, affine = make_timing_volume(shape, spacing, args.channels)
        ctx["volumes"][vname] = {
            "vol": vol,
            "affine": affine,
            "shape": shape,
            "spacing": spacing,
            "build_s": round(time.perf_counter() - t, 2),
        }
    V = ctx["volumes"][vname]
    vol, affine = V["vol"], V["affine"]
    g = timing_geometry(V["shape"], V["spacing"], H, W)
    Ps = timing_poses(g, batch)
    P_arg = Ps if batch > 1 else Ps[0]
    entry["problem"] = {
        "volume": vname,
        "shape": list(V["shape"]),
        "spacing_mm": list(V["spacing"]),
        "channels": int(vol.shape[0]),
        "volume_build_s": V["build_s"],
        "detector_hw": [H, W],
        "label": spec["label"],
        "pixel_size_mm": g.pixel_size_mm,
        "sdd_mm": g.sdd_mm,
        "sid_mm": g.sid_mm,
        "batch": batch,
        "view": "LAO 30 / CRAN 10" if batch == 1 else "LAO -60..60, CRAN 0.3 x LAO",
        "step_mm": step if step is not None else "default (half the finest spacing)",
    }

    def samples():
        from bench_gpu import count_samples

        from jaxdrr.ops.rays import VolumeGrid

        n = count_samples(vol, affine, Ps, H, W, step)
        grid = VolumeGrid.create(V["shape"], affine)
        entry["problem"]["samples"] = n
        entry["problem"]["samples_per_ray"] = n / (batch * H * W)
        entry["problem"]["default_step_mm"] = grid.default_step()

    rep.step(f"{spec['name']}/samples", entry.setdefault("samples_status", {}), samples)
    meas = entry.setdefault("measurements", {})
    outputs = {}
    for mode in modes:
        mode_over_budget = rep.over_budget()  # checked once per mode: Pallas and XLA stay paired
        for backend in ctx["timing_backends"]:
            key = f"{backend}/{mode}"
            rec = meas.setdefault(key, {})
            if mode_over_budget:
                rec.update(
                    {
                        "status": "skipped",
                        "reason": f"over --budget-s {rep.budget_s} s (elapsed {rep.elapsed():.0f} s)",
                    }
                )
                rep.log(f"{spec['name']}/{key}: skipped (budget)")
                continue

            def run(mode=mode, backend=backend, rec=rec, key=key):
                fn = _timing_fns(mode, backend, affine, H, W, step, batch)
                r, out = measure(fn, (vol, P_arg), ctx["repeats"], ctx["cap_s"])
                rec.update(r)
                n = entry["problem"].get("samples")
                if n:
                    rec["gsamples_per_s"] = n / r["median_s"] / 1e9
                rec["images_per_s"] = batch / r["median_s"]
                rec["ms_per_call"] = 1e3 * r["median_s"]
                outputs[(backend, mode)] = _outputs_to_numpy(mode, out)
                rep.log(
                    f"{spec['name']}/{key}: {rec['ms_per_call']:.3f} ms (median of {r['repeats']}), "
                    f"compile {r['compile_s']:.2f} s, first {r['first_call_s']:.3f} s"
                )

            rep.step(f"{spec['name']}/{key}", rec, run)
        # Pallas vs XLA on the outputs just computed
        pb = ctx["pallas_backend"]
        if (pb, mode) in outputs and ("xla", mode) in outputs:
            a, b = outputs[(pb, mode)], outputs[("xla", mode)]
            cmp = entry.setdefault("pallas_vs_xla", {})[mode] = {}
            for q in b:
                try:
                    cmp[q] = max_rel(a[q], b[q])
                except Exception as e:  # noqa: BLE001
                    cmp[q] = f"failed: {e}"[:200]
            cmp["all_finite"] = bool(all(jnp.all(jnp.isfinite(x)) for x in [*a.values(), *b.values()]))
            outputs.pop((pb, mode)), outputs.pop(("xla", mode))
            rep.log(
                f"{spec['name']}/{mode}: pallas vs xla "
                + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in cmp.items())
            )
    xs = {}
    for mode in modes:
        m_p, m_x = meas.get(f"{ctx['pallas_backend']}/{mode}", {}), meas.get(f"xla/{mode}", {})
        if "median_s" in m_p and "median_s" in m_x:
            xs[mode] = m_x["median_s"] / m_p["median_s"]
    entry["pallas_speedup_over_xla"] = xs


def timing_specs(ctx: dict) -> list[dict]:
    args, quick = ctx["args"], ctx["quick"]
    dets = []
    for d in args.sizes.split(","):
        hw = _parse_detector(d)
        dets.append((d, _quick_detector(*hw) if quick else hw))
    vols = [v for v in args.volumes.split(",") if v]
    main_modes = ["fwd", "fwd+grad_P"]
    specs = []
    for v in vols:
        for label, hw in dets:
            specs.append(
                {
                    "name": f"timing:{v}:{label}",
                    "volume": v,
                    "detector_hw": hw,
                    "label": label,
                    "step": None,
                    "batch": 1,
                    "modes": main_modes,
                }
            )
    extras = [e for e in args.extras.split(",") if e]
    v0, (l0, hw0) = (vols[0] if vols else "cube256"), dets[0]
    v_last, (l_last, hw_last) = (vols[-1] if vols else "chest"), dets[-1]
    for e in extras:
        if e == "batched":
            specs.append(
                {
                    "name": f"timing:{v0}:{l0}:batch{ctx['batch']}",
                    "volume": v0,
                    "detector_hw": hw0,
                    "label": l0,
                    "step": None,
                    "batch": ctx["batch"],
                    "modes": main_modes,
                }
            )
        elif e == "planes":
            specs.append(
                {
                    "name": f"timing:{v0}:{l0}:planes",
                    "volume": v0,
                    "detector_hw": hw0,
                    "label": l0,
                    "step": "planes",
                    "batch": 1,
                    "modes": main_modes,
                }
            )
            if (v_last, l_last) != (v0, l0):
                specs.append(
                    {
                        "name": f"timing:{v_last}:{l_last}:planes",
                        "volume": v_last,
                        "detector_hw": hw_last,
                        "label": l_last,
                        "step": "planes",
                        "batch": 1,
                        "modes": main_modes,
                    }
                )
        elif e == "grad_volume":
            specs.append(
                {
                    "name": f"timing:{v0}:{l0}:grad_volume",
                    "volume": v0,
                    "detector_hw": hw0,
                    "label": l0,
                    "step": None,
                    "batch": 1,
                    "modes": ["fwd+grad_P_vol"],
                }
            )
        else:
            raise ValueError(f"unknown --extras entry {e!r} (batched, planes, grad_volume)")
    return specs


# ============================================================================= smoke child


def worker_smoke(spec: dict) -> dict:
    """Child process: a tiny Pallas forward + vjp against XLA. Crashes stay in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdrr.ops import project

    out = {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(jax.devices()[0])}
    prob = correctness_problem(CORRECTNESS["quick"])
    A, H, W = prob["affine"], prob["height"], prob["width"]
    vol, P = jnp.asarray(prob["vol"]), jnp.asarray(prob["Ps"][0])
    wt = jnp.asarray(prob["weights"], jnp.float32)
    res = {}
    for backend in ("xla", spec["pallas_backend"]):

        def f(v, P, backend=backend):
            o, vjp = jax.vjp(lambda v, P: project(v, A, P, H, W, backend=backend), v, P)
            return (o, *vjp(wt))

        t = time.perf_counter()
        res[backend] = [np.asarray(x) for x in jax.block_until_ready(jax.jit(f)(vol, P))]
        out[f"{backend}_first_call_s"] = round(time.perf_counter() - t, 3)
    a, b = res[spec["pallas_backend"]], res["xla"]
    out["max_rel"] = {
        k: max_rel(x, y) for k, x, y in zip(("forward", "grad_volume", "grad_P"), a, b, strict=True)
    }
    out["ok"] = bool(all(v <= 1e-3 for v in out["max_rel"].values()))
    return out


def section_smoke(rep: Report, entry: dict, ctx: dict):
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    r = common.run_worker(
        str(Path(__file__).resolve()),
        {"task": "smoke", "pallas_backend": ctx["pallas_backend"]},
        timeout=ctx["args"].smoke_timeout_s,
        env=env,
    )
    entry["child"] = r
    err = r.get("error")
    if err:
        m = re.search(r"exited (-?\d+)", err)
        crashed = "timeout" in err or (m is not None and int(m.group(1)) not in (0, 1))
        entry["child_crashed_or_hung"] = crashed
        if crashed and not ctx["args"].force_pallas:
            ctx["pallas_ok"] = False
            entry["decision"] = "Pallas skipped in the main process (child crashed or hung)"
        else:
            entry["decision"] = "Pallas kept (child raised a Python error or --force-pallas)"
        raise RuntimeError(f"smoke child: {err}; stderr tail: {' | '.join(r.get('stderr_tail', []))[-1500:]}")
    entry["decision"] = "Pallas kept"
    rep.log(f"smoke child: ok={r.get('ok')} max_rel={r.get('max_rel')} wall {r.get('wall_s')} s")


# ============================================================================= main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=None, help="JSON path (default: benchmarks/results/gpu_check_<date>.json)"
    )
    p.add_argument(
        "--platform",
        choices=("auto", "gpu", "cpu"),
        default="auto",
        help="auto: whatever jax picks; cpu: JAX_PLATFORMS=cpu (implies --quick); "
        "gpu: JAX_PLATFORMS=cuda (fail rather than fall back)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny sizes (detectors and volumes / {QUICK_DIVISOR} per axis); implied without a GPU",
    )
    p.add_argument("--sizes", default="256x256,620x480", help="detectors, WIDTHxHEIGHT, comma-separated")
    p.add_argument(
        "--volumes",
        default="cube256,chest",
        help="timing volumes: presets cube256 (256^3, 1.5 mm), chest (512x512x133, "
        "0.7x0.7x2.5 mm) or 'I,J,K@sx,sy,sz'; comma-separated",
    )
    p.add_argument(
        "--extras",
        default="batched,planes,grad_volume",
        help="extra timing sections after the main ones (batched, planes, grad_volume; '' = none)",
    )
    p.add_argument("--channels", type=int, default=2, help="material channels of the timing volumes (1-3)")
    p.add_argument("--batch", type=int, default=8, help="poses in the 'batched' extra (vmap)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed calls per measurement (default 10; quick 2)"
    )
    p.add_argument(
        "--cap-s", type=float, default=2.0, help="fewer repeats when repeats x first-call time exceeds this"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip remaining timing measurements once elapsed time passes this (default 180; quick 100)",
    )
    p.add_argument(
        "--hard-limit-s",
        type=float,
        default=285.0,
        help="watchdog: write the JSON and exit(3) at this elapsed time",
    )
    p.add_argument("--smoke-timeout-s", type=float, default=100.0, help="timeout of the smoke child process")
    p.add_argument("--no-smoke", action="store_true", help="skip the child-process smoke test")
    p.add_argument("--force-pallas", action="store_true", help="run Pallas even if the smoke child crashed")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: lowering,correctness,timing")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:  # child process (common.run_worker protocol)
        common.emit(worker_smoke(json.loads(args.worker)))
        return 0
    if args.platform == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif args.platform == "gpu":
        os.environ["JAX_PLATFORMS"] = "cuda"
    out = Path(args.out) if args.out else common.RESULTS_DIR / f"gpu_check_{common.today()}.json"
    rep = Report(out, args)
    _WarningLog(rep).install()
    done = _start_watchdog(rep, args.hard_limit_s)

    def on_term(signum, frame):
        rep.data["aborted"] = {
            "reason": f"signal {signum}",
            "during": rep.current,
            "elapsed_s": round(rep.elapsed(), 1),
        }
        rep.save()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    rep.log(f"writing {out}")
    rep.save()

    # Decide the platform without initialising a device backend in this process (the smoke child
    # must be able to take the GPU first). Fall-back-to-CPU is re-checked after jax initialises.
    gpu_visible = (
        args.platform != "cpu"
        and os.environ.get("JAX_PLATFORMS", "").lower() not in ("cpu",)
        and (
            any(Path("/dev").glob("nvidia[0-9]*"))
            or Path("/proc/driver/nvidia/version").exists()
            or args.platform == "gpu"
        )
    )
    ctx = {
        "args": args,
        "volumes": {},
        "pallas_ok": True,
        "pallas_backend": "pallas" if gpu_visible else "pallas_interpret",
    }
    sections = rep.data["sections"]
    if not args.no_smoke:
        rep.log(f"smoke test in a child process (backend {ctx['pallas_backend']})")
        rep.step("smoke", sections.setdefault("smoke", {}), section_smoke, rep, sections["smoke"], ctx)

    import jax

    rep.step(
        "environment",
        sections.setdefault("environment", {}),
        section_environment,
        rep,
        sections["environment"],
    )
    try:
        on_gpu = jax.default_backend() == "gpu"
    except Exception as e:  # noqa: BLE001 - no usable backend (e.g. --platform gpu without a GPU)
        rep.data["failures"].append({"where": "backend", "error": f"{type(e).__name__}: {e}"[:500]})
        rep.data["aborted"] = {"reason": "no usable jax backend", "error": f"{type(e).__name__}: {e}"[:2000]}
        rep.log(f"no usable jax backend: {e}")
        rep.data["total_wall_s"] = round(rep.elapsed(), 2)
        rep.current = "done"
        rep.save()
        done.set()
        return 2
    if on_gpu != (ctx["pallas_backend"] == "pallas"):
        ctx["pallas_backend"] = "pallas" if on_gpu else "pallas_interpret"
        rep.log(f"backend is {jax.default_backend()}: using {ctx['pallas_backend']}")
    quick = args.quick or not on_gpu
    ctx.update(
        quick=quick,
        repeats=args.repeats or (2 if quick else 10),
        cap_s=args.cap_s,
        batch=min(args.batch, 4) if quick else args.batch,
        timing_backends=([ctx["pallas_backend"]] if ctx["pallas_ok"] else []) + ["xla"],
    )
    rep.budget_s = args.budget_s if args.budget_s is not None else (100.0 if quick else 180.0)
    rep.data["mode"] = {
        "platform": jax.default_backend(),
        "on_gpu": on_gpu,
        "quick": quick,
        "quick_forced_by_missing_gpu": quick and not args.quick,
        "pallas_backend": ctx["pallas_backend"],
        "pallas_run": ctx["pallas_ok"],
        "budget_s": rep.budget_s,
        "hard_limit_s": args.hard_limit_s,
        "repeats": ctx["repeats"],
        "note": (
            "GPU run: backend='pallas' (Triton kernels) vs backend='xla'"
            if on_gpu
            else "NO GPU: dry run at tiny sizes with backend='pallas_interpret' (Pallas interpret mode) in "
            "place of 'pallas'; timings are meaningless, only the code paths are exercised"
        ),
    }
    if quick:
        rep.data["mode"]["quick_sizes"] = {"divisor": QUICK_DIVISOR, "correctness": CORRECTNESS["quick"]}
    rep.log(f"mode: {rep.data['mode']['note']}; quick={quick}")
    skip = {s for s in args.skip.split(",") if s}

    ctx["problem"] = rep.step(
        "problem",
        sections.setdefault("problem", {}),
        correctness_problem,
        CORRECTNESS["quick" if quick else "full"],
    )
    if ctx["problem"] is not None:
        if "lowering" not in skip:
            rep.step(
                "lowering",
                sections.setdefault("lowering", {}),
                section_lowering,
                rep,
                sections["lowering"],
                ctx,
            )
        if "correctness" not in skip:
            rep.step(
                "correctness",
                sections.setdefault("correctness", {}),
                section_correctness,
                rep,
                sections["correctness"],
                ctx,
            )

    if "timing" not in skip:
        specs = rep.step("timing_plan", sections.setdefault("timing_plan", {}), timing_specs, ctx) or []
        sections["timing_plan"]["sections"] = [s["name"] for s in specs]
        for spec in specs:
            entry = sections.setdefault(spec["name"], {})
            if rep.over_budget():
                entry.update(
                    {
                        "status": "skipped",
                        "reason": f"over --budget-s {rep.budget_s} s (elapsed {rep.elapsed():.0f} s)",
                    }
                )
                rep.log(f"{spec['name']}: skipped (budget)")
                rep.save()
                continue
            rep.log(f"{spec['name']} ...")
            rep.step(spec["name"], entry, section_timing, rep, entry, ctx, spec)

    rep.data["summary"] = build_summary(rep.data)
    rep.data["finished"] = True
    rep.data["total_wall_s"] = round(rep.elapsed(), 2)
    rep.current = "done"
    rep.save()
    done.set()
    print_summary(rep)
    return 0


def build_summary(data: dict) -> dict:
    s = {
        "mode": data.get("mode"),
        "failures": len(data.get("failures", [])),
        "warnings": [w["message"][:160] for w in data.get("warnings", [])][:10],
    }
    sec = data["sections"]
    if "correctness" in sec:
        s["correctness"] = sec["correctness"].get("summary")
    if "smoke" in sec:
        c = sec["smoke"].get("child", {})
        s["smoke"] = {"status": sec["smoke"].get("status"), "ok": c.get("ok"), "max_rel": c.get("max_rel")}
    if "lowering" in sec:
        s["lowering"] = sec["lowering"].get("summary")
    timing = {}
    for name, e in sec.items():
        if not name.startswith("timing:"):
            continue
        row = {"status": e.get("status")}
        for key, m in e.get("measurements", {}).items():
            row[key] = (
                {
                    "ms": round(m["ms_per_call"], 4),
                    "compile_s": m["compile_s"],
                    "gsamples_per_s": round(m.get("gsamples_per_s", float("nan")), 4),
                }
                if "ms_per_call" in m
                else m.get("status")
            )
        row["pallas_speedup_over_xla"] = e.get("pallas_speedup_over_xla")
        row["pallas_vs_xla"] = e.get("pallas_vs_xla")
        timing[name] = row
    s["timing"] = timing
    return s


def print_summary(rep: Report):
    s = rep.data["summary"]
    rep.log(f"done in {rep.elapsed():.1f} s; failures: {s['failures']}; JSON: {rep.out}")
    for name, row in s.get("timing", {}).items():
        parts = [f"{k}={v['ms']}ms" for k, v in row.items() if isinstance(v, dict) and "ms" in v]
        print(
            f"  {name}: {row['status']}; "
            + " ".join(parts)
            + f"; speedup {row.get('pallas_speedup_over_xla')}",
            flush=True,
        )
    for f in rep.data["failures"][:20]:
        print(f"  FAILURE {f['where']}: {f['error'][:200]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
