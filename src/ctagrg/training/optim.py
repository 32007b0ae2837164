"""What one optimizer step uses: the optimizer, the learning-rate schedule and the autocast context of
``train.precision`` (:class:`ctagrg.training.config.TrainConfig`)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from ctagrg.training.config import TrainConfig


def build_optimizer(params: Any, tc: TrainConfig) -> torch.optim.Optimizer:
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)


def lr_factor(step: int, tc: TrainConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of ``tc.lr`` at optimizer step ``step`` (0-based): linear warm-up, then step or cosine decay."""
    if tc.warmup_steps and step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    if tc.scheduler == "step":
        # StepLR counted in epochs, as CT-AGRG's StepLR(40, 0.5) is, but evaluated per optimizer step.
        return tc.gamma ** math.floor(step / (tc.step_size_epochs * steps_per_epoch))
    if tc.scheduler == "cosine":
        span = max(1, total_steps - tc.warmup_steps)
        t = min(1.0, (step - tc.warmup_steps) / span)
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def autocast_context(tc: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward-pass context of ``tc.precision``: nothing for fp32, else autocast to bf16/fp16."""
    if tc.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if tc.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
