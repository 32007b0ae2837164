"""Compute and memory cost of the visual models at any input shape, without running them.

The model is built on PyTorch's ``meta`` device (shapes only, no memory, no arithmetic); one forward + backward
runs under ``FlopCounterMode`` and a saved-tensor hook sums what autograd keeps for backward (the activation
memory). Used for the estimates in docs/training.md (``benchmarks/model_cost.py`` prints them).

Activation bytes are those of fp32 tensors; under bf16 autocast most saved tensors (conv/linear inputs) are
bf16, so roughly half. Tensors saved by several ops are counted once per op (an upper bound).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ctagrg.models.ctnet import CTNetConfig
from ctagrg.models.ctvit import CTViTConfig
from ctagrg.models.step1 import Step1Model, VisualModelConfig


def measure(config: VisualModelConfig, batch: int = 1) -> dict[str, Any]:
    """FLOPs (forward, forward+backward), parameter count and saved-activation bytes of a Step1Model."""
    with torch.device("meta"):
        model = Step1Model(config).train()
    shape = config.encoder_config().input_shape
    x = torch.empty(batch, 1, *shape, device="meta")
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
        fwd = counter.get_total_flops()
        (out["logits"].sum() + out["embeddings"].sum()).backward()
    total = counter.get_total_flops()
    params = sum(p.numel() for p in model.parameters())
    return {"encoder": config.encoder, "input_shape": list(shape), "batch": batch, "params": params,
            "fwd_flops": fwd, "train_flops": total, "activation_bytes_fp32": saved[0]}


def paper_configs() -> dict[str, VisualModelConfig]:
    return {"ctnet": VisualModelConfig(encoder="ctnet", ctnet=CTNetConfig()),
            "ctvit": VisualModelConfig(encoder="ctvit", ctvit=CTViTConfig())}
