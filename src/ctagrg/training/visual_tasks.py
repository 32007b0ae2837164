"""The visual stages: ``pretrain`` (encoder + 18-label head) and ``classifier`` (step 1: encoder + abnormality
heads, then per-label thresholds). What they share (data selection, the training step, validation, extensions) is
in :mod:`ctagrg.training.visual_base`; their configs in :mod:`ctagrg.training.visual_config`.

``ctagrg train pretrain --config configs/demo/pretrain.yaml``;
``ctagrg train classifier --config configs/demo/classifier.yaml --set init.encoder_from=runs/pretrain/best``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ctagrg.models.checkpoint import unwrap
from ctagrg.models.step1 import PretrainModel, Step1Model
from ctagrg.training.loop import autocast_context
from ctagrg.training.visual_base import VisualTask
from ctagrg.training.visual_config import (  # noqa: F401 (re-exported)
    RESNET18_NONE,
    ClassifierTaskConfig,
    InitConfig,
    PretrainTaskConfig,
    VisualDataConfig,
    check_resnet18_init,
)
from ctagrg.training.volume_cache import PerVolumeCache

logger = logging.getLogger(__name__)


class PretrainTask(VisualTask):
    """Pretraining: encoder + 2048 -> 512 -> 128 -> 18 head, multi-label BCE."""

    Config = PretrainTaskConfig
    model_cls = PretrainModel
    stage = "pretrain"


class ClassifierTask(VisualTask):
    """Step 1: encoder (initialised from pretraining) + 18 projection heads and classifiers; writes thresholds."""

    Config = ClassifierTaskConfig
    model_cls = Step1Model
    write_thresholds = True
    stage = "classifier"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        # volume name -> frozen encoder output (in_dim,), on the CPU
        self._h = PerVolumeCache("frozen encoder: {n} volumes encoded once in {s:.1f} s; epochs train the heads on "
                                 "the cached outputs")

    @property
    def _caching(self) -> bool:
        c = self.cfg
        return c.freeze_encoder and c.cache_frozen_encoder and not c.data.augment.enabled

    # -- frozen-encoder cache: h is computed once per volume before training, then the datasets read no volumes --
    def train_dataset(self) -> Any:
        ds = super().train_dataset()
        return self._h.register(ds) if self._caching else ds

    def valid_dataset(self) -> Any | None:
        ds = super().valid_dataset()
        return self._h.register(ds) if self._caching and ds is not None else ds

    def on_train_start(self, model: nn.Module) -> None:
        super().on_train_start(model)
        if not self._caching:
            return
        encoder, tc = unwrap(model).encoder, self.cfg.train

        def encode(batch: dict[str, Any]) -> torch.Tensor:
            encoder.eval()  # deterministic, exact: BatchNorm statistics kept, no dropout
            with autocast_context(tc, self.device):  # as the uncached path computes h
                return encoder(self._volumes(batch)).float().cpu()

        self._h.start(encode, batch_size=tc.eval_batch_size or tc.batch_size, num_workers=tc.num_workers)

    def _inputs(self, batch: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        if self._caching:  # cached encoder outputs: no augmentation (caching needs it off)
            return {"h": self._h.gather(batch["name"], self.device)}
        return super()._inputs(batch, train)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        if self.cfg.freeze_encoder:  # a frozen encoder also keeps its BatchNorm statistics and skips dropout
            unwrap(model).encoder.eval()
        return super().training_step(model, batch)

    def param_groups(self, model: nn.Module) -> list[Any]:
        if self.cfg.freeze_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        return super().param_groups(model)
