"""Read one DICOM CT series from a folder (searched recursively) or a ``.zip``, via pydicom.

The series' slices are stacked as (slice, row, column) in the order of their position along the slice normal.
Geometry comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing (LPS), converted to the RAS
affine that :class:`~ctagrg.data.ctio.CTVolume` uses. The slice step is measured from the positions, not taken
from SliceThickness (which may differ from the spacing with overlapping reconstructions).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ctagrg.data.ctio import LPS_TO_RAS, CTReadError, CTReadWarning, CTVolume

# What decodes compressed series (JPEG Lossless, JPEG-LS, JPEG 2000): python-gdcm, through pydicom.
DICOM_EXTRA = "pip install 'ctagrg[dicom]'"
# Relative deviation of a slice gap from the median gap above which the series is called irregular.
IRREGULAR_GAP = 0.1
DICOM_MAGIC_END = 132  # 128 bytes of preamble, then "DICM"
DICOM_META_BYTES = 4096  # the file meta group (0002) follows the magic; a few hundred bytes in practice
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"


def read_dicom_series(path: str | Path) -> CTVolume:
    """Read the series with the most slices under ``path`` (folder or ``.zip``) and return it as a CTVolume.

    When several series are present a :class:`CTReadWarning` names the folder and every series UID with its
    slice count. Raises :class:`CTReadError` for an empty folder, a single slice, or missing geometry tags.
    """
    path = Path(path)
    series = _group_by_series(_iter_datasets(path))
    if not series:
        raise CTReadError(f"{path}: no DICOM image files found")
    uid, slices = max(series.items(), key=lambda kv: len(kv[1]))
    if len(series) > 1:
        listing = "; ".join(f"{u} ({len(s)} slices)" for u, s in sorted(series.items(), key=lambda kv: -len(kv[1])))
        warnings.warn(f"{path}: {len(series)} DICOM series found: {listing}. Using {uid}, the one with the most slices",
                      CTReadWarning, stacklevel=3)
    return _stack(path, slices)


def _iter_datasets(path: Path) -> Iterator[Any]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    for _, label, opener in dicom_files(path):
        try:
            with opener() as fh:
                ds = pydicom.dcmread(fh)
        except (InvalidDicomError, EOFError, OSError, ValueError):
            continue  # a file that starts like DICOM but does not parse: skip it as the other non-DICOM files
        if "PixelData" in ds:
            ds.filename = label
            yield ds


def dicom_files(path: Path, whole: bool = True) -> Iterator[tuple[int, str, Callable[[], IO[bytes]]]]:
    """(size, name, opener) of each file in a folder (recursively) or a ``.zip`` that starts like DICOM: the
    "DICM" magic after the 128-byte preamble, without which pydicom refuses a file. Other files (a README, a
    DICOMDIR-less folder's .txt, a member of zeros) are never read past their first 132 bytes.

    ``whole``: a zip member's opener gives its bytes in memory (pydicom seeks freely) rather than a stream.
    """
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if _starts_like_dicom(lambda file=file: open(file, "rb"), str(file)):
                yield file.stat().st_size, str(file), (lambda file=file: open(file, "rb"))
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CTReadError(f"{path}: not a readable zip archive ({exc})") from None
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            label = f"{path}:{info.filename}"
            if not info.is_dir() and _starts_like_dicom(lambda info=info: archive.open(info), label):
                opener = (lambda info=info: io.BytesIO(archive.read(info))) if whole else \
                    (lambda info=info: archive.open(info))
                yield info.file_size, label, opener


def _starts_like_dicom(opener: Callable[[], IO[bytes]], label: str) -> bool:
    """Whether the file starts like DICOM; CTReadError for the deflated transfer syntax, which pydicom inflates
    whole, without a bound, before anything else (even with ``stop_before_pixels``)."""
    try:
        with opener() as fh:
            head = fh.read(DICOM_META_BYTES)
    except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
        # unreadable, an encrypted zip member or an unknown zip compression: skipped, but never in silence
        warnings.warn(f"{label}: cannot be opened ({type(exc).__name__}: {exc}); skipped", CTReadWarning,
                      stacklevel=4)
        return False
    if len(head) < DICOM_MAGIC_END or head[128:DICOM_MAGIC_END] != b"DICM":
        return False
    if _transfer_syntax(head) == DEFLATED_SYNTAX:
        raise CTReadError(f"{label}: deflated DICOM (transfer syntax {DEFLATED_SYNTAX}) is not read: it decompresses "
                          f"without a bound; convert the series to another transfer syntax (e.g. gdcmconv --raw)")
    return True


def _transfer_syntax(head: bytes) -> str | None:
    """TransferSyntaxUID (0002,0010) of the file meta group in ``head`` (explicit VR little endian), or None."""
    at = head.find(b"\x02\x00\x10\x00UI", DICOM_MAGIC_END)
    if at < 0 or at + 8 > len(head):
        return None
    length = int.from_bytes(head[at + 6:at + 8], "little")
    return head[at + 8:at + 8 + length].rstrip(b"\0 ").decode("ascii", "replace")


def _group_by_series(datasets: Iterator[Any]) -> dict[str, list[Any]]:
    series: dict[str, list[Any]] = {}
    for ds in datasets:
        series.setdefault(str(ds.get("SeriesInstanceUID", "unknown")), []).append(ds)
    return series


def _geometry(path: Path, ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        ps = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    except (AttributeError, TypeError, ValueError, IndexError):
        raise CTReadError(f"{path}: missing spacing/geometry (ImageOrientationPatient, ImagePositionPatient or "
                          f"PixelSpacing) in {ds.filename}") from None
    return iop[:3], iop[3:], ipp, ps


def _stack(path: Path, slices: list[Any]) -> CTVolume:
    multi = next((ds for ds in slices if int(ds.get("NumberOfFrames", 1) or 1) > 1), None)
    if multi is not None:
        raise CTReadError(f"{path}: multi-frame (enhanced) DICOM ({multi.filename}, {multi.NumberOfFrames} frames) "
                          f"is not supported; convert it to NIfTI first (e.g. with dcm2niix)")
    if len(slices) < 2:
        raise CTReadError(f"{path}: expected a 3D volume, got a single slice ({slices[0].filename})")
    row_dir, col_dir, _, ps = _geometry(path, slices[0])
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([_geometry(path, ds)[2] for ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices, positions = [slices[i] for i in order], positions[order]
    slices, positions = _drop_duplicates(path, slices, positions, normal)
    _check_gaps(path, positions @ normal)
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    lps = np.eye(4)
    lps[:3, 0] = step  # array axis 0: slice
    lps[:3, 1] = col_dir * ps[0]  # array axis 1: row index moves along the column direction, by the row spacing
    lps[:3, 2] = row_dir * ps[1]  # array axis 2: column index moves along the row direction
    lps[:3, 3] = positions[0]
    raw, slope, inter = _pixels(path, slices)
    affine = LPS_TO_RAS @ lps
    if slope is None:
        return CTVolume(hu=raw, affine=affine, source=str(path))
    return CTVolume(raw=raw, slope=slope, intercept=inter, affine=affine, source=str(path))


def _drop_duplicates(path: Path, slices: list[Any], positions: np.ndarray, normal: np.ndarray
                     ) -> tuple[list[Any], np.ndarray]:
    along = positions @ normal
    keep = np.concatenate([[True], np.diff(along) > 1e-3])
    if not keep.all():
        warnings.warn(f"{path}: {int((~keep).sum())} slices share a position with another; keeping the first of each",
                      CTReadWarning, stacklevel=4)
    return [s for s, k in zip(slices, keep, strict=True) if k], positions[keep]


def _check_gaps(path: Path, along: np.ndarray) -> None:
    gaps = np.diff(along)
    median = float(np.median(gaps))
    if np.any(np.abs(gaps - median) > IRREGULAR_GAP * median):
        warnings.warn(f"{path}: irregular slice spacing (gaps {gaps.min():.3g}..{gaps.max():.3g} mm, median "
                      f"{median:.3g}); missing slices? Using the mean spacing", CTReadWarning, stacklevel=4)


def _pixels(path: Path, slices: list[Any]) -> tuple[np.ndarray, float | None, float]:
    """Stacked stored values (n, rows, cols) and one (slope, intercept); slope None means the array is already
    float32 HU because the slices carry different rescale values."""
    syntax = _check_decoder(path, slices)
    try:
        arrays = [ds.pixel_array for ds in slices]
    except Exception as exc:  # pydicom raises many types for corrupt pixel data or a decoder that gives up
        raise CTReadError(f"{path}: cannot decode pixel data ({syntax}; {type(exc).__name__}: {exc})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise CTReadError(f"{path}: slices of different sizes {sorted(shapes)} in one series")
    scales = [(float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0))
              for ds in slices]
    raw = np.stack(arrays)
    if raw.dtype == np.uint16 and raw.max() <= np.iinfo(np.int16).max:
        raw = raw.view(np.int16)  # same values; int16 has fast torch kernels, uint16 does not
    if len(set(scales)) == 1:
        return raw, scales[0][0], scales[0][1]
    hu = np.empty(raw.shape, np.float32)
    for i, (s, b) in enumerate(scales):
        hu[i] = raw[i].astype(np.float32) * s + b
    return hu, None, 0.0


def _check_decoder(path: Path, slices: list[Any]) -> str:
    """The series' transfer syntax as text ("name (UID)"); CTReadError naming it when pydicom has no decoder for it
    here, with the extra that brings one when it is a compressed syntax (``[dicom]``: python-gdcm)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uids = {UID(str(ds.file_meta.get("TransferSyntaxUID", ""))) for ds in slices if hasattr(ds, "file_meta")}
    for uid in sorted(uids):
        if not uid or not uid.is_compressed:
            continue
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:  # a syntax pydicom has no decoder for at all (JPEG XL, a private one)
            raise CTReadError(f"{path}: pixel data compressed as {uid.name} ({uid}), which cannot be decoded "
                              f"(pydicom has no decoder for it); convert the series, e.g. with dcm2niix") from None
        if not available:
            raise CTReadError(f"{path}: pixel data compressed as {uid.name} ({uid}) and no decoder for it is "
                              f"installed; install the [dicom] extra: {DICOM_EXTRA}")
    return ", ".join(f"{uid.name} ({uid})" for uid in sorted(uids)) or "no transfer syntax"
