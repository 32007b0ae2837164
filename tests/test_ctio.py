"""ctagrg.data.ctio / dicom: reading NIfTI, NRRD/MHA, DICOM; HU scaling; geometry; bad input."""

from __future__ import annotations

import gzip
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ct_fixtures import LPS_TO_RAS, dicom_affine, phantom_hu, write_dicom_series, write_itk, write_nifti

from ctagrg.data.ctio import CTMetadata, CTReadError, CTReadWarning, CTVolume, load_ct

LPS_AFFINE = np.diag([-0.8, -0.7, 2.5, 1.0])


def test_nifti_gz_roundtrip_keeps_hu_affine_and_spacing(tmp_path: Path) -> None:
    hu = phantom_hu()
    aff = LPS_AFFINE.copy()
    aff[:3, 3] = [10, 20, -30]
    vol = load_ct(write_nifti(tmp_path / "a.nii.gz", hu, aff))
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))
    np.testing.assert_allclose(vol.affine, aff)
    assert vol.spacing == pytest.approx((0.8, 0.7, 2.5))
    assert vol.axcodes == ("L", "P", "S")
    assert vol.hu.dtype == np.float32


def test_nifti_scl_slope_inter_applied_once(tmp_path: Path) -> None:
    hu = phantom_hu()
    stored = ((hu.astype(np.int32) + 1024) // 2).astype(np.int16)  # HU = 2 * stored - 1024
    vol = load_ct(write_nifti(tmp_path / "s.nii", stored, LPS_AFFINE, slope=2.0, inter=-1024.0))
    assert (vol.slope, vol.intercept) == (2.0, -1024.0)
    np.testing.assert_array_equal(vol.hu, stored.astype(np.float32) * 2 - 1024)


def test_itk_formats_give_ras_affine(tmp_path: Path) -> None:
    import SimpleITK as sitk

    hu = phantom_hu((12, 14, 16))  # (k, j, i)
    direction = (0, 1, 0, 0, 0, -1, 1, 0, 0)  # an oblique-free but permuted LPS direction
    for name in ("a.nrrd", "a.mha"):
        path = write_itk(tmp_path / name, hu, (0.9, 1.1, 2.0), direction, (5, -6, 7))
        vol = load_ct(path)
        img = sitk.ReadImage(str(path))
        for ijk in [(0, 0, 0), (3, 5, 7), (15, 13, 11)]:
            lps = np.asarray(img.TransformIndexToPhysicalPoint(ijk))
            ras = vol.affine @ np.array([ijk[2], ijk[1], ijk[0], 1.0])  # array axes are (k, j, i)
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)
        np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))


def test_dicom_folder_zip_and_shuffled_files(tmp_path: Path) -> None:
    hu = phantom_hu((10, 12, 14))
    spacing, origin = (2.5, 0.8, 0.7), (-100.0, -90.0, -50.0)
    write_dicom_series(tmp_path / "series", hu, spacing, origin)
    vol = load_ct(tmp_path / "series")
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))
    np.testing.assert_allclose(vol.affine, dicom_affine(hu.shape[1:], spacing, origin), atol=1e-6)
    assert (vol.slope, vol.intercept) == (1.0, -1024.0)
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
        for f in sorted((tmp_path / "series").iterdir()):
            zf.write(f, f"dicom/{f.name}")
        zf.writestr("README.txt", "not dicom")
    zvol = load_ct(tmp_path / "series.zip")
    np.testing.assert_array_equal(zvol.hu, vol.hu)


def test_dicom_per_slice_rescale(tmp_path: Path) -> None:
    hu = phantom_hu((6, 8, 8))
    write_dicom_series(tmp_path / "s", hu, per_slice_intercepts=True)
    np.testing.assert_array_equal(load_ct(tmp_path / "s").hu, hu.astype(np.float32))


def test_dicom_several_series_uses_largest_and_warns(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "mix", phantom_hu((8, 8, 8)), series_uid="1.2.826.0.1.1")
    write_dicom_series(tmp_path / "mix" / "scout", phantom_hu((3, 8, 8)), series_uid="1.2.826.0.1.2")
    with pytest.warns(CTReadWarning, match=r"2 DICOM series found: 1\.2\.826\.0\.1\.1 \(8 slices\); "
                                           r"1\.2\.826\.0\.1\.2 \(3 slices\)") as rec:
        vol = load_ct(tmp_path / "mix")
    assert str(tmp_path / "mix") in str(rec[0].message)
    assert vol.shape == (8, 8, 8)


def test_ct_rate_metadata_rescale_applied_to_raw_values(tmp_path: Path) -> None:
    hu = phantom_hu()
    raw = (hu + 1024).astype(np.int16)  # what the original CT-RATE release stores: no negative values
    path = write_nifti(tmp_path / "raw.nii.gz", raw, np.eye(4))
    meta = {"XYSpacing": "[0.75, 0.6]", "ZSpacing": "1.5", "RescaleSlope": 1, "RescaleIntercept": -1024}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # applying the rescale here is expected: no warning
        vol = load_ct(path, meta)
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))
    assert vol.spacing == pytest.approx((0.75, 0.6, 1.5))


def test_ct_rate_metadata_not_applied_twice_to_hu(tmp_path: Path) -> None:
    hu = phantom_hu()  # the corrected release: already HU, metadata still says -1024
    path = write_nifti(tmp_path / "fixed.nii.gz", hu, np.eye(4))
    with pytest.warns(CTReadWarning, match="already HU.*not rescaling again"):
        vol = load_ct(path, CTMetadata(slope=1.0, intercept=-1024.0))
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))


def test_metadata_parsing() -> None:
    meta = CTMetadata.from_row({"XYSpacing": "[0.341796875, 0.341796875]", "ZSpacing": 1.0,
                                "RescaleSlope": "1", "RescaleIntercept": "-1024.0"})
    assert meta == CTMetadata(1.0, -1024.0, (0.341796875, 0.341796875), 1.0)
    with pytest.raises(ValueError, match="XYSpacing"):
        CTMetadata.from_row({"XYSpacing": "0.3 mm"})


def _write_zero_pixdim(path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(phantom_hu(), None)  # no sform/qform: the affine comes from pixdim
    img.header["pixdim"][1:4] = 0.0
    nib.save(img, str(path))


@pytest.mark.filterwarnings("ignore::ctagrg.data.ctio.CTReadWarning")
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(gzip.compress(b"\x5c\x02" + b"\0" * 500)), "not a NIfTI file"),
        (lambda p: p.write_bytes(write_nifti(p, phantom_hu(), np.eye(4)).read_bytes()[:3000]),
         "truncated gzip data"),
        (lambda p: p.write_bytes(gzip.compress(gzip.decompress(write_nifti(p, phantom_hu(), np.eye(4)).read_bytes())
                                               [:2000])),
         "truncated: the header and its voxels need 15,712 bytes, the file decompresses to 2,000"),
        (lambda p: write_nifti(p, np.zeros((20, 20), np.int16) - 1000, np.eye(4)), "expected a 3D volume"),
        (lambda p: write_nifti(p, np.zeros((8, 8, 6, 3), np.int16) - 1000, np.eye(4)), "expected a 3D volume"),
        (lambda p: write_nifti(p, np.full((8, 8, 6), 40, np.int16), np.eye(4)), "no value below -500"),
        (lambda p: write_nifti(p, np.where(np.arange(384).reshape(8, 8, 6) == 7, np.nan, -1000.0).astype(np.float32),
                               np.eye(4)), "1 NaN voxels"),
        (lambda p: _write_zero_pixdim(p), "missing or invalid voxel spacing"),
    ],
    ids=["garbage", "truncated-gz", "truncated-data", "2d", "4d", "not-ct", "nan", "zero-spacing"],
)
def test_bad_nifti_inputs_name_the_file(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.nii.gz"
    make(path)
    with pytest.raises(CTReadError, match=message) as err:
        load_ct(path)
    assert str(err.value).startswith(str(path))


def test_bad_folders_and_formats(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CTReadError, match="empty: no DICOM image files found"):
        load_ct(tmp_path / "empty")
    write_dicom_series(tmp_path / "one", phantom_hu((1, 8, 8)))
    with pytest.raises(CTReadError, match="single slice"):
        load_ct(tmp_path / "one")
    (tmp_path / "x.png").write_bytes(b"png")
    with pytest.raises(CTReadError, match="unknown format"):
        load_ct(tmp_path / "x.png")
    with pytest.raises(CTReadError, match="no such file"):
        load_ct(tmp_path / "missing.nii.gz")


def test_ctvolume_from_hu_and_spacing_check() -> None:
    hu = phantom_hu().astype(np.float32)
    vol = CTVolume(hu, np.diag([1.0, 2.0, 3.0, 1.0]), (1.0, 2.0, 3.0), source="arr")
    assert vol.hu is vol.raw and vol.hu_range() == (float(hu.min()), float(hu.max()))
    with pytest.raises(ValueError, match="disagrees with the affine"):
        CTVolume(hu, np.eye(4), (1.0, 2.0, 3.0))


@pytest.mark.shared
def test_real_cip_nrrd_and_dicom_agree(shared_data: Path) -> None:
    nrrd = load_ct(shared_data / "ct" / "cip-ct64.nrrd")
    dcm = load_ct(shared_data / "ct" / "cip-ct64-dicom")
    assert nrrd.shape == dcm.shape == (79, 64, 64)
    np.testing.assert_array_equal(nrrd.hu, dcm.hu)
    np.testing.assert_allclose(nrrd.affine, dcm.affine, atol=1e-3)


@pytest.mark.shared
def test_real_a0001_nifti_and_dicom_same_voxels_in_patient_space(shared_data: Path) -> None:
    nii = load_ct(shared_data / "ct" / "lung-pet-ct-dx-A0001.nii.gz")
    dcm = load_ct(shared_data / "ct" / "lung-pet-ct-dx-A0001-dicom")
    assert nii.axcodes == ("L", "P", "S") and dcm.axcodes == ("S", "P", "L")
    # NIfTI (i=col, j=row, k=slice) vs DICOM stack (slice, row, col): same patient point, same HU
    np.testing.assert_array_equal(nii.hu.transpose(2, 1, 0), dcm.hu)
    probe = np.array([100, 200, 30, 1.0])
    np.testing.assert_allclose(nii.affine @ probe, dcm.affine @ probe[[2, 1, 0, 3]], atol=1e-3)
    assert LPS_TO_RAS.shape == (4, 4)


def test_metadata_equal_to_the_files_own_rescale_is_applied_once_quietly(tmp_path: Path) -> None:
    hu = phantom_hu()
    path = write_nifti(tmp_path / "scl.nii.gz", (hu + 1024).astype(np.int16), np.eye(4), slope=1.0, inter=-1024.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = load_ct(path, CTMetadata(slope=1.0, intercept=-1024.0))
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))


def test_metadata_differing_from_the_files_own_rescale_is_ignored_with_a_warning(tmp_path: Path) -> None:
    hu = phantom_hu()
    path = write_nifti(tmp_path / "scl.nii.gz", (hu + 1024).astype(np.int16), np.eye(4), slope=1.0, inter=-1024.0)
    with pytest.warns(CTReadWarning, match="has its own rescale"):
        vol = load_ct(path, CTMetadata(slope=1.0, intercept=-2048.0))
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))


def test_oblique_volume_warns(tmp_path: Path) -> None:
    angle = np.radians(12.0)
    aff = np.eye(4)
    aff[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    with pytest.warns(CTReadWarning, match=r"oblique by up to 12\.0 degrees"):
        load_ct(write_nifti(tmp_path / "tilt.nii.gz", phantom_hu(), aff))


def test_dicom_without_geometry_is_an_error(tmp_path: Path) -> None:
    import pydicom

    paths = write_dicom_series(tmp_path / "s", phantom_hu((4, 8, 8)))
    ds = pydicom.dcmread(paths[0])
    del ds.PixelSpacing
    ds.save_as(paths[0])
    with pytest.raises(CTReadError, match="missing spacing/geometry"):
        load_ct(tmp_path / "s")


def test_multiframe_dicom_is_a_clear_error(tmp_path: Path) -> None:
    import pydicom

    paths = write_dicom_series(tmp_path / "mf", phantom_hu((2, 8, 8)))
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(paths[0])
    with pytest.raises(CTReadError, match="multi-frame"):
        load_ct(tmp_path / "mf")


def test_infinite_voxels_and_non_finite_scaling_are_warned(tmp_path: Path) -> None:
    from ctagrg.data.ctio import CTReadWarning

    hu = phantom_hu().astype(np.float32)
    hu[0, 0, :3] = [np.inf, -np.inf, np.inf]
    write_nifti(tmp_path / "inf.nii.gz", hu, np.eye(4))
    with pytest.warns(CTReadWarning, match=r"inf\.nii\.gz: 3 infinite voxels \(±inf\); preprocessing clips them"):
        vol = load_ct(tmp_path / "inf.nii.gz")
    assert np.isinf(vol.hu).sum() == 3
    path = write_nifti(tmp_path / "slope.nii", phantom_hu(), np.eye(4))
    raw = bytearray(path.read_bytes())
    raw[112:116] = np.float32(np.inf).tobytes()  # scl_slope
    path.write_bytes(bytes(raw))
    with pytest.warns(CTReadWarning, match=r"slope\.nii: non-finite scaling in the header \(scl_slope inf\)"):
        vol = load_ct(path)
    np.testing.assert_array_equal(vol.hu, phantom_hu().astype(np.float32))


def test_an_unreadable_zip_member_is_skipped_with_a_warning(tmp_path: Path) -> None:
    import io as _io

    files = write_dicom_series(tmp_path / "series", phantom_hu((4, 8, 8)), spacing=(5.0, 2.0, 2.0))
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for f in files:
            archive.write(f, f.name)
        archive.writestr("odd.dcm", b"x" * 200)
    raw = bytearray(buf.getvalue())
    local = raw.find(b"PK\x03\x04", raw.find(b"odd.dcm") - 60)  # the odd member's local header
    raw[local + 8:local + 10] = (99).to_bytes(2, "little")  # an unknown compression method
    central = raw.rfind(b"odd.dcm") - 46
    raw[central + 10:central + 12] = (99).to_bytes(2, "little")
    (tmp_path / "s.zip").write_bytes(bytes(raw))
    with pytest.warns(CTReadWarning, match=r"s\.zip:odd\.dcm: cannot be opened .*; skipped"):
        vol = load_ct(tmp_path / "s.zip")
    assert vol.shape == (4, 8, 8)
