"""Checkpoints: ``config.json`` + ``model.safetensors`` for weights, ``train_state.pt`` for everything else.

The training state (optimizer, scheduler, grad scaler, step counters, RNG states) is saved as plain tensors,
numbers, lists and dicts only, so it loads with ``torch.load(..., weights_only=True)`` and never unpickles code.
Every file is written atomically: a checkpoint folder that exists is complete. The training loop's ``last/`` is
also replaced as a whole (:func:`atomic_dir`), so its weights and its training state always belong together.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ctagrg.utils.atomic import atomic_path, write_json_atomic

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"


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


def _sidecars(directory: Path) -> tuple[Path, Path]:
    return directory.with_name(f".{directory.name}.partial"), directory.with_name(f".{directory.name}.previous")


@contextlib.contextmanager
def atomic_dir(directory: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``directory`` (``.NAME.partial``); when the block succeeds it replaces
    ``directory`` as a whole, else it is removed. Between the two renames of the swap the old folder is
    ``.NAME.previous``, which :func:`recover_dir` puts back after a crash there."""
    directory = Path(directory)
    partial, previous = _sidecars(directory)
    recover_dir(directory)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        os.replace(directory, previous)
    os.replace(partial, directory)
    shutil.rmtree(previous, ignore_errors=True)


def recover_dir(directory: str | Path) -> None:
    """Undo a swap of :func:`atomic_dir` cut between its two renames: ``.NAME.previous`` back to ``NAME``."""
    directory = Path(directory)
    previous = _sidecars(directory)[1]
    if not directory.exists() and previous.is_dir():
        os.replace(previous, directory)


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


# -- RNG state as plain data (weights_only-loadable) ------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors/lists/numbers."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_train_state(directory: str | Path, state: dict[str, Any]) -> None:
    """Write ``directory/train_state.pt`` atomically (plain tensors/dicts only)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / STATE_FILE) as tmp:
        torch.save(state, tmp)


def load_train_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load training state (weights_only=True): {exc}") from None
