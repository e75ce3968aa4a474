"""Reading CT volumes: NIfTI files and DICOM series as HU volumes with a RAS+ affine.

:func:`load_volume` turns a NIfTI file or a DICOM CT series directory into a
:class:`~jaxdrr.volume.Volume` of Hounsfield units (``kind="hu"``) whose affine maps voxel-centre
indices to **RAS+** world millimetres.

Array axis order of loaded volumes
----------------------------------
* NIfTI: the array is kept exactly as stored (nibabel's ``[i, j, k]``) together with ``img.affine``
  (sform/qform as chosen by nibabel), so the world sampling is the file's own.
* DICOM: the array is ``[I, J, K] = [column index, row index, slice index]``, i.e. each slice's
  ``pixel_array`` (shape ``[Rows, Columns]``) is transposed, and slices are stacked in ascending
  position along the slice normal ``n = row_cosine x column_cosine`` (from ImageOrientationPatient).
  This is the axis order NIfTI converters write (dcm2niix may additionally flip the row axis; the
  affine always accounts for whatever order is used, so compare volumes in world coordinates).
  With ``F_r`` = IOP[0:3] (direction along a row, i.e. of increasing column index),
  ``F_c`` = IOP[3:6] (direction of increasing row index), ``PixelSpacing = [dr, dc]``
  (DICOM order: *row* spacing first, i.e. the distance between rows, then between columns) and
  ``P_k`` = ImagePositionPatient of the k-th sorted slice, the LPS affine columns are::

      column 0 (I, column index): F_r * dc
      column 1 (J, row index):    F_c * dr
      column 2 (K, slice index):  (P_last - P_first) / (n_slices - 1)
      translation:                P_first

  and the RAS affine is the LPS one with its first two rows negated.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxdrr.errors import LoadError, VolumeError
from jaxdrr.volume import Volume

__all__ = ["load_volume", "load_nifti", "load_dicom_series"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Other single-file formats nibabel reads with a usable affine.
OTHER_NIBABEL_SUFFIXES = (".mgz", ".mgh", ".hdr", ".img", ".img.gz")

# Slice spacing tolerance: spacings may differ by this fraction of the median spacing or by
# SLICE_SPACING_ABS_TOL_MM, whichever is larger (scanner positions are rounded to ~1e-3 mm).
SLICE_SPACING_REL_TOL = 0.01
SLICE_SPACING_ABS_TOL_MM = 0.01
ORIENTATION_TOL = 1e-4
PIXEL_SPACING_TOL_MM = 1e-4


def load_volume(path: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Loads a CT volume in Hounsfield units from a NIfTI file or a DICOM series.

    Args:
      path: a ``.nii``/``.nii.gz`` file (other nibabel formats such as ``.mgz`` also work), a
        directory holding one DICOM series (searched recursively), or one DICOM file (then the
        series it belongs to is loaded from the file's directory).
      series_uid: for DICOM directories holding several series, the SeriesInstanceUID to load.

    Returns:
      A ``Volume`` with ``kind="hu"``, float32 data and a RAS+ voxel-centre affine. See the module
      docstring for the array axis order.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      LoadError: the file is not NIfTI/DICOM, is corrupt or truncated, the directory holds no DICOM
        image, several series without ``series_uid``, or an inconsistent series.
      VolumeError: the voxel values are not finite.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"volume path does not exist: {str(path)!r}")
    if path.is_dir():
        return load_dicom_series(path, series_uid=series_uid)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES + OTHER_NIBABEL_SUFFIXES):
        if series_uid is not None:
            raise LoadError(f"series_uid was given but {str(path)!r} is not a DICOM series")
        return load_nifti(path)
    reasons: list[str] = []
    dataset = _try_read_dicom(path, reasons)
    if dataset is None:
        raise LoadError(
            f"cannot read {str(path)!r}: not a NIfTI file (.nii/.nii.gz) and not a readable DICOM "
            f"file ({'; '.join(reasons) or 'unknown format'}); pass a NIfTI file or a directory "
            "with a DICOM CT series"
        )
    if "PixelData" not in dataset:
        raise LoadError(f"DICOM file {str(path)!r} has no pixel data (not an image)")
    uid = series_uid if series_uid is not None else str(dataset.get("SeriesInstanceUID", ""))
    return load_dicom_series(path.parent, series_uid=uid or None)


def load_nifti(path: str | os.PathLike) -> Volume:
    """Loads a NIfTI (or other nibabel-readable) file as a HU volume.

    Scaling (``scl_slope``/``scl_inter``) is applied by nibabel's ``get_fdata``; the affine is
    ``img.affine`` (RAS+, voxel centres). A 4-D image with a single volume is squeezed to 3-D.

    Args:
      path: the file.

    Returns:
      A ``Volume`` (``kind="hu"``, float32).
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"volume path does not exist: {str(path)!r}")
    try:
        img = nib.load(str(path))
        # get_fdata decompresses the whole file: truncated/corrupt gzip streams fail here, not in load.
        data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise LoadError(f"cannot read NIfTI file {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LoadError(f"NIfTI file {str(path)!r} has shape {data.shape}; jaxdrr needs a single 3-D volume")
    return _make_volume(data, affine, source=path)


def _make_volume(data: np.ndarray, affine: np.ndarray, source: Path) -> Volume:
    try:
        return Volume.create(data, affine, kind="hu")
    except VolumeError as exc:
        raise VolumeError(f"{str(source)!r}: {exc}") from exc


@dataclasses.dataclass
class _Slice:
    path: Path
    dataset: Any
    orientation: np.ndarray  # [6] ImageOrientationPatient
    position: np.ndarray  # [3] ImagePositionPatient (LPS mm)
    pixel_spacing: np.ndarray  # [2] (row spacing, column spacing) mm
    rows: int
    columns: int


def _try_read_dicom(path: Path, reasons: list[str] | None = None):
    """Returns the pydicom dataset of ``path`` or None when it does not parse as DICOM.

    When given, ``reasons`` receives the parse error (to explain a rejected single file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path))
    except InvalidDicomError as exc:
        first_error = exc
    except Exception as exc:  # has a DICOM preamble but is corrupt/truncated
        if reasons is not None:
            reasons.append(f"{type(exc).__name__}: {exc}")
        return None
    # Files without the 128-byte preamble ("DICM") are still common; accept them only when they
    # really look like an image (force=True parses almost any bytes into a junk dataset).
    try:
        dataset = pydicom.dcmread(str(path), force=True)
        if "PixelData" in dataset and "Rows" in dataset:
            return dataset
    except Exception:
        pass
    if reasons is not None:
        reasons.append(f"{type(first_error).__name__}: {first_error}")
    return None


def _iter_files(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def load_dicom_series(directory: str | os.PathLike, *, series_uid: str | None = None) -> Volume:
    """Loads a DICOM CT series from a directory (searched recursively) as a HU volume.

    Every file that parses as DICOM and has pixel data is gathered; other files are ignored.
    Slices are sorted by their position projected on the slice normal, RescaleSlope/Intercept are
    applied per slice, and the LPS affine is converted to RAS (see the module docstring for the
    array axis order ``[column, row, slice]``).

    Args:
      directory: the directory.
      series_uid: SeriesInstanceUID to load when the directory holds several series.

    Returns:
      A ``Volume`` (``kind="hu"``, float32).

    Raises:
      LoadError: no DICOM image, several series and no ``series_uid``, unknown ``series_uid``,
        slices with different orientation / size / pixel spacing, duplicate or missing slices,
        non-uniform slice spacing, undecodable pixel data.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"volume path does not exist: {str(directory)!r}")
    if not directory.is_dir():
        raise LoadError(f"{str(directory)!r} is not a directory")

    by_series: dict[str, list[tuple[Path, Any]]] = {}
    n_files = 0
    for file in _iter_files(directory):
        n_files += 1
        dataset = _try_read_dicom(file)
        if dataset is None or "PixelData" not in dataset:
            continue
        by_series.setdefault(str(dataset.get("SeriesInstanceUID", "<no SeriesInstanceUID>")), []).append(
            (file, dataset)
        )
    if not by_series:
        what = "is empty" if n_files == 0 else f"has {n_files} file(s) but none is a DICOM image"
        raise LoadError(
            f"DICOM directory {str(directory)!r} {what}; expected a CT series "
            "(DICOM files with pixel data) or pass a NIfTI file"
        )

    if series_uid is not None:
        if series_uid not in by_series:
            raise LoadError(
                f"series_uid {series_uid!r} not found in {str(directory)!r}; "
                f"available series:\n{_describe_series(by_series)}"
            )
        members = by_series[series_uid]
    elif len(by_series) > 1:
        raise LoadError(
            f"DICOM directory {str(directory)!r} holds {len(by_series)} series; choose one with "
            f"load_volume(path, series_uid=...) (CLI: --series-uid):\n{_describe_series(by_series)}"
        )
    else:
        members = next(iter(by_series.values()))

    slices = [_parse_slice(file, ds) for file, ds in members]
    _check_consistent(slices, directory)
    slices, slice_step = _sort_and_check_spacing(slices, directory)
    data = np.stack([_slice_hu(s) for s in slices], axis=-1)  # [columns, rows, slices]

    first = slices[0]
    row_cosine = first.orientation[:3]  # direction of increasing column index
    column_cosine = first.orientation[3:]  # direction of increasing row index
    row_spacing, column_spacing = first.pixel_spacing
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosine * column_spacing
    affine_lps[:3, 1] = column_cosine * row_spacing
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = first.position
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    return _make_volume(data, affine_ras, source=directory)


def _describe_series(by_series: dict[str, list[tuple[Path, Any]]]) -> str:
    lines = []
    for uid, members in sorted(by_series.items()):
        ds = members[0][1]
        description = str(ds.get("SeriesDescription", "")).strip()
        modality = str(ds.get("Modality", "")).strip()
        extra = ", ".join(x for x in (modality, repr(description) if description else "") if x)
        lines.append(f"  {uid}: {len(members)} image(s)" + (f" ({extra})" if extra else ""))
    return "\n".join(lines)


def _require(ds, keyword: str, file: Path):
    if keyword not in ds or ds.get(keyword) in (None, ""):
        raise LoadError(
            f"DICOM file {str(file)!r} lacks {keyword}, needed to place the slice "
            "in space (is this a CT image?)"
        )
    return ds.get(keyword)


def _parse_slice(file: Path, ds) -> _Slice:
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise LoadError(
            f"DICOM file {str(file)!r} is a multi-frame image ({n_frames} frames); "
            "only single-frame CT series are supported: convert it to NIfTI first "
            "(e.g. with dcm2niix)"
        )
    orientation = np.asarray([float(v) for v in _require(ds, "ImageOrientationPatient", file)])
    position = np.asarray([float(v) for v in _require(ds, "ImagePositionPatient", file)])
    pixel_spacing = np.asarray([float(v) for v in _require(ds, "PixelSpacing", file)])
    if orientation.shape != (6,) or position.shape != (3,) or pixel_spacing.shape != (2,):
        raise LoadError(
            f"DICOM file {str(file)!r} has malformed ImageOrientationPatient/"
            "ImagePositionPatient/PixelSpacing"
        )
    if np.any(pixel_spacing <= 0):
        raise LoadError(f"DICOM file {str(file)!r} has non-positive PixelSpacing {pixel_spacing}")
    return _Slice(
        file,
        ds,
        orientation,
        position,
        pixel_spacing,
        int(_require(ds, "Rows", file)),
        int(_require(ds, "Columns", file)),
    )


def _check_consistent(slices: Sequence[_Slice], directory: Path) -> None:
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise LoadError(
                f"DICOM series in {str(directory)!r} mixes slice orientations: "
                f"{first.path.name} has ImageOrientationPatient {first.orientation.round(5).tolist()}, "
                f"{s.path.name} has {s.orientation.round(5).tolist()}; a volume needs parallel slices"
            )
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise LoadError(
                f"DICOM series in {str(directory)!r} mixes image sizes: {first.path.name} is "
                f"{first.rows}x{first.columns} (rows x columns), {s.path.name} is "
                f"{s.rows}x{s.columns}"
            )
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=PIXEL_SPACING_TOL_MM):
            raise LoadError(
                f"DICOM series in {str(directory)!r} mixes pixel spacings: {first.path.name} has "
                f"PixelSpacing {first.pixel_spacing.tolist()}, {s.path.name} has "
                f"{s.pixel_spacing.tolist()}"
            )
    row_cosine, column_cosine = first.orientation[:3], first.orientation[3:]
    if (
        abs(np.linalg.norm(row_cosine) - 1) > 1e-3
        or abs(np.linalg.norm(column_cosine) - 1) > 1e-3
        or abs(row_cosine @ column_cosine) > 1e-3
    ):
        raise LoadError(
            f"DICOM series in {str(directory)!r} has an invalid ImageOrientationPatient "
            f"{first.orientation.tolist()} (direction cosines must be orthonormal)"
        )


def _sort_and_check_spacing(slices: list[_Slice], directory: Path) -> tuple[list[_Slice], np.ndarray]:
    """Sorts slices along the normal and returns them with the per-slice step vector (LPS mm)."""
    first = slices[0]
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    distance = np.array([s.position @ normal for s in slices])
    order = np.argsort(distance, kind="stable")
    slices = [slices[i] for i in order]
    distance = distance[order]
    if len(slices) == 1:
        thickness = (
            float(first.dataset.get("SpacingBetweenSlices", 0) or 0)
            or float(first.dataset.get("SliceThickness", 0) or 0)
            or 1.0
        )
        return slices, normal * abs(thickness)

    gaps = np.diff(distance)
    median = float(np.median(gaps))
    duplicate = np.flatnonzero(gaps < max(SLICE_SPACING_ABS_TOL_MM, 1e-3 * max(median, 0)))
    if duplicate.size:
        i = int(duplicate[0])
        raise LoadError(
            f"DICOM series in {str(directory)!r} has two slices at the same position "
            f"{distance[i]:.3f} mm along the normal ({slices[i].path.name}, {slices[i + 1].path.name}); "
            "remove duplicates or choose one series"
        )
    tolerance = max(SLICE_SPACING_ABS_TOL_MM, SLICE_SPACING_REL_TOL * median)
    bad = np.flatnonzero(np.abs(gaps - median) > tolerance)
    if bad.size:
        ratios = gaps[bad] / median
        if np.all(np.abs(ratios - np.round(ratios)) * median <= tolerance) and np.all(ratios > 1.5):
            where = ", ".join(
                f"between {distance[i]:.3f} and {distance[i + 1]:.3f} mm "
                f"({int(round(gaps[i] / median)) - 1} slice(s))"
                for i in bad
            )
            raise LoadError(
                f"DICOM series in {str(directory)!r} is missing slice(s) (regular spacing "
                f"{median:.4g} mm): gap {where}"
            )
        found = sorted({round(float(g), 4) for g in gaps})
        raise LoadError(
            f"DICOM series in {str(directory)!r} has non-uniform slice spacing: spacings found "
            f"{found} mm (median {median:.4g} mm, tolerance {tolerance:.3g} mm); resample the series "
            "to uniform spacing (e.g. convert to NIfTI with resampling) before loading"
        )
    step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    return slices, step


def _slice_hu(s: _Slice) -> np.ndarray:
    try:
        pixels = np.asarray(s.dataset.pixel_array)
    except Exception as exc:
        syntax = getattr(getattr(s.dataset, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise LoadError(
            f"cannot decode pixel data of DICOM file {str(s.path)!r} (transfer syntax {syntax}): "
            f"{type(exc).__name__}: {exc}; compressed series may need pylibjpeg/gdcm installed"
        ) from exc
    if pixels.shape != (s.rows, s.columns):
        raise LoadError(
            f"DICOM file {str(s.path)!r} pixel data has shape {pixels.shape}, expected "
            f"(Rows, Columns) = ({s.rows}, {s.columns}) (colour or multi-frame image?)"
        )
    slope = float(s.dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(s.dataset.get("RescaleIntercept", 0.0) or 0.0)
    hu = pixels.astype(np.float64) * slope + intercept
    return hu.astype(np.float32).T  # [rows, columns] -> [column index, row index]
