"""The context channels: the aerated-lung fraction around each stem patch, and the solid fraction times it ("solid
tissue surrounded by lung": a nodule, a lung mass). Computed from the patch fractions, so no extra pass over the
voxels. The CNN did not learn this relation from a few hundred phantoms on its own (docs/demo-encoder.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ContextConfig:
    """``enabled``: two more stem channels and the stem's global max in the pooled features. ``patches``: the
    lung around a patch is the mean over the 6 patches this many patches away along the axes."""

    enabled: bool = False
    patches: int = 2

    def __post_init__(self) -> None:
        if self.patches < 1:
            raise ValueError(f"CNN3DConfig.context.patches must be >= 1, got {self.patches}")

    @property
    def channels(self) -> int:
        return 2 if self.enabled else 0


def context_channels(frac: torch.Tensor, lung_bins: list[int], solid_bins: list[int],
                     patches: int) -> list[torch.Tensor]:
    """(B, bins, d, h, w) patch fractions -> [surrounding lung fraction, solid x surrounding lung], (B, 1, d, h, w)
    each. Edges are replicated, so the body wall does not read as lung beyond the volume."""
    k = patches
    lung = frac[:, lung_bins].sum(1, keepdim=True)
    solid = frac[:, solid_bins].sum(1, keepdim=True)
    padded = F.pad(lung, (k,) * 6, mode="replicate")
    d, h, w = lung.shape[2:]
    around = torch.stack([padded[:, :, k + a:k + a + d, k + b:k + b + h, k + c:k + c + w]
                          for a, b, c in ((-k, 0, 0), (k, 0, 0), (0, -k, 0), (0, k, 0), (0, 0, -k), (0, 0, k))]
                         ).mean(0)
    return [around, solid * around]
