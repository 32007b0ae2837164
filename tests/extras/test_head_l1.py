"""Pretraining's ``head_l1`` extension: the loss gains its weight x the L1 norm of the head's last Linear weights, so
its gradient pulls every weight toward zero by that weight (a sparse read-out); 0 leaves the loss as it was."""

from __future__ import annotations

import torch

from ctagrg.config import load_config
from ctagrg.labels import NUM_LABELS
from ctagrg.training.visual_tasks import PretrainTask, PretrainTaskConfig
from tests.extras.test_attributes import LATERAL


def _loss_and_head(head_l1: float, state: dict | None, batch: dict) -> tuple[torch.Tensor, torch.nn.Module, dict]:
    task = PretrainTask(load_config(PretrainTaskConfig, None, [*LATERAL, "model.extras.cnn3d.dropout=0.0",
                                                                "data.augment.enabled=false",
                                                                f"extras.head_l1.weight={head_l1}"]))
    torch.manual_seed(0)
    model = task.build_model()
    if state is None:
        state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    model.train()
    out = task.training_step(model, batch)
    out["loss"].backward()
    return out, model, state


def test_head_l1_adds_the_weights_l1_norm_and_its_sign_gradient():
    g = torch.Generator().manual_seed(3)
    batch = {"volume": torch.rand(4, 1, 8, 32, 16, generator=g) - 0.449,
             "labels": (torch.rand(4, NUM_LABELS, generator=g) > 0.5).float(), "name": ["a", "b", "c", "d"]}
    plain, m_plain, state = _loss_and_head(0.0, None, batch)
    sparse, m_sparse, _ = _loss_and_head(0.01, state, batch)
    w = m_plain.head.net[-1].weight
    assert "head_l1" not in plain and torch.isclose(sparse["head_l1"], w.detach().abs().sum())
    torch.testing.assert_close(sparse["loss"], plain["loss"] + 0.01 * w.detach().abs().sum())
    torch.testing.assert_close(m_sparse.head.net[-1].weight.grad - w.grad, 0.01 * torch.sign(w.detach()))
    # the encoder's gradients are untouched by the penalty
    enc_plain = next(p for p in m_plain.encoder.parameters() if p.grad is not None)
    enc_sparse = next(p for p in m_sparse.encoder.parameters() if p.grad is not None)
    torch.testing.assert_close(enc_sparse.grad, enc_plain.grad)
