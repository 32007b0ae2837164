"""The ``Task`` interface: what one training stage supplies to the shared loop, and the registry of stages.

A stage (pretraining, step-1 classifier, step-2 decoder) is a subclass of :class:`Task` with a nested
``Config`` dataclass that has a ``train: TrainConfig`` field. :func:`ctagrg.training.loop.train` drives it::

    task = get_task("pretrain")(cfg)
    model = task.build_model()
    ... task.training_step(model, batch)["loss"].backward() ...
    metrics = task.validate(model, loader)      # includes "score", higher is better
    task.on_train_end(model, out_dir)

Tasks are registered by name in :data:`TASKS` as ``"module:Class"`` strings and imported only when asked for,
so ``ctagrg train --help`` does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

from ctagrg.config import ConfigError

TASKS: dict[str, str] = {
    "pretrain": "ctagrg.training.visual_tasks:PretrainTask",
    "classifier": "ctagrg.training.visual_tasks:ClassifierTask",
    "decoder": "ctagrg.training.decoder_task:DecoderTask",
}


class Task:
    """Base class of a training stage. Subclasses set ``Config`` and implement the methods marked below.

    ``self.cfg`` is the task config (an instance of ``Config``); ``self.cfg.train`` is its TrainConfig.
    ``self.device`` is set by the loop before ``training_step``/``validate`` are called.
    """

    Config: ClassVar[type]  # dataclass with a field ``train: TrainConfig``
    collate: Any = None  # a DataLoader collate_fn, or None for the default

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.device: Any = "cpu"

    # -- required ---------------------------------------------------------------------------------------------
    # called with every model the stage builds (``build_model``), e.g. to inject a memo into it; None: nothing
    model_hook: Any = None

    def build_model(self) -> Any:
        """Return the ``nn.Module`` to train (weights initialised, on CPU; the loop moves it)."""
        raise NotImplementedError

    def train_dataset(self) -> Any:
        """Return the training ``torch.utils.data.Dataset`` (map-style)."""
        raise NotImplementedError

    def training_step(self, model: Any, batch: Any) -> dict[str, Any]:
        """Forward one micro-batch; return ``{"loss": scalar tensor, ...floats to log}``.

        ``model`` may be DDP-wrapped: call it, don't reach into its attributes (use ``unwrap(model)`` if needed).
        ``batch`` is on the CPU; move what you need to ``self.device``.
        """
        raise NotImplementedError

    # -- optional ---------------------------------------------------------------------------------------------
    def valid_dataset(self) -> Any | None:
        """Return the validation Dataset, or None to skip validation."""
        return None

    def validate(self, model: Any, loader: Any) -> dict[str, float]:
        """Evaluate ``model`` (eval mode, no grad) on ``loader``; must include ``"score"`` (higher is better)."""
        raise NotImplementedError

    def on_train_start(self, model: Any) -> None:
        """Called once the model holds the weights it trains from (initial, or resumed from ``last/``), before the
        first batch and before any DDP wrapping. Default: nothing."""

    def on_train_end(self, model: Any, out_dir: Path) -> None:
        """Write stage artefacts (e.g. thresholds.json into ``out_dir / "best"``). ``model`` holds the best weights."""

    def param_groups(self, model: Any) -> list[dict[str, Any]] | list[Any]:
        """Parameters to optimise (default: every parameter with ``requires_grad``)."""
        return [p for p in model.parameters() if p.requires_grad]

    def save_model(self, model: Any, directory: Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (default: generic, see checkpoint.py)."""
        from ctagrg.models.checkpoint import save_model

        save_model(model, directory, config=self.model_config_dict())

    def load_model(self, model: Any, directory: Path) -> None:
        """Load weights written by :meth:`save_model` into ``model``; mismatches raise CheckpointError."""
        from ctagrg.models.checkpoint import load_model_weights

        load_model_weights(model, directory)

    def model_config_dict(self) -> dict[str, Any]:
        """What goes into ``config.json`` by default: the whole resolved task config."""
        from ctagrg.config import to_dict

        return to_dict(self.cfg)


def get_task(name: str) -> type[Task]:
    """Import and return the Task class registered as ``name``; unknown names list the registered ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    module_name, _, cls_name = TASKS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"task {name!r}: module {module_name} is not available in this install") from None
    return getattr(module, cls_name)
