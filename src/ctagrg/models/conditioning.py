"""Conditioning network Φ_T: one abnormality embedding hᵢ → the decoder's conditioning vector eᵢ.

CT-AGRG places a detected hᵢ (1024) in block i of an 18×1024 zero vector and applies an MLP
18432 → 4096 → 1024 → 1024 with ReLU between layers. Every block but i is zero, so the first layer's output is
``W[:, i·1024:(i+1)·1024] @ hᵢ + b``: only label i's slice of the weight touches hᵢ. We compute exactly that, grouped
by label, and never build the 18432-wide input (18× less memory traffic in the first layer). The weight is stored
as the paper's dense ``Linear(18432, 4096)``, so parameters map one-to-one onto the published architecture.

Latent-space augmentation (the paper's ablation): during training, Gaussian noise N(0, σ²) is added to hᵢ before
the MLP. σ is not published; ``latent_noise_std`` sets it (0 disables it). With ``latent_noise_scale: rms`` σ is
in units of the batch's hᵢ scale (the root mean square of its non-zero units), so that one value means the same on
embeddings of any scale: a value measured on the phantoms carries over to CT-RATE's (docs/decoder.md,
"Latent-space augmentation").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctagrg.config import ConfigError
from ctagrg.labels import NUM_LABELS

NOISE_SCALES: tuple[str, ...] = ("absolute", "rms")


@dataclass
class ConditioningConfig:
    """Shape of Φ_T. Paper: 18 labels × 1024 → (4096, 1024) hidden → 1024."""

    num_labels: int = NUM_LABELS
    input_dim: int = 1024  # size of one abnormality embedding hᵢ (0 in a training config: take it from the cache)
    hidden_dims: tuple[int, ...] = (4096, 1024)
    output_dim: int = 1024  # size of eᵢ, the input of the per-layer key/value projections
    latent_noise_std: float = 0.0  # σ of the Gaussian latent augmentation on hᵢ (training only)
    latent_noise_scale: str = "absolute"  # absolute: σ as is | rms: σ × RMS of the batch's non-zero hᵢ units

    def __post_init__(self) -> None:
        if self.num_labels < 1 or self.input_dim < 0 or self.output_dim < 1:
            raise ConfigError("conditioning: num_labels and output_dim must be >= 1, input_dim >= 0")
        if any(d < 1 for d in self.hidden_dims):
            raise ConfigError(f"conditioning.hidden_dims: every size must be >= 1, got {self.hidden_dims}")
        if self.latent_noise_std < 0:
            raise ConfigError(f"conditioning.latent_noise_std: expected >= 0, got {self.latent_noise_std}")
        if self.latent_noise_scale not in NOISE_SCALES:
            raise ConfigError(f"conditioning.latent_noise_scale: expected one of {', '.join(NOISE_SCALES)}, got "
                              f"{self.latent_noise_scale!r}")


class BlockSparseConditioning(nn.Module):
    """Φ_T(hᵢ, i) = MLP(one_hot_block(hᵢ, i)) without materialising the block-sparse input.

    Args:
        config: sizes and the latent-noise σ.

    Example:
        >>> phi = BlockSparseConditioning(ConditioningConfig(num_labels=3, input_dim=4, hidden_dims=(8,), output_dim=5))
        >>> phi(torch.randn(2, 4), torch.tensor([0, 2])).shape
        torch.Size([2, 5])
    """

    def __init__(self, config: ConditioningConfig) -> None:
        super().__init__()
        if config.input_dim < 1:
            raise ConfigError("conditioning.input_dim: must be set (>= 1) to build the network")
        self.config = config
        dims = [config.num_labels * config.input_dim, *config.hidden_dims, config.output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def first_layer(self, h: torch.Tensor, label_index: torch.Tensor) -> torch.Tensor:
        """The first Linear on the block-sparse input. h: (N, input_dim); label_index: (N,) long → (N, hidden0)."""
        first = self.layers[0]
        d = self.config.input_dim
        out = h.new_empty(h.shape[0], first.out_features)
        # Group by label: at most num_labels matmuls, each with one (hidden0, input_dim) slice of the weight.
        for label in torch.unique(label_index).tolist():
            rows = (label_index == label).nonzero(as_tuple=True)[0]
            weight = first.weight[:, label * d : (label + 1) * d]
            out[rows] = nn.functional.linear(h[rows], weight, first.bias)
        return out

    def dense_input(self, h: torch.Tensor, label_index: torch.Tensor) -> torch.Tensor:
        """The paper's explicit input, hᵢ in block i of zeros: (N, num_labels·input_dim). For tests/reference."""
        x = h.new_zeros(h.shape[0], self.config.num_labels, self.config.input_dim)
        x[torch.arange(h.shape[0], device=h.device), label_index] = h
        return x.flatten(1)

    def noise_std(self, h: torch.Tensor) -> torch.Tensor | float:
        """The latent noise's standard deviation for the batch ``h`` (N, input_dim): σ, or with ``rms`` σ times the
        root mean square of h's non-zero units (ReLU and gating leave many at exactly 0), without gradient."""
        sigma = self.config.latent_noise_std
        if self.config.latent_noise_scale == "absolute":
            return sigma
        units = h.detach().float()
        nonzero = units[units != 0]
        return sigma * nonzero.pow(2).mean().sqrt().to(h.dtype) if nonzero.numel() else 0.0

    def forward(self, h: torch.Tensor, label_index: torch.Tensor) -> torch.Tensor:
        """h: (N, input_dim) float, one embedding per (volume, label) pair; label_index: (N,) long in
        [0, num_labels) → eᵢ: (N, output_dim)."""
        if h.ndim != 2 or h.shape[1] != self.config.input_dim:
            raise ValueError(f"conditioning: expected h of shape (N, {self.config.input_dim}), got {tuple(h.shape)}")
        if label_index.shape != (h.shape[0],):
            raise ValueError(f"conditioning: expected label_index of shape ({h.shape[0]},), "
                             f"got {tuple(label_index.shape)}")
        if h.shape[0] and (int(label_index.min()) < 0 or int(label_index.max()) >= self.config.num_labels):
            raise ValueError(f"conditioning: label_index must lie in [0, {self.config.num_labels})")
        if self.training and self.config.latent_noise_std > 0:
            h = h + self.noise_std(h) * torch.randn_like(h)
        x = self.first_layer(h, label_index.long())
        for layer in self.layers[1:]:
            x = layer(torch.relu(x))
        return x
