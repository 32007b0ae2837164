"""Slices of a preprocessed volume for the viewer: back to HU, windowed to 8 bits, oriented, PNG-encoded.

The preprocessed volume is (D, H, W) in SLP: index 0 → 1 runs toward patient Superior, Left, Posterior. Images
are shown the radiological way (the patient faces the viewer, lying on the back for axial):

========  =============  ===================================  ==========================================
plane     slice axis     image rows (top → bottom)            image columns (left → right)
========  =============  ===================================  ==========================================
axial     0 (D, S)       W: anterior → posterior              H: patient's right → left
coronal   2 (W, P)       D: superior → inferior (flipped)     H: patient's right → left
sagittal  1 (H, L)       D: superior → inferior (flipped)     W: anterior → posterior
========  =============  ===================================  ==========================================

A saliency map on the same (D, H, W) grid is oriented the same way and drawn as an RGBA heat map
(:func:`render_heatmap_png`) that the viewer lays over the slice.

>>> hu = PreprocessedVolume.from_config(volume, config).to_hu()     # doctest: +SKIP
>>> png = render_slice_png(hu, "axial", 120, *window_bounds(*WINDOWS["lung"], -1000, 200))  # doctest: +SKIP
>>> heat = render_heatmap_png(saliency, "axial", 120)                       # doctest: +SKIP
"""

from __future__ import annotations

import io

import numpy as np

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
# plane -> volume axis its index runs along (SLP: axial slices stack along S, coronal along P, sagittal along L)
PLANE_AXIS: dict[str, int] = {"axial": 0, "coronal": 2, "sagittal": 1}
# Display windows in HU (lower, upper), the usual chest presets (level/width: -600/1500, 40/400, 300/1500).
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "mediastinum": (-160.0, 240.0),
    "bone": (-450.0, 1050.0),
}


def window_bounds(lower: float, upper: float, hu_min: float, hu_max: float) -> tuple[float, float]:
    """Clip a display window (HU) to the range the model's preprocessing keeps.

    Preprocessing clipped every voxel to [hu_min, hu_max], so grey levels spent outside it would never be used:
    the lung preset (-1350, 150) becomes (-1000, 150) with the seed's (-1000, 200) window.

    Raises:
        ValueError: the window is empty or lies outside [hu_min, hu_max].
    """
    if not upper > lower:
        raise ValueError(f"window: expected upper > lower HU, got ({lower:g}, {upper:g})")
    lo, hi = max(lower, hu_min), min(upper, hu_max)
    if not hi > lo:
        raise ValueError(f"window ({lower:g}, {upper:g}) HU lies outside the model's preprocessing window "
                         f"({hu_min:g}, {hu_max:g}) HU: nothing of the scan is kept there")
    return lo, hi


def level_width_to_bounds(level: float, width: float) -> tuple[float, float]:
    """Window level/width (HU) → (lower, upper) HU."""
    if not width > 0:
        raise ValueError(f"window width: expected > 0 HU, got {width:g}")
    return level - width / 2.0, level + width / 2.0


def num_slices(shape: tuple[int, ...], plane: str) -> int:
    """Number of slices of ``plane`` in a (D, H, W) volume."""
    return int(shape[PLANE_AXIS[_check_plane(plane)]])


def display_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a (D, H, W) SLP volume, oriented for display (see the module table).

    Returns a view: axial (W, H), coronal (D, H), sagittal (D, W).

    Raises:
        ValueError: unknown plane. IndexError: index outside [0, n - 1] (the message names the range).
    """
    n = num_slices(volume.shape, plane)
    if not 0 <= index < n:
        raise IndexError(f"{plane} slice {index} out of range: valid indices are 0..{n - 1}")
    if plane == "axial":
        return volume[index].T  # rows = W (anterior first), columns = H (right first)
    if plane == "coronal":
        return volume[::-1, :, index]  # superior row first; columns = H (right first)
    return volume[::-1, index, :]  # sagittal: superior row first; columns = W (anterior first)


def apply_window(image: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """HU image (any shape) → uint8: ``lower`` and below → 0, ``upper`` and above → 255, linear between."""
    scaled = (image.astype(np.float32) - np.float32(lower)) * np.float32(255.0 / (upper - lower))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _heat_lut() -> np.ndarray:
    """(256, 4) uint8 RGBA: level 0 fully transparent; then black-red → red → yellow → white (a "hot" ramp), its
    alpha rising from 40 % to opaque, so that weak saliency tints the slice and strong saliency covers it."""
    anchors = np.array([0.0, 0.35, 0.7, 1.0])
    colours = np.array([[96, 0, 0], [230, 30, 0], [255, 210, 0], [255, 255, 255]], dtype=np.float64)
    levels = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.interp(levels, anchors, colours[:, c]) for c in range(3)], axis=1)
    alpha = 102.0 + 153.0 * levels
    lut = np.rint(np.concatenate([rgb, alpha[:, None]], axis=1)).astype(np.uint8)
    lut[0] = 0
    return lut


HEAT_LUT: np.ndarray = _heat_lut()


def heatmap_rgba(image: np.ndarray) -> np.ndarray:
    """(rows, cols) saliency → (rows, cols, 4) uint8 RGBA through :data:`HEAT_LUT`.

    ``image`` is float in [0, 1] (values outside are clipped, NaN counts as 0; below 1/510 rounds to the transparent
    level 0), or uint8 levels 0..255 as they are (a map stored at a quarter of float32's memory).
    """
    if image.dtype == np.uint8:
        return HEAT_LUT[image]
    levels = np.rint(np.clip(np.nan_to_num(image.astype(np.float32), nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return HEAT_LUT[levels]


def encode_png(image: np.ndarray) -> bytes:
    """(rows, cols) uint8 → an 8-bit greyscale PNG; (rows, cols, 4) uint8 → an RGBA PNG."""
    from PIL import Image  # Pillow comes with matplotlib; imported here so the server starts without it loaded

    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 4)):
        raise ValueError(f"encode_png: expected a 2D uint8 image or (rows, cols, 4) RGBA, got {image.ndim}D "
                         f"{image.dtype} {image.shape}")
    buf = io.BytesIO()
    # A 2D uint8 array becomes mode "L". compress_level 1: slices are re-requested on every slider move; on a
    # 480×480 lung-window slice of a real CT it took 4 ms for 48 kB, the default level 6 took 12 ms for 41 kB.
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_slice_png(hu: np.ndarray, plane: str, index: int, lower: float, upper: float) -> bytes:
    """PNG of slice ``index`` of ``plane`` of a (D, H, W) SLP HU volume, windowed to [lower, upper] HU."""
    return encode_png(apply_window(display_slice(hu, plane, index), lower, upper))


def render_heatmap_png(saliency: np.ndarray, plane: str, index: int) -> bytes:
    """RGBA PNG of slice ``index`` of ``plane`` of a (D, H, W) SLP saliency map (float in [0, 1] or uint8 levels, see
    :func:`heatmap_rgba`): the same pixels, the same orientation as :func:`render_slice_png` of that slice,
    transparent where the map is 0."""
    return encode_png(heatmap_rgba(display_slice(saliency, plane, index)))


def _check_plane(plane: str) -> str:
    if plane not in PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}: expected one of {', '.join(PLANES)}")
    return plane
