"""A preprocessed volume that carries what was done to it: its HU window, offset, voxel size and orientation.

:func:`hu_from_preprocessed` is the one inverse of the preprocessing's intensity map (``clip(HU, lo, hi)`` mapped
linearly to [0, 1], minus ``offset``; :mod:`ctagrg.data.preprocess`); :meth:`PreprocessedVolume.to_hu` applies it
with the volume's own window, so that no reader of the volume restates the window.

>>> vol = preprocess_to_volume(load_ct("scan.nii.gz"), PreprocessConfig())    # doctest: +SKIP
>>> vol.array.shape, vol.hu_window, vol.axcodes                              # doctest: +SKIP
((240, 480, 480), (-1000.0, 200.0), 'SLP')
>>> hu = vol.to_hu()                                                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ctagrg.data.ctio import CTVolume
    from ctagrg.data.preprocess import PreprocessConfig


def hu_from_preprocessed(array: Any, hu_window: tuple[float, float], offset: float) -> Any:
    """Undo the preprocessing's intensity map: ``(array + offset) × (hi − lo) + lo``, clipped to the window.

    Args:
        array: preprocessed values, any shape, ``(clip(HU, lo, hi) − lo) / (hi − lo) − offset``: a numpy array, or
            a torch tensor (an encoder's input; the result keeps its dtype, device and autograd graph).
        hu_window: (lo, hi) HU of the preprocessing (``PreprocessConfig.hu_min``, ``hu_max``).
        offset: subtracted after the [0, 1] mapping (``PreprocessConfig.offset``).

    Returns:
        HU of ``array``'s shape (float32 numpy for numpy input), in [lo, hi]: voxels the preprocessing clipped stay
        at the window's ends, and float rounding (or the cache's uint8 levels) cannot step outside it.
    """
    lo, hi = (float(v) for v in hu_window)
    if not hi > lo:
        raise ValueError(f"HU window: expected lo < hi, got ({lo:g}, {hi:g})")
    if hasattr(array, "clamp") and not isinstance(array, np.ndarray):  # a torch tensor
        return ((array + offset) * (hi - lo) + lo).clamp(lo, hi)
    hu = (np.asarray(array, np.float32) + np.float32(offset)) * np.float32(hi - lo) + np.float32(lo)
    return np.clip(hu, lo, hi, out=hu)


@dataclass
class PreprocessedVolume:
    """One preprocessed volume and the facts needed to read it.

    Attributes:
        array: (D, H, W) float32, values ``(clip(HU, lo, hi) − lo) / (hi − lo) − offset``.
        hu_window: (lo, hi) HU the values were windowed to.
        offset: subtracted after the [0, 1] mapping.
        spacing_mm: voxel size along (D, H, W), mm.
        axcodes: the patient direction each axis points toward (nibabel axis codes, e.g. ``"SLP"``).
        affine: 4×4 voxel index → patient mm (RAS, the original scan's world), or None when not known (an array
            given already preprocessed, a cache file).
    """

    array: np.ndarray
    hu_window: tuple[float, float]
    offset: float
    spacing_mm: tuple[float, float, float]
    axcodes: str
    affine: np.ndarray | None = None

    def __post_init__(self) -> None:
        if np.ndim(self.array) != 3:
            raise ValueError(f"PreprocessedVolume: expected a (D, H, W) array, got shape {np.shape(self.array)}")
        self.hu_window = (float(self.hu_window[0]), float(self.hu_window[1]))
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]

    @classmethod
    def from_config(cls, array: np.ndarray, config: PreprocessConfig, affine: np.ndarray | None = None
                    ) -> PreprocessedVolume:
        """``array`` (already preprocessed with ``config``) with ``config``'s window, offset, spacing and axcodes.

        Raises:
            ValueError: ``array`` is not of ``config.shape``.
        """
        array = np.asarray(array)
        if array.shape != tuple(config.shape):
            raise ValueError(f"array input: expected a preprocessed volume of shape {tuple(config.shape)} (D, H, W), "
                             f"got {array.shape}; pass a file path to have it preprocessed")
        return cls(array.astype(np.float32, copy=False), (config.hu_min, config.hu_max), config.offset,
                   config.spacing, config.axcodes, affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def to_hu(self) -> np.ndarray:
        """(D, H, W) float32 HU in ``hu_window`` (:func:`hu_from_preprocessed`)."""
        return hu_from_preprocessed(self.array, self.hu_window, self.offset)


def preprocess_to_volume(vol: CTVolume, config: PreprocessConfig | None = None) -> PreprocessedVolume:
    """:func:`ctagrg.data.preprocess.preprocess_volume`, returned with its window, spacing, orientation and its grid's
    affine in the scan's world (:func:`ctagrg.data.preprocess.output_affine`)."""
    from ctagrg.data.preprocess import PreprocessConfig, output_affine, preprocess_volume

    config = config or PreprocessConfig()
    return PreprocessedVolume.from_config(preprocess_volume(vol, config), config, output_affine(vol, config))
