"""Tests of jaxdrr.io: NIfTI/DICOM loading (geometry, sorting, errors), volume info, image writers."""

from __future__ import annotations

import gzip
import os
import random

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from jaxdrr import io
from jaxdrr.errors import LoadError, VolumeError
from jaxdrr.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------------------
# Synthetic DICOM writing
# --------------------------------------------------------------------------------------------------


def _ds(values, digits=8):
    """Values rounded so that their DICOM DS strings (<= 16 chars) are exact."""
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def write_ct_slice(
    path,
    stored,
    *,
    position,
    orientation,
    pixel_spacing,
    slope=1.0,
    intercept=0.0,
    series_uid="1.2.3.4.5",
    instance=1,
    rows=None,
    columns=None,
    description="synthetic",
):
    """Writes one CT slice; ``stored`` is [Rows, Columns] int16 (the raw pixel values)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    stored = np.ascontiguousarray(stored, dtype="<i2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = _ds(position)
    ds.ImageOrientationPatient = _ds(orientation)
    ds.PixelSpacing = _ds(pixel_spacing)
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = stored.shape if rows is None else (rows, columns)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_series(
    directory,
    stored_ijk,
    *,
    origin,
    orientation,
    pixel_spacing,
    slice_step,
    slope=1.0,
    intercept=0.0,
    series_uid="1.2.3.4.5",
    shuffle=False,
    positions=None,
    prefix="IM",
):
    """Writes stored_ijk [columns, rows, slices] as a series; returns the slice positions (LPS)."""
    directory.mkdir(parents=True, exist_ok=True)
    n_slices = stored_ijk.shape[2]
    if positions is None:
        positions = [np.asarray(origin) + k * np.asarray(slice_step) for k in range(n_slices)]
    names = [f"{prefix}{k:04d}.dcm" for k in range(n_slices)]
    if shuffle:  # file-name order differs from spatial order
        random.Random(1).shuffle(names)
    for k in range(n_slices):
        write_ct_slice(
            directory / names[k],
            stored_ijk[:, :, k].T,
            position=positions[k],
            orientation=orientation,
            pixel_spacing=pixel_spacing,
            slope=slope,
            intercept=intercept,
            series_uid=series_uid,
            instance=k + 1,
        )
    return positions


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def simple_series(directory, n_slices=4, shape=(6, 5), **kwargs):
    """An axial series; returns (stored [columns, rows, slices], kwargs used)."""
    rng = np.random.default_rng(0)
    stored = rng.integers(-1000, 2000, size=(*shape, n_slices)).astype(np.int16)
    params = dict(
        origin=(-10.0, -20.0, 30.0),
        orientation=AXIAL,
        pixel_spacing=(0.8, 0.6),
        slice_step=(0.0, 0.0, 2.0),
        slope=1.0,
        intercept=0.0,
    )
    params.update(kwargs)
    write_series(directory, stored, **params)
    return stored, params


def voxel_world(volume: Volume, ijk) -> np.ndarray:
    return (volume.affine @ np.append(np.asarray(ijk, dtype=np.float64), 1.0))[:3]


# --------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------


def test_nifti_round_trip_with_scaling(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.array([[-0.7, 0, 0, 10], [0, 0.8, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    img = nib.Nifti1Image(raw, affine)
    img.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)

    volume = io.load_volume(path)
    assert volume.kind == "hu"
    assert volume.shape == (4, 5, 6)
    assert volume.data.dtype == np.float32
    np.testing.assert_allclose(np.asarray(volume.data), raw * 2.0 - 1024.0)
    np.testing.assert_allclose(volume.affine, affine)


def test_nifti_uncompressed_and_4d_singleton(tmp_path):
    data = np.random.default_rng(1).normal(size=(3, 4, 5, 1)).astype(np.float32)
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    volume = io.load_volume(str(path))
    assert volume.shape == (3, 4, 5)
    np.testing.assert_allclose(np.asarray(volume.data), data[..., 0])


def test_nifti_with_several_volumes_is_rejected(tmp_path):
    path = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, 2), np.float32), np.eye(4)), path)
    with pytest.raises(LoadError, match=r"fmri\.nii\.gz.*single 3-D volume"):
        io.load_volume(path)


def test_nifti_non_finite_is_volume_error(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 2, 0] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(VolumeError, match=r"nan\.nii\.gz.*non-finite.*\(1, 2, 0\)"):
        io.load_volume(path)


def test_truncated_nifti_gz_is_load_error(tmp_path):
    path = tmp_path / "cut.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)),
        path,
    )
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(LoadError, match=r"cannot read NIfTI file .*cut\.nii\.gz"):
        io.load_volume(path)


def test_garbage_nifti_is_load_error(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"this is not a nifti file" * 30)
    with pytest.raises(LoadError, match=r"junk\.nii"):
        io.load_volume(path)
    gz = tmp_path / "junk.nii.gz"
    gz.write_bytes(gzip.compress(b"not nifti either" * 40))
    with pytest.raises(LoadError, match=r"junk\.nii\.gz"):
        io.load_volume(gz)


def test_missing_path_is_file_not_found(tmp_path):
    missing = tmp_path / "nowhere" / "ct.nii.gz"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*ct\.nii\.gz"):
        io.load_volume(missing)


def test_unknown_file_is_load_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n" * 100)
    with pytest.raises(LoadError, match=r"notes\.txt.*not a NIfTI file.*not a readable DICOM"):
        io.load_volume(path)


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------


def test_dicom_axial_series_values_and_affine(tmp_path):
    stored, p = simple_series(tmp_path / "series", n_slices=4, slope=2.0, intercept=-1024.0)
    volume = io.load_volume(tmp_path / "series")
    assert volume.shape == stored.shape  # [columns, rows, slices]
    np.testing.assert_allclose(np.asarray(volume.data), stored * 2.0 - 1024.0)
    # PixelSpacing = (row spacing 0.8, column spacing 0.6): the column index I steps 0.6 mm.
    expected_lps = np.array([[0.6, 0, 0, -10], [0, 0.8, 0, -20], [0, 0, 2.0, 30], [0, 0, 0, 1]])
    np.testing.assert_allclose(volume.affine, LPS_TO_RAS @ expected_lps, atol=1e-9)
    np.testing.assert_allclose(volume.spacing, [0.6, 0.8, 2.0])
    assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")


def test_dicom_shuffled_files_are_sorted_along_the_normal(tmp_path):
    stored, _ = simple_series(tmp_path / "ordered", n_slices=6)
    simple_series(tmp_path / "shuffled" / "nested", n_slices=6, shuffle=True)
    (tmp_path / "shuffled" / "README.txt").write_text("other files are ignored")
    ordered = io.load_volume(tmp_path / "ordered")
    shuffled = io.load_volume(tmp_path / "shuffled")
    np.testing.assert_array_equal(np.asarray(shuffled.data), stored)
    np.testing.assert_allclose(shuffled.affine, ordered.affine)


def test_dicom_descending_positions_still_ascend_along_the_normal(tmp_path):
    stored, _ = simple_series(
        tmp_path / "s", n_slices=4, origin=(0.0, 0.0, 50.0), slice_step=(0.0, 0.0, -3.0)
    )
    volume = io.load_volume(tmp_path / "s")
    # Slice written last (z = 41) comes first.
    np.testing.assert_array_equal(np.asarray(volume.data), stored[:, :, ::-1])
    assert volume.affine[2, 2] == pytest.approx(3.0)
    assert volume.affine[2, 3] == pytest.approx(41.0)


def test_dicom_oblique_orientation_places_voxels_per_the_standard(tmp_path):
    """Voxel (row r, column c, slice k) must sit at S_k + F_r * dc * c + F_c * dr * r (LPS)."""
    angle = np.deg2rad(30.0)
    row_cosine = np.array(_ds([np.cos(angle), np.sin(angle), 0.0]))
    # A column cosine tilted out of the axial plane: rotate (-sin, cos, 0) about row_cosine.
    col_cosine = np.array([-np.sin(angle), np.cos(angle), 0.0])
    tilt = np.deg2rad(20.0)
    col_cosine = np.cos(tilt) * col_cosine + np.sin(tilt) * np.cross(row_cosine, col_cosine)
    col_cosine = np.array(_ds(col_cosine))
    normal = np.cross(row_cosine, col_cosine)
    row_spacing, col_spacing, slice_spacing = 0.9, 0.5, 1.5
    origin = np.array([12.5, -40.25, 7.0])
    stored = np.zeros((7, 5, 4), np.int16)  # 7 columns, 5 rows, 4 slices
    marker_col, marker_row, marker_slice = 5, 3, 2
    stored[marker_col, marker_row, marker_slice] = 1000
    write_series(
        tmp_path / "oblique",
        stored,
        origin=origin,
        orientation=np.concatenate([row_cosine, col_cosine]),
        pixel_spacing=(row_spacing, col_spacing),
        slice_step=normal * slice_spacing,
        shuffle=True,
    )
    volume = io.load_volume(tmp_path / "oblique")
    data = np.asarray(volume.data)
    index = np.unravel_index(np.argmax(data), data.shape)
    assert index == (marker_col, marker_row, marker_slice)
    slice_origin = origin + marker_slice * slice_spacing * normal
    expected_lps = (
        slice_origin + row_cosine * col_spacing * marker_col + col_cosine * row_spacing * marker_row
    )
    expected_ras = expected_lps * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(voxel_world(volume, index), expected_ras, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, [col_spacing, row_spacing, slice_spacing], atol=1e-5)


def hu_field(world_ras):
    """A smooth asymmetric HU field sampled at RAS points [..., 3], on the DICOM quantisation grid."""
    x, y, z = np.moveaxis(np.asarray(world_ras), -1, 0)
    stored = np.round(200 * np.sin(x / 7.0) + 3 * y - 5 * z + 0.1 * x * z)
    return stored  # stored values; HU = stored * 0.5 - 1000


def test_nifti_and_dicom_of_the_same_volume_sample_the_same_world(tmp_path):
    # DICOM geometry: oblique (rotated about z by 15 deg), anisotropic pixels.
    angle = np.deg2rad(15.0)
    row_cosine = np.array(_ds([np.cos(angle), np.sin(angle), 0.0]))
    col_cosine = np.array(_ds([-np.sin(angle), np.cos(angle), 0.0]))
    normal = np.cross(row_cosine, col_cosine)
    dr, dc, dz = 1.25, 0.75, 2.0
    origin = np.array([30.0, -12.0, -8.0])
    n_cols, n_rows, n_slices = 8, 6, 5
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosine * dc
    affine_lps[:3, 1] = col_cosine * dr
    affine_lps[:3, 2] = normal * dz
    affine_lps[:3, 3] = origin
    affine_ras = LPS_TO_RAS @ affine_lps
    ijk = np.stack(
        np.meshgrid(np.arange(n_cols), np.arange(n_rows), np.arange(n_slices), indexing="ij"), axis=-1
    ).astype(np.float64)
    world = ijk @ affine_ras[:3, :3].T + affine_ras[:3, 3]
    stored = hu_field(world).astype(np.int16)
    write_series(
        tmp_path / "dicom",
        stored,
        origin=origin,
        orientation=np.concatenate([row_cosine, col_cosine]),
        pixel_spacing=(dr, dc),
        slice_step=normal * dz,
        slope=0.5,
        intercept=-1000.0,
        shuffle=True,
    )
    # NIfTI as a converter might write it: the row axis flipped (dcm2niix style), float HU.
    flip_rows = np.eye(4)
    flip_rows[1, 1] = -1.0
    flip_rows[1, 3] = n_rows - 1
    nifti_affine = affine_ras @ flip_rows
    nib.save(
        nib.Nifti1Image((stored[:, ::-1, :] * 0.5 - 1000.0).astype(np.float32), nifti_affine),
        tmp_path / "same.nii.gz",
    )

    from_dicom = io.load_volume(tmp_path / "dicom")
    from_nifti = io.load_volume(tmp_path / "same.nii.gz")
    assert from_dicom.shape == from_nifti.shape == (n_cols, n_rows, n_slices)
    # Map every DICOM voxel to world and into NIfTI indices: must land on the same sample.
    world_dicom = ijk @ from_dicom.affine[:3, :3].T + from_dicom.affine[:3, 3]
    nifti_ijk = (world_dicom - from_nifti.affine[:3, 3]) @ np.linalg.inv(from_nifti.affine[:3, :3]).T
    np.testing.assert_allclose(nifti_ijk, np.round(nifti_ijk), atol=1e-4)
    nifti_index = tuple(np.round(nifti_ijk).astype(int).reshape(-1, 3).T)
    np.testing.assert_allclose(
        np.asarray(from_nifti.data)[nifti_index], np.asarray(from_dicom.data).reshape(-1)
    )
    # And both equal the field at the true world positions.
    np.testing.assert_allclose(np.asarray(from_dicom.data), hu_field(world_dicom) * 0.5 - 1000.0)
    np.testing.assert_allclose(from_dicom.affine, affine_ras, atol=1e-5)


def test_single_dicom_file_loads_its_series(tmp_path):
    stored, _ = simple_series(tmp_path / "s", n_slices=3)
    volume = io.load_volume(tmp_path / "s" / "IM0001.dcm")
    np.testing.assert_array_equal(np.asarray(volume.data), stored)


def test_single_slice_series_uses_slice_thickness(tmp_path):
    stored, _ = simple_series(tmp_path / "s", n_slices=1)
    volume = io.load_volume(tmp_path / "s")
    assert volume.shape == (6, 5, 1)
    np.testing.assert_allclose(volume.spacing, [0.6, 0.8, 1.0])


def test_empty_directory_is_load_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match=r"empty.*is empty"):
        io.load_volume(tmp_path / "empty")


def test_directory_without_dicom_images_is_load_error(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "readme.txt").write_text("no images here")
    (d / "data.bin").write_bytes(os.urandom(300))
    with pytest.raises(LoadError, match=r"2 file\(s\) but none is a DICOM image"):
        io.load_volume(d)


def test_several_series_require_a_choice(tmp_path):
    d = tmp_path / "mixed"
    first, _ = simple_series(d, n_slices=3, series_uid="1.2.826.0.1.111")
    second, _ = simple_series(d, n_slices=4, series_uid="1.2.826.0.1.222", prefix="B")
    with pytest.raises(
        LoadError,
        match=r"(?s)2 series.*series_uid.*1\.2\.826\.0\.1\.111: 3 image.*"
        r"1\.2\.826\.0\.1\.222: 4 image",
    ):
        io.load_volume(d)
    np.testing.assert_array_equal(np.asarray(io.load_volume(d, series_uid="1.2.826.0.1.111").data), first)
    np.testing.assert_array_equal(np.asarray(io.load_volume(d, series_uid="1.2.826.0.1.222").data), second)
    with pytest.raises(LoadError, match=r"(?s)series_uid '9\.9' not found.*1\.2\.826\.0\.1\.111"):
        io.load_volume(d, series_uid="9.9")


def test_mixed_orientation_is_load_error(tmp_path):
    d = tmp_path / "s"
    simple_series(d, n_slices=3)
    write_ct_slice(
        d / "IM0001.dcm",
        np.zeros((5, 6), np.int16),
        position=(-10, -20, 32),
        orientation=(0, 1, 0, 0, 0, -1),
        pixel_spacing=(0.8, 0.6),
    )
    with pytest.raises(LoadError, match=r"mixes slice orientations.*IM0001\.dcm"):
        io.load_volume(d)


def test_mixed_image_size_is_load_error(tmp_path):
    d = tmp_path / "s"
    simple_series(d, n_slices=3)
    write_ct_slice(
        d / "IM0001.dcm",
        np.zeros((4, 6), np.int16),
        position=(-10, -20, 32),
        orientation=AXIAL,
        pixel_spacing=(0.8, 0.6),
    )
    with pytest.raises(LoadError, match=r"mixes image sizes.*5x6.*4x6"):
        io.load_volume(d)


def test_mixed_pixel_spacing_is_load_error(tmp_path):
    d = tmp_path / "s"
    simple_series(d, n_slices=3)
    write_ct_slice(
        d / "IM0001.dcm",
        np.zeros((5, 6), np.int16),
        position=(-10, -20, 32),
        orientation=AXIAL,
        pixel_spacing=(0.9, 0.6),
    )
    with pytest.raises(LoadError, match=r"mixes pixel spacings.*\[0\.8, 0\.6\].*\[0\.9, 0\.6\]"):
        io.load_volume(d)


def test_non_uniform_slice_spacing_is_load_error(tmp_path):
    stored = np.zeros((6, 5, 4), np.int16)
    positions = [(0, 0, z) for z in (0.0, 1.0, 2.5, 3.5)]
    write_series(
        tmp_path / "s",
        stored,
        origin=None,
        orientation=AXIAL,
        pixel_spacing=(1, 1),
        slice_step=None,
        positions=positions,
    )
    with pytest.raises(LoadError, match=r"non-uniform slice spacing: spacings found \[1\.0, 1\.5\]"):
        io.load_volume(tmp_path / "s")


def test_small_spacing_jitter_is_accepted(tmp_path):
    stored = np.zeros((6, 5, 4), np.int16)
    positions = [(0, 0, z) for z in (0.0, 2.0, 4.005, 6.0)]
    write_series(
        tmp_path / "s",
        stored,
        origin=None,
        orientation=AXIAL,
        pixel_spacing=(1, 1),
        slice_step=None,
        positions=positions,
    )
    assert io.load_volume(tmp_path / "s").spacing[2] == pytest.approx(2.0)


def test_missing_slice_is_load_error(tmp_path):
    stored = np.zeros((6, 5, 5), np.int16)
    positions = [(0, 0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)]
    write_series(
        tmp_path / "s",
        stored,
        origin=None,
        orientation=AXIAL,
        pixel_spacing=(1, 1),
        slice_step=None,
        positions=positions,
    )
    with pytest.raises(LoadError, match=r"missing slice\(s\).*between 4\.000 and 8\.000 mm \(1 slice"):
        io.load_volume(tmp_path / "s")


def test_duplicate_slice_is_load_error(tmp_path):
    stored = np.zeros((6, 5, 3), np.int16)
    positions = [(0, 0, z) for z in (0.0, 2.0, 2.0)]
    write_series(
        tmp_path / "s",
        stored,
        origin=None,
        orientation=AXIAL,
        pixel_spacing=(1, 1),
        slice_step=None,
        positions=positions,
    )
    with pytest.raises(LoadError, match=r"two slices at the same position"):
        io.load_volume(tmp_path / "s")


# --------------------------------------------------------------------------------------------------
# Info
# --------------------------------------------------------------------------------------------------


def test_volume_info_and_format():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 1000
    volume = Volume.create(data, affine)
    info = io.volume_info(volume)
    assert info["shape"] == (2, 3, 4)
    assert info["spacing_mm"] == (2.0, 3.0, 4.0)
    assert info["min"] == -1000 and info["max"] == -977
    assert info["mean"] == pytest.approx(-988.5)
    assert info["orientation"] == ("R", "A", "S")
    np.testing.assert_allclose(info["world_min_mm"], [-1.0, -1.5, -2.0])
    np.testing.assert_allclose(info["world_max_mm"], [3.0, 7.5, 14.0])
    text = io.format_volume_info(volume, name="ct.nii.gz")
    assert text.startswith("ct.nii.gz")
    assert "(2, 3, 4) voxels" in text and "RAS" in text and "HU" in text


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------


def ramp_image():
    return np.linspace(-3.0, 5.0, 12 * 10).reshape(12, 10).astype(np.float32)


def only_file(directory, name):
    assert sorted(p.name for p in directory.iterdir()) == [name], "temporary file left behind"


def test_png_16_bit_round_trip_with_window(tmp_path):
    image = ramp_image()
    path = io.save_image(tmp_path / "drr.png", image, bit_depth=16, window=(-1.0, 3.0))
    only_file(tmp_path, "drr.png")
    read = np.asarray(Image.open(path)).astype(np.int64)
    expected = np.round(np.clip((image.astype(np.float64) + 1.0) / 4.0, 0, 1) * 65535)
    assert read.shape == image.shape
    np.testing.assert_array_equal(read, expected)


def test_png_default_maps_min_max_and_8_bit(tmp_path):
    image = ramp_image()
    io.save_image(tmp_path / "a.png", image)  # default 16-bit, min..max
    read = np.asarray(Image.open(tmp_path / "a.png")).astype(np.int64)
    assert read.min() == 0 and read.max() == 65535
    io.save_image(tmp_path / "b.png", image, bit_depth=8)
    read8 = np.asarray(Image.open(tmp_path / "b.png"))
    assert read8.dtype == np.uint8 and read8.min() == 0 and read8.max() == 255
    io.save_image(tmp_path / "c.png", np.full((4, 4), 7.0))  # constant: zeros, no division error
    assert np.asarray(Image.open(tmp_path / "c.png")).max() == 0


def test_tiff_float_and_16_bit_round_trip(tmp_path):
    import tifffile

    image = ramp_image()
    io.save_image(tmp_path / "drr.tif", image)  # default float32, raw values
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "drr.tif"), image)
    io.save_image(tmp_path / "drr16.tiff", image, bit_depth=16, window=(-3.0, 5.0))
    read = tifffile.imread(tmp_path / "drr16.tiff")
    assert read.dtype == np.uint16 and read[0, 0] == 0 and read[-1, -1] == 65535


def test_npy_round_trip(tmp_path):
    image = ramp_image()
    io.save_image(tmp_path / "drr.npy", image)
    np.testing.assert_array_equal(np.load(tmp_path / "drr.npy"), image)
    only_file(tmp_path, "drr.npy")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "drr.npy").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_save_image_rejects_bad_input(tmp_path):
    image = ramp_image()
    with pytest.raises(ValueError, match=r"\.jpg.*use \.png, \.tif/\.tiff or \.npy"):
        io.save_image(tmp_path / "x.jpg", image)
    with pytest.raises(ValueError, match=r"bit_depth 'float' is not supported for \.png"):
        io.save_image(tmp_path / "x.png", image, bit_depth="float")
    with pytest.raises(ValueError, match=r"2-D image"):
        io.save_image(tmp_path / "x.png", image[None])
    with pytest.raises(ValueError, match=r"window must be \(low, high\)"):
        io.save_image(tmp_path / "x.png", image, window=(1.0, 1.0))
    bad = image.copy()
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match=r"1 non-finite value.*\(3, 4\)"):
        io.save_image(tmp_path / "x.tif", bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import tifffile

    path = tmp_path / "drr.tif"
    io.save_image(path, np.zeros((4, 4), np.float32))
    before = path.read_bytes()

    def broken_write(target, data, **kwargs):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken_write)
    with pytest.raises(OSError, match="disk full"):
        io.save_image(path, np.ones((4, 4), np.float32))
    assert path.read_bytes() == before
    only_file(tmp_path, "drr.tif")


def test_npz_bundle_round_trip(tmp_path):
    image = ramp_image()
    P = np.arange(12, dtype=np.float64).reshape(3, 4)
    K = np.array([[1000.0, 0, 5], [0, 1000.0, 6], [0, 0, 1]])
    config = {"spectrum": "90kV", "n_photons": 1e5, "materials": ["bone", "soft tissue"]}
    path = io.save_npz(
        tmp_path / "render.npz", image, P, K=K, pose=np.eye(4), config=config, volume_name="ct.nii.gz", seed=3
    )
    only_file(tmp_path, "render.npz")
    bundle = io.load_npz(path)
    np.testing.assert_array_equal(bundle["image"], image)
    np.testing.assert_array_equal(bundle["P"], P)
    assert bundle["height"] == 12 and bundle["width"] == 10
    np.testing.assert_array_equal(bundle["K"], K)
    np.testing.assert_array_equal(bundle["pose"], np.eye(4))
    assert bundle["config"] == config
    assert bundle["volume_name"] == "ct.nii.gz"
    assert int(bundle["seed"]) == 3


def test_npz_rejects_bad_input(tmp_path):
    image = ramp_image()
    with pytest.raises(ValueError, match=r"P must be a 3x4"):
        io.save_npz(tmp_path / "a.npz", image, np.eye(4))
    bad = image.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"image has 1 non-finite"):
        io.save_npz(tmp_path / "a.npz", bad, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"metadata key 'height' is reserved"):
        io.save_npz(tmp_path / "a.npz", image, np.zeros((3, 4)), height=3)
    assert list(tmp_path.iterdir()) == []
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(LoadError, match=r"not a jaxdrr render bundle: missing \['image', 'P'"):
        io.load_npz(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match=r"nothere\.npz"):
        io.load_npz(tmp_path / "nothere.npz")
