"""Report post-processors: code outside the published method that amends a batch's reports after generation.

The Reporter applies the post-processors its config names (``ReporterConfig.postprocess``: name -> options), in
that order, to every batch. A post-processor is registered by a plug-in (:func:`register_postprocessor`) with a
config dataclass; it receives a :class:`ReportBatch` and may change the sentences, add measurements or warnings.
A training stage that calibrates a post-processor writes its section into ``best/postprocess.json``
(:data:`POSTPROCESS_FILE`), which ``Reporter.from_training_outputs`` merges into the packaged model's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ctagrg.config import ConfigError, from_dict
from ctagrg.utils.plugins import load_plugins, missing_hint

POSTPROCESS_FILE = "postprocess.json"


@dataclass
class ReportBatch:
    """What the post-processors see and amend, for N volumes.

    volumes: (N, D, H, W) preprocessed, as the visual model saw them; preprocess: their PreprocessConfig;
    outputs: the visual model's outputs, CPU tensors (e.g. "logits" (N, 18), plug-in keys such as "half_logits",
    "diagnostics"); detected: (N, 18) bool; sentences: per volume, label index -> sentence (detected labels only);
    measurements: per volume, label index -> {name: value} (e.g. {"size_mm": 12.3}); warnings: per volume."""

    volumes: np.ndarray
    preprocess: Any
    outputs: dict[str, Any]
    detected: torch.Tensor
    sentences: list[dict[int, str]]
    measurements: list[dict[int, dict[str, Any]]] = field(default_factory=list)
    warnings: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.sentences)
        self.measurements = self.measurements or [{} for _ in range(n)]
        self.warnings = self.warnings or [[] for _ in range(n)]


class Postprocessor(Protocol):
    """Built once per Reporter from its options: ``cls(config, preprocess)``; ``check`` raises ConfigError when the
    model cannot use it; called on each batch."""

    def __call__(self, batch: ReportBatch) -> None: ...


@dataclass(frozen=True)
class _Entry:
    config_class: type
    factory: Any


_REGISTRY: dict[str, _Entry] = {}


def register_postprocessor(name: str, config_class: type, factory: Any) -> None:
    """Make post-processor ``name`` available: ``factory(config, preprocess, visual_model)`` -> Postprocessor."""
    _REGISTRY[name] = _Entry(config_class, factory)


def postprocessor_config(name: str, options: Mapping[str, Any], where: str) -> Any:
    """Options of post-processor ``name`` read into its config dataclass."""
    if name not in _REGISTRY:
        load_plugins()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none installed"
        raise ConfigError(f"{where}.{name}: unknown report post-processor (known: {known}){missing_hint()}")
    return from_dict(_REGISTRY[name].config_class, dict(options or {}), where=f"{where}.{name}")


def build_postprocessors(sections: Mapping[str, Any], preprocess: Any, visual: torch.nn.Module,
                         where: str = "postprocess") -> list[Postprocessor]:
    """The post-processors ``sections`` names, in order, built for this model and preprocessing."""
    built = []
    for name, options in sections.items():
        config = postprocessor_config(name, options, where)  # first: it loads the plug-ins that register ``name``
        built.append(_REGISTRY[name].factory(config, preprocess, visual))
    return built
