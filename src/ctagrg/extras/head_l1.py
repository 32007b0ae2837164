"""The ``head_l1`` training extension (pretraining): an L1 penalty on the pretraining head's last Linear weights,
loss += weight x sum |W|, which keeps each label's linear read-out sparse (docs/demo-encoder.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctagrg.models.checkpoint import unwrap
from ctagrg.training.extensions import Extension


@dataclass
class HeadL1Config:
    weight: float = 0.0  # 0: off


class HeadL1Extension(Extension):
    config_class = HeadL1Config
    stages = ("pretrain",)

    def loss_terms(self, model: nn.Module, out: dict[str, torch.Tensor], batch: dict[str, Any],
                   labels: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.weight <= 0:
            return {}
        l1 = unwrap(model).head.net[-1].weight.abs().sum()
        return {"loss": loss + self.config.weight * l1, "head_l1": l1.detach()}
