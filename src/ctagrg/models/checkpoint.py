"""Model checkpoints: ``config.json`` + ``model.safetensors`` (weights only, never pickled code).

Every file is written atomically. Training state (optimizer, RNG) is :mod:`ctagrg.training.checkpoint`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ctagrg.utils.atomic import atomic_path, write_json_atomic

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not match the model/config it is loaded into."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _contiguous_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous views; clone tied weights apart.
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in unwrap(model).state_dict().items():
        t = tensor.detach().cpu().contiguous()
        if t.data_ptr() in seen:
            t = t.clone()
        seen.add(t.data_ptr())
        out[key] = t
    return out


def save_model(model: nn.Module, directory: str | Path, config: dict[str, Any]) -> Path:
    """Write ``directory/config.json`` (``config``) and ``directory/model.safetensors`` (the state dict)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / MODEL_FILE) as tmp:
        save_file(_contiguous_state(model), str(tmp), metadata={"format": "pt"})
    write_json_atomic(directory / CONFIG_FILE, config)
    return directory

def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a checkpoint folder holds {CONFIG_FILE} and {MODEL_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], limit: int = 20) -> str:
    """Human-readable list of missing, unexpected and wrongly-shaped tensors ('' when they match)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k} (model {tuple(expected[k].shape)}, checkpoint {tuple(found[k].shape)})"
        for k in sorted(set(expected) & set(found))
        if expected[k].shape != found[k].shape
    ]
    parts = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{title} [{len(items)}]: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None


def load_model_weights(model: nn.Module, directory: str | Path, strict: bool = True) -> None:
    """Load ``directory/model.safetensors`` into ``model``; mismatched tensors are named in a CheckpointError."""
    path = Path(directory) / MODEL_FILE
    found = load_state_file(path)
    target = unwrap(model)
    problem = describe_mismatch(target.state_dict(), found)
    if problem and (strict or "shape mismatch" in problem):
        raise CheckpointError(f"{path}: checkpoint does not match the model built from its config: {problem}")
    target.load_state_dict(found, strict=strict)
