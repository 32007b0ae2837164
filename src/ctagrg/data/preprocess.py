"""CT-AGRG preprocessing: reorient to SLP, trilinear resample, HU window, centre crop/pad. See docs/preprocessing.md.

>>> cfg = PreprocessConfig()                                   # (240, 480, 480) at (1.5, 0.75, 0.75) mm
>>> x = preprocess_file("scan.nii.gz", config=cfg)             # doctest: +SKIP
>>> x.shape, x.dtype                                           # doctest: +SKIP
((240, 480, 480), dtype('float32'))

Output: float32 (D, H, W) with axis 0 → patient Superior, 1 → patient Left, 2 → patient Posterior; values
``clip(HU, hu_min, hu_max)`` mapped linearly to [0, 1], minus ``offset``; padding = ``-offset`` (what air maps to).

Why not ``F.interpolate`` on the whole volume: on a 512×512×320 scan the float32 input and the un-cropped output
are 335 + 400 MB. Trilinear interpolation is separable, so we interpolate one axis at a time on chunks of output
slices and only for voxels that survive the centre crop. The sample positions are exactly those of
``torch.nn.functional.interpolate(mode="trilinear", size=new_size, align_corners=False)`` (tested against it), and
the HU rescale (linear) is applied after interpolation, which is mathematically identical.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.data.ctio import CTVolume, load_ct

# Output slices interpolated per chunk: bounds the float32 working set to ~2 × CHUNK input slices.
CHUNK = 16
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass
class PreprocessConfig:
    """Every preprocessing value of the seed (CT-AGRG) in one place; defaults reproduce it.

    Attributes:
        spacing: target voxel size in mm along the output axes (D, H, W).
        shape: output shape (D, H, W) after centre crop/pad.
        axcodes: output orientation as nibabel axis codes (patient direction each axis points toward).
        hu_min, hu_max: HU window; values are clipped to it, then mapped to [0, 1].
        offset: subtracted after the [0, 1] mapping (the seed's 0.449); padding value is ``-offset``.
        align_corners: interpolation grid convention (False: voxel centres at (i + 0.5) × spacing, as
            ``F.interpolate(align_corners=False)``; True: the first and last voxel centres coincide).
    """

    spacing: tuple[float, float, float] = (1.5, 0.75, 0.75)
    shape: tuple[int, int, int] = (240, 480, 480)
    axcodes: str = "SLP"
    hu_min: float = -1000.0
    hu_max: float = 200.0
    offset: float = 0.449
    align_corners: bool = False

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"PreprocessConfig.spacing: expected 3 positive mm values, got {self.spacing}")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"PreprocessConfig.shape: expected 3 positive sizes, got {self.shape}")
        codes = str(self.axcodes).upper()
        axes = {c if c in "LPS" else _OPPOSITE.get(c, "?") for c in codes}
        if len(codes) != 3 or axes != {"L", "P", "S"}:
            raise ValueError(f"PreprocessConfig.axcodes: expected one of each L/R, A/P, S/I (e.g. 'SLP'), "
                             f"got {codes!r}")
        self.axcodes = codes
        if not self.hu_max > self.hu_min:
            raise ValueError(f"PreprocessConfig: hu_max ({self.hu_max}) must be above hu_min ({self.hu_min})")

    @property
    def pad_value(self) -> float:
        """The value air (anything at or below hu_min) maps to."""
        return -self.offset


@dataclass(frozen=True)
class PreprocessPlan:
    """The geometry preprocessing will apply to one volume (also what ``ctagrg inspect`` prints).

    ``ornt`` is nibabel's orientation transform (input axis → output axis, flip). ``start[a]`` is the index in the
    resampled grid of output voxel 0 along axis a: positive = centre crop, negative = padding before.
    """

    in_shape: tuple[int, int, int]
    in_axcodes: tuple[str, str, str]
    ornt: np.ndarray
    reoriented_shape: tuple[int, int, int]
    reoriented_spacing: tuple[float, float, float]
    resampled_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    start: tuple[int, int, int]

    @property
    def effective_spacing(self) -> tuple[float, float, float]:
        """Actual output voxel size (mm): int() truncation makes it slightly differ from the target."""
        return tuple(n * s / r for n, s, r in zip(self.reoriented_shape, self.reoriented_spacing,  # type: ignore
                                                   self.resampled_shape, strict=True))


def plan(vol: CTVolume, config: PreprocessConfig) -> PreprocessPlan:
    """Compute the reorientation, resampled size (``int(old × spacing / target)``) and crop/pad of ``vol``."""
    import nibabel.orientations as nio

    ornt = nio.ornt_transform(nio.io_orientation(vol.affine), nio.axcodes2ornt(tuple(config.axcodes)))
    order = [0, 0, 0]
    for in_axis, (out_axis, _) in enumerate(ornt):
        order[int(out_axis)] = in_axis
    shape = tuple(vol.shape[a] for a in order)
    spacing = tuple(vol.spacing[a] for a in order)
    resampled = tuple(max(1, int(n * s / t)) for n, s, t in zip(shape, spacing, config.spacing, strict=True))
    # Crop starts at (n - t) // 2; padding puts (t - n) // 2 before (the seed's convention; see docs).
    start = tuple((r - t) // 2 if r >= t else -((t - r) // 2) for r, t in zip(resampled, config.shape, strict=True))
    return PreprocessPlan(vol.shape, vol.axcodes, ornt, shape, spacing, resampled, config.shape, start)  # type: ignore


def output_affine(vol: CTVolume, config: PreprocessConfig) -> np.ndarray:
    """4×4 affine of the preprocessed (D, H, W) grid: voxel index → patient mm in the world of ``vol.affine`` (RAS).

    Composes exactly what :func:`preprocess_volume` does per output axis ``a`` (input axis ``i``, ``n`` voxels
    after reorientation, ``r`` after resampling, crop/pad start ``s``): output index ``k`` samples the reoriented
    position ``(k + s + 0.5) · n / r − 0.5`` (``align_corners=False``; ``(k + s) · (n − 1) / (r − 1)`` with True),
    which is input index ``n − 1 − that`` where the reorientation flips the axis. Obliquity is kept: the columns
    are ``vol.affine``'s, permuted and scaled. Padded voxels get positions too (outside the scan). Write a map on
    the preprocessed grid with this affine and viewers (3D Slicer, ITK-SNAP) overlay it on the original scan.
    """
    p = plan(vol, config)
    index = np.zeros((4, 4))  # output voxel index (homogeneous) -> input voxel index (homogeneous)
    index[3, 3] = 1.0
    for in_axis, (out_axis, direction) in enumerate(p.ornt):
        a = int(out_axis)
        n, r, s = p.reoriented_shape[a], p.resampled_shape[a], p.start[a]
        if config.align_corners:
            scale = (n - 1) / (r - 1) if r > 1 else float(n)  # r == 1: one sample at index 0, its size nominal
            shift = s * scale
        else:
            scale = n / r
            shift = (s + 0.5) * scale - 0.5
        if direction < 0:
            scale, shift = -scale, n - 1 - shift
        index[in_axis, a], index[in_axis, 3] = scale, shift
    return np.asarray(vol.affine, dtype=np.float64) @ index


def _axis_weights(n_in: int, n_res: int, start: int, n_out: int, align_corners: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, slice]:
    """Linear-interpolation taps for one axis.

    Returns (i0, i1, w, dst): output voxels ``dst`` (a slice of the n_out axis, those inside the resampled grid)
    take ``(1 - w) * x[i0] + w * x[i1]``. Source positions follow torch's ``area_pixel_compute_source_index``.
    """
    lo, hi = max(0, -start), min(n_out, n_res - start)
    j = np.arange(lo, hi, dtype=np.float64) + start
    if align_corners:
        src = j * ((n_in - 1) / (n_res - 1)) if n_res > 1 else np.zeros_like(j)
    else:
        src = np.maximum((j + 0.5) * (n_in / n_res) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float32)
    return i0, i1, w, slice(lo, max(lo, hi))


class _Workspace:
    """Work tensors reused across chunks. Allocating fresh ones per chunk (≈10 × 20 MB) made every chunk pay page
    faults again, which doubled the run time on our VM; the buffers are sized for CHUNK and sliced for the last."""

    def __init__(self) -> None:
        self._bufs: dict[str, Any] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        import torch

        buf = self._bufs.get(name)
        if buf is None or tuple(buf.shape[1:]) != tuple(shape[1:]) or buf.shape[0] < shape[0] or buf.dtype != dtype:
            buf = torch.empty((max(shape[0], CHUNK), *shape[1:]), dtype=dtype)
            self._bufs[name] = buf
        return buf[: shape[0]]


def _lerp_rows(x: Any, taps: tuple[Any, Any, Any], ws: _Workspace, name: str) -> Any:
    """Linear interpolation of a (C, N, M) float tensor along dim 1 with torch taps (i0, i1, w (1, n, 1)); whole
    rows are gathered (memcpy-fast). Returns a workspace tensor (C, n, M)."""
    import torch

    i0, i1, w = taps
    shape = (x.shape[0], len(i0), x.shape[2])
    a = torch.index_select(x, 1, i0, out=ws(name + "0", shape, x.dtype))
    b = torch.index_select(x, 1, i1, out=ws(name + "1", shape, x.dtype))
    return a.lerp_(b, w)


# dtypes torch can multiply straight into a float32 buffer (uint16 has no CPU mul kernel)
_DIRECT_DTYPES = (np.int8, np.uint8, np.int16, np.int32, np.float32, np.float64)


def _lerp_slices(base: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray, ws: _Workspace
                 ) -> Any:
    """Interpolate along ``axis`` of the stored array: float32 (len(i0), ., .) = (1 − w)·base[i0] + w·base[i1],
    the remaining axes in memory order."""
    import torch

    if axis == 0 and base.dtype.type in _DIRECT_DTYPES:
        # the usual case (NIfTI z, DICOM stack): read each int16 slice once and convert while multiplying
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only voxels: we only read them
            src = torch.from_numpy(base)
        y = ws("d", (len(i0), *base.shape[1:]), torch.float32)
        for j, (a, b, wj) in enumerate(zip(i0.tolist(), i1.tolist(), w.tolist(), strict=True)):
            torch.mul(src[a], 1.0 - wj, out=y[j])
            if wj != 0.0:
                y[j].add_(src[b], alpha=wj)
        return y
    a = torch.from_numpy(np.ascontiguousarray(np.moveaxis(base.take(i0, axis=axis), axis, 0))).float()
    b = torch.from_numpy(np.ascontiguousarray(np.moveaxis(base.take(i1, axis=axis), axis, 0))).float()
    return a.lerp_(b, torch.from_numpy(w).view(-1, 1, 1))


def _file_layout(vol: CTVolume, p: PreprocessPlan) -> tuple[np.ndarray, list[int], list[bool]]:
    """The stored array as a C-contiguous ``base`` (a transpose view for Fortran-ordered NIfTI, no copy) and, for
    each output axis, the base axis it reads and whether it runs backwards."""
    raw = vol.raw
    if raw.flags.c_contiguous:
        base, file_to_base = raw, [0, 1, 2]
    elif raw.flags.f_contiguous:
        base, file_to_base = raw.T, [2, 1, 0]
    else:
        base, file_to_base = np.ascontiguousarray(raw), [0, 1, 2]
    base_axis, flipped = [0, 0, 0], [False, False, False]
    for file_axis, (out_axis, direction) in enumerate(p.ornt):
        base_axis[int(out_axis)] = file_to_base[file_axis]
        flipped[int(out_axis)] = direction < 0
    return base, base_axis, flipped


def preprocess_volume(vol: CTVolume, config: PreprocessConfig | None = None) -> np.ndarray:
    """Preprocess a loaded volume.

    Args:
        vol: a :class:`CTVolume` (any orientation; HU = raw × slope + intercept).
        config: the preprocessing settings; defaults to the seed's.

    Returns:
        float32 (D, H, W) in ``config.axcodes`` (SLP by default), ``config.shape``; values in
        [-offset, 1 - offset].
    """
    import torch

    config = config or PreprocessConfig()
    p = plan(vol, config)
    base, base_axis, flipped = _file_layout(vol, p)
    taps = []
    for a in range(3):
        i0, i1, w, dst = _axis_weights(p.reoriented_shape[a], p.resampled_shape[a], p.start[a], p.out_shape[a],
                                       config.align_corners)
        n = p.reoriented_shape[a]
        # reorientation is folded into the taps: a flipped axis reads index n - 1 - i (no data copy)
        taps.append((n - 1 - i0, n - 1 - i1, w, dst) if flipped[a] else (i0, i1, w, dst))
    out = _padded_output(p.out_shape, taps, config.pad_value)
    if any(len(t[2]) == 0 for t in taps):
        return out  # nothing of the scan inside the output box
    base, taps = _crop_to_taps(base, base_axis, taps)
    # the chunk's dims 1, 2 are the remaining base axes in memory order; which output axis each one is:
    plane = sorted({0, 1, 2} - {base_axis[0]})
    out_of = {base_axis[a]: a for a in (1, 2)}
    first, second = out_of[plane[0]], out_of[plane[1]]
    out_t = torch.from_numpy(out)
    # HU = raw·slope + intercept, window to [0, 1], minus offset == clamp(raw·scale + shift, -offset, 1 - offset);
    # applied after interpolation (linear maps commute with lerp), so the int16 input is never scaled as a whole.
    scale = float(vol.slope) / (config.hu_max - config.hu_min)
    shift = (float(vol.intercept) - config.hu_min) / (config.hu_max - config.hu_min) - config.offset
    scale_t, shift_t = torch.tensor(scale, dtype=torch.float32), torch.tensor(shift, dtype=torch.float32)
    ws = _Workspace()
    plane_taps = {a: tuple(torch.from_numpy(t) for t in taps[a][:2]) + (torch.from_numpy(taps[a][2]).view(1, -1, 1),)
                  for a in (first, second)}
    d0, d1, dw, dst = taps[0]
    for c in range(0, len(dw), CHUNK):
        sl = slice(c, c + CHUNK)
        y = _lerp_slices(base, base_axis[0], d0[sl], d1[sl], dw[sl], ws)
        y = _lerp_rows(y, plane_taps[first], ws, "h")
        y = ws("t", (y.shape[0], y.shape[2], y.shape[1]), torch.float32).copy_(y.transpose(1, 2))
        y = _lerp_rows(y, plane_taps[second], ws, "w")  # (C, out[second], out[first])
        y = torch.addcmul(shift_t, y, scale_t, out=ws("s", tuple(y.shape), torch.float32))  # y·scale + shift
        target = out_t[dst.start + c: dst.start + c + y.shape[0], taps[1][3], taps[2][3]]
        # clip straight into the output (a view; transposed when the chunk's last dim is H)
        torch.clamp(y, -config.offset, 1.0 - config.offset, out=target if second == 1 else target.transpose(1, 2))
    return out


def _crop_to_taps(base: np.ndarray, base_axis: list[int], taps: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Restrict ``base`` (a view, no copy) to the voxels the taps read, and shift the taps to match. The centre
    crop often drops a third of each in-plane axis (A0001 at 1 mm: 360 of 512 columns), so every later pass
    touches less memory."""
    ranges: list[slice] = [slice(None)] * 3
    shifted = []
    for a, (i0, i1, w, dst) in enumerate(taps):
        lo, hi = int(min(i0.min(), i1.min())), int(max(i0.max(), i1.max())) + 1
        ranges[base_axis[a]] = slice(lo, hi)
        shifted.append((i0 - lo, i1 - lo, w, dst))
    return base[tuple(ranges)], shifted


def _padded_output(shape: tuple[int, int, int], taps: list[Any], pad_value: float) -> np.ndarray:
    """Uninitialised output with only the padding written (a full fill would be one more pass over 221 MB).

    Allocated by torch, not numpy: numpy asks the kernel for transparent huge pages on large arrays, and their
    first touch in a fresh process cost 0.75 s CPU for 221 MB here (compaction) against 0.15 s for small pages."""
    import torch

    out = torch.empty(shape, dtype=torch.float32).numpy()
    d, h, w = (t[3] for t in taps)
    out[: d.start] = pad_value
    out[d.stop:] = pad_value
    if (h.start, h.stop, w.start, w.stop) != (0, shape[1], 0, shape[2]):
        out[d] = pad_value
    return out


def preprocess_file(path: str | Path, metadata: Any = None, config: PreprocessConfig | None = None, *,
                    max_bytes: int | None = None) -> np.ndarray:
    """Read ``path`` with :func:`~ctagrg.data.ctio.load_ct` and preprocess it.

    Args:
        path: any format ``load_ct`` reads (NIfTI, NRRD, MHA/MHD, DICOM folder or ``.zip``).
        metadata: optional CT-RATE metadata row (mapping) or :class:`~ctagrg.data.ctio.CTMetadata`.
        config: :class:`PreprocessConfig`; default = the seed's (240, 480, 480) at (1.5, 0.75, 0.75) mm.
        max_bytes: the read's memory budget (``load_ct``'s); None: half of this machine's memory.

    Returns:
        float32 (D, H, W) = SLP, ``config.shape``.
    """
    return preprocess_volume(load_ct(path, metadata, max_bytes=max_bytes), config)
