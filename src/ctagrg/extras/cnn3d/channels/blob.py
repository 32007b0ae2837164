"""The blob channel: "an isolated solid blob" (a nodule), measured at full resolution. Solid voxels eroded by
``erosion`` voxels (thin vessels vanish), times the aerated-lung fraction on a shell of 26 points around the voxel
(the best of ``radii_mm``); the stem keeps its maximum per patch (docs/demo-encoder.md).

Every step is exact (0/1 masks, integer counts of at most 26, one division), so a flipped volume gives exactly the
flipped score, which the pretraining stem cache relies on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Triple = tuple[int, int, int]


def _odd_sizes(kernel: Sequence[int]) -> bool:
    return all(k >= 1 and k % 2 == 1 for k in kernel)


@dataclass
class BlobConfig:
    """``radii_mm``: the shells' radii; ``erosion``: the solid mask's erosion (odd sizes, D, H, W voxels).
    ``profile``: one channel per radius instead of their best (a nodule of radius R scores on the shells wider than
    R only, so the per-radius maxima carry its size). ``whole_shell_erosion``: one more 0/1 channel, solid eroded
    by this smaller kernel with lung at all 26 points of at least one shell (keeps nodules that ``erosion``
    removes; empty: off)."""

    enabled: bool = False
    radii_mm: tuple[float, ...] = (8.0, 12.0, 16.0, 22.0)
    erosion: Triple = (3, 3, 3)
    profile: bool = False
    whole_shell_erosion: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.radii_mm = tuple(float(v) for v in self.radii_mm)
        self.erosion = tuple(int(v) for v in self.erosion)  # type: ignore[assignment]
        self.whole_shell_erosion = tuple(int(v) for v in self.whole_shell_erosion)
        if self.whole_shell_erosion and (len(self.whole_shell_erosion) != 3
                                         or not _odd_sizes(self.whole_shell_erosion)):
            raise ValueError(f"CNN3DConfig.blob.whole_shell_erosion: three odd sizes >= 1 or empty, got "
                             f"{list(self.whole_shell_erosion)}")
        if self.enabled and (not _odd_sizes(self.erosion) or not self.radii_mm or min(self.radii_mm) <= 0):
            raise ValueError(f"CNN3DConfig.blob: erosion must be odd and >= 1 per axis, radii_mm positive; got "
                             f"{list(self.erosion)}, {list(self.radii_mm)}")
        if self.profile and not self.enabled:
            raise ValueError("CNN3DConfig.blob.profile needs blob.enabled: true")

    @property
    def channels(self) -> int:
        """0 when off, else 1 (the best radius) or one per radius with ``profile``, + 1 with
        ``whole_shell_erosion``."""
        if not self.enabled:
            return 0
        return (len(self.radii_mm) if self.profile else 1) + (1 if self.whole_shell_erosion else 0)

    def offsets(self, voxel_mm: Sequence[float]) -> list[list[Triple]]:
        """Per radius, the 26 voxel offsets (D, H, W) of the shell's sample points: the directions to the
        neighbours of a 3 x 3 x 3 cube, normalised, times the radius, in voxels of ``voxel_mm`` (rounded half to
        even, so that a direction and its mirror image give mirrored offsets)."""
        dirs = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
        return [[tuple(int(round(r * v / (a * a + b * b + c * c) ** 0.5 / mm))  # type: ignore[misc]
                       for v, mm in zip((a, b, c), voxel_mm, strict=True)) for a, b, c in dirs]
                for r in self.radii_mm]


def blob_score(bins: torch.Tensor, config: BlobConfig, voxel_mm: Sequence[float], n_lung_bins: int,
               solid_bins: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W) HU-bin indices -> (B, ``config.channels``, D, H, W) blob score in [0, 1]: eroded solid x the
    best shell's aerated-lung fraction (or, with ``profile``, x each shell's), then the whole-shell indicator.
    Lung: bins below ``n_lung_bins``; solid: bins ``solid_bins[0]`` .. ``solid_bins[-1]``. Outside the volume counts
    as neither solid nor lung."""
    # uint8 masks and counts (a shell has 26 points): a quarter of float32's memory traffic, and the erosion as
    # a separable AND instead of max_pool3d (BENCHMARKS.md, "Training speed of the demo encoder")
    lung = (bins < n_lung_bins).to(torch.uint8)[:, None]
    solid = ((bins >= solid_bins[0]) & (bins <= solid_bins[-1])).to(torch.uint8)[:, None]
    eroded = erode(solid, config.erosion)
    offsets = config.offsets(voxel_mm)
    p = max(abs(v) for shell in offsets for o in shell for v in o)
    padded = F.pad(lung, (p,) * 6)
    d, h, w = lung.shape[2:]
    best = torch.zeros_like(lung)
    whole = torch.zeros_like(lung) if config.whole_shell_erosion else None
    profile = []
    for shell in offsets:
        around = torch.zeros_like(lung)
        for a, b, c in shell:
            around += padded[:, :, p + a:p + a + d, p + b:p + b + h, p + c:p + c + w]
        if whole is not None:
            whole |= around == len(shell)
        if config.profile:
            profile.append(around * eroded)
        else:
            torch.maximum(best, around, out=best)
    count = torch.cat(profile, dim=1) if config.profile else best * eroded
    score = count.float() / len(offsets[0])
    if whole is None:
        return score
    return torch.cat([score, (whole & erode(solid, config.whole_shell_erosion)).float()], dim=1)


def erode(mask: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """(B, 1, D, H, W) uint8 0/1 -> the same, 1 where the whole ``kernel`` (odd sizes, centred) lies in the mask;
    outside the volume counts as 0. A separable AND along each axis (max_pool3d of the negation gives the same)."""
    x = F.pad(mask, [v // 2 for v in reversed(kernel) for _ in range(2)], value=0)
    for axis, k in zip((2, 3, 4), kernel, strict=True):
        n = x.shape[axis] - (k - 1)
        out = x.narrow(axis, 0, n).clone()
        for i in range(1, k):
            out &= x.narrow(axis, i, n)
        x = out
    return x
