"""The ``attributes`` training extension (pretraining and step 1): losses from the sides and sizes report sentences
state, and their validation metrics. Options: :class:`ctagrg.extras.attributes.targets.AttributeConfig`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ctagrg.config import ConfigError
from ctagrg.extras.attributes.targets import AttributeConfig, AttributeTargets, attribute_losses, half_side_loss
from ctagrg.extras.halves.heads import SIDE_CLASSES
from ctagrg.training.extensions import Extension

logger = logging.getLogger(__name__)
_READ_OUTS = ("side_weight", "side_bias", "size_weight", "size_bias")


def _halves_options(task: Any) -> dict[str, Any]:
    model = task.cfg.model
    return model.extras.get("halves", {}) if model.heads.variant == "halves" else {}


class AttributesExtension(Extension):
    config_class = AttributeConfig
    stages = ("pretrain", "classifier")

    def __init__(self, task: Any, config: AttributeConfig) -> None:
        super().__init__(task, config)
        a, halves = config, _halves_options(task)
        if task.stage == "pretrain" and (a.side_weight > 0 or a.size_weight > 0):
            raise ConfigError("extras.attributes.side_weight / size_weight: step 1 only (its abnormality embeddings "
                              "carry the read-outs); pretraining takes extras.attributes.half_weight")
        if a.half_weight > 0 and not halves.get("lateral_halves"):
            raise ConfigError("extras.attributes.half_weight > 0 needs heads.variant: halves with lateral halves (the "
                              "two half logits it supervises)")
        if (a.side_weight > 0 or a.size_weight > 0) and not halves.get("attribute_heads"):
            raise ConfigError("extras.attributes: side_weight / size_weight > 0 need model.extras.halves."
                              "attribute_heads: true (the read-outs the attribute loss trains)")
        if not a.sentences_csv:
            raise ConfigError("extras.attributes.sentences_csv: not set (the `ctagrg sentences` CSV of the training "
                              "and validation reports, where the sides and sizes are read)")
        aug = task.cfg.data.augment
        if (a.half_weight > 0 or a.side_weight > 0) and aug.enabled and aug.rot90_p > 0:
            raise ConfigError("extras.attributes.half_weight / side_weight > 0 with data.augment.rot90_p > 0: a "
                              "rotated volume's left and right are no longer the sides its sentence states; set "
                              "rot90_p: 0 or those weights to 0")
        self.targets = AttributeTargets.from_sentences_csv(a.sentences_csv)
        self.counts: dict[str, Any] = {}

    def wrap_dataset(self, dataset: Any, split: str) -> Any:
        if split == "train":
            logger.info(self.targets.summary(dataset))
        return dataset

    def loss_terms(self, model: nn.Module, out: dict[str, torch.Tensor], batch: dict[str, Any],
                   labels: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        a, result = self.config, {"loss": loss}
        side, size = self.targets.gather(batch["name"], labels, self.task.device, batch.get("lr_flipped"))
        if a.half_weight > 0:
            half_loss = half_side_loss(out["half_logits"], side)
            result["loss"] = result["loss"] + a.half_weight * half_loss
            result["half_loss"] = half_loss.detach()
        if a.side_weight > 0 or a.size_weight > 0:
            side_loss, size_loss = attribute_losses(out["side_logits"], out["size_mm"], side, size)
            result["loss"] = result["loss"] + a.side_weight * side_loss + a.size_weight * size_loss
            result |= {"side_loss": side_loss.detach(), "size_loss": size_loss.detach()}
        return result

    def start_validation(self) -> None:
        self.counts = {"half": 0, "n_half": 0, "right": 0, "n_side": 0, "abs_err": [], "outputs": set()}

    def collect(self, out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        counts = self.counts
        side, size = self.targets.gather(batch["name"], batch["labels"], "cpu")
        counts["outputs"] |= set(out)
        left, right = SIDE_CLASSES.index("left"), SIDE_CLASSES.index("right")
        if "half_logits" in out:  # the half that scores higher against a one-sided finding's stated side
            one_sided = (side == left) | (side == right)
            hl = out["half_logits"].float().cpu()
            said_right = torch.where(hl[:, 0] > hl[:, 1], right, left)
            counts["half"] += int((said_right[one_sided] == side[one_sided]).sum())
            counts["n_half"] += int(one_sided.sum())
        if "side_logits" in out:
            known = side >= 0
            counts["right"] += int((out["side_logits"].argmax(-1).cpu()[known] == side[known]).sum())
            counts["n_side"] += int(known.sum())
        if "size_mm" in out:
            sized = ~torch.isnan(size)
            counts["abs_err"] += (out["size_mm"].float().cpu()[sized] - size[sized]).abs().tolist()

    def metrics(self) -> dict[str, float]:
        """Over the present findings whose sentence states a side (one side, for the halves) or a size; NaN where
        the model has the output but no validation finding states the attribute."""
        c, nan, metrics = self.counts, float("nan"), {}
        if not c:
            return metrics
        if "half_logits" in c["outputs"]:
            metrics["half_side_accuracy"] = c["half"] / c["n_half"] if c["n_half"] else nan
        if "side_logits" in c["outputs"]:
            metrics["side_accuracy"] = c["right"] / c["n_side"] if c["n_side"] else nan
        if "size_mm" in c["outputs"]:
            metrics["size_mae_mm"] = float(np.mean(c["abs_err"])) if c["abs_err"] else nan
        return metrics

    def trainable(self, model: nn.Module) -> None:
        # the read-outs are built frozen (HalvesHeads) and train only with a side or size loss: without one they get
        # no gradient, which DDP (find_unused_parameters off) would wait for
        heads = getattr(model, "heads", None)
        if getattr(heads, "attribute_heads", False):
            trained = self.config.side_weight > 0 or self.config.size_weight > 0
            for name in _READ_OUTS:
                getattr(heads, name).requires_grad_(trained)
