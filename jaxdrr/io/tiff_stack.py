"""CT volumes stored as multi-page TIFF stacks (one page per slice), e.g. Autoscoper's bone crops.

A TIFF stack carries no geometry, so the voxel size is an argument and the placement is a
convention. :func:`read_tiff_volume` reads the stack with tifffile as an array ``[page, row,
column]`` and returns a :class:`~jaxdrr.volume.Volume` whose index axes are **(i, j, k) =
(column, row, page)**, i.e. x along a page's columns, y down its rows and z through the pages, with
the voxel sizes on the diagonal of the affine (no rotation). This is the frame Autoscoper renders
its volumes in up to a proper rotation (its ray caster samples ``(x, 1 - y, -z)``: two axis flips),
so the handedness is right: a rigid pose maps it onto the real bone, never onto its mirror image.
``flip`` mirrors index axes before that (Autoscoper's ``VolumeFlip``), ``axis_order`` says which
array axes hold x, y, z when a stack is not stored as pages = z.

By default the voxel centres are centred on the origin (the volume's centre is at (0, 0, 0) mm),
so a pose's rotation turns the bone about its own centre; ``origin_mm`` gives the world position
of voxel (0, 0, 0) instead.

**Values.** ``values="raw"`` returns the stored numbers. ``values="hu"`` returns
``slope * stored + intercept`` Hounsfield units; the default ``intercept=-1024`` is the usual
DICOM rescale of 12-bit unsigned CT (0-4095 stored = -1024-3071 HU). For the Autoscoper wrist crops
(uint16 0-4095, zero outside the bone) it fits the histogram of the bone voxels: a trabecular mode
at ~1200-1400 stored (~200-400 HU), a cortical mode at ~3500-4000 (2500-3000 HU) and a pile-up at
exactly 4095 (3071 HU, the 12-bit ceiling of the scanner, not a property of bone); the lowest
bone voxels (~700-900 stored, -300 to -100 HU) are partial-volume voxels at the bone's surface.

**Outside the bone.** In a bone-only crop a stored 0 is a mask ("not this bone"), not a measured
-1024 HU. ``zero_is_outside=True`` (default) gives those voxels ``outside_hu``, default -1000 HU:
nothing, so the crop renders as the bone alone and its box never shows. That is the right
choice for a scene of several bones, but a real radiograph sees a bone *in soft tissue*: the bone's
contrast against its surroundings is its attenuation **in excess of the soft tissue it
displaces**, ``mu_bone - mu_tissue``, which is proportional to ``HU_bone - HU_tissue`` (HU ~ 0-50
for muscle). For registration against a real frame render the excess, e.g. the line integrals of
``max(HU, 0)`` (:func:`bone_excess_density`), and let the similarity measure absorb the smooth
soft-tissue background.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jaxdrr.errors import LoadError, VolumeError
from jaxdrr.volume import Volume

#: Voxel size of the Autoscoper wrist sample crops, (x, y, z) = (column, row, page) in mm, from
#: Autoscoper's sample configuration (AutoscoperMainWindow.cpp, ``VoxelSize 0.39625 0.39625 0.625``).
AUTOSCOPER_WRIST_VOXEL_MM = (0.39625, 0.39625, 0.625)

#: Default rescale intercept for ``values="hu"``: 12-bit unsigned CT stored as HU + 1024.
DEFAULT_HU_INTERCEPT = -1024.0

_AXIS_ORDERS = ("zyx", "zxy", "yzx", "yxz", "xzy", "xyz")


def read_tiff_volume(
    path: str | os.PathLike,
    voxel_size_mm: Sequence[float],
    *,
    origin_mm: Sequence[float] | None = None,
    axis_order: str = "zyx",
    flip: tuple[bool, bool, bool] = (False, False, False),
    values: str = "hu",
    slope: float = 1.0,
    intercept: float = DEFAULT_HU_INTERCEPT,
    zero_is_outside: bool = True,
    outside_hu: float = -1000.0,
) -> Volume:
    """Reads a multi-page TIFF stack as a Volume (see the module docstring for the conventions).

    Args:
      path: the TIFF file (one 2-D page per slice, all pages the same shape; single-channel).
      voxel_size_mm: (x, y, z) voxel size in mm (x = along a page's columns, y = along its rows,
        z = between pages, for the default ``axis_order``); e.g. :data:`AUTOSCOPER_WRIST_VOXEL_MM`.
      origin_mm: world position (mm) of the centre of voxel (0, 0, 0) (after ``flip``); default:
        the volume is centred on the origin.
      axis_order: which world axis each array axis ``(page, row, column)`` holds; ``"zyx"``
        (default) = pages are z slices, rows y, columns x.
      flip: mirror the (x, y, z) index axes (as Autoscoper's ``VolumeFlip``). A single flip makes
        the volume the mirror image of the bone; use it only to undo a mirrored export.
      values: ``"hu"`` (``slope * stored + intercept``) or ``"raw"`` (stored numbers as float).
      slope, intercept: the rescale to HU for ``values="hu"``.
      zero_is_outside: stored 0 marks voxels outside the segmented object (bone-only crops): they
        become ``outside_hu`` (``values="hu"``) rather than ``intercept``.
      outside_hu: HU of outside voxels; -1000 (air: contributes nothing to a DRR).

    Returns:
      A ``kind="hu"`` :class:`~jaxdrr.volume.Volume` [X, Y, Z] (float32).

    Raises:
      FileNotFoundError: no such file.
      LoadError: not a readable single-channel stack, or bad arguments.
    """
    import tifffile

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TIFF stack not found: {path}")
    if axis_order not in _AXIS_ORDERS:
        raise LoadError(f"axis_order must be one of {_AXIS_ORDERS}, got {axis_order!r}")
    if values not in ("hu", "raw"):
        raise LoadError(f"values must be 'hu' or 'raw', got {values!r}")
    spacing = np.asarray(voxel_size_mm, np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise LoadError(f"voxel_size_mm must be 3 positive numbers (x, y, z), got {voxel_size_mm!r}")
    try:
        stored = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types (TiffFileError, ValueError, KeyError...)
        raise LoadError(f"cannot read {path} as a TIFF stack: {type(err).__name__}: {err}") from None
    if stored.ndim == 2:
        stored = stored[None]
    if stored.ndim != 3:
        raise LoadError(
            f"{path}: expected a stack of single-channel 2-D pages, got an array of shape {stored.shape}"
        )
    if not (np.issubdtype(stored.dtype, np.integer) or np.issubdtype(stored.dtype, np.floating)):
        raise LoadError(f"{path}: unsupported sample type {stored.dtype}")

    # Array axes (page, row, column) -> (x, y, z).
    perm = tuple(axis_order.index(a) for a in "xyz")
    arr = np.transpose(stored, perm)
    for axis, f in enumerate(flip):
        if f:
            arr = np.flip(arr, axis=axis)
    outside = arr == 0
    data = arr.astype(np.float64)
    if values == "hu":
        data = slope * data + intercept
        if zero_is_outside:
            data[outside] = outside_hu
    shape = np.array(data.shape, np.float64)
    if origin_mm is None:
        origin = -0.5 * (shape - 1.0) * spacing
    else:
        origin = np.asarray(origin_mm, np.float64)
        if origin.shape != (3,) or not np.all(np.isfinite(origin)):
            raise LoadError(f"origin_mm must be 3 finite numbers, got {origin_mm!r}")
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = origin
    return Volume.create(np.ascontiguousarray(data, np.float32), affine, kind="hu")


def bone_excess_density(volume: Volume, tissue_hu: float = 0.0):
    """Attenuation in excess of soft tissue, as water-equivalent density ``max(HU - tissue_hu, 0) / 1000``.

    ``mu / mu_water = 1 + HU / 1000``, so a bone voxel replacing tissue of ``tissue_hu`` adds
    ``(HU - tissue_hu) / 1000`` water-equivalent g/cm^3 of attenuation; voxels at or below the
    tissue level (outside, fat, partial-volume surface) add nothing. Returns [1, X, Y, Z] for
    :func:`jaxdrr.ops.project` (line integrals in g/cm^3 x mm of water-equivalent excess).
    """
    if volume.kind != "hu":
        raise VolumeError(f"bone_excess_density needs a 'hu' volume, got kind={volume.kind!r}")
    import jax.numpy as jnp

    return (jnp.maximum(volume.data - tissue_hu, 0.0) / 1000.0)[None]


def principal_axes(volume: Volume, threshold_hu: float = 200.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid and principal axes of the voxels above ``threshold_hu``, in the volume's world frame.

    Returns:
      (centroid [3] mm, axes [3, 3] with unit axes as rows, longest first, std [3] mm along them).
      The sign of each axis is arbitrary (the caller resolves it).
    """
    data = np.asarray(volume.data)
    idx = np.argwhere(data > threshold_hu).astype(np.float64)
    if len(idx) < 10:
        raise VolumeError(f"fewer than 10 voxels above {threshold_hu} HU: no object to measure")
    weights = data[data > threshold_hu].astype(np.float64)
    world = idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    w = weights / weights.sum()
    centroid = w @ world
    d = world - centroid
    cov = (d * w[:, None]).T @ d
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    return centroid, evecs[:, order].T, np.sqrt(np.maximum(evals[order], 0.0))


__all__: Sequence[str] = (
    "AUTOSCOPER_WRIST_VOXEL_MM",
    "DEFAULT_HU_INTERCEPT",
    "read_tiff_volume",
    "bone_excess_density",
    "principal_axes",
)
