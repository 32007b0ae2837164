"""Heads on the 2048-d visual embedding ``h``: the pretraining classifier and step 1's abnormality heads.

- :class:`PretrainHead`: 2048 -> 512 -> 128 -> 18 (ReLU, dropout), one logit per CT-RATE label.
- :class:`AbnormalityHeads`: 18 projection heads 2048 -> 1024 (one Linear(2048, 18·1024), which is the same
  function as 18 separate Linear(2048, 1024)), each followed by its own classifier 1024 -> 128 -> 1. The 18 small
  classifiers are stored as stacked weights and run as one batched matmul instead of 18 module calls.
- ``lateral_halves`` (not in the published method): ``h`` is [right half, left half]; each head runs on both halves
  with the same weights and the soft maximum of the two half logits is the label's logit.
- ``attribute_heads`` (not in the published method): per-label side and size read-outs on the abnormality
  embeddings, trained by step 1's ``attributes`` loss from the report sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctagrg.config import ConfigError
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
    # Attribute read-outs on each abnormality embedding (not in the published method): the side (left, right,
    # bilateral) and the size (mm) that the finding's report sentence states. Trained by step 1's
    # ``attributes`` loss so that the embeddings step 2 writes from carry where and how large a finding is, which
    # the presence loss alone does not ask of them (docs/training.md, "Attribute supervision").
    attribute_heads: bool = False
    # ``h`` is two halves, [right, left] (cnn3d's ``lateral_halves``): every head reads each half with the same
    # weights and a label's logit is the soft maximum (logsumexp) of its two half logits; step 1's embeddings are
    # the two halves' embeddings side by side, (B, L, 2 x embed_dim), so step 2 sees where a finding fired
    lateral_halves: bool = False
    # With ``lateral_halves`` (not in the published method): the abnormality embedding step 1 hands on (to the
    # step-2 embedding cache and the Reporter) keeps a half's units only where the label is "on" in that half (its
    # half probability reaches the label's half threshold, chosen on validation volumes like the detection
    # thresholds), zeros elsewhere, and follows each half with its probability and on: [right E, p_right, on_right,
    # left E, p_left, on_left]. So the side the decoder writes follows a decision calibrated on held-out volumes,
    # not the units of the training volumes, which are more clear-cut than a test volume's (docs/training.md,
    # "Gated halves")
    condition_on_halves: bool = False

    @property
    def halves(self) -> int:
        return 2 if self.lateral_halves else 1

    @property
    def part_dim(self) -> int:
        """Input width of each head: ``in_dim``, or half of it with ``lateral_halves``."""
        if self.in_dim % self.halves:
            raise ValueError(f"HeadsConfig.lateral_halves: in_dim {self.in_dim} is odd")
        return self.in_dim // self.halves


def soft_max_over_halves(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2, ...) half logits -> (B, ...): logsumexp over the halves, a smooth maximum (log 2 above both when
    they are equal) whose gradient goes mostly to the half that fires."""
    return torch.logsumexp(logits, dim=1)


class PretrainHead(nn.Module):
    """(B, in_dim) -> (B, num_labels) logits (with ``lateral_halves``: the same net on each half, then the soft
    maximum over the halves)."""

    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.part_dim
        for hidden in cfg.pretrain_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, cfg.num_labels))
        self.halves = cfg.halves

    def half_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, halves, num_labels): the net on each half ([right, left] with ``lateral_halves``)."""
        return self.net(h.view(h.shape[0], self.halves, -1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.halves == 1:
            return self.net(h)
        return soft_max_over_halves(self.half_logits(h))


SIDE_CLASSES = ("left", "right", "bilateral")  # the classes of the side read-out, in this order
SIZE_SCALE_MM = 10.0  # the size read-out predicts size_mm / SIZE_SCALE_MM
# per side class of SIDE_CLASSES, the halves [right, left] that hold such a finding
SIDE_HALVES = torch.tensor([[False, True], [True, False], [True, True]])


def halves_on(p: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """(..., 2) half probabilities [right, left] -> (..., 2) bool: the halves whose probability reaches
    ``threshold`` (broadcast against ``p[..., 0]``), or the higher half where neither does (both when equal)."""
    threshold = torch.as_tensor(threshold, dtype=p.dtype, device=p.device)
    on = p >= threshold[..., None] if threshold.ndim else p >= threshold
    return torch.where(on.any(-1, keepdim=True), on, p == p.amax(-1, keepdim=True))


class AbnormalityHeads(nn.Module):
    """(B, in_dim) -> logits (B, L) and embeddings (B, L, out_dim) (after ReLU, before dropout); out_dim is
    embed_dim, or twice it with ``lateral_halves``.

    With ``attribute_heads``, :meth:`attributes` reads label i's side logits (3, :data:`SIDE_CLASSES`) and size (mm) off
    its embedding with label i's own linear maps."""

    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        L, E, Hd = cfg.num_labels, cfg.embed_dim, cfg.classifier_hidden
        self.num_labels, self.embed_dim, self.halves = L, E, cfg.halves
        self.out_dim = E * cfg.halves  # width of each abnormality embedding
        self.project = nn.Linear(cfg.part_dim, L * E)
        self.dropout = nn.Dropout(cfg.dropout)
        # label i's classifier: Linear(E, Hd) -> ReLU -> dropout -> Linear(Hd, 1), weights stacked over labels
        self.fc1_weight = nn.Parameter(torch.empty(L, Hd, E))
        self.fc1_bias = nn.Parameter(torch.empty(L, Hd))
        self.fc2_weight = nn.Parameter(torch.empty(L, Hd))
        self.fc2_bias = nn.Parameter(torch.empty(L))
        self._init_classifiers(E, Hd)
        if cfg.condition_on_halves and not cfg.lateral_halves:  # checked here, not per override: order-free --set
            raise ConfigError("heads.condition_on_halves needs heads.lateral_halves: true (the two halves it gates)")
        self.condition_on_halves = cfg.condition_on_halves
        if cfg.condition_on_halves:  # set after step 1's training (ClassifierTask._set_half_thresholds)
            self.register_buffer("half_threshold", torch.full((L,), 0.5))
        self.attribute_heads = cfg.attribute_heads
        if cfg.attribute_heads:
            self.side_weight = nn.Parameter(torch.empty(L, len(SIDE_CLASSES), self.out_dim))
            self.side_bias = nn.Parameter(torch.zeros(L, len(SIDE_CLASSES)))
            self.size_weight = nn.Parameter(torch.empty(L, self.out_dim))
            self.size_bias = nn.Parameter(torch.zeros(L))
            bound = 1 / self.out_dim**0.5
            nn.init.uniform_(self.side_weight, -bound, bound)
            nn.init.uniform_(self.size_weight, -bound, bound)

    def _init_classifiers(self, e: int, hd: int) -> None:
        # the same distribution nn.Linear uses, per label
        for w, b, fan_in in ((self.fc1_weight, self.fc1_bias, e), (self.fc2_weight, self.fc2_bias, hd)):
            bound = 1 / fan_in**0.5
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def attributes(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, out_dim) -> side logits (B, L, 3) over :data:`SIDE_CLASSES` and sizes (B, L) in mm, label i
        read by its own maps. Meaningful only where label i is present; only ``attribute_heads`` models have them."""
        if not self.attribute_heads:
            raise RuntimeError("AbnormalityHeads.attributes: built without heads.attribute_heads")
        e = self.dropout(embeddings)
        side = torch.einsum("ble,lke->blk", e, self.side_weight) + self.side_bias
        size = ((e * self.size_weight).sum(-1) + self.size_bias) * SIZE_SCALE_MM
        return side, size

    @torch.no_grad()
    def warm_start(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from a linear read-out ``z = h @ weight.T + bias`` ((L, part_dim), (L,); part_dim is in_dim, or one
        half of it with lateral_halves, where z is read per half), e.g. a linear pretraining head: label i's projection
        gets the units ReLU(z_i) and ReLU(-z_i) (embedding dims 0 and 1), its classifier the hidden units ReLU(e_0 -
        e_1) and ReLU(e_1 - e_0) with output weights +1 and -1, and every other hidden unit an output weight of 0. So in
        eval mode the logits equal ``z`` exactly, and training goes on from there (the zeroed output weights get
        gradients, so the other units join in). Needs embed_dim and classifier_hidden >= 2."""
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

    def conditioning(self, embeddings: torch.Tensor, half_logits: torch.Tensor) -> torch.Tensor:
        """Step 2's input with ``condition_on_halves``: (B, L, 2 x E) embeddings and (B, 2, L) half logits ->
        (B, L, 2 x (E + 2)), per half [its E units if it is on else zeros, its probability, on (1 or 0)]. A half is
        on when its probability reaches label i's ``half_threshold``; when neither does, the higher one is. The two
        halves keep one layout, so that swapping them is still the mirror image (step 2's ``mirror``)."""
        if not self.condition_on_halves:
            raise RuntimeError("AbnormalityHeads.conditioning: built without heads.condition_on_halves")
        b, n, L = half_logits.shape
        p = torch.sigmoid(half_logits.float()).transpose(1, 2)  # (B, L, 2)
        on = halves_on(p, self.half_threshold).to(p.dtype)
        # a half that is off hands on zeros: its units would still tell the decoder a side, learned from training
        # volumes whose halves are more clear-cut than a test volume's (a bilateral effusion with one half at 0.9
        # was written "right" though both halves were on)
        e = embeddings.view(b, L, n, -1) * on[..., None].to(embeddings.dtype)
        return torch.cat([e, p[..., None].to(e.dtype), on[..., None].to(e.dtype)], -1).view(b, L, -1)

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, L, out_dim) abnormality embeddings (with ``lateral_halves``: each half projected by the
        same weights, [right E, left E] per label)."""
        b, n, L, E = h.shape[0], self.halves, self.num_labels, self.embed_dim
        e = torch.relu(self.project(h.view(b, n, -1))).view(b, n, L, E)
        return e.transpose(1, 2).reshape(b, L, n * E)

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L, out_dim) -> (B, L) logits, label i scored by classifier i only (per half, then the soft maximum
        over the halves)."""
        logits = self.half_logits(embeddings)
        return logits[:, 0] if self.halves == 1 else soft_max_over_halves(logits)

    def half_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, L, out_dim) -> (B, halves, L): label i's classifier on each half's embedding ([right, left] with
        ``lateral_halves``)."""
        b, L = embeddings.shape[:2]
        e = embeddings.view(b, L, self.halves, self.embed_dim).transpose(1, 2)  # (B, halves, L, E)
        z = torch.einsum("bnle,lhe->bnlh", self.dropout(e), self.fc1_weight) + self.fc1_bias
        z = self.dropout(torch.relu(z))
        return (z * self.fc2_weight).sum(-1) + self.fc2_bias  # (B, halves, L)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(h)
        return self.classify(emb), emb
