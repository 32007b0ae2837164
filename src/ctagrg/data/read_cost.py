"""What reading a scan will cost in memory, from its headers alone, and the budget that refuses it first.

A header can promise any size: a 4 KB ``.nii`` may claim 512 x 512 x 2285 float64 voxels (4.8 GB), a ``.zip``
may hold gigabytes of zeros. So before a reader allocates anything, :func:`check_read_cost` estimates the bytes
that decoding needs and refuses the scan (:class:`ScanTooLarge`) over the budget, and refuses a file that holds
less data than its header promises (:class:`~ctagrg.data.ctio.CTReadError`).

The estimate (:attr:`ReadCost.bytes`) is: file bytes the reader holds at once (a compressed payload, a series'
DICOM files) + voxels x stored bytes a voxel x the copies the reader makes of them + voxels x 4 bytes x
:data:`FLOAT32_WORKING_COPIES` (HU and preprocessing work in float32).

>>> check_read_cost(Path("scan.nii.gz"), max_bytes=8 << 30).bytes   # doctest: +SKIP
1302331392
"""

from __future__ import annotations

import bz2
import io
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctagrg.data.ctio import CTReadError
from ctagrg.data.itk_header import METAIO_SUFFIXES, NRRD_SUFFIXES, ItkHeaderError, read_itk_header
from ctagrg.data.names import NIFTI_SUFFIXES

MIB = 1 << 20
# Float32 copies of the whole volume that reading and preprocessing hold at once (HU, then the resampled grid).
FLOAT32_WORKING_COPIES = 2
# The default budget: this fraction of the machine's physical memory.
DEFAULT_MEMORY_FRACTION = 0.5
# A compressed payload may decompress to this much more than its header's voxels (NIfTI extensions, padding).
DECOMPRESS_SLACK_BYTES = 1 * MIB


class ScanTooLarge(CTReadError):
    """Reading the scan would need more memory than the budget allows; the message names the file and the sizes."""


@dataclass(frozen=True)
class ReadCost:
    """What decoding one scan holds in memory.

    Attributes:
        voxels: voxels the header promises (all channels and slices).
        itemsize: bytes a stored voxel.
        copies: copies of the decoded stored voxels the reader makes (ITK: its buffer and numpy's).
        held_bytes: file bytes the reader holds at the same time (compressed payloads, DICOM files).
        shape: the voxel grid as the header gives it (ITK order for NRRD/MetaImage, channels last), for
            messages; empty for a DICOM series.
    """

    voxels: int
    itemsize: int
    copies: int
    held_bytes: int = 0
    shape: tuple[int, ...] = ()

    @property
    def bytes(self) -> int:
        """The estimated peak bytes of reading and preprocessing the scan."""
        return (self.held_bytes + self.voxels * self.itemsize * self.copies
                + self.voxels * 4 * FLOAT32_WORKING_COPIES)


def default_max_memory_mb() -> float:
    """The default budget: :data:`DEFAULT_MEMORY_FRACTION` of this machine's physical memory, in MiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a 16 GiB machine
        total = 16 << 30
    return DEFAULT_MEMORY_FRACTION * total / MIB


def check_read_cost(path: str | Path, max_bytes: int | None = None, *, name: str | None = None) -> ReadCost:
    """Estimate the cost of reading ``path`` and refuse it over ``max_bytes``, before any voxel is decoded.

    Args:
        path: a scan that :func:`~ctagrg.data.ctio.load_ct` reads (file, DICOM folder or ``.zip``).
        max_bytes: the budget in bytes; None uses :func:`default_max_memory_mb`.
        name: the name used in messages (e.g. an upload's file name); ``path`` by default.

    Raises:
        ScanTooLarge: over the budget.
        CTReadError: a header that cannot be read, or a file that holds less data than its header promises.
    """
    path = Path(path)
    name = name or str(path)
    budget = int(default_max_memory_mb() * MIB) if max_bytes is None else int(max_bytes)
    cost = estimate_read_cost(path, name=name)
    if cost.bytes > budget:
        raise ScanTooLarge(f"{name}: reading it needs about {cost.bytes / MIB:,.0f} MiB ({cost.voxels:,} voxels of "
                           f"{cost.itemsize} bytes), over the memory budget of {budget / MIB:,.0f} MiB "
                           f"(--max-memory-mb)")
    return cost


def estimate_read_cost(path: Path, *, name: str | None = None) -> ReadCost:
    """The :class:`ReadCost` of ``path`` from its headers; checks that an uncompressed file holds its voxels and
    that a compressed one decompresses to at least as much (and not far more)."""
    name = name or str(path)
    lower = path.name.lower()
    try:
        if path.is_dir() or lower.endswith(".zip"):
            return _dicom_cost(path, name)
        if lower.endswith(NIFTI_SUFFIXES):
            return _nifti_cost(path, name)
        if lower.endswith(METAIO_SUFFIXES + NRRD_SUFFIXES):
            return _itk_cost(path, name)
    except (ItkHeaderError, zipfile.BadZipFile) as exc:
        raise CTReadError(str(exc) if str(exc).startswith(name) else f"{name}: {exc}") from None
    except OSError as exc:
        raise CTReadError(f"{name}: cannot read ({type(exc).__name__}: {exc.strerror or exc})") from None
    return ReadCost(voxels=0, itemsize=1, copies=0)  # not a scan format: the reader names the problem


# -- NIfTI -----------------------------------------------------------------------------------------------------------
def _nifti_cost(path: Path, name: str) -> ReadCost:
    import numpy as np

    gz = path.name.lower().endswith(".gz")
    head = gunzip_prefix(path, 1024, name) if gz else _read_prefix(path, 1024)
    header = nifti_header(head, name)
    shape, dtype = header.get_data_shape(), np.dtype(header.get_data_dtype())
    voxels, offset = math.prod(int(n) for n in shape), nifti_data_offset(header)
    need = voxels * dtype.itemsize
    if not gz:
        holds = path.stat().st_size - offset
        if holds < need:
            raise CTReadError(f"{name}: truncated: the header promises {voxels:,} voxels of {dtype} ({need:,} bytes) "
                              f"after byte {offset}, the file holds {max(holds, 0):,}")
    copies = 1 if dtype.isnative else 2
    return ReadCost(voxels=voxels, itemsize=dtype.itemsize, copies=copies, held_bytes=path.stat().st_size if gz else 0,
                    shape=tuple(int(n) for n in shape))


def nifti_header(head: bytes, name: str) -> Any:
    """The NIfTI-1 or -2 header at the start of ``head`` (unchecked: pixdim 0 stays 0)."""
    import nibabel as nib

    if len(head) < 348:
        raise CTReadError(f"{name}: not a NIfTI file ({len(head)} bytes, a header needs 348)")
    sizeof_hdr = int.from_bytes(head[:4], "little")
    if sizeof_hdr not in (348, 0x5C010000, 540, 0x1C020000):  # NIfTI-1/2, either byte order
        raise CTReadError(f"{name}: not a NIfTI file (header size field {sizeof_hdr}, expected 348 or 540)")
    cls = nib.Nifti2Header if sizeof_hdr in (540, 0x1C020000) else nib.Nifti1Header
    try:
        return cls.from_fileobj(io.BytesIO(head), check=False)
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for a broken header
        raise CTReadError(f"{name}: cannot read the NIfTI header ({type(exc).__name__}: {exc})") from None


def nifti_data_offset(header: Any) -> int:
    """Where a single-file NIfTI's voxels start: nibabel moves a vox_offset that falls inside the header and its
    extension flag (e.g. 0) to just after them."""
    return max(int(header.get_data_offset()), int(header.sizeof_hdr) + 4)


def gunzip_prefix(path: Path, size: int, name: str) -> bytes:
    """The first ``size`` decompressed bytes of a gzip file (fewer if it is shorter), over its members."""
    from isal import isal_zlib

    out, pending, decomp, mid_member = b"", b"", isal_zlib.decompressobj(wbits=31), False
    with open(path, "rb") as fh:
        try:
            while len(out) < size:
                if not pending and not (pending := fh.read(64 << 10)):
                    break
                out += decomp.decompress(pending, size - len(out))
                pending, mid_member = decomp.unconsumed_tail, True
                if decomp.eof:  # the next member starts in what this one left
                    pending, decomp = decomp.unused_data + pending, isal_zlib.decompressobj(wbits=31)
                    mid_member = False
        except isal_zlib.error as exc:
            raise CTReadError(f"{name}: cannot decompress ({exc})") from None
    if len(out) < size and mid_member:
        raise CTReadError(f"{name}: cannot decompress (not gzip data, or cut short after {len(out)} bytes)")
    return out


def gunzip_bounded(data: bytes, need: int, name: str) -> bytes:
    """Decompress a (possibly multi-member) gzip payload that must hold ``need`` bytes and at most
    :data:`DECOMPRESS_SLACK_BYTES` more; nothing larger is ever allocated. isal's GzipFile streams member after
    member, so a file of many members (bgzip's, or thousands of empty ones) costs linear time.

    Raises:
        CTReadError: shorter than ``need`` (truncated) or longer than ``need`` + slack (a decompression bomb).
    """
    from isal import igzip

    limit = need + DECOMPRESS_SLACK_BYTES
    try:
        out = igzip.GzipFile(fileobj=io.BytesIO(data)).read(limit + 1)
    except EOFError:
        raise CTReadError(f"{name}: cannot read: truncated gzip data (the compressed stream ends early)") from None
    except (OSError, ValueError) as exc:  # BadGzipFile, corrupt deflate data, CRC or length mismatch
        raise CTReadError(f"{name}: cannot decompress ({exc})") from None
    if len(out) > limit:
        raise ScanTooLarge(f"{name}: decompresses to more than the {limit:,} bytes its header's voxels need "
                           f"(refused as a possible decompression bomb)")
    if len(out) < need:
        raise CTReadError(f"{name}: truncated: the header and its voxels need {need:,} bytes, the file "
                          f"decompresses to {len(out):,}")
    return out


def _read_prefix(path: Path, size: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


# -- NRRD / MetaImage ------------------------------------------------------------------------------------------------
def _itk_cost(path: Path, name: str) -> ReadCost:
    import SimpleITK as sitk

    header = read_itk_header(path, name)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(itk_image_io(path))
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header only
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise CTReadError(f"{name}: cannot read the header ({first})") from None
    components = reader.GetNumberOfComponents()
    shape = (*reader.GetSize(), *([components] if components > 1 else []))
    voxels = math.prod(shape)
    itemsize = _sitk_itemsize(reader.GetPixelID(), components)
    payload = _itk_payload(path, header)
    held = 0
    if payload is not None:
        file, offset, encoding = payload
        _check_payload(file, offset, encoding, voxels * itemsize, name)
        held = file.stat().st_size - offset if encoding not in ("raw", "") else 0
    return ReadCost(voxels=voxels, itemsize=itemsize, copies=2, held_bytes=held, shape=shape)


def itk_image_io(path: Path) -> str:
    """The ITK ImageIO for ``path``'s suffix: naming it stops ITK from guessing a format from the contents."""
    return "MetaImageIO" if path.name.lower().endswith(METAIO_SUFFIXES) else "NrrdImageIO"


def _sitk_itemsize(pixel_id: int, components: int) -> int:
    import SimpleITK as sitk

    probe = sitk.Image([1, 1, 1], pixel_id, components) if components > 1 else sitk.Image([1, 1, 1], pixel_id)
    return int(sitk.GetArrayViewFromImage(probe).dtype.itemsize)


def _itk_payload(path: Path, header: Any) -> tuple[Path, int, str] | None:
    """(file holding the voxels, their offset, encoding), or None where it cannot be told (file lists, patterns)."""
    if header.kind == "metaio":
        encoding = "zlib" if (header.get("CompressedData") or "").lower() == "true" else "raw"
        if (header.get("HeaderSize") or "0") != "0":
            return None  # the voxels are placed by HeaderSize: the reader checks the length itself
    else:
        encoding = (header.get("encoding") or "raw").lower()
    if header.attached:
        return path, header.data_offset, encoding
    file = header.data_file or ""
    if file.upper() == "LIST" or "%" in file or " " in file.strip():
        return None  # a file list or a numbered pattern
    target = Path(file) if Path(file).is_absolute() else path.parent / file
    return (target, 0, encoding) if target.is_file() else None


def _check_payload(file: Path, offset: int, encoding: str, need: int, name: str) -> None:
    """Refuse a payload that holds fewer than ``need`` bytes (or, compressed, far more)."""
    size = file.stat().st_size - offset
    if encoding == "raw":
        if size < need:
            raise CTReadError(f"{name}: truncated: the header promises {need:,} bytes of voxels, the file holds "
                              f"{max(size, 0):,}")
        return
    if encoding in ("ascii", "text", "txt", "hex"):
        if size < need // 8:  # a voxel written as text takes at least one digit and one separator
            raise CTReadError(f"{name}: truncated: {max(size, 0):,} bytes of text cannot hold the header's voxels")
        return
    decompressed = _count_decompressed(file, offset, encoding, need + DECOMPRESS_SLACK_BYTES, name)
    if decompressed < need:
        raise CTReadError(f"{name}: truncated: the header promises {need:,} bytes of voxels, the data decompresses "
                          f"to {decompressed:,}")
    if decompressed > need + DECOMPRESS_SLACK_BYTES:
        raise ScanTooLarge(f"{name}: decompresses to more than the {need:,} bytes its header's voxels need "
                           f"(refused as a possible decompression bomb)")


def _count_decompressed(file: Path, offset: int, encoding: str, limit: int, name: str) -> int:
    """Bytes the payload decompresses to, streamed and counted up to ``limit`` + 1 (never held)."""
    from isal import isal_zlib

    make: Callable[[], Any]
    if encoding in ("gzip", "gz"):
        make = lambda: isal_zlib.decompressobj(wbits=31)  # noqa: E731
    elif encoding == "zlib":
        make = lambda: isal_zlib.decompressobj()  # noqa: E731
    elif encoding in ("bzip2", "bz2"):
        make = bz2.BZ2Decompressor
    else:
        raise CTReadError(f"{name}: unknown data encoding {encoding!r}")
    total, decomp = 0, make()
    try:
        with open(file, "rb") as fh:
            fh.seek(offset)
            while total <= limit and (chunk := fh.read(MIB)):
                total += len(decomp.decompress(chunk))
    except (OSError, EOFError, ValueError, isal_zlib.error) as exc:
        raise CTReadError(f"{name}: cannot decompress ({type(exc).__name__}: {exc})") from None
    return total


# -- DICOM -----------------------------------------------------------------------------------------------------------
def _dicom_cost(path: Path, name: str) -> ReadCost:
    import pydicom

    from ctagrg.data.dicom import dicom_files

    voxels = held = itemsize = 0
    for size, _, opener in dicom_files(path, whole=False):
        with opener() as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the reader skips what pydicom cannot parse
                continue
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
        voxels += max(rows, 0) * max(cols, 0) * max(frames, 1) * max(samples, 1)
        itemsize = max(itemsize, math.ceil(int(ds.get("BitsAllocated") or 16) / 8))
        held += size
    return ReadCost(voxels=voxels, itemsize=itemsize or 2, copies=2, held_bytes=held)
