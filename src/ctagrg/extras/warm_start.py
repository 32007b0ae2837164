"""The ``heads_warm_start`` training extension (step 1): the abnormality heads start from the linear pretraining
head of ``init.encoder_from`` (``heads.pretrain_hidden: []``), so that step 1 begins with pretraining's logits
instead of random heads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctagrg.config import ConfigError
from ctagrg.models.checkpoint import load_state_file
from ctagrg.training.extensions import Extension


@torch.no_grad()
def warm_start(heads: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Start ``heads`` (AbnormalityHeads or a variant) from a linear read-out ``z = h @ weight.T + bias``
    ((L, part_dim), (L,); part_dim is the width each head reads): label i's projection gets the units ReLU(z_i) and
    ReLU(-z_i) (embedding dims 0 and 1), its classifier the hidden units ReLU(e_0 - e_1) and ReLU(e_1 - e_0) with
    output weights +1 and -1, and every other hidden unit an output weight of 0. So in eval mode the logits equal
    ``z`` exactly, and training goes on from there. Needs embed_dim and classifier_hidden >= 2."""
    L, E = heads.num_labels, heads.embed_dim
    hd = heads.fc2_weight.shape[1]
    if E < 2 or hd < 2:
        raise ValueError(f"warm start needs embed_dim and classifier_hidden >= 2, got {E}, {hd}")
    if tuple(weight.shape) != (L, heads.project.in_features) or tuple(bias.shape) != (L,):
        raise ValueError(f"warm start: expected weight ({L}, {heads.project.in_features}) and bias ({L},), got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    w = heads.project.weight.view(L, E, -1)
    b = heads.project.bias.view(L, E)
    w[:, 0], w[:, 1] = weight, -weight
    b[:, 0], b[:, 1] = bias, -bias
    heads.fc1_weight[:, :2, :] = 0.0
    heads.fc1_weight[:, 0, 0], heads.fc1_weight[:, 0, 1] = 1.0, -1.0
    heads.fc1_weight[:, 1, 0], heads.fc1_weight[:, 1, 1] = -1.0, 1.0
    heads.fc1_bias[:, :2] = 0.0
    heads.fc2_weight.zero_()
    heads.fc2_weight[:, 0], heads.fc2_weight[:, 1] = 1.0, -1.0
    heads.fc2_bias.zero_()


class HeadsWarmStartExtension(Extension):
    stages = ("classifier",)

    def __init__(self, task: Any, config: None) -> None:
        super().__init__(task, config)
        if not task.cfg.init.encoder_from:
            raise ConfigError("extras.heads_warm_start: needs init.encoder_from (the pretraining checkpoint folder)")

    def on_build(self, model: nn.Module) -> None:
        path = Path(self.task.cfg.init.encoder_from) / "model.safetensors"
        state = load_state_file(path)
        head = sorted(k for k in state if k.startswith("head.net."))
        if head != ["head.net.0.bias", "head.net.0.weight"]:
            raise ConfigError(f"extras.heads_warm_start: {path} has no linear pretraining head (expected "
                              f"head.net.0.weight and head.net.0.bias, i.e. heads.pretrain_hidden: [], found "
                              f"{', '.join(head) or 'no head.* tensors'})")
        try:
            warm_start(model.heads, state["head.net.0.weight"], state["head.net.0.bias"])
        except ValueError as exc:
            raise ConfigError(f"extras.heads_warm_start ({path}): {exc}") from None
