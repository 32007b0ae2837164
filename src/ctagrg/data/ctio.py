"""Read a CT scan (NIfTI, NRRD, MHA/MHD, DICOM folder or ``.zip``) into HU with its patient geometry.

>>> vol = load_ct("scan.nii.gz")                       # doctest: +SKIP
>>> vol.hu.shape, vol.spacing, vol.axcodes             # doctest: +SKIP
((512, 512, 64), (0.84, 0.84, 5.0), ('L', 'P', 'S'))

Conventions
- ``CTVolume.affine`` maps a voxel index of the array *as stored* to patient millimetres in nibabel's **RAS**
  world (x → patient Right-to-Left is negative x, y → Anterior, z → Superior). ITK/DICOM LPS geometry is
  converted by negating x and y.
- HU = raw × slope + intercept. The raw array and the two numbers are kept apart so preprocessing can rescale
  chunk by chunk instead of holding a float32 copy of the whole scan (a 512×512×320 scan is 335 MB in float32).
- Scaling comes from the file (NIfTI scl_slope/scl_inter, DICOM RescaleSlope/RescaleIntercept), or from a
  CT-RATE metadata row when one is given. A metadata rescale is applied **only** when the stored values are not
  already HU (see :func:`ctagrg.data.ct_metadata.stored_values_are_hu`), so CT-RATE's corrected release (already
  HU, metadata still saying intercept −1024) is never rescaled twice.

The types live beside this module and are imported from here: :class:`CTVolume` (ctvolume), :class:`CTMetadata`
(ct_metadata), :class:`CTReadError`, :class:`CTReadWarning` (read_errors).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.data.ct_metadata import CTMetadata, apply_metadata
from ctagrg.data.ctvolume import LPS_TO_RAS, CTVolume
from ctagrg.data.names import ITK_SUFFIXES, NIFTI_SUFFIXES
from ctagrg.data.read_errors import CTReadError, CTReadWarning, collect_read_warnings, error_text

__all__ = ["LPS_TO_RAS", "MIN_HU_REQUIRED", "OBLIQUE_WARN_DEGREES", "CTMetadata", "CTReadError", "CTReadWarning",
           "CTVolume", "collect_read_warnings", "error_text", "load_ct"]

# Values below this are needed somewhere in a CT in HU: air is −1000, lung about −850.
MIN_HU_REQUIRED = -500.0
# Above this tilt between voxel and patient axes, load_ct warns (preprocessing does not resample obliquity away).
OBLIQUE_WARN_DEGREES = 5.0


def load_ct(path: str | Path, metadata: Mapping[str, Any] | CTMetadata | None = None, *,
            max_bytes: int | None = None) -> CTVolume:
    """Read a CT scan and return it in HU with its geometry.

    Before anything is decoded, the memory that reading needs is estimated from the headers and checked against
    ``max_bytes`` (:func:`ctagrg.data.read_cost.check_read_cost`), and a file that holds less data than its header
    promises is refused.

    Args:
        path: ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, a DICOM series folder, or a ``.zip``
            holding one. A folder with several series uses the one with the most slices (with a warning).
        metadata: optional CT-RATE metadata row (mapping with ``XYSpacing``, ``ZSpacing``, ``RescaleSlope``,
            ``RescaleIntercept``) or a :class:`CTMetadata`. Its spacing replaces the header's; its rescale is
            applied only when the stored values are not already HU.
        max_bytes: the memory budget of the read, bytes; None: half of this machine's memory
            (:func:`ctagrg.data.read_cost.default_max_memory_mb`).

    Raises:
        CTReadError: unreadable/truncated file, not 3D, NaN voxels, missing spacing, or values that cannot be CT.
        ScanTooLarge: (a CTReadError) reading it would need more than ``max_bytes``.
    """
    from ctagrg.data.read_cost import check_read_cost

    path = Path(path)
    if not path.exists():
        raise CTReadError(f"{path}: no such file or folder")
    check_read_cost(path, max_bytes)
    try:
        meta = CTMetadata.from_row(metadata)
    except ValueError as exc:
        raise CTReadError(f"{path}: {exc}") from None
    vol = _read_any(path)
    if meta is not None:
        vol = apply_metadata(vol, meta)
    _validate(vol)
    return vol


def _read_any(path: Path) -> CTVolume:
    name = path.name.lower()
    try:
        if path.is_dir() or name.endswith(".zip"):
            from ctagrg.data.dicom import read_dicom_series

            return read_dicom_series(path)
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(path)
        if name.endswith(ITK_SUFFIXES):
            return _read_itk(path)
        if name.endswith(".dcm"):
            raise CTReadError(f"{path}: a single DICOM file is one slice; give the folder holding the series")
    except CTReadError:
        raise
    except Exception as exc:  # readers raise many types (HeaderDataError, EOFError, zlib/isal errors, ...)
        raise CTReadError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    raise CTReadError(f"{path}: unknown format; expected {', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)}, .zip or a folder")


def _read_nifti(path: Path) -> CTVolume:
    """NIfTI-1/2 via nibabel (header, affine, scaling). A ``.nii.gz`` is decompressed with isal (0.39 s CPU for
    168 MB here vs 0.8 s with zlib, and 0.55 s when streamed through nibabel's readinto), into one buffer no larger
    than the header's voxels need, and the voxels are a zero-copy view of it (read-only)."""
    import nibabel as nib

    from ctagrg.data.read_cost import gunzip_bounded, gunzip_prefix, nifti_data_offset, nifti_header

    gz = path.name.lower().endswith(".gz")
    data = None
    if gz:
        head = nifti_header(gunzip_prefix(path, 1024, str(path)), str(path))
        need = nifti_data_offset(head) + math.prod(head.get_data_shape()) * head.get_data_dtype().itemsize
        data = gunzip_bounded(path.read_bytes(), need, str(path))
    with (io.BytesIO(data) if gz else open(path, "rb")) as fh:
        sizeof_hdr = int.from_bytes(fh.read(4), "little")
        fh.seek(0)
        if sizeof_hdr not in (348, 0x5C010000, 540, 0x1C020000):  # NIfTI-1/2, either byte order
            raise CTReadError(f"{path}: not a NIfTI file (header size field {sizeof_hdr}, expected 348 or 540)")
        cls = nib.Nifti2Image if sizeof_hdr in (540, 0x1C020000) else nib.Nifti1Image
        unchecked = cls.header_class.from_fileobj(fh, check=False)  # nibabel's checks turn pixdim 0 into 1
        fh.seek(0)
        _check_nifti_spacing(unchecked, path)
        img = cls.from_stream(fh)
        raw = _nifti_voxels(img, data, path) if gz else np.asanyarray(img.dataobj.get_unscaled())
    hdr = img.header
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        warnings.warn(f"{path}: no sform/qform in the header; orientation assumed from pixdim only (RAS)",
                      CTReadWarning, stacklevel=3)
    _warn_infinite_scaling(path, float(unchecked["scl_slope"]), float(unchecked["scl_inter"]))
    slope, inter = img.dataobj.slope, img.dataobj.inter
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    raw = _squeeze_to_3d(raw, path)
    if not raw.dtype.isnative:  # big-endian files: torch cannot view them
        raw = raw.astype(raw.dtype.newbyteorder("="))
    return CTVolume(raw=raw, slope=slope, intercept=inter, affine=img.affine, source=str(path))


def _warn_infinite_scaling(path: Path, slope: float, inter: float) -> None:
    """NIfTI scl_slope/scl_inter of ±inf cannot be applied; nibabel ignores them (as 1 and 0): say so. (NaN is the
    usual "no scaling" that nibabel writes, and 0 the standard's.)"""
    bad = [f"{k} {v:g}" for k, v in (("scl_slope", slope), ("scl_inter", inter)) if math.isinf(v)]
    if bad:
        warnings.warn(f"{path}: non-finite scaling in the header ({', '.join(bad)}); read the stored values as HU "
                      f"(slope 1, intercept 0)", CTReadWarning, stacklevel=4)


def _nifti_voxels(img: Any, data: bytes, path: Path) -> np.ndarray:
    proxy = img.dataobj  # nibabel's ArrayProxy knows the resolved offset/shape/dtype/order of the voxels
    shape, dtype, offset = tuple(proxy.shape), np.dtype(proxy.dtype), int(proxy.offset)
    count = int(np.prod(shape))
    if offset + count * dtype.itemsize > len(data):
        raise CTReadError(f"{path}: truncated: header promises {count} voxels of {dtype} after byte {offset}, "
                          f"the file holds {max(0, len(data) - offset)} bytes of data")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order=proxy.order)


def _check_nifti_spacing(hdr: Any, path: Path) -> None:
    """Without sform/qform the voxel size comes from pixdim alone; zero/NaN there means it is missing (nibabel
    would silently assume 1 mm)."""
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        pixdim = tuple(float(v) for v in hdr["pixdim"][1:4])
        if not all(math.isfinite(v) and v > 0 for v in pixdim):
            raise CTReadError(f"{path}: missing or invalid voxel spacing (pixdim {pixdim}, no sform/qform)")


def _read_itk(path: Path) -> CTVolume:
    """NRRD/MHA/MHD via SimpleITK. ITK geometry is LPS and its index order (i, j, k) is the reverse of the numpy
    array's axes, so the affine's columns are reversed and x/y negated."""
    import SimpleITK as sitk

    from ctagrg.data.read_cost import itk_image_io

    try:
        img = sitk.ReadImage(str(path), imageIO=itk_image_io(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise CTReadError(f"{path}: cannot read ({first})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(f"{path}: expected one value per voxel, got {img.GetNumberOfComponentsPerPixel()} "
                          f"(a vector/4D image)")
    if img.GetDimension() != 3:
        raise CTReadError(f"{path}: expected a 3D volume, got a {img.GetDimension()}D image of size {img.GetSize()}")
    raw = sitk.GetArrayFromImage(img)  # (k, j, i)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    lps[:3, :3] = lps[:3, :3][:, ::-1].copy()  # array axis a ↔ ITK index 2 − a
    return CTVolume(raw=raw, affine=LPS_TO_RAS @ lps, source=str(path))


def _squeeze_to_3d(raw: np.ndarray, path: Path) -> np.ndarray:
    while raw.ndim > 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 3 or min(raw.shape) < 2:
        raise CTReadError(f"{path}: expected a 3D volume, got shape {tuple(raw.shape)}")
    return raw


def _validate(vol: CTVolume) -> None:
    src = vol.source
    if vol.raw.ndim != 3 or min(vol.raw.shape) < 2:
        raise CTReadError(f"{src}: expected a 3D volume, got shape {tuple(vol.raw.shape)}")
    sp = np.asarray(vol.spacing)
    if not np.all(np.isfinite(vol.affine)) or not np.all(sp > 1e-6):
        raise CTReadError(f"{src}: missing or invalid voxel spacing {tuple(sp.round(6))} (affine has zero/NaN columns)")
    if vol.raw.dtype.kind == "f":
        _check_finite(vol)
    if vol.raw.dtype.kind not in "iuf":
        raise CTReadError(f"{src}: unsupported voxel type {vol.raw.dtype}")
    tilt = _obliquity_degrees(vol.affine)
    if tilt > OBLIQUE_WARN_DEGREES:
        warnings.warn(f"{src}: voxel axes are oblique by up to {tilt:.1f} degrees (gantry tilt?); preprocessing maps "
                      f"them to the nearest patient axes without resampling the obliquity away", CTReadWarning,
                      stacklevel=3)
    lo, hi = vol.hu_range()
    if lo > MIN_HU_REQUIRED:
        raise CTReadError(f"{src}: intensities cannot be CT in HU: no value below {MIN_HU_REQUIRED:g} "
                          f"(range {lo:g} .. {hi:g}); is this an MR, a mask, or raw values without their rescale?")


def _check_finite(vol: CTVolume) -> None:
    """NaN voxels cannot be CT (an error); ±inf ones are clipped by the HU window later (a warning)."""
    nan = int(np.isnan(vol.raw).sum())
    if nan:
        raise CTReadError(f"{vol.source}: {nan} NaN voxels")
    inf = int(np.isinf(vol.raw).sum())
    if inf:
        warnings.warn(f"{vol.source}: {inf} infinite voxels (±inf); preprocessing clips them to the HU window",
                      CTReadWarning, stacklevel=4)


def _obliquity_degrees(affine: np.ndarray) -> float:
    """Largest angle between a voxel axis and its nearest patient axis, in degrees."""
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return float(np.degrees(np.arccos(np.clip(np.abs(cols).max(axis=0), 0.0, 1.0))).max())
