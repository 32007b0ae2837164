"""The ``ood_warning`` report post-processor: warn when more than ``fraction`` of the encoder's standardised
features lie beyond its outlier limit (the encoder's ``outlier_fraction`` diagnostic; the demo encoder reports it):
the scan is unlike the training data and its report is not to be trusted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctagrg.config import to_dict
from ctagrg.generation.postprocess import ReportBatch
from ctagrg.training.extensions import Extension


@dataclass
class OODWarningConfig:
    fraction: float = 0.01  # warn above this fraction of outlying features (0: never)
    limit_sd: float = 8.0  # the encoder's outlier limit, in training standard deviations (for the message)


class OODWarningPostprocessor:
    def __init__(self, config: OODWarningConfig, preprocess: Any, visual: torch.nn.Module) -> None:
        self.config = config

    def __call__(self, batch: ReportBatch) -> None:
        fractions = batch.outputs.get("diagnostics", {}).get("outlier_fraction")
        if fractions is None or self.config.fraction <= 0:
            return
        for v, fraction in enumerate(fractions.tolist()):
            if fraction > self.config.fraction:
                batch.warnings[v].append(
                    f"out of distribution: {100 * fraction:.1f}% of the encoder's features lie more than "
                    f"{self.config.limit_sd:g} standard deviations from the training data (ood_warning fraction "
                    f"{100 * self.config.fraction:g}%); this scan is unlike what the model was trained on and the "
                    f"report is not to be trusted")


class OODWarningExtension(Extension):
    """``extras.ood_warning`` (step 1): the packaged model's Reporter warns on out-of-distribution scans (writes
    the post-processor's section into ``best/postprocess.json``)."""

    config_class = OODWarningConfig
    stages = ("classifier",)

    def on_train_end(self, model: nn.Module, best: Path) -> None:
        from ctagrg.extras.nodule.calibrate import add_postprocess_section

        add_postprocess_section(best, "ood_warning", to_dict(self.config))
