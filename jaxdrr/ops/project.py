"""``project``: per-channel line integrals of a volume along every detector pixel's ray.

This is the projector behind every image jaxdrr makes. It is a pure function of the volume values
and the projection matrix, differentiable w.r.t. both, batched over poses with ``vmap``. Backends:

* ``"xla"``: the pure-JAX marcher (:mod:`jaxdrr.ops.march`), on any device; the reference.
* ``"native"``: the C++ CPU kernel, an XLA custom call (:mod:`jaxdrr.ops.native_project`), when
  it was built at install time; float32 and float64 (other dtypes use ``"xla"``).
* ``"pallas"`` / ``"pallas_interpret"``: the GPU kernel (:mod:`jaxdrr.ops.pallas_project`), when
  available.
* ``"auto"``: Pallas on GPU; on CPU the native kernel when it is built and supports the dtype,
  else XLA. :func:`project_backend` says which and why.
"""

from __future__ import annotations

import functools
import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import GeometryError, VolumeError
from jaxdrr.geometry.projection import check_detector, check_projection_matrix, is_concrete
from jaxdrr.ops import march as _march
from jaxdrr.ops.rays import PLANES, VolumeGrid, detector_rays, resolve_step

BACKENDS = ("auto", "xla", "native", "pallas", "pallas_interpret")
log = logging.getLogger("jaxdrr.ops")


def _check_volume(volume):
    if np.ndim(volume) != 4:
        raise VolumeError(
            f"project expects a [C, I, J, K] volume (channels first), got shape {np.shape(volume)}"
        )
    if is_concrete(volume):
        with jax.ensure_compile_time_eval():  # evaluate now even when called inside a trace
            finite = bool(jnp.all(jnp.isfinite(volume)))
        if not finite:
            raise VolumeError("volume contains non-finite values (NaN/Inf)")


def _native():
    from jaxdrr.ops import native_project  # loads the library lazily, once

    return native_project


def project_backend(dtype=jnp.float32) -> tuple[str, str]:
    """The backend ``backend="auto"`` uses for a volume of ``dtype``, and why.

    Returns:
      (name, reason): e.g. ``("native", "CPU: native C++ kernel (...)")``.
    """
    platform = jax.default_backend()
    if platform == "gpu":
        return "pallas", "GPU: Pallas (Triton) kernel"
    if platform != "cpu":
        return "xla", f"{platform}: pure-JAX marcher"
    native = _native()
    if not native.available():
        return "xla", f"CPU: pure-JAX marcher ({native.unavailable_reason()})"
    if not native.supports_dtype(dtype):
        return "xla", f"CPU: pure-JAX marcher (the native kernel does not support {np.dtype(dtype)})"
    facts = native.info()
    return "native", (
        f"CPU: native C++ kernel ({facts['threads']} threads, {facts['simd']}, XLA FFI {facts['ffi_api']})"
    )


@functools.cache
def _log_auto(name: str, why: str) -> None:  # once per distinct choice
    log.debug('project(backend="auto") uses %r: %s', name, why)
    if (
        name == "xla"
        and jax.default_backend() == "cpu"
        and not _native().available()
        and not _native().disabled()
    ):
        warnings.warn(
            f"jaxdrr: {_native().unavailable_reason()}; the CPU projector falls back to the pure-JAX "
            "marcher, several times slower (JAXDRR_NO_NATIVE=1 silences this)",
            RuntimeWarning,
            stacklevel=2,
        )


def resolve_backend(backend: str, dtype=jnp.float32) -> str:
    """The concrete backend for ``backend`` and a volume of ``dtype``.

    ``"auto"`` follows :func:`project_backend`; ``"native"`` raises RuntimeError when the library
    is not available and falls back to ``"xla"`` for dtypes it does not support.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        name, why = project_backend(dtype)
        _log_auto(name, why)
        return name
    if backend == "native":
        native = _native()
        if not native.available():
            raise RuntimeError(f'backend="native": {native.unavailable_reason()}')
        return "native" if native.supports_dtype(dtype) else "xla"
    return backend


def project(volume, affine, P, height: int, width: int, *, step_mm=None, backend: str = "auto") -> jax.Array:
    """Line integrals of each channel of ``volume`` along the ray of each detector pixel.

    Args:
      volume: [C, I, J, K] float array (e.g. one density volume per material); may be traced.
      affine: 4x4 voxel-centre index -> world-mm matrix (static, NumPy).
      P: [3, 4] projection matrix from homogeneous world mm to image coordinates (x=col, y=row);
        may be traced. Points in front of the source have (P X)_3 > 0.
      height: detector rows.
      width: detector columns.
      step_mm: march step in mm; default half the smallest voxel spacing. ``"planes"``: one
        sample where each ray crosses a voxel-centre plane of its dominant axis (Joseph's method:
        about half the samples, each reading 4 voxels instead of 8; see
        :func:`jaxdrr.ops.rays.clip_rays_to_planes`).
      backend: ``"auto"``, ``"xla"``, ``"native"``, ``"pallas"`` or ``"pallas_interpret"`` (see
        the module docstring).

    Returns:
      [height, width, C] line integrals in (channel units) x mm. The field is the trilinear
      interpolation between voxel centres of the volume zero-padded by one voxel (see
      :mod:`jaxdrr.ops.rays`), zero outside.

    Raises:
      VolumeError, GeometryError: for a wrongly shaped or non-finite volume, a degenerate P, a bad
        detector size or step.
    """
    _check_volume(volume)
    height, width = check_detector(height, width)
    if is_concrete(P):
        check_projection_matrix(P)
    elif np.shape(P)[-2:] != (3, 4):
        raise GeometryError(f"P must be 3x4, got shape {np.shape(P)}")
    grid = VolumeGrid.create(np.shape(volume)[1:], affine)
    step = resolve_step(grid, step_mm)
    volume = jnp.asarray(volume)
    if not jnp.issubdtype(volume.dtype, jnp.floating):
        volume = volume.astype(jnp.result_type(float))
    backend = resolve_backend(backend, volume.dtype)
    P = jnp.asarray(P, dtype=volume.dtype)
    if backend == "native":
        out = _native().project_native(volume, grid, P, height, width, step)
    elif backend == "xla":
        rays = detector_rays(P, grid, height, width, step)
        flat = _march.pad_channels_last(volume)
        out = _march.march(flat, grid.padded_shape, rays, planes=(step == PLANES))
    else:
        from jaxdrr.ops import pallas_project  # imported lazily: needs jax.experimental.pallas

        out = pallas_project.project_pallas(
            volume, grid, P, height, width, step, interpret=(backend == "pallas_interpret")
        )
    return out.reshape(height, width, volume.shape[0])
