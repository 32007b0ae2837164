"""Compressed DICOM series (ctagrg.data.dicom): JPEG Lossless process 14, JPEG-LS and JPEG 2000 read through the
``[dicom]`` extra (python-gdcm) and give the voxels and geometry of the uncompressed series; RLE reads without it;
without the extra, the error names the transfer syntax and the extra.

The compressed series are written by GDCM's own encoder (``gdcm.ImageChangeTransferSyntax``) from an
uncompressed series. Cross-check of that encoder, done once by hand (not a test: pylibjpeg's GPL plugin is not a
dependency): pylibjpeg 2.1.0 with pylibjpeg-libjpeg 2.5.0 and pylibjpeg-openjpeg 2.6.0 decodes the files GDCM
3.2.6 writes for 1.2.840.10008.1.2.4.57, .70, .80 and .90 to the uncompressed pixel values, slice for slice.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ct_fixtures import phantom_hu, write_dicom_series

from ctagrg.data.ctio import CTReadError, load_ct

# transfer syntax UID -> name of GDCM's TransferSyntax constant
GDCM_SYNTAXES = {
    "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",  # JPEG Lossless SV1: the usual compressed CT export
    "1.2.840.10008.1.2.4.57": "JPEGLosslessProcess14",
    "1.2.840.10008.1.2.4.80": "JPEGLSLossless",
    "1.2.840.10008.1.2.4.90": "JPEG2000Lossless",
}
SHAPE = (6, 20, 24)


def signed_copy(src: Path, dst: Path) -> Path:
    """``src``'s series stored as signed HU (PixelRepresentation 1, intercept 0, 12 bits stored), as many scanners
    export it."""
    import pydicom

    dst.mkdir(parents=True)
    for file in sorted(src.iterdir()):
        ds = pydicom.dcmread(file)
        hu = ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept)
        ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = hu.astype(np.int16).tobytes()
        ds.save_as(dst / file.name, enforce_file_format=True)
    return dst


def gdcm_compress(src: Path, dst: Path, uid: str) -> Path:
    """Every file of ``src`` re-encoded by GDCM into transfer syntax ``uid`` (lossless)."""
    gdcm = pytest.importorskip("gdcm", reason="needs the [dicom] extra: pip install 'ctagrg[dicom]' (python-gdcm)")
    dst.mkdir(parents=True)
    syntax = gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[uid]))
    for file in sorted(src.iterdir()):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(file))
        assert reader.Read(), file
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(syntax)
        change.SetInput(reader.GetImage())
        assert change.Change(), f"{file}: GDCM could not encode {uid}"
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst / file.name))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write(), file
    return dst


def assert_same_series(plain: Path, compressed: Path, uid: str) -> None:
    import pydicom

    files = sorted(compressed.iterdir())
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files} == {uid}
    assert sum(f.stat().st_size for f in files) < sum(f.stat().st_size for f in plain.iterdir())  # really compressed
    a, b = load_ct(plain), load_ct(compressed)
    np.testing.assert_array_equal(b.hu, a.hu)
    np.testing.assert_array_equal(b.affine, a.affine)
    assert b.hu.min() < -900 and b.hu.max() > 0  # air and body both came through


@pytest.mark.parametrize("signed", [False, True], ids=["uint16", "int16-12bit"])
@pytest.mark.parametrize("uid", list(GDCM_SYNTAXES))
def test_compressed_series_read_as_the_uncompressed_one(tmp_path: Path, uid: str, signed: bool) -> None:
    plain = tmp_path / "plain"
    write_dicom_series(plain, phantom_hu(SHAPE))
    if signed:
        plain = signed_copy(plain, tmp_path / "signed")
    assert_same_series(plain, gdcm_compress(plain, tmp_path / "compressed", uid), uid)


def test_rle_series_reads_without_the_extra(tmp_path: Path) -> None:
    """RLE Lossless is decoded by pydicom itself, so it needs no extra."""
    import pydicom
    from pydicom.uid import RLELossless

    plain = tmp_path / "plain"
    write_dicom_series(plain, phantom_hu(SHAPE))
    rle = tmp_path / "rle"
    rle.mkdir()
    for file in sorted(plain.iterdir()):
        ds = pydicom.dcmread(file)
        ds.compress(RLELossless, encoding_plugin="pydicom")
        ds.save_as(rle / file.name, enforce_file_format=True)
    assert_same_series(plain, rle, RLELossless)


def write_encapsulated_series(folder: Path, uid: str) -> None:
    """A series whose PixelData claim transfer syntax ``uid`` (one encapsulated fragment of arbitrary bytes): enough
    to reach the decoder check, which comes before any byte is decoded."""
    import pydicom
    from pydicom.encaps import encapsulate

    plain = folder.parent / f"{folder.name}-plain"
    write_dicom_series(plain, phantom_hu((3, 8, 8)))
    folder.mkdir()
    for file in sorted(plain.iterdir()):
        ds = pydicom.dcmread(file)
        ds.file_meta.TransferSyntaxUID = uid
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(60)])
        ds["PixelData"].VR = "OB"
        ds.save_as(folder / file.name, enforce_file_format=True)


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80"])
def test_without_the_extra_the_error_names_the_syntax_and_the_extra(tmp_path: Path, uid: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.pixels
    from pydicom.uid import UID

    write_encapsulated_series(tmp_path / "series", uid)
    if pydicom.pixels.get_decoder(UID(uid)).is_available:  # the extra is installed here: hide its decoders
        monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda u: SimpleNamespace(is_available=False))
    with pytest.raises(CTReadError) as err:
        load_ct(tmp_path / "series")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'series'}: ")
    assert UID(uid).name in message and uid in message
    assert "pip install 'ctagrg[dicom]'" in message


def test_a_syntax_nothing_decodes_is_named(tmp_path: Path) -> None:
    write_encapsulated_series(tmp_path / "series", "1.2.840.10008.1.2.4.100")  # MPEG2 video
    with pytest.raises(CTReadError, match=r"MPEG2 .*\(1\.2\.840\.10008\.1\.2\.4\.100\).*cannot be decoded"):
        load_ct(tmp_path / "series")
