"""One factory for visual encoders: ``create_encoder(name, **cfg)`` -> nn.Module mapping (B, 1, D, H, W) -> (B, 2048).

>>> enc = create_encoder("ctnet", input_shape=(12, 64, 64), trunk={"width": 8},
...                      reducer_kernels=[[3, 1, 1], [3, 1, 1], [3, 1, 1]])
>>> enc.config.n_triplets
4
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ctagrg.config import from_dict
from ctagrg.models.cnn3d import CNN3DConfig, CNN3DEncoder
from ctagrg.models.ctnet import CTNetConfig, CTNetEncoder
from ctagrg.models.ctvit import CTViTConfig, CTViTEncoder

ENCODERS: dict[str, tuple[type, type[nn.Module]]] = {
    "ctnet": (CTNetConfig, CTNetEncoder),
    "ctvit": (CTViTConfig, CTViTEncoder),
    "cnn3d": (CNN3DConfig, CNN3DEncoder),  # small CPU encoder for the demo (not in the paper)
}


def encoder_config(name: str, **cfg: Any) -> Any:
    """The config dataclass of encoder ``name`` built from keyword values (unknown keys list the valid ones)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")
    return from_dict(ENCODERS[name][0], cfg, where=f"encoder {name}")


def create_encoder(name: str, config: Any = None, **cfg: Any) -> nn.Module:
    """Build encoder ``name`` from a config dataclass or from keyword values (nested sections as dicts)."""
    config = config if config is not None else encoder_config(name, **cfg)
    return ENCODERS[name][1](config)
