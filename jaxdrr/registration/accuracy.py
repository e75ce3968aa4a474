"""Registration accuracy: error measures between an estimated and a true camera (pure ``jnp``;
concrete-input helpers at the end).

Let ``(R_a, t_a)`` and ``(R_b, t_b)`` be the world-to-camera extrinsics of an estimated and a
true camera with the same intrinsics. Errors are measured on 3D points ``x`` of the CT (landmarks
or a grid, :func:`grid_points`):

* **mTRE** (mean target registration error, mm): ``mean_x || (R_a x + t_a) - (R_b x + t_b) ||``,
  the mean 3D displacement of the CT points between the two camera frames (independent of the
  parameterisation, of the rotation centre and of the reference camera).
* **mean projection distance** (pixels): ``mean_x || proj(P_a, x) - proj(P_b, x) ||``, the 2D
  reprojection error (insensitive to depth errors).
* **rotation error** (degrees): geodesic angle between ``R_a`` and ``R_b``.
* **translation error** (mm): displacement of the rotation centre ``c`` between the frames,
  ``|| (R_a c + t_a) - (R_b c + t_b) ||``; :func:`translation_error_components` splits it into
  in-plane and depth parts (in the true camera's axes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdrr.errors import JaxdrrError
from jaxdrr.geometry.projection import decompose_projection, project_points
from jaxdrr.geometry.rotations import rotation_angle_between
from jaxdrr.volume import Volume

__all__ = [
    "mtre",
    "projection_distance",
    "rotation_error_deg",
    "translation_error_mm",
    "translation_error_components",
    "grid_points",
    "registration_errors",
]


def mtre(R_a, t_a, R_b, t_b, points) -> jax.Array:
    """Mean target registration error (mm) over points [N, 3]."""
    pa = points @ jnp.asarray(R_a).T + t_a
    pb = points @ jnp.asarray(R_b).T + t_b
    return jnp.mean(jnp.linalg.norm(pa - pb, axis=-1))


def projection_distance(P_a, P_b, points) -> jax.Array:
    """Mean 2D distance (pixels) between the projections of points [N, 3] by two cameras."""
    xa, _ = project_points(P_a, points)
    xb, _ = project_points(P_b, points)
    return jnp.mean(jnp.linalg.norm(xa - xb, axis=-1))


def rotation_error_deg(R_a, R_b) -> jax.Array:
    """Geodesic angle (degrees) between two rotations."""
    return jnp.rad2deg(rotation_angle_between(jnp.asarray(R_a), jnp.asarray(R_b)))


def translation_error_mm(R_a, t_a, R_b, t_b, center) -> jax.Array:
    """Displacement (mm) of the rotation centre between the two camera frames."""
    c = jnp.asarray(center)
    return jnp.linalg.norm((R_a @ c + t_a) - (R_b @ c + t_b))


def translation_error_components(R_a, t_a, R_b, t_b, center) -> tuple[jax.Array, jax.Array]:
    """(in-plane, depth) parts (mm) of the centre displacement, in camera axes (z = depth)."""
    c = jnp.asarray(center)
    d = (R_a @ c + t_a) - (R_b @ c + t_b)
    return jnp.linalg.norm(d[:2]), jnp.abs(d[2])


def grid_points(
    volume: Volume, n: int = 5, margin: float = 0.1, hu_threshold: float | None = None
) -> np.ndarray:
    """A regular ``n x n x n`` grid of world points (mm) inside the volume box.

    Args:
      volume: the CT.
      n: points per axis.
      margin: fraction of each extent left out at both ends.
      hu_threshold: keep only grid points whose nearest voxel exceeds this HU (e.g. -500: inside
        the body), so that mTRE is not dominated by air in the corners of a large field of view.

    Returns:
      [N, 3] float64 world points.
    """
    if n < 1:
        raise JaxdrrError(f"grid_points needs n >= 1, got {n}")
    shape = np.array(volume.shape)
    axes = [np.linspace(margin * (s - 1), (1 - margin) * (s - 1), n) for s in shape]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    if hu_threshold is not None:
        if volume.kind != "hu":
            raise JaxdrrError("hu_threshold needs a HU volume")
        idx = np.clip(np.rint(ijk).astype(int), 0, shape - 1)
        vals = np.asarray(volume.data)[idx[:, 0], idx[:, 1], idx[:, 2]]
        ijk = ijk[vals > hu_threshold]
        if len(ijk) == 0:
            raise JaxdrrError(f"no grid point has HU > {hu_threshold}")
    world = ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    return world


def registration_errors(P_est, P_true, points, center=None) -> dict[str, float]:
    """All error measures between two concrete projection matrices (NumPy decomposition).

    Returns:
      dict with ``mtre_mm``, ``mpd_px``, ``rotation_deg``, ``translation_mm``,
      ``translation_inplane_mm``, ``translation_depth_mm``.
    """
    Ka, Ra, ta = decompose_projection(P_est)
    Kb, Rb, tb = decompose_projection(P_true)
    if not np.allclose(Ka, Kb, rtol=1e-3, atol=1e-3 * np.abs(Kb).max()):
        raise JaxdrrError("the two cameras have different intrinsics; errors assume the same K")
    points = np.asarray(points, np.float64)
    center = np.zeros(3) if center is None else np.asarray(center, np.float64)
    inplane, depth = translation_error_components(Ra, ta, Rb, tb, center)
    return {
        "mtre_mm": float(mtre(Ra, ta, Rb, tb, points)),
        "mpd_px": float(
            projection_distance(np.asarray(P_est, np.float64), np.asarray(P_true, np.float64), points)
        ),
        # float64 NumPy here: the float32 arccos of rotation_error_deg resolves only ~0.03 deg.
        "rotation_deg": float(np.rad2deg(np.arccos(np.clip((np.trace(Ra.T @ Rb) - 1) / 2, -1, 1)))),
        "translation_mm": float(translation_error_mm(Ra, ta, Rb, tb, center)),
        "translation_inplane_mm": float(inplane),
        "translation_depth_mm": float(depth),
    }
