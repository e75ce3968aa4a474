"""Reading CT volumes and writing rendered images.

* :mod:`~jaxdrr.io.read`: :func:`load_volume` turns a NIfTI file or a DICOM CT series directory
  into a :class:`~jaxdrr.volume.Volume` of Hounsfield units (``kind="hu"``) whose affine maps
  voxel-centre indices to **RAS+** world millimetres (:func:`load_nifti`,
  :func:`load_dicom_series`; the array axis order is documented there).
* :mod:`~jaxdrr.io.info`: :func:`volume_info` and :func:`format_volume_info` (``jaxdrr info``).
* :mod:`~jaxdrr.io.write`: :func:`save_image` (PNG 8/16-bit, TIFF 16-bit/float32, NPY).
* :mod:`~jaxdrr.io.mesh`: :func:`read_mesh` (STL/OBJ/PLY -> a closed :class:`~jaxdrr.mesh.TriangleMesh`).
* :mod:`~jaxdrr.io.npz`: :func:`save_npz` / :func:`load_npz`, the render bundle (image, 3x4
  ``P``, height, width, metadata).
* :mod:`~jaxdrr.io.tiff_stack`: :func:`read_tiff_volume`, a multi-page TIFF CT stack (e.g.
  Autoscoper's bone-only crops) as a Volume; axis order, orientation and HU rescale documented there.
* :mod:`~jaxdrr.io.mayacam`: :func:`read_mayacam` / :func:`projection_from_mayacam`, MayaCam 2.0
  calibrations (XMALab, Autoscoper) as jaxdrr's ``P = K [R | t]``.
* :mod:`~jaxdrr.io.frames`: :func:`read_fluoro_frame`, an 8-bit fluoroscopy frame as a float image
  in [0, 1] with its circular field-of-view mask (detected automatically).

All writes are atomic (:func:`jaxdrr.atomic.atomic_path`): the file is written under a temporary
name in the destination directory and moved into place, so a crash never leaves a half-written
output under the final name.
"""

from jaxdrr.io.frames import FluoroFrame, detect_fov_circle, read_fluoro_frame
from jaxdrr.io.info import format_volume_info, volume_info
from jaxdrr.io.mayacam import MayaCamCalibration, projection_from_mayacam, read_mayacam, triangulate
from jaxdrr.io.mesh import read_mesh
from jaxdrr.io.npz import load_npz, save_npz
from jaxdrr.io.read import (
    NIFTI_SUFFIXES,
    ORIENTATION_TOL,
    OTHER_NIBABEL_SUFFIXES,
    PIXEL_SPACING_TOL_MM,
    SLICE_SPACING_ABS_TOL_MM,
    SLICE_SPACING_REL_TOL,
    load_dicom_series,
    load_nifti,
    load_volume,
)
from jaxdrr.io.tiff_stack import AUTOSCOPER_WRIST_VOXEL_MM, read_tiff_volume
from jaxdrr.io.write import save_image

__all__ = [
    "load_volume",
    "load_nifti",
    "load_dicom_series",
    "volume_info",
    "format_volume_info",
    "save_image",
    "save_npz",
    "load_npz",
    "read_tiff_volume",
    "AUTOSCOPER_WRIST_VOXEL_MM",
    "read_mayacam",
    "projection_from_mayacam",
    "MayaCamCalibration",
    "triangulate",
    "read_fluoro_frame",
    "detect_fov_circle",
    "FluoroFrame",
    "read_mesh",
]
