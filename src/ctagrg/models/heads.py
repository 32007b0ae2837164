"""Heads on the 2048-d visual embedding ``h``: the pretraining classifier and step 1's abnormality heads.

- :class:`PretrainHead`: 2048 -> 512 -> 128 -> 18 (ReLU, dropout), one logit per CT-RATE label.
- :class:`AbnormalityHeads`: 18 projection heads 2048 -> 1024 (one Linear(2048, 18·1024), which is the same
  function as 18 separate Linear(2048, 1024)), each followed by its own classifier 1024 -> 128 -> 1. The 18 small
  classifiers are stored as stacked weights and run as one batched matmul instead of 18 module calls.

Other head families (``heads.variant``) come from plug-ins through :mod:`ctagrg.models.registry`; they keep this
interface: ``outputs(h) -> {"logits": (B, 18), ...}`` and, for step 1, ``"embeddings"`` (B, 18, embedding_dim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ctagrg.labels import NUM_LABELS

_MOVED_TO_HALVES = ("moved out of the published heads: set heads.variant: halves and model.extras.halves "
                    "(docs/demo-encoder.md); `ctagrg convert-model` converts a model packaged before")


@dataclass
class HeadsConfig:
    in_dim: int = 2048
    num_labels: int = NUM_LABELS
    dropout: float = 0.5
    # hidden sizes of the pretraining head; () makes it one Linear(in_dim, 18), a linear read-out
    pretrain_hidden: tuple[int, ...] = (512, 128)
    embed_dim: int = 1024  # per-abnormality embedding (step 2 consumes it)
    classifier_hidden: int = 128
    variant: str = "ctagrg"  # the published heads; a plug-in's name picks its heads (registry.register_heads)

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "lateral_halves": _MOVED_TO_HALVES, "attribute_heads": _MOVED_TO_HALVES,
        "condition_on_halves": _MOVED_TO_HALVES}


class PretrainHead(nn.Module):
    """(B, in_dim) -> (B, num_labels) logits."""

    parts = 1  # how many equal blocks of ``h`` the head reads with the same weights (see AbnormalityHeads)

    def __init__(self, cfg: HeadsConfig, variant_config: Any = None) -> None:
        super().__init__()
        self.net = self._mlp(cfg, cfg.in_dim)

    @staticmethod
    def _mlp(cfg: HeadsConfig, width: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for hidden in cfg.pretrain_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, cfg.num_labels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def outputs(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits": (B, num_labels)}."""
        return {"logits": self(h)}


class AbnormalityHeads(nn.Module):
    """(B, in_dim) -> logits (B, L) and embeddings (B, L, embed_dim) (after ReLU, before dropout)."""

    def __init__(self, cfg: HeadsConfig, variant_config: Any = None) -> None:
        super().__init__()
        L, E, Hd = cfg.num_labels, cfg.embed_dim, cfg.classifier_hidden
        self.num_labels, self.embed_dim = L, E
        # how many equal blocks of ``h`` each head reads with the same weights (the encoder's EncoderOutput.parts)
        self.parts = self.parts_of(variant_config)
        if cfg.in_dim % self.parts:
            raise ValueError(f"HeadsConfig.in_dim {cfg.in_dim} does not split into {self.parts} equal parts")
        self.project = nn.Linear(cfg.in_dim // self.parts, L * E)
        self.dropout = nn.Dropout(cfg.dropout)
        # label i's classifier: Linear(E, Hd) -> ReLU -> dropout -> Linear(Hd, 1), weights stacked over labels
        self.fc1_weight = nn.Parameter(torch.empty(L, Hd, E))
        self.fc1_bias = nn.Parameter(torch.empty(L, Hd))
        self.fc2_weight = nn.Parameter(torch.empty(L, Hd))
        self.fc2_bias = nn.Parameter(torch.empty(L))
        self._init_classifiers(E, Hd)

    @staticmethod
    def parts_of(variant_config: Any) -> int:
        """The number of parts for a variant's config (the published heads: 1)."""
        return 1

    @property
    def embedding_dim(self) -> int:
        """Width of the "embeddings" output, what step 2's decoder is conditioned on."""
        return self.embed_dim

    def _init_classifiers(self, e: int, hd: int) -> None:
        # the same distribution nn.Linear uses, per label
        for w, b, fan_in in ((self.fc1_weight, self.fc1_bias, e), (self.fc2_weight, self.fc2_bias, hd)):
            bound = 1 / fan_in**0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, L, embed_dim) abnormality embeddings."""
        return torch.relu(self.project(h)).view(h.shape[0], self.num_labels, self.embed_dim)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L, embed_dim) -> (B, L) logits, label i scored by classifier i only."""
        z = torch.einsum("ble,lhe->blh", self.dropout(embeddings), self.fc1_weight) + self.fc1_bias
        z = self.dropout(torch.relu(z))
        return (z * self.fc2_weight).sum(-1) + self.fc2_bias

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(h)
        return self.classify(emb), emb

    def outputs(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits": (B, L), "embeddings": (B, L, embedding_dim)}."""
        logits, emb = self(h)
        return {"logits": logits, "embeddings": emb}
