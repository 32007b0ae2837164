"""ctagrg.training.optim: the optimizer, the learning-rate factor per step and the autocast context."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ctagrg.training.config import TrainConfig
from ctagrg.training.optim import autocast_context, build_optimizer, lr_factor


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                           ("sgd", torch.optim.SGD)])
def test_build_optimizer(name: str, cls: type) -> None:
    tc = TrainConfig(optimizer=name, lr=0.02, weight_decay=0.1)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], tc)
    assert type(opt) is cls
    assert (opt.defaults["lr"], opt.defaults["weight_decay"]) == (0.02, 0.1)


def test_lr_factor_warmup_step_and_cosine() -> None:
    warm = TrainConfig(warmup_steps=4)
    assert [lr_factor(s, warm, 10, 100) for s in (0, 3, 4, 99)] == [0.25, 1.0, 1.0, 1.0]
    step = TrainConfig(scheduler="step", step_size_epochs=2, gamma=0.5)
    assert [lr_factor(s, step, 10, 100) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    cos = TrainConfig(scheduler="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, cos, 10, 100) for s in (0, 50, 100)] == pytest.approx([1.0, 0.55, 0.1])


def test_autocast_context() -> None:
    assert isinstance(autocast_context(TrainConfig(), torch.device("cpu")), contextlib.nullcontext)
    with autocast_context(TrainConfig(precision="bf16"), torch.device("cpu")):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
