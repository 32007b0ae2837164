"""Checks on an uploaded scan file before it is decoded: what it would cost to read, and what it would read.

The upload limit caps the bytes sent, not what they unpack to: a 2 GiB ``.nii.gz`` or ``.zip`` of zeros holds
terabytes, and a 4 kB ``.nii`` header may promise gigabytes. So the voxel count and the memory that decoding
needs are taken from the headers alone (:mod:`ctagrg.data.read_cost`) before the project's readers see the file.

An upload must never make the service open another path. NRRD and MetaImage headers can name a separate data
file, which ITK would open whatever it is (``/etc/passwd``, ``/dev/zero``). So such a header is refused in any
spelling ITK accepts, and the reader is given a copy whose header this module wrote itself
(:func:`ctagrg.data.itk_header.canonical_header`): the voxels follow it in the same file, and no line the user
wrote reaches ITK. NIfTI is parsed from its bytes, a ``.zip`` read member by member in memory.

>>> readable = check_upload(Path("/tmp/upload/scan.mha"), "scan.mha", max_voxels=600_000_000, max_bytes=8 << 30)
...                                                                                       # doctest: +SKIP

Raises :class:`VolumeTooLarge` (answered 413) or :class:`UnsafeUpload` (400); both are ``ValueError``\\ s whose
message starts with the user's file name, never our temporary path.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from ctagrg.data.ctio import CTReadError
from ctagrg.data.itk_header import ItkHeaderError, canonical_header, read_itk_header
from ctagrg.data.read_cost import ScanTooLarge, check_read_cost

MIB = 1 << 20
# A .zip (DICOM series) may unpack to 2 bytes a voxel (CT is stored as 16 bits) plus this much for the DICOM
# headers, a DICOMDIR and the like: about 5 kB a slice, so 16 MiB covers a few thousand slices.
ZIP_BYTES_PER_VOXEL = 2
ZIP_SLACK_BYTES = 16 * MIB
# Entries an uploaded .zip may hold: a thin-slice CT series has a few thousand files; a central directory of
# millions costs zipfile gigabytes before a member is read.
MAX_ZIP_ENTRIES = 20_000


class VolumeTooLarge(ValueError):
    """The upload would unpack to more voxels or bytes than allowed; the message starts with the file name."""


class UnsafeUpload(ValueError):
    """The upload cannot be checked, or would make the reader open something other than itself."""


def check_upload(path: Path, name: str, *, max_voxels: int, max_bytes: int) -> Path:
    """Check the scan file at ``path`` (uploaded as ``name``) without decoding its voxels.

    Args:
        path: the uploaded file; its extension (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.zip``) says what
            it is.
        name: the file name the user gave, for messages.
        max_voxels: the most voxels allowed (all channels and volumes counted).
        max_bytes: the memory budget of decoding it (:func:`ctagrg.data.read_cost.check_read_cost`).

    Returns:
        The file to give the reader: ``path``, or for NRRD/MetaImage a copy beside it with a header written here.

    Raises:
        VolumeTooLarge: over ``max_voxels`` or ``max_bytes``, or a ``.zip`` that unpacks to more than that needs.
        UnsafeUpload: a header that cannot be read, one naming a separate data file, or a file that holds less
            data than its header promises.
    """
    lower = path.name.lower()
    if lower.endswith(".zip"):
        _check_zip_bytes(path, name, max_voxels)
    elif lower.endswith((".nrrd", ".mha")):
        path = _single_file_copy(path, name)
    try:
        cost = check_read_cost(path, max_bytes, name=name)
    except ScanTooLarge as exc:
        raise VolumeTooLarge(str(exc)) from None
    except CTReadError as exc:
        raise UnsafeUpload(_named(str(exc), path, name)) from None
    if cost.voxels > max_voxels:
        what = (f"{'x'.join(map(str, cost.shape))} = {cost.voxels:,} voxels exceed" if cost.shape else
                f"its DICOM files hold {cost.voxels:,} voxels in all, which exceed")
        raise VolumeTooLarge(f"{name}: {what} the limit of {max_voxels:,} voxels (ctagrg serve --max-voxels)")
    return path


def max_zip_bytes(max_voxels: int) -> int:
    """The most bytes the members of an uploaded ``.zip`` may unpack to."""
    return ZIP_BYTES_PER_VOXEL * max_voxels + ZIP_SLACK_BYTES


def _single_file_copy(path: Path, name: str) -> Path:
    """A copy of an NRRD/MetaImage upload under a header written from its image fields, voxels attached.

    ITK reads the copy, so that no line of the user's header can make it open another file, even one in a
    spelling this parser does not know.
    """
    try:
        header = read_itk_header(path, name)
        text = canonical_header(header, name, path.stat().st_size - header.data_offset)
    except ItkHeaderError as exc:
        raise UnsafeUpload(str(exc)) from None
    copy = Path(tempfile.mkdtemp(dir=path.parent)) / path.name  # the same name: the reader's messages name it
    with open(path, "rb") as src, open(copy, "wb") as dst:
        dst.write(text)
        src.seek(header.data_offset)
        shutil.copyfileobj(src, dst, MIB)
    path.unlink()  # the temporary folder holds one copy of an upload at a time
    return copy


def _check_zip_bytes(path: Path, name: str, max_voxels: int) -> None:
    """Bound the entries (counted from the end record, before zipfile parses a central directory that may hold
    millions of them) and what the members unpack to. The byte bound holds because Python's zipfile never returns
    more than a member's recorded ``file_size``."""
    entries = zip_entry_count(path)
    if entries is not None and entries > MAX_ZIP_ENTRIES:
        raise VolumeTooLarge(f"{name}: {entries:,} entries, over the {MAX_ZIP_ENTRIES:,} a DICOM series upload may "
                             f"hold")
    limit = max_zip_bytes(max_voxels)
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist() if not info.is_dir())
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeUpload(f"{name}: not a readable zip archive ({_named(str(exc), path, name)})") from None
    if unpacked > limit:
        raise VolumeTooLarge(f"{name}: unpacks to {unpacked / MIB:,.1f} MiB, over the {limit / MIB:,.1f} MiB "
                             f"allowed for {max_voxels:,} voxels (2 bytes a voxel + {ZIP_SLACK_BYTES // MIB} MiB; "
                             f"ctagrg serve --max-voxels)")


def zip_entry_count(path: Path) -> int | None:
    """The entry count of a zip's end-of-central-directory record (ZIP64's where it says so), or None when no
    record is found in the last 64 KiB (zipfile then names the problem)."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - (1 << 16) - 22))
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 12 > len(tail):
        return None
    count = int.from_bytes(tail[at + 10:at + 12], "little")
    zip64 = tail.rfind(b"PK\x06\x06", 0, at)
    if count == 0xFFFF and zip64 >= 0 and zip64 + 40 <= len(tail):
        count = int.from_bytes(tail[zip64 + 32:zip64 + 40], "little")
    return count


def _named(text: str, path: Path, name: str) -> str:
    """A reader's message with our temporary path replaced by the user's file name."""
    text = text.replace(str(path), name).replace(str(path.parent) + "/", "").replace(str(path.parent), "")
    return text if text.startswith(name) else f"{name}: {text}"
