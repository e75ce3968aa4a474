"""The CPU projector as a native XLA custom call (C++, ``jaxdrr/ops/csrc/project_cpu.cc``).

Same contract and same math as the pure-JAX marcher (:mod:`jaxdrr.ops.march`): the rays come from
the one shared ray set-up (:func:`jaxdrr.ops.rays.detector_rays`, computed in XLA and differentiated
there); the kernels evaluate the trilinear (or, with ``step_mm="planes"``, the on-plane bilinear)
field of the zero-padded channels-last volume exactly as :mod:`jaxdrr.ops.trilinear` does. Four
XLA FFI handlers, registered for the CPU platform:

* ``jaxdrr_project_fwd``: the line integrals [R, C];
* ``jaxdrr_project_bwd_geometry``: gather only, re-marches the rays and returns ``g_entry`` and
  ``g_direction``; ``g_step`` follows in JAX (:func:`jaxdrr.ops.march.step_cotangent`);
* ``jaxdrr_project_bwd_volume``: scatter only; deterministic (every voxel is owned by one slab of
  i-planes whose thread adds the contributions in a fixed order), bit-identical from call to call
  and for any thread count;
* ``jaxdrr_pad_channels_last``: :func:`jaxdrr.ops.march.pad_channels_last` and its transpose,
  multithreaded (XLA's pad + transpose of a 256^3 volume took as long as half the native march).

The library is a plain shared object (``jaxdrr/ops/_project_cpu*.so``, built by ``setup.py`` at
install time; not a Python module), loaded with :mod:`ctypes` on first use and registered with
:func:`jax.ffi.register_ffi_target`. It is built against the XLA FFI headers of the oldest supported
jaxlib (vendored in ``csrc/xla_ffi``): newer jaxlibs accept older FFI API versions, not the reverse.

Threads: the process's CPU affinity count, or ``JAXDRR_CPU_THREADS=n`` (read at each call).
``JAXDRR_NO_NATIVE=1`` skips the build at install time and the library at run time (``"auto"``
then uses the XLA path, silently).

Batching: ``ffi_call(..., vmap_method="expand_dims")``: under :func:`jax.vmap` every operand gets a
leading axis of size 1 (unbatched) or B, and the handlers broadcast them, so ``vmap`` over poses is
one call reading one volume. ``jit``, ``grad`` and ``vmap(grad)`` compose through the same
``jax.custom_vjp`` as the Pallas kernel, :func:`jaxdrr.ops.kernel_vjp.kernel_projector` (``symbolic_zeros``: the volume
kernel runs only when the volume is differentiated, the geometry kernel only when the rays are).

Supported dtypes: float32 and float64 (volume and rays of the same dtype);
:func:`jaxdrr.ops.project` uses the XLA path for anything else.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.ops import march as _march
from jaxdrr.ops.kernel_vjp import ProjectorKernels, kernel_projector
from jaxdrr.ops.rays import PLANES, VolumeGrid, detector_rays

ABI_VERSION = 2  # jaxdrr_native_abi_version() of a library this module can drive
TARGET_FORWARD = "jaxdrr_project_fwd"
TARGET_GEOMETRY = "jaxdrr_project_bwd_geometry"
TARGET_VOLUME = "jaxdrr_project_bwd_volume"
TARGET_PAD = "jaxdrr_pad_channels_last"
_TARGETS = (TARGET_FORWARD, TARGET_GEOMETRY, TARGET_VOLUME, TARGET_PAD)
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_lock = threading.Lock()
_state: dict | None = None  # set once: {"ok": bool, "reason": str, "path": str | None, "lib": CDLL}


_PATTERNS = ("_project_cpu.so", "_project_cpu*.so", "_project_cpu*.dylib", "_project_cpu*.pyd")


def _installed_library() -> Path | None:
    """The library of the installed ``jaxdrr`` distribution (from its file list), or None.

    Used when this module was imported from a source checkout that has no build of its own (as
    in ``pip install . && python -m pytest``, which puts the checkout first on ``sys.path``); the
    ABI version check in :func:`_load` refuses a library that does not match this code.
    """
    import importlib.metadata as metadata

    # Only for a source checkout: an installed jaxdrr without its library was installed without
    # one, and must not borrow another environment's (a venv that sees system site-packages).
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "pyproject.toml").is_file():
        return None
    # Every distribution named jaxdrr on sys.path, not only the first: in a checkout where pip has
    # built, the checkout's own jaxdrr.egg-info (which lists no library) comes before site-packages.
    for dist in metadata.distributions(name="jaxdrr"):
        for f in dist.files or ():
            if f.parent.as_posix() == "jaxdrr/ops" and any(f.match(p) for p in _PATTERNS):
                path = Path(f.locate())
                if path.is_file():
                    return path
    return None


def library_path() -> Path | None:
    """The built library: next to this module (``_project_cpu*.so``), else the installed one, or None.

    ``JAXDRR_NATIVE_LIBRARY`` overrides the location (an explicit path; for development).
    """
    override = os.environ.get("JAXDRR_NATIVE_LIBRARY")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    for pattern in _PATTERNS:
        found = sorted(here.glob(pattern))
        if found:
            return found[0]
    return _installed_library()


def _load() -> dict:
    global _state
    with _lock:
        if _state is not None:
            return _state
        state = {"ok": False, "reason": "", "path": None, "lib": None}
        path = library_path()
        if disabled():
            state["reason"] = "the native CPU projector is disabled (JAXDRR_NO_NATIVE is set)"
        elif path is None:
            state["reason"] = (
                "the native CPU projector is not built (no jaxdrr/ops/_project_cpu*.so; reinstall "
                "jaxdrr with a C++17 compiler available)"
            )
        else:
            state["path"] = str(path)
            try:
                lib = ctypes.CDLL(str(path))
                abi = int(lib.jaxdrr_native_abi_version())
                if abi != ABI_VERSION:
                    raise OSError(f"ABI version {abi}, this jaxdrr needs {ABI_VERSION} (stale build?)")
                for name in _TARGETS:
                    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
                state["lib"] = lib
                state["ok"] = True
                state["reason"] = f"native CPU projector loaded from {path.name}"
            except (OSError, AttributeError, ValueError, RuntimeError) as e:
                state["reason"] = f"the native CPU projector at {path} could not be loaded: {e}"
        _state = state
        return state


def disabled() -> bool:
    """True when ``JAXDRR_NO_NATIVE`` is set (not '' or '0'): the library is neither built nor used."""
    return os.environ.get("JAXDRR_NO_NATIVE", "") not in ("", "0")


def available() -> bool:
    """True when the native library is built, loads and is registered with XLA."""
    return _load()["ok"]


def unavailable_reason() -> str:
    """Why :func:`available` is False ('' when it is True)."""
    state = _load()
    return "" if state["ok"] else state["reason"]


def supports_dtype(dtype) -> bool:
    return np.dtype(dtype) in SUPPORTED_DTYPES


def info() -> dict:
    """Build facts for diagnostics: availability, reason, library path, threads, SIMD, FFI API."""
    state = _load()
    out = {"available": state["ok"], "reason": state["reason"], "path": state["path"]}
    lib = state["lib"]
    if lib is not None:
        out["threads"] = int(lib.jaxdrr_native_default_threads())
        out["simd"] = "avx2+fma" if int(lib.jaxdrr_native_simd()) == 2 else "baseline"
        api = int(lib.jaxdrr_native_ffi_api_version())
        out["ffi_api"] = f"{api // 1000}.{api % 1000}"
    return out


def _require():
    state = _load()
    if not state["ok"]:
        raise RuntimeError(state["reason"])


# ---------------------------------------------------------------------------------------------
# ffi_call wrappers


class KernelConfig(NamedTuple):
    """Static parameters (hashable: a ``nondiff_argnums`` of the custom VJP)."""

    padded_shape: tuple[int, int, int]
    planes: bool
    width: int  # detector columns (rays are row-major H x W): tiles of neighbouring pixels


def _attrs(cfg: KernelConfig) -> dict:
    I2, J2, K2 = cfg.padded_shape
    return dict(
        padded_i=np.int64(I2),
        padded_j=np.int64(J2),
        padded_k=np.int64(K2),
        planes=np.int64(bool(cfg.planes)),
        width=np.int64(cfg.width),
    )


def _forward_call(cfg: KernelConfig, flat, entry, direction, step, num_steps):
    out = jax.ShapeDtypeStruct(entry.shape[:-1] + flat.shape[-1:], flat.dtype)
    call = jax.ffi.ffi_call(TARGET_FORWARD, out, vmap_method="expand_dims")
    return call(flat, entry, direction, step, num_steps, **_attrs(cfg))


def _geometry_call(cfg: KernelConfig, flat, entry, direction, step, num_steps, g):
    shape = jax.ShapeDtypeStruct(entry.shape, entry.dtype)
    call = jax.ffi.ffi_call(TARGET_GEOMETRY, (shape, shape), vmap_method="expand_dims")
    return call(flat, entry, direction, step, num_steps, g, **_attrs(cfg))


def _volume_call(cfg: KernelConfig, flat_shape, entry, direction, step, num_steps, g):
    out = jax.ShapeDtypeStruct(tuple(flat_shape), g.dtype)
    call = jax.ffi.ffi_call(TARGET_VOLUME, out, vmap_method="expand_dims")
    return call(entry, direction, step, num_steps, g, **_attrs(cfg))


def _pad_call(x, out_shape, unpad: bool):
    out = jax.ShapeDtypeStruct(tuple(out_shape), x.dtype)
    call = jax.ffi.ffi_call(TARGET_PAD, out, vmap_method="expand_dims")
    return call(x, unpad=np.int64(unpad))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pad(volume, padded_shape):
    return _pad_call(volume, (int(np.prod(padded_shape)), volume.shape[0]), False)


def _pad_fwd(volume, padded_shape):
    return _pad(volume, padded_shape), None


def _pad_bwd(padded_shape, _, g):
    return (_unpad(g, padded_shape),)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _unpad(flat, padded_shape):
    return _pad_call(flat, (flat.shape[-1],) + tuple(n - 2 for n in padded_shape), True)


def _unpad_fwd(flat, padded_shape):
    return _unpad(flat, padded_shape), None


def _unpad_bwd(padded_shape, _, g):
    return (_pad(g, padded_shape),)


_pad.defvjp(_pad_fwd, _pad_bwd)
_unpad.defvjp(_unpad_fwd, _unpad_bwd)


def pad_channels_last(volume) -> jax.Array:
    """:func:`jaxdrr.ops.march.pad_channels_last` in C++: [C, I, J, K] -> [(I+2)(J+2)(K+2), C].

    Differentiable (its transpose is the native un-pad), batched under ``vmap`` in one call.
    """
    _require()
    if not supports_dtype(volume.dtype):
        return _march.pad_channels_last(volume)
    padded_shape = tuple(int(n) + 2 for n in volume.shape[1:])
    return _pad(volume, padded_shape)


# ---------------------------------------------------------------------------------------------
# The differentiable projector over (flat [N, C], entry [R, 3], direction [R, 3], step [R],
# num_steps [R]): the custom VJP shared with the Pallas kernel (jaxdrr.ops.kernel_vjp).


def _volume_backward(cfg, flat, entry, direction, step, num_steps, g):
    return _volume_call(cfg, flat.shape, entry, direction, step, num_steps, g)


_project = kernel_projector(ProjectorKernels(_forward_call, _volume_backward, _geometry_call))


def march_native(flat, padded_shape, rays, *, planes: bool = False, width: int = 0) -> jax.Array:
    """Line integrals [R, C] of a padded flat volume [N, C] along rays: ``march.march`` in C++.

    ``width``: detector columns when the rays are a row-major detector (the kernel marches tiles of
    neighbouring pixels); 0 = rays in no particular layout (tiles of consecutive rays). Volume and
    rays must share a dtype in :data:`SUPPORTED_DTYPES`. Raises RuntimeError when the library is
    not available (:func:`unavailable_reason`).
    """
    _require()
    dtype = np.dtype(flat.dtype)
    if not supports_dtype(dtype):
        raise TypeError(f"the native projector supports {[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")
    entry, direction, step = (jnp.asarray(a, dtype) for a in (rays.entry, rays.direction, rays.step))
    num_steps = jnp.asarray(rays.num_steps, jnp.int32)
    cfg = KernelConfig(tuple(int(n) for n in padded_shape), bool(planes), int(width))
    return _project(cfg, flat, entry, direction, step, num_steps)


def project_native(volume, grid: VolumeGrid, P, height: int, width: int, step) -> jax.Array:
    """Per-channel line integrals [height * width, C] of ``volume`` [C, I, J, K] (row-major pixels).

    The native counterpart of the ``"xla"`` branch of :func:`jaxdrr.ops.project`: the same rays
    (:func:`jaxdrr.ops.rays.detector_rays`), the same padded channels-last volume (padded here by
    :func:`pad_channels_last`), the same field.
    """
    rays = detector_rays(P, grid, height, width, step)
    flat = pad_channels_last(volume)
    return march_native(flat, grid.padded_shape, rays, planes=(step == PLANES), width=width)
