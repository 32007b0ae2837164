"""Training checkpoints: ``train_state.pt`` beside a model checkpoint (:mod:`ctagrg.models.checkpoint`).

The training state (optimizer, scheduler, grad scaler, step counters, RNG states) is saved as plain tensors,
numbers, lists and dicts only, so it loads with ``torch.load(..., weights_only=True)`` and never unpickles code.
Every file is written atomically: a checkpoint folder that exists is complete. The training loop's ``last/`` is
also replaced as a whole (:func:`atomic_dir`), so its weights and its training state always belong together.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctagrg.models.checkpoint import (  # noqa: F401 (re-exported: the training loop saves models too)
    CONFIG_FILE,
    MODEL_FILE,
    CheckpointError,
    describe_mismatch,
    load_model_weights,
    load_state_file,
    read_config,
    save_model,
    unwrap,
)
from ctagrg.utils.atomic import atomic_path

STATE_FILE = "train_state.pt"


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
