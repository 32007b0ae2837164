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
  already HU (see :func:`_stored_values_are_hu`), so CT-RATE's corrected release (already HU, metadata still
  saying intercept −1024) is never rescaled twice.
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.data.names import ITK_SUFFIXES, NIFTI_SUFFIXES

# Values below this are needed somewhere in a CT in HU: air is −1000, lung about −850.
MIN_HU_REQUIRED = -500.0
# HU range of outside air and lung, used to tell stored HU from stored raw detector values.
AIR_LUNG_HU = (-1200.0, -600.0)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Above this tilt between voxel and patient axes, load_ct warns (preprocessing does not resample obliquity away).
OBLIQUE_WARN_DEGREES = 5.0


class CTReadError(ValueError):
    """A scan that cannot be read as a 3D CT in HU; the message starts with the path."""


def error_text(source: str, exc: BaseException) -> str:
    """One line naming the scan and the problem, for batch error lines: a CTReadError's message (it starts with
    the path) as it is, any other exception with its class (an unexpected failure), prefixed with ``source`` where
    the message does not name it."""
    text = str(exc) if isinstance(exc, CTReadError) else f"{type(exc).__name__}: {exc}"
    return text if source in text else f"{source}: {text}"


class CTReadWarning(UserWarning):
    """Something about a scan that was handled but deserves a look (skipped rescale, several series, ...)."""


@contextlib.contextmanager
def collect_read_warnings() -> Iterator[list[str]]:
    """Collect the :class:`CTReadWarning` messages raised inside the block into the yielded list (each once, in
    order) instead of printing them; any other warning is passed on as usual when the block ends.

    ``warnings.catch_warnings`` swaps process-wide state: callers reading in several threads at once should hold
    one lock around this (``ctagrg serve`` reads under its model lock)."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CTReadWarning)
        try:
            yield messages
        finally:
            others = []
            for w in caught:
                if issubclass(w.category, CTReadWarning):
                    if str(w.message) not in messages:
                        messages.append(str(w.message))
                else:
                    others.append(w)
    for w in others:  # outside the block: the caller's filters decide (DeprecationWarning stays hidden, -W works)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


@dataclass(frozen=True)
class CTMetadata:
    """The parts of a CT-RATE metadata row that matter for reading a volume. ``None`` = not given.

    ``xy_spacing`` is (first, second) in-plane axis in mm, ``z_spacing`` the slice distance in mm.
    """

    slope: float | None = None
    intercept: float | None = None
    xy_spacing: tuple[float, float] | None = None
    z_spacing: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | CTMetadata | None) -> CTMetadata | None:
        """Parse a CT-RATE metadata row (``XYSpacing`` is a string such as ``"[0.75, 0.75]"``)."""
        if row is None or isinstance(row, CTMetadata):
            return row
        xy = _parse_xy(row.get("XYSpacing"))
        return cls(
            slope=_num(row.get("RescaleSlope")),
            intercept=_num(row.get("RescaleIntercept")),
            xy_spacing=xy,
            z_spacing=_num(row.get("ZSpacing")),
        )


def _num(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metadata: expected a number, got {value!r}") from None
    return None if math.isnan(out) else out


def _parse_xy(value: Any) -> tuple[float, float] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"metadata: XYSpacing {value!r} is not a list like '[0.75, 0.75]'") from None
    if isinstance(value, (int, float)):
        return (float(value), float(value))
    vals = [float(v) for v in value]
    if len(vals) != 2:
        raise ValueError(f"metadata: XYSpacing should have 2 values, got {vals}")
    return (vals[0], vals[1])


class CTVolume:
    """A CT scan: ``hu`` (float32, 3D, the file's voxel order), ``affine`` (4×4, voxel → RAS mm), ``spacing``.

    Built either from HU directly (``CTVolume(hu, affine, source=...)``) or lazily from stored values
    (``CTVolume(raw=int16_array, slope=1.0, intercept=-1024.0, affine=..., source=...)``); ``hu`` is then
    computed on first access.
    """

    def __init__(
        self,
        hu: np.ndarray | None = None,
        affine: np.ndarray | None = None,
        spacing: tuple[float, ...] | None = None,
        source: str = "<array>",
        *,
        raw: np.ndarray | None = None,
        slope: float = 1.0,
        intercept: float = 0.0,
    ) -> None:
        if (hu is None) == (raw is None):
            raise ValueError("CTVolume: give exactly one of hu= or raw=")
        if affine is None:
            raise ValueError("CTVolume: an affine is required")
        self.raw = np.asarray(hu if hu is not None else raw)
        self.slope = 1.0 if hu is not None else float(slope)
        self.intercept = 0.0 if hu is not None else float(intercept)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.source = str(source)
        self._hu: np.ndarray | None = None
        self._raw_range: tuple[float, float] | None = None
        if spacing is not None and not np.allclose(spacing, self.spacing, rtol=1e-3):
            raise ValueError(f"{source}: spacing {tuple(spacing)} disagrees with the affine's {self.spacing}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (the affine's column norms)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """nibabel axis codes: the patient direction each array axis points toward, e.g. ('L', 'P', 'S')."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @property
    def hu(self) -> np.ndarray:
        """float32 HU, same shape and voxel order as the stored array."""
        if self._hu is None:
            if self.slope == 1.0 and self.intercept == 0.0 and self.raw.dtype == np.float32:
                self._hu = self.raw if self.raw.flags.writeable else self.raw.copy()
            else:
                self._hu = (self.raw.astype(np.float32) * np.float32(self.slope)) + np.float32(self.intercept)
        return self._hu

    def hu_range(self) -> tuple[float, float]:
        """(min, max) HU without building the float32 copy (slope may be negative in theory); computed once."""
        if self._raw_range is None:
            self._raw_range = (float(self.raw.min()), float(self.raw.max()))
        lo, hi = (v * self.slope + self.intercept for v in self._raw_range)
        return (min(lo, hi), max(lo, hi))

    def __repr__(self) -> str:
        return f"CTVolume(shape={self.shape}, spacing={self.spacing}, axcodes={self.axcodes}, source={self.source!r})"


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
        vol = _apply_metadata(vol, meta)
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


def _air_fraction(raw_sample: np.ndarray, slope: float, intercept: float) -> float:
    hu = raw_sample.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return float(np.mean((hu >= AIR_LUNG_HU[0]) & (hu <= AIR_LUNG_HU[1])))


def _stored_values_are_hu(vol: CTVolume, slope: float, intercept: float) -> tuple[bool, float, float]:
    """Decide whether the file's values are already HU or still need the metadata rescale.

    Rule: a chest CT always contains outside air and lung, i.e. many voxels in [−1200, −600] HU. Compare the
    fraction of voxels in that range under both readings (as stored vs. with the metadata rescale) on every 4th
    voxel per axis; the reading with more air/lung wins (ties keep the stored values, which never rescales twice).
    Returns (already_hu, fraction as stored, fraction after rescale).
    """
    sample = vol.raw[::4, ::4, ::4]
    as_stored = _air_fraction(sample, vol.slope, vol.intercept)
    rescaled = _air_fraction(sample, slope, intercept)
    return as_stored >= rescaled, as_stored, rescaled


def _apply_metadata(vol: CTVolume, meta: CTMetadata) -> CTVolume:
    affine = _metadata_affine(vol, meta)
    slope, inter = vol.slope, vol.intercept
    if meta.slope is not None or meta.intercept is not None:
        m_slope = 1.0 if meta.slope is None else meta.slope
        m_inter = 0.0 if meta.intercept is None else meta.intercept
        file_scaled = (vol.slope, vol.intercept) != (1.0, 0.0)
        if (m_slope, m_inter) == (vol.slope, vol.intercept):
            pass  # the file already carries the metadata's rescale (e.g. NIfTI scl_inter -1024): apply it once
        elif file_scaled:
            warnings.warn(f"{vol.source}: the file has its own rescale (slope {vol.slope:g}, intercept "
                          f"{vol.intercept:g}); ignoring the metadata's ({m_slope:g}, {m_inter:g})",
                          CTReadWarning, stacklevel=3)
        elif (m_slope, m_inter) != (1.0, 0.0):
            already, f_stored, f_resc = _stored_values_are_hu(vol, m_slope, m_inter)
            if already:
                warnings.warn(
                    f"{vol.source}: metadata says slope {m_slope:g}, intercept {m_inter:g}, but the stored values "
                    f"are already HU ({f_stored:.0%} of voxels in the air/lung range {AIR_LUNG_HU} as stored vs "
                    f"{f_resc:.0%} after rescaling); not rescaling again", CTReadWarning, stacklevel=3)
            else:
                slope, inter = m_slope, m_inter
    return CTVolume(raw=vol.raw, slope=slope, intercept=inter, affine=affine, source=vol.source)


def _metadata_affine(vol: CTVolume, meta: CTMetadata) -> np.ndarray:
    """Replace the header spacing by the metadata's: the slice axis (the one most aligned with superior) gets
    ``ZSpacing``, the other two ``XYSpacing`` in array order. Directions and origin are kept."""
    affine = vol.affine.copy()
    if meta.xy_spacing is None and meta.z_spacing is None:
        return affine
    cols = affine[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    norms[norms == 0] = 1.0
    z_axis = int(np.argmax(np.abs(cols[2] / norms)))
    in_plane = [a for a in range(3) if a != z_axis]
    new = norms.copy()
    if meta.z_spacing is not None:
        new[z_axis] = meta.z_spacing
    if meta.xy_spacing is not None:
        new[in_plane[0]], new[in_plane[1]] = meta.xy_spacing
    old = np.linalg.norm(cols, axis=0)
    if np.all(old > 0) and not np.allclose(old, 1.0) and not np.allclose(old, new, rtol=0.01):
        warnings.warn(f"{vol.source}: header spacing {tuple(old.round(4))} differs from the metadata's "
                      f"{tuple(new.round(4))}; using the metadata", CTReadWarning, stacklevel=4)
    affine[:3, :3] = cols / norms * new
    return affine
