"""``project``: per-channel line integrals of a volume along every detector pixel's ray.

This is the projector behind every image jaxdrr makes. It is a pure function of the volume values
and the projection matrix, differentiable w.r.t. both, batched over poses with ``vmap``. Backends:

* ``"xla"``: the pure-JAX marcher (:mod:`jaxdrr.ops.march`), on any device; the reference.
* ``"pallas"`` / ``"pallas_interpret"``: the GPU kernel (:mod:`jaxdrr.ops.pallas_project`), when
  available.
* ``"auto"``: Pallas on GPU, XLA elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import GeometryError, VolumeError
from jaxdrr.geometry.projection import check_detector, check_projection_matrix, is_concrete
from jaxdrr.ops import march as _march
from jaxdrr.ops.rays import PLANES, VolumeGrid, detector_rays, resolve_step

BACKENDS = ("auto", "xla", "pallas", "pallas_interpret")


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


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
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
      backend: ``"auto"``, ``"xla"``, ``"pallas"`` or ``"pallas_interpret"``.

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
    backend = resolve_backend(backend)
    volume = jnp.asarray(volume)
    if not jnp.issubdtype(volume.dtype, jnp.floating):
        volume = volume.astype(jnp.result_type(float))
    P = jnp.asarray(P, dtype=volume.dtype)
    if backend == "xla":
        rays = detector_rays(P, grid, height, width, step)
        flat = _march.pad_channels_last(volume)
        out = _march.march(flat, grid.padded_shape, rays, planes=(step == PLANES))
    else:
        from jaxdrr.ops import pallas_project  # imported lazily: needs jax.experimental.pallas

        out = pallas_project.project_pallas(
            volume, grid, P, height, width, step, interpret=(backend == "pallas_interpret")
        )
    return out.reshape(height, width, volume.shape[0])
