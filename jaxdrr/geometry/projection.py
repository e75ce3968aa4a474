"""Pinhole projection geometry: the 3x4 matrix P and everything derived from it.

``P = K [R | t]`` maps homogeneous world points (mm, RAS+) to homogeneous image points. Conventions
(see docs/geometry.md):

* image point (x, y) = (column, row); pixel (r, c) is centred on the integer point (x=c, y=r);
* ``(P X)_3 > 0`` for points in front of the source; the source is the null space of ``P``;
* the ray of image point (x, y) leaves the source along ``M^-1 [x, y, 1]^T`` with ``M = P[:, :3]``.

Every function is pure ``jnp`` and works under ``jit``, ``vmap`` and ``grad``. This module is the
one place where rays are derived from ``P``; the projector (``jaxdrr.ops``) builds on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr._compat import is_tracer
from jaxdrr.errors import GeometryError


def intrinsic_matrix(
    sdd_mm, pixel_size_mm, height: int, width: int, principal_point=None, flip_columns: bool = False
) -> jax.Array:
    """Camera intrinsics of a flat-panel detector.

    Args:
      sdd_mm: source-to-detector distance (focal length) in mm.
      pixel_size_mm: pixel pitch in mm, a scalar or (row pitch, column pitch).
      height: detector rows.
      width: detector columns.
      principal_point: (x, y) image point of the foot of the perpendicular from the source, in
        pixels; default the detector centre ((width - 1) / 2, (height - 1) / 2).
      flip_columns: mirror the column axis (x -> -x about the principal point). The C-arm uses this
        for the radiological display convention (patient's right on the image's left in AP).

    Returns:
      K, [3, 3].
    """
    pitch = jnp.broadcast_to(jnp.asarray(pixel_size_mm, dtype=jnp.result_type(float)), (2,))
    fy = sdd_mm / pitch[0]
    fx = sdd_mm / pitch[1]
    if flip_columns:
        fx = -fx
    if principal_point is None:
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    else:
        cx, cy = principal_point[0], principal_point[1]
    zero = jnp.zeros_like(fx)
    return jnp.stack(
        [
            jnp.stack([fx, zero, zero + cx]),
            jnp.stack([zero, fy, zero + cy]),
            jnp.stack([zero, zero, zero + 1.0]),
        ]
    )


def projection_matrix(K, R, t) -> jax.Array:
    """``P = K [R | t]``: intrinsics [3, 3], world-to-camera rotation [3, 3] and translation [3]."""
    return jnp.asarray(K) @ jnp.concatenate([jnp.asarray(R), jnp.asarray(t)[:, None]], axis=1)


def source_position(P) -> jax.Array:
    """World position (mm) of the X-ray source: the null space of P, ``-M^-1 p4``."""
    P = jnp.asarray(P)
    return -jnp.linalg.solve(P[:, :3], P[:, 3])


def pixel_grid(height: int, width: int, dtype=None) -> jax.Array:
    """Homogeneous image points of all pixel centres, [height, width, 3] as (x=col, y=row, 1)."""
    dtype = dtype or jnp.result_type(float)
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=dtype), jnp.arange(width, dtype=dtype), indexing="ij")
    return jnp.stack([cols, rows, jnp.ones_like(rows)], axis=-1)


def ray_directions(P, points) -> jax.Array:
    """Unit world directions from the source through image points.

    Args:
      P: [3, 4] projection matrix.
      points: [..., 3] homogeneous image points (x, y, 1), e.g. :func:`pixel_grid`.

    Returns:
      [..., 3] unit vectors pointing from the source into the scene ((P X)_3 > 0 side).
    """
    P = jnp.asarray(P)
    m_inv = jnp.linalg.inv(P[:, :3])
    d = points @ m_inv.T
    return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def pixel_rays(P, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Source position [3] and unit ray directions [height, width, 3] of every pixel centre."""
    return source_position(P), ray_directions(P, pixel_grid(height, width, jnp.asarray(P).dtype))


def project_points(P, points) -> tuple[jax.Array, jax.Array]:
    """Projects world points to image coordinates.

    Args:
      P: [3, 4] projection matrix.
      points: [..., 3] world points in mm.

    Returns:
      (xy, depth): image coordinates [..., 2] as (x=col, y=row), and the third homogeneous
      coordinate [...] (positive in front of the source; equals the distance along the principal
      axis when ``P = K [R | t]`` with ``K[2] = (0, 0, 1)``).
    """
    P = jnp.asarray(P)
    h = points @ P[:, :3].T + P[:, 3]
    return h[..., :2] / h[..., 2:3], h[..., 2]


def rescale_detector(P, factor: float) -> jax.Array:
    """P for the same detector re-sampled with pixels ``factor`` times larger (coarser if > 1).

    Pixel centres stay on integer coordinates: new x' = (x + 0.5) / factor - 0.5. Used to render at
    reduced resolution by changing intrinsics rather than downsampling a full-size render.
    """
    s = 1.0 / factor
    offset = 0.5 * s - 0.5
    S = jnp.array([[s, 0.0, offset], [0.0, s, offset], [0.0, 0.0, 1.0]], dtype=jnp.asarray(P).dtype)
    return S @ P


def decompose_projection(P) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits a concrete P into K (K[2,2] = 1), a rotation R (det +1) and t, with P ~ K [R | t].

    The sign is fixed so that points in front of the source keep (P X)_3 > 0. If P mirrors the
    image (det M < 0, e.g. the C-arm's radiological flip), K carries the mirror as a negative
    K[0, 0]. NumPy (float64), not traced: for inspection and initialisation.
    """
    P = np.asarray(P, dtype=np.float64)
    M = P[:, :3]
    # RQ decomposition via QR of the flipped transpose.
    flip = np.flipud(np.eye(3))
    q, r = np.linalg.qr((flip @ M).T)
    K = flip @ r.T @ flip
    R = flip @ q.T
    # Make K's diagonal positive except a possible column mirror.
    signs = np.sign(np.diag(K))
    signs[signs == 0] = 1.0
    D = np.diag(signs)
    K, R = K @ D, D @ R
    if np.linalg.det(R) < 0:
        D = np.diag([-1.0, 1.0, 1.0])
        K, R = K @ D, D @ R
    scale = K[2, 2]
    K = K / scale
    t = np.linalg.solve(K, P[:, 3] / scale)
    return K, R, t


def check_projection_matrix(P, name: str = "P") -> np.ndarray:
    """Validates a concrete projection matrix and returns it as float64 NumPy.

    Raises:
      GeometryError: wrong shape, non-finite entries, or a rank-deficient left 3x3 block (no unique
        source position; this includes rank(P) < 3).
    """
    arr = np.asarray(P, dtype=np.float64)
    if arr.shape != (3, 4):
        raise GeometryError(f"{name} must be a 3x4 projection matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name} contains non-finite values")
    rank = np.linalg.matrix_rank(arr)
    if rank < 3:
        raise GeometryError(f"{name} has rank {rank} < 3: it does not define a projection")
    M = arr[:, :3]
    s = np.linalg.svd(M, compute_uv=False)
    if s[-1] <= 1e-12 * s[0]:
        raise GeometryError(
            f"{name}[:, :3] is singular (condition number {s[0] / max(s[-1], 1e-300):.3g}): the "
            "source would be at infinity (affine camera); jaxdrr needs a perspective source"
        )
    return arr


def is_concrete(x) -> bool:
    """True when x holds values now (not a tracer inside jit/vmap/grad)."""
    return not is_tracer(x)


def check_detector(height, width) -> tuple[int, int]:
    """Validates a detector size: positive integers."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise GeometryError(f"detector {name} must be an int, got {v!r}")
        if v <= 0:
            raise GeometryError(f"detector {name} must be positive, got {v}")
    return int(height), int(width)


__all__: Sequence[str] = (
    "intrinsic_matrix",
    "projection_matrix",
    "source_position",
    "pixel_grid",
    "ray_directions",
    "pixel_rays",
    "project_points",
    "rescale_detector",
    "decompose_projection",
    "check_projection_matrix",
    "check_detector",
    "is_concrete",
)
