"""The one place that knows how the supported JAX versions differ (jax/jaxlib 0.10.2 to 0.12.x).

Every version-dependent import or behaviour goes through here, so the rest of the package is
written against one API. Each shim says which versions need it; delete a shim when the oldest
supported JAX no longer does.

* :func:`is_tracer`: ``jax.core.Tracer`` is the public way to ask "is this value traced?" in
  every supported version, but ``jax.core`` is being emptied release by release; one definition
  here means one line to change when it moves.
* :data:`shard_map`: ``jax.shard_map`` (0.7+) with ``jax.experimental.shard_map.shard_map`` as
  the fallback.
* :data:`ffi`: ``jax.ffi`` (0.4.38+): ``register_ffi_target``, ``ffi_call``, ``include_dir``.
* :data:`TRITON_CUSTOM_CALL_TARGET`: the custom-call target that Pallas' Triton backend lowers to
  (``jax.experimental.pallas.triton.CUSTOM_CALL_TARGET_NAME`` from 0.12; a literal before).
* :func:`gpu_lowering_context`: lowering a Pallas Triton kernel for CUDA on a machine without a
  GPU. jax 0.10 lowers with no further set-up; jax 0.12 asks ``get_gpu_info()`` for the target
  GPU and finds none unless an abstract GPU device is set with ``jax.sharding.use_abstract_mesh``.
* :func:`pallas_triton`: the Triton backend's module (``CompilerParams``, ``atomic_add``); jax 0.12
  deprecates the backend (a ``DeprecationWarning`` at lowering) but it still works.
* :func:`use_compilation_cache_storage`: the storage behind JAX's persistent compilation cache.
  There is no public hook; 0.10.2 to 0.12.x build it in the private
  ``jax._src.compilation_cache.get_file_cache(path)``, whose own storage writes entries
  non-atomically (see :mod:`jaxdrr._compile_cache`).
"""

from __future__ import annotations

import contextlib
import re

import jax

JAX_VERSION: tuple[int, int, int] = tuple(  # type: ignore[assignment]
    int(m) for m in re.match(r"(\d+)\.(\d+)\.(\d+)", jax.__version__).groups()
)

# H100 is the CUDA target the Pallas kernels are lowered for in tests; any sm_90 part would do.
DEFAULT_GPU_KIND = "NVIDIA H100 80GB HBM3"


def is_tracer(x) -> bool:
    """True when ``x`` is a JAX tracer (inside jit/vmap/grad), False for concrete values."""
    return isinstance(x, jax.core.Tracer)


try:  # jax >= 0.7
    shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map  # noqa: F401

ffi = jax.ffi


def pallas_triton():
    """The Pallas Triton backend module, or None where this jax has none."""
    try:
        from jax.experimental.pallas import triton as plgpu
    except ImportError:  # pragma: no cover - a jax that removed the backend
        return None
    return plgpu


def _triton_target() -> str:
    plgpu = pallas_triton()
    return getattr(plgpu, "CUSTOM_CALL_TARGET_NAME", "__gpu$xla.gpu.triton")


TRITON_CUSTOM_CALL_TARGET: str = _triton_target()


def gpu_lowering_context(device_kind: str = DEFAULT_GPU_KIND):
    """Context in which ``jit(f).trace(...).lower(lowering_platforms=("cuda",))`` works without a GPU.

    Create the arguments before entering it: inside, an abstract GPU mesh is current on jax >= 0.11,
    and eager operations there fail.
    """
    if JAX_VERSION < (0, 11, 0):
        return contextlib.nullcontext()
    device = jax.sharding.AbstractDevice(device_kind=device_kind, num_cores=132, platform="gpu")
    mesh = jax.sharding.AbstractMesh(
        (1,), ("gpu",), (jax.sharding.AxisType.Explicit,), abstract_device=device
    )
    return jax.sharding.use_abstract_mesh(mesh)


def use_compilation_cache_storage(storage) -> bool:
    """Makes JAX's persistent compilation cache keep its entries in ``storage(directory)``.

    jax 0.10.2 to 0.12.x create the storage once, at the first compilation after
    ``jax_compilation_cache_dir`` is set, with ``jax._src.compilation_cache.get_file_cache(path)``
    (private: no public API chooses the storage). That function is replaced here. With JAX's
    debugging option ``jax_compilation_cache_check_contents``, JAX's own storage is kept (it wraps it
    in its verifier).

    Args:
      storage: ``storage(directory: str)`` -> an object with ``get(key) -> bytes | None`` and
        ``put(key, value: bytes)``, JAX's cache interface.

    Returns:
      False where this jax has no such function (its own storage is then used), else True.
    """
    try:
        from jax._src import compilation_cache
    except ImportError:  # pragma: no cover - a jax without the private module
        return False
    current = getattr(compilation_cache, "get_file_cache", None)
    if not callable(current):  # pragma: no cover - a jax that renamed it
        return False
    jax_own = getattr(current, "jax_own", current)  # calling this twice keeps JAX's original

    def get_file_cache(path):
        if jax.config.jax_compilation_cache_check_contents:
            return jax_own(path)
        return storage(path), path

    get_file_cache.jax_own = jax_own
    compilation_cache.get_file_cache = get_file_cache
    return True
