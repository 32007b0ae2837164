"""An exponential moving average (EMA) of a model's weights, for validation and the ``best/`` checkpoint.

``train.ema_decay: 0.99`` keeps, after every optimizer step t, ``shadow = d_t * shadow + (1 - d_t) * weights`` for
every floating-point parameter and buffer (BatchNorm statistics included; integer buffers are copied), with the
usual warm-up ``d_t = min(decay, (1 + t) / (10 + t))`` so that the average does not drag the random initial weights
along. Training continues from the raw weights (``last/``); validation, best-checkpoint selection and ``best/``
use the shadow, which only the main process keeps. The demo does not use it (docs/experiments.md, "#5's measurement").
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """EMA of ``model``'s state (a deep copy in eval mode, no gradients). ``update(model)`` after each step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEMA decay: expected 0 < decay < 1, got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        source = model.state_dict()
        seen: set[int] = set()
        for name, avg in self.shadow.state_dict().items():
            if avg.data_ptr() in seen:  # tied weights (GPT-2's wte and lm_head) share storage: average them once
                continue
            seen.add(avg.data_ptr())
            value = source[name].detach()
            if avg.dtype.is_floating_point:
                avg.lerp_(value.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "decay": self.decay,
                "shadow": {k: v.detach().cpu().clone() for k, v in self.shadow.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["decay"]) != self.decay:
            raise ValueError(f"saved with decay {state['decay']}, now {self.decay}")
        self.updates = int(state["updates"])
        self.shadow.load_state_dict(state["shadow"])
