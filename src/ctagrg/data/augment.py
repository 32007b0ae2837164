"""Training augmentation of preprocessed volumes (CT-Net style): small random shifts, flips, axial 90° rotations.

Off by default. Caution: left-right flips and axial rotations swap patient sides, so sentences that name a side
("left lower lobe nodule") no longer match the image. Use them for the 18-label classifier, not for data whose
targets are lateralised text. Axis convention of the input: (1, D, H, W) = (channel, S, L, P).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class AugmentConfig:
    """Random augmentation of a (1, D, H, W) volume.

    Attributes:
        enabled: master switch (False: volumes are returned untouched).
        max_shift: largest shift in voxels along (D, H, W); vacated voxels get ``pad_value``. CT-Net pads 0–14 px
            per side before a centre crop, i.e. shifts of up to ±7 px in-plane.
        shift_step: shifts are whole multiples of this many voxels per axis (default 1: any shift). A patch-based
            stem computed once (the ``stem_cache`` extension, cnn3d) needs shifts of whole patches, so that shifting
            the stem equals the stem of the shifted volume.
        flip_p: probability of flipping along one axis chosen uniformly from ``flip_axes``.
        flip_axes: candidate axes of (D, H, W) for the flip (0 = S-I, 1 = L-R, 2 = A-P).
        rot90_p: probability of an axial rotation by 90°, 180° or 270° (needs H == W).
        pad_value: value for voxels shifted in from outside (what air maps to; -0.449 for the seed's config).
    """

    enabled: bool = False
    max_shift: tuple[int, int, int] = (0, 7, 7)
    shift_step: tuple[int, int, int] = (1, 1, 1)
    flip_p: float = 0.5
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot90_p: float = 0.5
    pad_value: float = -0.449

    def __post_init__(self) -> None:
        self.max_shift = tuple(int(s) for s in self.max_shift)  # type: ignore[assignment]
        self.shift_step = tuple(int(s) for s in self.shift_step)  # type: ignore[assignment]
        self.flip_axes = tuple(int(a) for a in self.flip_axes)
        if len(self.max_shift) != 3 or min(self.max_shift) < 0:
            raise ValueError(f"AugmentConfig.max_shift: expected 3 non-negative voxel counts, got {self.max_shift}")
        if len(self.shift_step) != 3 or min(self.shift_step) < 1:
            raise ValueError(f"AugmentConfig.shift_step: expected 3 positive voxel counts, got {self.shift_step}")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"AugmentConfig.flip_axes: expected axes among 0, 1, 2 of (D, H, W), got {self.flip_axes}")
        for name in ("flip_p", "rot90_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name}: expected a probability in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class AugmentDraw:
    """One random draw of :func:`draw_augmentation`: applied in this order by :func:`apply_augmentation`.

    Attributes:
        shift: voxels along (D, H, W).
        flip_axis: axis of (D, H, W) to flip, or None.
        rot90: number of 90° axial rotations (0-3) in the (H, W) plane.
    """

    shift: tuple[int, int, int] = (0, 0, 0)
    flip_axis: int | None = None
    rot90: int = 0


def draw_augmentation(cfg: AugmentConfig, generator: Any = None) -> AugmentDraw:
    """Draw a shift, flip and rotation from ``generator`` (a ``torch.Generator``; None = torch's global RNG)."""
    import torch

    def rand() -> float:
        return float(torch.rand((), generator=generator))

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=generator))

    offsets = (0, 0, 0)
    if any(cfg.max_shift):
        offsets = tuple(step * randint(-(m // step), m // step)  # type: ignore[assignment]
                        for m, step in zip(cfg.max_shift, cfg.shift_step, strict=True))
    flip_axis = None
    if cfg.flip_axes and rand() < cfg.flip_p:
        flip_axis = cfg.flip_axes[randint(0, len(cfg.flip_axes) - 1)]
    rot = randint(1, 3) if rand() < cfg.rot90_p else 0
    return AugmentDraw(offsets, flip_axis, rot)


def shift(x: Any, offsets: tuple[int, int, int], pad_value: Any) -> Any:
    """Shift a (C, D, H, W) tensor by integer ``offsets`` along (D, H, W), filling with ``pad_value``: a number,
    or a (C, 1, 1, 1) tensor of one value per channel."""
    import torch

    out = torch.empty_like(x)
    out[...] = pad_value
    src, dst = [slice(None)], [slice(None)]
    for o, n in zip(offsets, x.shape[1:], strict=True):
        o = max(-n, min(n, o))
        src.append(slice(max(0, -o), n - max(0, o)))
        dst.append(slice(max(0, o), n - max(0, -o)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def apply_augmentation(x: Any, draw: AugmentDraw, pad_value: Any, scale: tuple[int, int, int] = (1, 1, 1)) -> Any:
    """Apply ``draw`` to ``x`` (C, D, H, W); returns a new contiguous tensor.

    ``scale``: voxels per element of ``x`` along each axis, for a grid of patches (a cnn3d stem's): the shift is
    divided by it and must then be whole. ``pad_value`` as in :func:`shift`.
    """
    import torch

    if any(draw.shift):
        bad = [a for a in range(3) if draw.shift[a] % scale[a]]
        if bad:
            raise ValueError(f"shift {draw.shift} voxels is not a whole number of {scale}-voxel patches; set "
                             f"data.augment.shift_step to a multiple of the patch")
        x = shift(x, tuple(o // s for o, s in zip(draw.shift, scale, strict=True)), pad_value)  # type: ignore[arg-type]
    if draw.flip_axis is not None:
        x = torch.flip(x, dims=(1 + draw.flip_axis,))
    if draw.rot90:
        if x.shape[2] != x.shape[3] or scale[1] != scale[2]:
            raise ValueError(f"axial rot90 needs a square axial plane, got H×W = {x.shape[2]}×{x.shape[3]}"
                             f"{f' of {scale[1]}×{scale[2]}-voxel patches' if scale != (1, 1, 1) else ''}; "
                             f"set rot90_p to 0")
        x = torch.rot90(x, k=draw.rot90, dims=(2, 3))
    return x.contiguous()


def augment_volume(x: Any, cfg: AugmentConfig, generator: Any = None) -> Any:
    """Apply a random shift, flip and axial rot90 to ``x`` (1, D, H, W) float32; returns a new tensor.

    ``generator`` is a ``torch.Generator`` (None = torch's global RNG, which DataLoader seeds per worker).
    """
    if not cfg.enabled:
        return x
    return apply_augmentation(x, draw_augmentation(cfg, generator), cfg.pad_value)
