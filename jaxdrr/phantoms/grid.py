"""The voxel grid every phantom is made on: centred at the world origin, with a diagonal RAS+ affine.

A phantom grid of shape (I, J, K) and voxel spacing (mm) has index axis I along +x (patient Right),
J along +y (Anterior) and K along +z (Superior), and its voxel centres at
``(i - (n - 1) / 2) * spacing`` per axis, so the grid's centre is the world origin.
:func:`centered_affine` is that affine and :func:`centered_axes` the voxel-centre coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["centered_affine", "centered_axes"]


def centered_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Diagonal RAS+ affine of a grid whose centre is the world origin; [4, 4]."""
    affine = np.diag([float(s) for s in spacing] + [1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2.0 * np.asarray(spacing, np.float64)
    return affine


def centered_axes(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """World coordinates (mm, float64) of the voxel centres along each axis of a centred grid.

    Args:
      shape: (I, J, K); spacing: mm per axis.

    Returns:
      Three 1-D arrays, ``(arange(n) - (n - 1) / 2) * spacing``.
    """
    return [(np.arange(n) - (n - 1) / 2.0) * float(s) for n, s in zip(shape, spacing)]
