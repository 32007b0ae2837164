"""The ``halves`` head variant (``heads.variant: halves``, options in ``model.extras.halves``).

- ``lateral_halves``: ``h`` is [right half, left half]; every head reads each half with the same weights and a
  label's logit is the soft maximum (logsumexp) of its two half logits; step 1's embeddings are the two halves'
  embeddings side by side, (B, L, 2 x embed_dim).
- ``attribute_heads``: per-label side (left, right, bilateral) and size (mm) read-outs on the abnormality
  embeddings, trained by the ``attributes`` training extension from the report sentences.
- ``condition_on_halves`` (needs ``lateral_halves``): the embedding handed to step 2 keeps a half's units only where
  the label is on in that half (its half probability reaches the label's half threshold, chosen on validation
  volumes), zeros elsewhere, each half followed by its probability and on flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ctagrg.config import ConfigError
from ctagrg.models.heads import AbnormalityHeads, HeadsConfig, PretrainHead

SIDE_CLASSES = ("left", "right", "bilateral")  # the classes of the side read-out, in this order
SIZE_SCALE_MM = 10.0  # the size read-out predicts size_mm / SIZE_SCALE_MM
# per side class of SIDE_CLASSES, the halves [right, left] that hold such a finding
SIDE_HALVES = torch.tensor([[False, True], [True, False], [True, True]])


@dataclass
class HalvesConfig:
    """``model.extras.halves``."""

    lateral_halves: bool = True
    attribute_heads: bool = False
    condition_on_halves: bool = False

    def __post_init__(self) -> None:
        if self.condition_on_halves and not self.lateral_halves:
            raise ConfigError("model.extras.halves.condition_on_halves needs lateral_halves: true (the two halves "
                              "it gates)")

    @property
    def halves(self) -> int:
        return 2 if self.lateral_halves else 1


def soft_max_over_halves(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2, ...) half logits -> (B, ...): logsumexp over the halves, a smooth maximum (log 2 above both when
    they are equal) whose gradient goes mostly to the half that fires."""
    return torch.logsumexp(logits, dim=1)


def halves_on(p: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """(..., 2) half probabilities [right, left] -> (..., 2) bool: the halves whose probability reaches
    ``threshold`` (broadcast against ``p[..., 0]``), or the higher half where neither does (both when equal)."""
    threshold = torch.as_tensor(threshold, dtype=p.dtype, device=p.device)
    on = p >= threshold[..., None] if threshold.ndim else p >= threshold
    return torch.where(on.any(-1, keepdim=True), on, p == p.amax(-1, keepdim=True))


def _config(variant_config: Any) -> HalvesConfig:
    return variant_config if variant_config is not None else HalvesConfig()


class HalvesPretrainHead(PretrainHead):
    """(B, in_dim) -> (B, num_labels): the same net on each half, then the soft maximum over the halves."""

    def __init__(self, cfg: HeadsConfig, variant_config: Any = None) -> None:
        nn.Module.__init__(self)
        self.halves = self.parts = _config(variant_config).halves
        if cfg.in_dim % self.halves:
            raise ValueError(f"HeadsConfig.in_dim {cfg.in_dim} is odd (lateral halves)")
        self.net = self._mlp(cfg, cfg.in_dim // self.halves)

    def half_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, halves, num_labels): the net on each half ([right, left])."""
        return self.net(h.view(h.shape[0], self.halves, -1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.halves == 1:
            return self.net(h)
        return soft_max_over_halves(self.half_logits(h))

    def outputs(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits"} (+ "half_logits" (B, 2, L), [right, left], with lateral halves)."""
        if self.halves == 1:
            return {"logits": self.net(h)}
        half = self.half_logits(h)
        return {"logits": soft_max_over_halves(half), "half_logits": half}


class HalvesHeads(AbnormalityHeads):
    """(B, in_dim) -> logits (B, L) and embeddings (B, L, out_dim) (after ReLU, before dropout); out_dim is
    embed_dim, or twice it with lateral halves. With ``attribute_heads``, :meth:`attributes` reads label i's side
    logits (3, :data:`SIDE_CLASSES`) and size (mm) off its embedding with label i's own linear maps."""

    def __init__(self, cfg: HeadsConfig, variant_config: Any = None) -> None:
        vc = _config(variant_config)
        super().__init__(cfg, vc)
        L = cfg.num_labels
        self.halves = vc.halves
        self.out_dim = self.embed_dim * vc.halves  # width of each abnormality embedding
        self.condition_on_halves = vc.condition_on_halves
        if vc.condition_on_halves:  # set after step 1's training (the half_thresholds extension)
            self.register_buffer("half_threshold", torch.full((L,), 0.5))
        self.attribute_heads = vc.attribute_heads
        if vc.attribute_heads:
            self.side_weight = nn.Parameter(torch.empty(L, len(SIDE_CLASSES), self.out_dim))
            self.side_bias = nn.Parameter(torch.zeros(L, len(SIDE_CLASSES)))
            self.size_weight = nn.Parameter(torch.empty(L, self.out_dim))
            self.size_bias = nn.Parameter(torch.zeros(L))
            bound = 1 / self.out_dim**0.5
            nn.init.uniform_(self.side_weight, -bound, bound)
            nn.init.uniform_(self.size_weight, -bound, bound)
            # only the attributes training extension gives them a loss (and unfreezes them): without it they would
            # get no gradient, which DDP (find_unused_parameters off) waits for
            for p in (self.side_weight, self.side_bias, self.size_weight, self.size_bias):
                p.requires_grad_(False)

    @staticmethod
    def parts_of(variant_config: Any) -> int:
        return _config(variant_config).halves

    @property
    def embedding_dim(self) -> int:
        """embed_dim, x 2 with lateral halves, 2 x (embed_dim + 2) with ``condition_on_halves``."""
        return self.halves * (self.embed_dim + (2 if self.condition_on_halves else 0))

    def attributes(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, out_dim) -> side logits (B, L, 3) over :data:`SIDE_CLASSES` and sizes (B, L) in mm, label i
        read by its own maps. Meaningful only where label i is present."""
        if not self.attribute_heads:
            raise RuntimeError("HalvesHeads.attributes: built without model.extras.halves.attribute_heads")
        e = self.dropout(embeddings)
        side = torch.einsum("ble,lke->blk", e, self.side_weight) + self.side_bias
        size = ((e * self.size_weight).sum(-1) + self.size_bias) * SIZE_SCALE_MM
        return side, size

    def conditioning(self, embeddings: torch.Tensor, half_logits: torch.Tensor) -> torch.Tensor:
        """Step 2's input with ``condition_on_halves``: (B, L, 2 x E) embeddings and (B, 2, L) half logits ->
        (B, L, 2 x (E + 2)), per half [its E units if it is on else zeros, its probability, on (1 or 0)]. The two
        halves keep one layout, so that swapping them is still the mirror image (step 2's ``mirror``)."""
        if not self.condition_on_halves:
            raise RuntimeError("HalvesHeads.conditioning: built without condition_on_halves")
        b, n, L = half_logits.shape
        p = torch.sigmoid(half_logits.float()).transpose(1, 2)  # (B, L, 2)
        on = halves_on(p, self.half_threshold).to(p.dtype)
        # a half that is off hands on zeros: its units would still tell the decoder a side
        e = embeddings.view(b, L, n, -1) * on[..., None].to(embeddings.dtype)
        return torch.cat([e, p[..., None].to(e.dtype), on[..., None].to(e.dtype)], -1).view(b, L, -1)

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, L, out_dim) (each half projected by the same weights, [right E, left E] per label)."""
        b, n, L, E = h.shape[0], self.halves, self.num_labels, self.embed_dim
        e = torch.relu(self.project(h.view(b, n, -1))).view(b, n, L, E)
        return e.transpose(1, 2).reshape(b, L, n * E)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L, out_dim) -> (B, L) logits (per half, then the soft maximum over the halves)."""
        logits = self.half_logits(embeddings)
        return logits[:, 0] if self.halves == 1 else soft_max_over_halves(logits)

    def half_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L, out_dim) -> (B, halves, L): label i's classifier on each half's embedding ([right, left])."""
        b, L = embeddings.shape[:2]
        e = embeddings.view(b, L, self.halves, self.embed_dim).transpose(1, 2)  # (B, halves, L, E)
        z = torch.einsum("bnle,lhe->bnlh", self.dropout(e), self.fc1_weight) + self.fc1_bias
        z = self.dropout(torch.relu(z))
        return (z * self.fc2_weight).sum(-1) + self.fc2_bias  # (B, halves, L)

    def outputs(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"logits", "embeddings"} (+ "half_logits" (B, 2, L) with lateral halves, + "side_logits" (B, L, 3) and
        "size_mm" (B, L) with attribute heads); with ``condition_on_halves`` the embeddings are the gated halves."""
        embeddings = self.embed(h)
        half = self.half_logits(embeddings)
        if self.halves == 1:
            out = {"logits": half[:, 0], "embeddings": embeddings}
        else:
            out = {"logits": soft_max_over_halves(half), "half_logits": half, "embeddings": embeddings}
        if self.attribute_heads:
            out["side_logits"], out["size_mm"] = self.attributes(embeddings)
        if self.condition_on_halves:
            out["embeddings"] = self.conditioning(embeddings, half)
        return out


def check_stage(stage: str, config: HalvesConfig, extras: Any) -> None:
    """Gated halves need their half thresholds chosen after step 1 (``extras.half_thresholds``)."""
    if stage == "classifier" and config.condition_on_halves and "half_thresholds" not in extras:
        raise ConfigError("model.extras.halves.condition_on_halves: step 1 needs extras.half_thresholds (the half "
                          "thresholds chosen on the validation volumes' stated sides); without it every half "
                          "threshold stays 0.5")
