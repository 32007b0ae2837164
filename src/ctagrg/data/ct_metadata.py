"""A CT-RATE metadata row applied to a scan just read: its spacing replaces the header's, and its rescale is
applied **only** when the stored values are not already HU (:func:`stored_values_are_hu`), so CT-RATE's corrected
release (already HU, metadata still saying intercept −1024) is never rescaled twice."""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctagrg.data.ctvolume import CTVolume
from ctagrg.data.read_errors import CTReadWarning

# HU range of outside air and lung, used to tell stored HU from stored raw detector values.
AIR_LUNG_HU = (-1200.0, -600.0)


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


def air_fraction(raw_sample: np.ndarray, slope: float, intercept: float) -> float:
    hu = raw_sample.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return float(np.mean((hu >= AIR_LUNG_HU[0]) & (hu <= AIR_LUNG_HU[1])))


def stored_values_are_hu(vol: CTVolume, slope: float, intercept: float) -> tuple[bool, float, float]:
    """Decide whether the file's values are already HU or still need the metadata rescale.

    Rule: a chest CT always contains outside air and lung, i.e. many voxels in [−1200, −600] HU. Compare the
    fraction of voxels in that range under both readings (as stored vs. with the metadata rescale) on every 4th
    voxel per axis; the reading with more air/lung wins (ties keep the stored values, which never rescales twice).
    Returns (already_hu, fraction as stored, fraction after rescale).
    """
    sample = vol.raw[::4, ::4, ::4]
    as_stored = air_fraction(sample, vol.slope, vol.intercept)
    rescaled = air_fraction(sample, slope, intercept)
    return as_stored >= rescaled, as_stored, rescaled


def apply_metadata(vol: CTVolume, meta: CTMetadata) -> CTVolume:
    affine = metadata_affine(vol, meta)
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
            already, f_stored, f_resc = stored_values_are_hu(vol, m_slope, m_inter)
            if already:
                warnings.warn(
                    f"{vol.source}: metadata says slope {m_slope:g}, intercept {m_inter:g}, but the stored values "
                    f"are already HU ({f_stored:.0%} of voxels in the air/lung range {AIR_LUNG_HU} as stored vs "
                    f"{f_resc:.0%} after rescaling); not rescaling again", CTReadWarning, stacklevel=3)
            else:
                slope, inter = m_slope, m_inter
    return CTVolume(raw=vol.raw, slope=slope, intercept=inter, affine=affine, source=vol.source)


def metadata_affine(vol: CTVolume, meta: CTMetadata) -> np.ndarray:
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
