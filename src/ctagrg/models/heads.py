"""Heads on the 2048-d visual embedding ``h``: the pretraining classifier and step 1's abnormality heads.

- :class:`PretrainHead`: 2048 -> 512 -> 128 -> 18 (ReLU, dropout), one logit per CT-RATE label.
- :class:`AbnormalityHeads`: 18 projection heads 2048 -> 1024 (one Linear(2048, 18·1024), which is the same
  function as 18 separate Linear(2048, 1024)), each followed by its own classifier 1024 -> 128 -> 1. The 18 small
  classifiers are stored as stacked weights and run as one batched matmul instead of 18 module calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctagrg.labels import NUM_LABELS


@dataclass
class HeadsConfig:
    in_dim: int = 2048
    num_labels: int = NUM_LABELS
    dropout: float = 0.5
    # hidden sizes of the pretraining head; () makes it one Linear(in_dim, 18), a linear read-out (the CPU demo:
    # with ~300 volumes the published 512 -> 128 MLP overfits, measured in docs/training.md)
    pretrain_hidden: tuple[int, ...] = (512, 128)
    embed_dim: int = 1024  # per-abnormality embedding (step 2 consumes it)
    classifier_hidden: int = 128


class PretrainHead(nn.Module):
    """(B, in_dim) -> (B, num_labels) logits."""

    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.in_dim
        for hidden in cfg.pretrain_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, cfg.num_labels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class AbnormalityHeads(nn.Module):
    """(B, in_dim) -> logits (B, L) and embeddings (B, L, embed_dim) (after ReLU, before dropout)."""

    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        L, E, Hd = cfg.num_labels, cfg.embed_dim, cfg.classifier_hidden
        self.num_labels, self.embed_dim = L, E
        self.project = nn.Linear(cfg.in_dim, L * E)
        self.dropout = nn.Dropout(cfg.dropout)
        # label i's classifier: Linear(E, Hd) -> ReLU -> dropout -> Linear(Hd, 1), weights stacked over labels
        self.fc1_weight = nn.Parameter(torch.empty(L, Hd, E))
        self.fc1_bias = nn.Parameter(torch.empty(L, Hd))
        self.fc2_weight = nn.Parameter(torch.empty(L, Hd))
        self.fc2_bias = nn.Parameter(torch.empty(L))
        self._init_classifiers(E, Hd)

    def _init_classifiers(self, e: int, hd: int) -> None:
        # the same distribution nn.Linear uses, per label
        for w, b, fan_in in ((self.fc1_weight, self.fc1_bias, e), (self.fc2_weight, self.fc2_bias, hd)):
            bound = 1 / fan_in**0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    @torch.no_grad()
    def warm_start(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from a linear read-out ``z = h @ weight.T + bias`` ((L, in_dim), (L,)), e.g. a linear pretraining
        head: label i's projection gets the units ReLU(z_i) and ReLU(-z_i) (embedding dims 0 and 1), its classifier
        the hidden units ReLU(e_0 - e_1) and ReLU(e_1 - e_0) with output weights +1 and -1, and every other hidden
        unit an output weight of 0. So in eval mode the logits equal ``z`` exactly, and training goes on from there
        (the zeroed output weights get gradients, so the other units join in). Needs embed_dim and
        classifier_hidden >= 2."""
        L, E = self.num_labels, self.embed_dim
        hd = self.fc2_weight.shape[1]
        if E < 2 or hd < 2:
            raise ValueError(f"AbnormalityHeads.warm_start needs embed_dim and classifier_hidden >= 2, got {E}, {hd}")
        if tuple(weight.shape) != (L, self.project.in_features) or tuple(bias.shape) != (L,):
            raise ValueError(f"AbnormalityHeads.warm_start: expected weight ({L}, {self.project.in_features}) and "
                             f"bias ({L},), got {tuple(weight.shape)} and {tuple(bias.shape)}")
        w = self.project.weight.view(L, E, -1)
        b = self.project.bias.view(L, E)
        w[:, 0], w[:, 1] = weight, -weight
        b[:, 0], b[:, 1] = bias, -bias
        self.fc1_weight[:, :2, :] = 0.0
        self.fc1_weight[:, 0, 0], self.fc1_weight[:, 0, 1] = 1.0, -1.0
        self.fc1_weight[:, 1, 0], self.fc1_weight[:, 1, 1] = -1.0, 1.0
        self.fc1_bias[:, :2] = 0.0
        self.fc2_weight.zero_()
        self.fc2_weight[:, 0], self.fc2_weight[:, 1] = 1.0, -1.0
        self.fc2_bias.zero_()

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, L, E) abnormality embeddings."""
        return torch.relu(self.project(h)).view(h.shape[0], self.num_labels, self.embed_dim)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L, E) -> (B, L) logits, label i scored by classifier i only."""
        z = torch.einsum("ble,lhe->blh", self.dropout(embeddings), self.fc1_weight) + self.fc1_bias
        z = self.dropout(torch.relu(z))
        return (z * self.fc2_weight).sum(-1) + self.fc2_bias

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(h)
        return self.classify(emb), emb
