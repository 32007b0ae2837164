"""Checks on an uploaded scan file before it is decoded: what it would cost to read, and what it would read.

The upload limit caps the bytes sent, not what they unpack to: a 2 GiB ``.nii.gz`` or ``.zip`` of zeros holds
terabytes. So the voxel count is taken from the headers alone, and the decompressed size is bounded, before
the project's readers (which read whole files into memory) see the file.

>>> check_upload(Path("/tmp/upload/scan.nii.gz"), "scan.nii.gz", max_voxels=600_000_000)   # doctest: +SKIP

Raises :class:`VolumeTooLarge` (answered 413) or :class:`UnsafeUpload` (400); both are ``ValueError``\\ s whose
message starts with the user's file name, never our temporary path.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

MIB = 1 << 20
# A .zip (DICOM series) may unpack to 2 bytes a voxel (CT is stored as 16 bits) plus this much for the DICOM
# headers, a DICOMDIR and the like: about 5 kB a slice, so 16 MiB covers a few thousand slices.
ZIP_BYTES_PER_VOXEL = 2
ZIP_SLACK_BYTES = 16 * MIB
# A .nii.gz may decompress to what its header needs plus this much (NIfTI puts nothing after the voxels).
GZIP_SLACK_BYTES = 1 * MIB
# NRRD/MetaImage headers are text at the start of the file; a longer one is not a scan we can read anyway.
HEADER_BYTES = 1 * MIB


class VolumeTooLarge(ValueError):
    """The upload would unpack to more voxels or bytes than allowed; the message starts with the file name."""


class UnsafeUpload(ValueError):
    """The upload cannot be checked, or would make the reader open something other than itself."""


def check_upload(path: Path, name: str, *, max_voxels: int) -> None:
    """Check the scan file at ``path`` (uploaded as ``name``) without decoding its voxels.

    Args:
        path: the uploaded file; its extension (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.zip``) says what
            it is.
        name: the file name the user gave, for messages.
        max_voxels: the most voxels allowed (all channels and volumes counted).

    Raises:
        VolumeTooLarge: over ``max_voxels``, or a ``.zip``/``.nii.gz`` that unpacks to more than that needs.
        UnsafeUpload: a header that cannot be read, or one naming a separate data file.
    """
    lower = path.name.lower()
    if lower.endswith(".zip"):
        _check_zip(path, name, max_voxels)
    elif lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path, name, max_voxels)
    else:
        _check_itk(path, name, max_voxels)


def max_zip_bytes(max_voxels: int) -> int:
    """The most bytes the members of an uploaded ``.zip`` may unpack to."""
    return ZIP_BYTES_PER_VOXEL * max_voxels + ZIP_SLACK_BYTES


def _check_voxels(name: str, shape: Sequence[int], max_voxels: int) -> int:
    voxels = math.prod(int(n) for n in shape)
    if voxels > max_voxels:
        raise VolumeTooLarge(f"{name}: {'x'.join(str(int(n)) for n in shape)} = {voxels:,} voxels exceed the limit "
                             f"of {max_voxels:,} voxels (ctagrg serve --max-voxels)")
    return voxels


def _check_nifti(path: Path, name: str, max_voxels: int) -> None:
    import nibabel as nib

    try:
        image = nib.load(path)  # reads the header only; the voxels stay on disk
        shape, dtype, offset = image.header.get_data_shape(), image.header.get_data_dtype(), image.dataobj.offset
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a broken header (and gzip errors)
        raise UnsafeUpload(f"{name}: cannot read the NIfTI header ({_reason(exc, path, name)})") from None
    voxels = _check_voxels(name, shape, max_voxels)
    if path.name.lower().endswith(".gz"):
        _check_gzip_length(path, name, offset + voxels * dtype.itemsize + GZIP_SLACK_BYTES)


def _check_gzip_length(path: Path, name: str, limit: int) -> None:
    """Refuse a gzip file that decompresses to more than ``limit`` bytes.

    The reader decompresses the whole file into memory in one call, so a header promising a small volume followed
    by gigabytes of zeros must be stopped here. This costs one extra, streamed decompression with isal, as the
    reader uses: 0.30 s for Lung-PET-CT-Dx A0001 (17 MB .nii.gz), whose default preprocessing takes 2.2 s.
    """
    from isal import igzip

    total = 0
    try:
        with igzip.open(path, "rb") as fh:
            while total <= limit and (chunk := fh.read(MIB)):
                total += len(chunk)
    except (OSError, EOFError, ValueError) as exc:  # not gzip, truncated, corrupt (isal raises these)
        raise UnsafeUpload(f"{name}: cannot decompress ({_reason(exc, path, name)})") from None
    if total > limit:
        raise VolumeTooLarge(f"{name}: decompresses to more than the {limit:,} bytes its header's voxels need "
                             f"(refused as a possible decompression bomb)")


def _check_itk(path: Path, name: str, max_voxels: int) -> None:
    import SimpleITK as sitk

    _check_single_file(path, name)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only
    except RuntimeError as exc:
        raise UnsafeUpload(f"{name}: cannot read the header ({_reason(exc, path, name)})") from None
    components = reader.GetNumberOfComponents()
    _check_voxels(name, (*reader.GetSize(), *([components] if components > 1 else [])), max_voxels)


def _check_single_file(path: Path, name: str) -> None:
    """Refuse an NRRD/MetaImage header that names a separate data file (``data file:`` / ``ElementDataFile``).

    Such a header makes SimpleITK read whatever path it names on this machine (a private file, ``/dev/zero``) as
    the voxels, which the viewer would then show. An upload must carry its voxels itself.
    """
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
    nrrd = path.name.lower().endswith(".nrrd")
    for raw in head.split(b"\n"):
        line = raw.strip()
        if nrrd and not line:
            return  # NRRD: a blank line ends the header; the (binary) data follows
        key, _, value = line.partition(b":" if nrrd else b"=")
        key, value = key.strip().lower().replace(b" ", b""), value.strip()
        if nrrd:
            detached = key == b"datafile"  # NRRD spells it "data file" or "datafile"
        elif key == b"elementdatafile":  # MetaImage: always the last header line
            detached = value.lower() != b"local"
            if not detached:
                return
        else:
            detached = False
        if detached:
            raise UnsafeUpload(f"{name}: the header names a separate data file ({value.decode('latin-1')[:200]!r}); "
                               f"upload a single-file scan that holds its own voxels")
    if len(head) == HEADER_BYTES:  # a header may not hide its data file behind a megabyte of padding
        raise UnsafeUpload(f"{name}: no end of the header in its first {HEADER_BYTES // MIB} MiB")


def _check_zip(path: Path, name: str, max_voxels: int) -> None:
    """Bound what the members unpack to, then count the voxels the DICOM headers in it promise.

    The byte bound holds because Python's zipfile never returns more than a member's recorded ``file_size``. The
    header count covers compressed DICOM transfer syntaxes, whose pixel data decode to more than they store.
    """
    limit = max_zip_bytes(max_voxels)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            unpacked = sum(info.file_size for info in members)
            if unpacked > limit:
                raise VolumeTooLarge(f"{name}: unpacks to {unpacked / MIB:,.1f} MiB, over the {limit / MIB:,.1f} MiB "
                                     f"allowed for {max_voxels:,} voxels (2 bytes a voxel + "
                                     f"{ZIP_SLACK_BYTES // MIB} MiB; ctagrg serve --max-voxels)")
            voxels = sum(_dicom_voxels(archive, info) for info in members)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeUpload(f"{name}: not a readable zip archive ({_reason(exc, path, name)})") from None
    if voxels > max_voxels:
        raise VolumeTooLarge(f"{name}: its DICOM files hold {voxels:,} voxels in all, which exceed the limit of "
                             f"{max_voxels:,} voxels (ctagrg serve --max-voxels)")


def _dicom_voxels(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Rows x Columns x frames x samples of one member's DICOM header; 0 for a member that is not DICOM."""
    import pydicom

    try:
        with archive.open(info) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
        return max(rows, 0) * max(cols, 0) * max(frames, 1) * max(samples, 1)
    except Exception:  # noqa: BLE001 - not DICOM (README, DICOMDIR, ...) or unreadable: the reader skips it too
        return 0


def _reason(exc: BaseException, path: Path, name: str) -> str:
    """``Type: message`` of a reader error, with our temporary path replaced by the user's file name."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    text = text.replace(str(path), name).replace(str(path.parent), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
