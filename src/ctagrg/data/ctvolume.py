"""A CT scan in memory: :class:`CTVolume`, stored values with their HU rescale and the patient geometry.

Conventions
- ``CTVolume.affine`` maps a voxel index of the array *as stored* to patient millimetres in nibabel's **RAS**
  world (x → patient Right-to-Left is negative x, y → Anterior, z → Superior). ITK/DICOM LPS geometry is
  converted by negating x and y (:data:`LPS_TO_RAS`).
- HU = raw × slope + intercept. The raw array and the two numbers are kept apart so preprocessing can rescale
  chunk by chunk instead of holding a float32 copy of the whole scan (a 512×512×320 scan is 335 MB in float32).
"""

from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
