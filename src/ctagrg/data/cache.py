"""The preprocessed-volume cache: one ``<name>.safetensors`` per volume, uint8-quantised.

Format (measured in BENCHMARKS.md, "Preprocessing"): a safetensors file with one uint8 tensor ``volume`` of
shape (D, H, W) and string metadata ``lo``/``hi``; the float value is ``lo + q × (hi − lo) / 255``.

Why uint8: a default (240, 480, 480) volume is 55.3 MB in uint8 (limit 60 MB) against 110.6 MB in float16,
and loads back as float32 in well under 0.3 s because it is a plain read plus one multiply and one add. The
preprocessed values already live in a 1200 HU window mapped to [0, 1], so 255 steps are 4.7 HU apart and the
rounding error is at most 2.35 HU (0.00196 in normalised units), below CT noise (~10 HU). Padding (``-offset``)
and the window ends are exact.

Training moves the uint8 levels instead (:func:`load_cached_raw`, ``CachedVolumeDataset(dtype="uint8")``) and
dequantises the collated batch on the GPU with :func:`dequantize`, bit-identically to :func:`load_cached`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.utils.atomic import atomic_path

SUFFIX = ".safetensors"
FORMAT = "ctagrg-volume-u8-v1"
LEVELS = 255


class CacheError(ValueError):
    """A cache file that is missing, corrupt or of another format; the message starts with the path."""


def cache_path(out_dir: str | Path, name: str) -> Path:
    """Where volume ``name`` (VolumeName without ``.nii.gz``) lives in cache folder ``out_dir``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"cache name {name!r}: expected a plain file stem (no folders, not hidden)")
    return Path(out_dir) / f"{name}{SUFFIX}"


def save_cached(path: str | Path, volume: np.ndarray, lo: float, hi: float, extra: dict[str, Any] | None = None
                ) -> None:
    """Quantise ``volume`` (float, values in [lo, hi]) to uint8 and write it atomically.

    Args:
        path: target file (``.safetensors``).
        volume: float32 (D, H, W) preprocessed volume.
        lo, hi: the value range (``-offset`` and ``1 - offset`` for PreprocessConfig); values outside are clipped.
        extra: small JSON-able provenance stored in the file's metadata (source, spacing, ...).
    """
    from safetensors.numpy import save_file

    from ctagrg.utils.safetensors_order import sort_header

    if not hi > lo:
        raise ValueError(f"{path}: cache range hi ({hi}) must be above lo ({lo})")
    q = quantize(volume, lo, hi)
    meta = {"format": FORMAT, "lo": repr(float(lo)), "hi": repr(float(hi)), "extra": json.dumps(extra or {})}
    with atomic_path(path, suffix=SUFFIX) as tmp:
        save_file({"volume": q}, str(tmp), metadata=meta)
        sort_header(tmp)  # safetensors writes metadata in hash order: sorted, two runs write the same bytes


def read_cache_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a cache file: ``lo``, ``hi`` (floats), ``shape`` and the ``extra`` provenance dict."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            shape = tuple(f.get_slice("volume").get_shape())
    except FileNotFoundError:
        raise CacheError(f"{path}: cache file not found") from None
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CacheError(f"{path}: not a readable cache file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CacheError(f"{path}: expected cache format {FORMAT!r}, got {meta.get('format')!r}")
    return {"lo": float(meta["lo"]), "hi": float(meta["hi"]), "shape": shape, "extra": json.loads(meta["extra"])}


def load_cached_raw(path: str | Path) -> tuple[np.ndarray, float, float]:
    """Load a cached volume without dequantising: ``(q, lo, hi)``.

    Returns:
        q: uint8 numpy (D, H, W), the stored levels 0..255.
        lo, hi: the value range as stored (Python floats, i.e. float64); the float value is
            ``lo + q × (hi − lo) / 255`` (see :func:`load_cached` and :func:`dequantize`).
    """
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_cache_metadata(path)
    try:
        q = load_file(str(path))["volume"]
    except Exception as exc:
        raise CacheError(f"{path}: cannot read the volume ({exc})") from None
    return q, meta["lo"], meta["hi"]


def quantize(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float (D, H, W) in [lo, hi] (clipped) -> uint8 cache levels, ``rint((v − lo) × 255 / (hi − lo))``."""
    q = np.empty(np.shape(volume), np.uint8)
    scaled = (np.asarray(volume, np.float32) - np.float32(lo)) * np.float32(LEVELS / (hi - lo))
    np.rint(np.clip(scaled, 0, LEVELS, out=scaled), out=scaled)
    q[...] = scaled
    return q


def as_cached(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The float32 volume that caching ``volume`` and loading it back gives (:func:`save_cached` then
    :func:`load_cached`), without a file: what a model trained on the cache saw. Idempotent."""
    return levels_to_float(quantize(volume, lo, hi), lo, hi)


def load_cached(path: str | Path) -> np.ndarray:
    """Load a cached volume as float32 numpy (D, H, W), values ``lo + q × (hi − lo) / 255``."""
    q, lo, hi = load_cached_raw(path)
    return levels_to_float(q, lo, hi)


def levels_to_float(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 cache levels -> float32 ``lo + q × (hi − lo) / 255`` (as :func:`load_cached`)."""
    # numpy's uint8 -> float32 multiply is ~6x faster than torch's on one core here (0.03 s vs 0.19 s).
    # The scale is rounded to float32 once from the float64 range, then multiply and add round separately (no
    # fused multiply-add): :func:`dequantize` reproduces exactly these roundings, so both paths are bit-identical.
    out = np.multiply(q, np.float32((hi - lo) / LEVELS), dtype=np.float32)
    out += np.float32(lo)
    return out


def dequantize(volume_u8: Any, lo: Any, hi: Any) -> Any:
    """Dequantise a collated uint8 batch on the device it is on; bit-identical to :func:`load_cached`.

    Args:
        volume_u8: uint8 torch tensor (B, 1, D, H, W) (or (B, ...) of any rank), cache levels 0..255, on any device
            (the training GPU: it moves a quarter of the float32 bytes from the loader and over PCIe).
        lo, hi: (B,) tensors, the per-volume value range of the cache (normalised intensity units, e.g. -0.449 and
            0.551 for the default 1200 HU window); float64 as :class:`CachedVolumeDataset` with ``dtype="uint8"``
            returns them, so the scale below is computed from the same float64 numbers as in :func:`load_cached`.
            They may stay on the CPU; only B float32 scalars are sent to ``volume_u8``'s device.

    Returns:
        float32 tensor shaped like ``volume_u8`` on its device: ``lo + q × (hi − lo) / 255`` in normalised units.

    Why a multiply then an add and not ``torch.addcmul``: a fused multiply-add rounds once and can differ from the
    float32 path in the last bit; two correctly rounded IEEE operations (CPU and CUDA alike) match numpy exactly.
    """
    import torch

    if volume_u8.dtype != torch.uint8:
        raise TypeError(f"dequantize: expected a uint8 volume, got {volume_u8.dtype}")
    b = volume_u8.shape[0]
    if tuple(lo.shape) != (b,) or tuple(hi.shape) != (b,):
        raise ValueError(f"dequantize: lo and hi must be ({b},) for a batch of {b}, got {tuple(lo.shape)}, "
                         f"{tuple(hi.shape)}")
    bshape = (b,) + (1,) * (volume_u8.dim() - 1)
    lo64, hi64 = lo.double(), hi.double()
    scale = ((hi64 - lo64) / LEVELS).float().to(volume_u8.device).view(bshape)
    offset = lo64.float().to(volume_u8.device).view(bshape)
    # .float() (exact for 0..255) then in-place multiply and add: on one CPU thread 0.19 s for a (240, 480, 480)
    # volume against 0.34 s for torch.mul(uint8, float32), which casts inside the broadcast multiply; same values.
    return volume_u8.float().mul_(scale).add_(offset)


def load_cached_tensor(path: str | Path) -> Any:
    """Load a cached volume as a float32 torch tensor (D, H, W) (shares memory with :func:`load_cached`)."""
    import torch

    return torch.from_numpy(load_cached(path))
