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
        flip_p: probability of flipping along one axis chosen uniformly from ``flip_axes``.
        flip_axes: candidate axes of (D, H, W) for the flip (0 = S-I, 1 = L-R, 2 = A-P).
        rot90_p: probability of an axial rotation by 90°, 180° or 270° (needs H == W).
        pad_value: value for voxels shifted in from outside (what air maps to; -0.449 for the seed's config).
    """

    enabled: bool = False
    max_shift: tuple[int, int, int] = (0, 7, 7)
    flip_p: float = 0.5
    flip_axes: tuple[int, ...] = (0, 1, 2)
    rot90_p: float = 0.5
    pad_value: float = -0.449

    def __post_init__(self) -> None:
        self.max_shift = tuple(int(s) for s in self.max_shift)  # type: ignore[assignment]
        self.flip_axes = tuple(int(a) for a in self.flip_axes)
        if len(self.max_shift) != 3 or min(self.max_shift) < 0:
            raise ValueError(f"AugmentConfig.max_shift: expected 3 non-negative voxel counts, got {self.max_shift}")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"AugmentConfig.flip_axes: expected axes among 0, 1, 2 of (D, H, W), got {self.flip_axes}")
        for name in ("flip_p", "rot90_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name}: expected a probability in [0, 1], got {getattr(self, name)}")


def shift(x: Any, offsets: tuple[int, int, int], pad_value: float) -> Any:
    """Shift a (C, D, H, W) tensor by integer ``offsets`` voxels along (D, H, W), filling with ``pad_value``."""
    import torch

    out = torch.full_like(x, pad_value)
    src, dst = [slice(None)], [slice(None)]
    for o, n in zip(offsets, x.shape[1:], strict=True):
        o = max(-n, min(n, o))
        src.append(slice(max(0, -o), n - max(0, o)))
        dst.append(slice(max(0, o), n - max(0, -o)))
    out[tuple(dst)] = x[tuple(src)]
    return out


def augment_volume(x: Any, cfg: AugmentConfig, generator: Any = None) -> Any:
    """Apply a random shift, flip and axial rot90 to ``x`` (1, D, H, W) float32; returns a new tensor.

    ``generator`` is a ``torch.Generator`` (None = torch's global RNG, which DataLoader seeds per worker).
    """
    import torch

    if not cfg.enabled:
        return x

    def rand() -> float:
        return float(torch.rand((), generator=generator))

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=generator))

    if any(cfg.max_shift):
        x = shift(x, tuple(randint(-m, m) for m in cfg.max_shift), cfg.pad_value)  # type: ignore[arg-type]
    if cfg.flip_axes and rand() < cfg.flip_p:
        x = torch.flip(x, dims=(1 + cfg.flip_axes[randint(0, len(cfg.flip_axes) - 1)],))
    if rand() < cfg.rot90_p:
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"axial rot90 needs a square axial plane, got H×W = {x.shape[2]}×{x.shape[3]}; "
                             f"set rot90_p to 0")
        x = torch.rot90(x, k=randint(1, 3), dims=(2, 3))
    return x.contiguous()
