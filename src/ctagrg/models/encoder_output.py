"""What an encoder hands to the heads: a typed output with room for optional extras.

Every encoder maps (B, 1, D, H, W) to ``features`` (B, out_dim). An encoder may also say that its features are
``parts`` equal blocks side by side (e.g. the demo encoder's lateral halves, [right, left]) and report per-volume
``diagnostics`` (e.g. ``"outlier_fraction"``: how far a volume lies outside the training data). Encoders that have
such extras implement ``encode(volume) -> EncoderOutput``; for the others :func:`encode` wraps ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """features: (B, out_dim); parts: how many equal blocks ``features`` holds side by side; diagnostics: name ->
    (B,) tensor, one value per volume."""

    features: torch.Tensor
    parts: int = 1
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


def encode(encoder: nn.Module, volume: torch.Tensor) -> EncoderOutput:
    """``encoder.encode(volume)`` where the encoder defines it, else ``EncoderOutput(encoder(volume))``."""
    method = getattr(encoder, "encode", None)
    return method(volume) if callable(method) else EncoderOutput(encoder(volume))


def encode_from(encoder: nn.Module, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
    """The encoder on keyword ``inputs`` it takes instead of a volume (e.g. a precomputed stem)."""
    method = getattr(encoder, "encode", None)
    return method(**inputs) if callable(method) else EncoderOutput(encoder(**inputs))
