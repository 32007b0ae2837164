"""``ctagrg.serve.limits``: an upload never makes the reader open another path, and what decoding it would cost
is checked from its headers first."""

from __future__ import annotations

import gzip
import io
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_serve import MAX_VOXELS, dicom_zip, itk_bytes, nifti_bytes

from ctagrg.data.ctio import load_ct
from ctagrg.serve.limits import UnsafeUpload, VolumeTooLarge, check_upload

BUDGET = 1 << 30


def test_check_upload_passes_scans_within_the_limits(tmp_path: Path) -> None:
    air = np.full((12, 32, 32), -1000, dtype=np.int16)  # 12288 voxels
    air[3, 4, 5] = 700  # a marker: the copy the reader is given must hold the upload's own voxels
    (tmp_path / "ok.nii.gz").write_bytes(nifti_bytes(air.T, tmp_path, "ok.nii.gz"))
    itk_bytes(air, tmp_path / "ok.nrrd")
    itk_bytes(air, tmp_path / "ok.mha")
    dicom_zip(air, tmp_path, "ok.zip")
    def upload(name: str) -> Path:  # a fresh copy: the check may replace an upload by its canonical copy
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        return Path(shutil.copy(tmp_path / name, folder / name))

    for name in ("ok.nii.gz", "ok.nrrd", "ok.mha", "ok.zip"):
        readable = check_upload(upload(name), name, max_voxels=MAX_VOXELS, max_bytes=BUDGET)
        assert readable.name == name
        hu = load_ct(readable).hu
        assert hu.size == air.size and int((hu == 700).sum()) == 1
        with pytest.raises(VolumeTooLarge, match=rf"^{name}: .*12,288 voxels.* exceed the limit of 12,287 voxels"):
            check_upload(upload(name), name, max_voxels=12_287, max_bytes=BUDGET)
        # int16: 2 bytes a voxel read, then 2 float32 working copies: 12288 x (2 x copies + 8) bytes and more
        with pytest.raises(VolumeTooLarge, match=rf"^{name}: reading it needs about .* over the memory budget of "
                                                 rf"0 MiB \(--max-memory-mb\)"):
            check_upload(upload(name), name, max_voxels=MAX_VOXELS, max_bytes=12288 * 8)


SECRET_SHAPE = (4, 8, 8)


def _secret(tmp_path: Path) -> Path:
    """A "private" file of this machine that a header may try to make the reader show as voxels."""
    secret = tmp_path / "secret.raw"
    np.full(SECRET_SHAPE, 1234, np.int16).tofile(secret)
    return secret


MHA_HEAD = "ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementSpacing = 1 1 1\nElementType = MET_SHORT\n"
NRRD_HEAD = "NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 4\nspacings: 1 1 1\nencoding: raw\nendian: little\n"


@pytest.mark.parametrize("line", [
    "ElementDataFile = {secret}", "ElementDataFile : {secret}", "ElementDataFile:{secret}", "ElementDataFile={secret}",
    "  ElementDataFile   =   {secret}", "ElementDataFile\t= {secret}", "ElementDataFile\0junk = {secret}",
    "ElementDataFile = {secret}\r", "ElementDataFile = LIST\n{secret}", "ElementDataFile = LoCaL",
    "ElementDataFile = secret%d.raw 1 2 1", "ElementDataFile = ../secret.raw",
])
def test_metaimage_data_file_is_refused_in_every_spelling(tmp_path: Path, line: str) -> None:
    _refused_as_detached(tmp_path, "scan.mha", MHA_HEAD + line + "\n")


@pytest.mark.parametrize("line", [
    "content: x\rdata file: {secret}", "content: x\r\ndata file: {secret}",  # teem ends a line at a lone CR
    "data file: {secret}", "datafile: {secret}", "Data File: {secret}", "DATAFILE:{secret}", "data  file : {secret}",
    "data file: LIST\n{secret}", "data file: secret%d.raw 1 2 1", "data file\0junk: {secret}",
])
def test_nrrd_data_file_is_refused_in_every_spelling(tmp_path: Path, line: str) -> None:
    _refused_as_detached(tmp_path, "scan.nrrd", NRRD_HEAD + line + "\n\n")


def _refused_as_detached(tmp_path: Path, name: str, header: str) -> None:
    """An upload ``name`` whose ``header`` (``{secret}``: a private file's path) must be refused unread."""
    upload = tmp_path / "up" / name
    upload.parent.mkdir()
    upload.write_bytes(header.format(secret=_secret(tmp_path)).encode("latin-1"))
    with pytest.raises(UnsafeUpload, match=rf"^{re.escape(name)}: the header names a separate data file"):
        check_upload(upload, name, max_voxels=MAX_VOXELS, max_bytes=BUDGET)


@pytest.mark.parametrize(("name", "head"), [
    # keys ITK does not take as the data file are dropped from the header the reader sees
    ("scan.mha", MHA_HEAD.replace("ObjectType", "elementdatafile = {secret}\nElement DataFile = {secret}\nObjectType")
     + "ElementDataFile = LOCAL\n"),
    ("scan.nrrd", NRRD_HEAD + "data file:={secret}\n# data file: {secret}\n\n"),
])
def test_lookalike_keys_never_reach_the_reader(tmp_path: Path, name: str, head: str) -> None:
    secret = _secret(tmp_path)
    upload = tmp_path / "up" / name
    upload.parent.mkdir()
    own = np.arange(np.prod(SECRET_SHAPE), dtype=np.int16).reshape(SECRET_SHAPE) - 1000
    upload.write_bytes(head.format(secret=secret).encode("latin-1") + own.tobytes())
    readable = check_upload(upload, name, max_voxels=MAX_VOXELS, max_bytes=BUDGET)
    assert str(secret).encode() not in readable.read_bytes()
    np.testing.assert_array_equal(np.sort(load_ct(readable).raw.ravel()), own.ravel())


def test_headers_that_promise_more_than_the_file_holds(tmp_path: Path) -> None:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float64)
    header.set_data_shape((512, 512, 2285))
    (tmp_path / "short.nii").write_bytes(header.binaryblock + bytes(4 + 4000))
    with pytest.raises(UnsafeUpload, match=r"^short\.nii: truncated: the header promises 598,999,040 voxels of "
                                           r"float64 \(4,791,992,320 bytes\) after byte 352, the file holds 4,000$"):
        check_upload(tmp_path / "short.nii", "short.nii", max_voxels=600_000_000, max_bytes=16 << 30)
    (tmp_path / "short.mha").write_bytes((MHA_HEAD + "ElementDataFile = LOCAL\n").encode() + bytes(100))
    with pytest.raises(UnsafeUpload, match=r"^short\.mha: truncated: the header promises 512 bytes of voxels, the "
                                           r"file holds 100$"):
        check_upload(tmp_path / "short.mha", "short.mha", max_voxels=MAX_VOXELS, max_bytes=BUDGET)


def test_bombs_and_junk(tmp_path: Path) -> None:
    import nibabel as nib

    # a valid 12288-voxel NIfTI followed by 4 MiB of zeros: 4 kB compressed. The reader decompresses into a buffer
    # no larger than the header needs (+1 MiB) and refuses the rest.
    nii = nib.Nifti1Image(np.zeros((32, 32, 12), np.int16), np.diag([4.0, 4.0, 8.0, 1.0])).to_bytes()
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(nii + bytes(4 << 20)))
    from ctagrg.data.read_cost import ScanTooLarge

    with pytest.raises(ScanTooLarge, match=r"bomb\.nii\.gz: decompresses to more than the 1,073,504 bytes"):
        load_ct(tmp_path / "bomb.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not gzip" * 50)
    with pytest.raises(UnsafeUpload, match=r"^junk\.nii\.gz: cannot decompress") as err:
        check_upload(tmp_path / "junk.nii.gz", "junk.nii.gz", max_voxels=MAX_VOXELS, max_bytes=BUDGET)
    assert str(tmp_path) not in str(err.value)
    (tmp_path / "pad.nrrd").write_bytes(b"NRRD0004\n" + b"# padding\n" * 120_000 + b"data file: /etc/passwd\n\n")
    with pytest.raises(UnsafeUpload, match=r"^pad\.nrrd: no end of the NRRD header in its first 1 MiB"):
        check_upload(tmp_path / "pad.nrrd", "pad.nrrd", max_voxels=MAX_VOXELS, max_bytes=BUDGET)
    zeros = io.BytesIO()  # not DICOM: never read past its first 132 bytes, and it holds no voxels
    with zipfile.ZipFile(zeros, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", bytes(8 << 20))
    (tmp_path / "zeros.zip").write_bytes(zeros.getvalue())
    readable = check_upload(tmp_path / "zeros.zip", "zeros.zip", max_voxels=MAX_VOXELS, max_bytes=BUDGET)
    with pytest.raises(ValueError, match="no DICOM image files found"):
        load_ct(readable)


def test_control_characters_in_kept_fields_are_refused(tmp_path: Path) -> None:
    upload = tmp_path / "scan.mha"
    upload.write_bytes((MHA_HEAD.replace("ObjectType = Image", "ObjectType = Image\x0bElementDataFile = /etc/passwd")
                        + "ElementDataFile = LOCAL\n").encode() + bytes(512))
    with pytest.raises(UnsafeUpload, match=r"^scan\.mha: a control character in header field 'ObjectType'"):
        check_upload(upload, "scan.mha", max_voxels=MAX_VOXELS, max_bytes=BUDGET)


def test_zips_with_too_many_entries_or_deflated_dicom_are_refused(tmp_path: Path) -> None:
    from ct_fixtures import phantom_hu, write_dicom_series

    from ctagrg.serve.limits import MAX_ZIP_ENTRIES, zip_entry_count

    with zipfile.ZipFile(tmp_path / "many.zip", "w") as archive:
        for k in range(MAX_ZIP_ENTRIES + 1):
            archive.writestr(f"e{k}", b"")
    assert zip_entry_count(tmp_path / "many.zip") == MAX_ZIP_ENTRIES + 1
    with pytest.raises(VolumeTooLarge, match=r"^many\.zip: 20,001 entries, over the 20,000"):
        check_upload(tmp_path / "many.zip", "many.zip", max_voxels=MAX_VOXELS, max_bytes=BUDGET)
    # a series whose first file is stored deflated: pydicom would inflate it whole before anything else
    import pydicom

    files = write_dicom_series(tmp_path / "series", phantom_hu((4, 8, 8)), spacing=(5.0, 2.0, 2.0))
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(files[0], enforce_file_format=True)
    with zipfile.ZipFile(tmp_path / "deflated.zip", "w") as archive:
        for f in files:
            archive.write(f, f.name)
    with pytest.raises(UnsafeUpload, match=r"^deflated\.zip:IM\d+\.dcm: deflated DICOM \(transfer syntax "
                                           r"1\.2\.840\.10008\.1\.2\.1\.99\) is not read"):
        check_upload(tmp_path / "deflated.zip", "deflated.zip", max_voxels=MAX_VOXELS, max_bytes=BUDGET)
    with pytest.raises(ValueError, match=r"deflated DICOM"):
        load_ct(tmp_path / "series")


def test_an_nrrd_upload_leaves_one_copy_in_the_temporary_folder(tmp_path: Path) -> None:
    air = np.full((12, 32, 32), -1000, dtype=np.int16)
    itk_bytes(air, tmp_path / "ok.nrrd")
    readable = check_upload(tmp_path / "ok.nrrd", "ok.nrrd", max_voxels=MAX_VOXELS, max_bytes=BUDGET)
    assert not (tmp_path / "ok.nrrd").exists() and readable.is_file()
