"""Training extensions: how code outside the published method (the demo's extras) joins a training stage.

A stage config's ``extras`` section names the extensions to use and holds each one's options::

    extras:
      attributes: {sentences_csv: ..., half_weight: 0.3}
      head_l1: {weight: 3.0e-3}

Each name is looked up in the registry (:func:`register_extension`; plug-ins register theirs through
:mod:`ctagrg.utils.plugins`), its options are read into the extension's config dataclass, and the stage calls the
extension's hooks at fixed points. Every hook of :class:`Extension` does nothing, so an extension overrides only
what it needs. Extensions run in the order the section lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctagrg.config import ConfigError, from_dict
from ctagrg.utils.plugins import load_plugins, missing_hint


class Extension:
    """Base of a training extension: ``task`` is the stage (a :class:`ctagrg.training.task.Task`), ``config`` its
    options (an instance of ``config_class``, or None). ``stages``: the stage names it may join."""

    config_class: type | None = None
    stages: tuple[str, ...] = ()

    def __init__(self, task: Any, config: Any) -> None:
        self.task, self.config = task, config

    def on_build(self, model: nn.Module) -> None:
        """After the model is built and initialised."""

    def wrap_dataset(self, dataset: Any, split: str) -> Any:
        """The dataset of ``split`` ("train" or "valid") the stage uses (default: as given)."""
        return dataset

    def on_train_start(self, model: nn.Module) -> None:
        """Before the first epoch."""

    def inputs(self, batch: dict[str, Any], train: bool) -> dict[str, Any] | None:
        """The model's keyword inputs for ``batch`` instead of the stage's own (None: the stage's own)."""
        return None

    def loss_terms(self, model: nn.Module, out: dict[str, torch.Tensor], batch: dict[str, Any],
                   labels: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra training loss on a batch with labels (B, 18) and the loss so far: ``{"loss": the new total,
        name: detached value to log, ...}`` ({}: unchanged)."""
        return {}

    def training_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A collated training batch as the stage's training step uses it (default: as given)."""
        return batch

    def start_validation(self) -> None:
        """Before a validation pass (reset what :meth:`collect` counts)."""

    def collect(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        """Every validation batch's model output."""

    def metrics(self) -> dict[str, float]:
        """Extra validation metrics from what :meth:`collect` saw."""
        return {}

    def trainable(self, model: nn.Module) -> None:
        """Freeze parameters this extension leaves without a loss (before the optimiser is built)."""

    def on_train_end(self, model: nn.Module, best: Path) -> None:
        """After training, with the best checkpoint folder written (thresholds included)."""


@dataclass(frozen=True)
class _Entry:
    cls: type[Extension]


_REGISTRY: dict[str, _Entry] = {}


def register_extension(name: str, cls: type[Extension]) -> None:
    """Make extension ``name`` available to the stages in ``cls.stages``."""
    _REGISTRY[name] = _Entry(cls)


def extension_class(name: str) -> type[Extension]:
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none installed"
        raise ConfigError(f"extras.{name}: unknown training extension (known: {known}){missing_hint()}")
    return _REGISTRY[name].cls


def build_extensions(task: Any, sections: Mapping[str, Any], stage: str) -> list[Extension]:
    """The extensions a stage config's ``extras`` names, in order, each with its options read. They are appended to
    ``task.extensions`` as they are built, so that a later one can find an earlier one there."""
    out = task.extensions
    for name, options in sections.items():
        cls = extension_class(name)
        if stage not in cls.stages:
            raise ConfigError(f"extras.{name}: not for the {stage} stage (only {', '.join(cls.stages)})")
        if cls.config_class is None:
            if options:
                raise ConfigError(f"extras.{name}: takes no options, got {options!r}")
            config = None
        else:
            config = from_dict(cls.config_class, dict(options or {}), where=f"extras.{name}")
        out.append(cls(task, config))
    return out
