"""The encoder and head registries: ``create_encoder(name, **cfg)`` -> nn.Module mapping (B, 1, D, H, W) ->
(B, out_dim), and the step-1 head variants.

The published encoders (``ctnet``, ``ctvit``) and heads (``ctagrg``) are built in; plug-ins (the demo's ``cnn3d``
encoder and ``halves`` heads, ``ctagrg.extras``) register theirs (:mod:`ctagrg.utils.plugins`).

>>> enc = create_encoder("ctnet", input_shape=(12, 64, 64), trunk={"width": 8},
...                      reducer_kernels=[[3, 1, 1], [3, 1, 1], [3, 1, 1]])
>>> enc.config.n_triplets
4
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ctagrg.config import from_dict
from ctagrg.models.ctnet import CTNetConfig, CTNetEncoder
from ctagrg.models.ctvit import CTViTConfig, CTViTEncoder
from ctagrg.utils.plugins import load_plugins, missing_hint

ENCODERS: dict[str, tuple[type, type[nn.Module]]] = {
    "ctnet": (CTNetConfig, CTNetEncoder),
    "ctvit": (CTViTConfig, CTViTEncoder),
}
BUILTIN_ENCODERS = ("ctnet", "ctvit")


@dataclass(frozen=True)
class HeadVariant:
    """A step-1 head family: ``config`` (a dataclass read from ``model.extras[name]``, or None), the classes
    building the pretraining head and the abnormality heads from (HeadsConfig, that config), and optionally
    ``check_stage(stage, variant_config, extras)``, which raises ConfigError when a training stage (its name and
    its ``extras`` section) lacks what the heads need there."""

    config: type | None
    pretrain_head: Any
    abnormality_heads: Any
    check_stage: Any = None


HEADS: dict[str, HeadVariant] = {}


def register_encoder(name: str, config_cls: type, encoder_cls: type[nn.Module]) -> None:
    """Make encoder ``name`` available (its config is read from ``model.extras[name]``)."""
    ENCODERS[name] = (config_cls, encoder_cls)


def register_heads(name: str, variant: HeadVariant) -> None:
    """Make head variant ``name`` available (``model.heads.variant``)."""
    HEADS[name] = variant


def encoder_entry(name: str) -> tuple[type, type[nn.Module]]:
    """(config class, encoder class) of encoder ``name``; ValueError listing the known ones."""
    if name not in ENCODERS:
        load_plugins()
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}{missing_hint()}")
    return ENCODERS[name]


def head_variant(name: str) -> HeadVariant | None:
    """Head variant ``name`` (None for the published heads, ``"ctagrg"``); ValueError listing the known ones."""
    if name == "ctagrg":
        return None
    if name not in HEADS:
        load_plugins()
    if name not in HEADS:
        raise ValueError(f"unknown heads variant {name!r}; available: {', '.join(['ctagrg', *HEADS])}"
                         f"{missing_hint()}")
    return HEADS[name]


def encoder_config(name: str, **cfg: Any) -> Any:
    """The config dataclass of encoder ``name`` built from keyword values (unknown keys list the valid ones)."""
    return from_dict(encoder_entry(name)[0], cfg, where=f"encoder {name}")


def create_encoder(name: str, config: Any = None, **cfg: Any) -> nn.Module:
    """Build encoder ``name`` from a config dataclass or from keyword values (nested sections as dicts)."""
    config = config if config is not None else encoder_config(name, **cfg)
    return encoder_entry(name)[1](config)
