"""ctagrg.training.resume: when a run in out_dir/last can be resumed exactly, and its weight average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ctagrg.training.checkpoint import CheckpointError
from ctagrg.training.ema import ModelEMA
from ctagrg.training.resume import check_layout, run_ema

LAST = Path("run/last")


def test_check_layout_names_what_changed() -> None:
    state = {"batches_per_epoch": 6, "grad_accum": 2, "world_size": 1}
    check_layout(LAST, state, dict(state))
    with pytest.raises(CheckpointError, match=r"run/last: .*layout changed \(saved, now\): \{'world_size': \(1, 2\)\}"):
        check_layout(LAST, state, {**state, "world_size": 2})


def test_run_ema_restores_the_saved_average() -> None:
    model = nn.Linear(2, 1)
    saved = ModelEMA(model, 0.8)
    with torch.no_grad():
        model.weight.add_(1.0)
    saved.update(model)
    ema = run_ema(model, 0.8, LAST, True, saved.state_dict())
    assert ema is not None and ema.updates == saved.updates == 1
    torch.testing.assert_close(ema.shadow.weight, saved.shadow.weight)
    assert run_ema(model, 0.0, LAST, False, None) is None
    assert run_ema(None, 0.8, LAST, True, saved.state_dict()) is None  # another rank: the check only


@pytest.mark.parametrize(("decay", "saved", "message"), [
    (0.8, None, "saved without train.ema_decay, cannot resume with it"),
    (0.0, {"updates": 1}, "saved with train.ema_decay, cannot resume without it"),
])
def test_run_ema_refuses_a_run_saved_the_other_way(decay: float, saved: dict | None, message: str) -> None:
    with pytest.raises(CheckpointError, match=f"run/last: {message}"):
        run_ema(None, decay, LAST, True, saved)
