"""The visual stages: ``pretrain`` (encoder + 18-label head) and ``classifier`` (step 1: encoder + abnormality
heads, then per-label thresholds). Both read the preprocessed cache through ``CachedVolumeDataset``.

The loaders deliver the cache's uint8 levels (``dtype="uint8"``): a worker then only reads the file (no float32
copy in the worker or in the default collate, a quarter of the bytes to pin and send), and ``training_step`` /
``predict`` dequantise the batch on the training device (:func:`ctagrg.data.cache.dequantize`), bit-identical to
the float32 dataset (BENCHMARKS.md, "Training data loading").

``ctagrg train pretrain --config configs/demo/pretrain.yaml``;
``ctagrg train classifier --config configs/demo/classifier.yaml --set init.encoder_from=runs/pretrain/best``.

Augmentation (flips, rot90, shifts; ``data.augment``) runs in ``training_step`` in the main process with the torch
RNG, not in DataLoader workers, so the checkpointed RNG state makes resumed runs exact.

Validation reports per-label AUROC and F1 at 0.5; ``score`` is the macro AUROC. At the end, the best model is run
on the validation set once more to write ``best/validation.json`` + ``best/validation.md`` and, for the classifier,
``best/thresholds.json`` (max-F1 rule, :mod:`ctagrg.evaluation.classification`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ctagrg.config import ConfigError
from ctagrg.data.augment import AugmentConfig, augment_volume
from ctagrg.data.cache import dequantize
from ctagrg.evaluation.classification import classification_report, markdown_table
from ctagrg.labels import LABELS
from ctagrg.models.step1 import PretrainModel, Step1Model, VisualModelConfig, load_encoder_from
from ctagrg.training.checkpoint import load_model_weights, unwrap
from ctagrg.training.config import TrainConfig
from ctagrg.training.loop import autocast_context
from ctagrg.training.task import Task
from ctagrg.training.thresholds import compute_thresholds, save_thresholds
from ctagrg.utils.atomic import write_json_atomic, write_text_atomic
from ctagrg.utils.progress import progress


@dataclass
class VisualDataConfig:
    """Where the volumes and labels are. Labels CSVs: CT-RATE ``VolumeName`` + the 18 label columns."""

    cache_dir: str = ""  # `ctagrg preprocess` output
    train_labels: str = ""  # e.g. ROOT/multi_abnormality_labels/train_predicted_labels.csv
    valid_labels: str = ""  # empty: no validation (best = last epoch, no thresholds)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pos_weight: str = "none"  # none | auto: BCE pos_weight = negatives / positives per label, capped
    max_pos_weight: float = 10.0


@dataclass
class InitConfig:
    """Weights to start from (local files only)."""

    encoder_from: str = ""  # a visual checkpoint folder (e.g. pretraining's best/): its encoder.* tensors
    resnet18: str = ""  # torchvision ImageNet resnet18 state dict -> CT-Net trunk (width 64 only)
    ctclip: str = ""  # CT-CLIP checkpoint -> CT-ViT encoder


def _pretrain_train() -> TrainConfig:
    """CT-AGRG pretraining: Adam lr 1e-4, 40 epochs, batch 4, StepLR(40, 0.5)."""
    return TrainConfig(out_dir="runs/pretrain", optimizer="adam", lr=1e-4, epochs=40, batch_size=4,
                       scheduler="step", step_size_epochs=40, gamma=0.5)


def _classifier_train() -> TrainConfig:
    """CT-AGRG step 1: lr 1e-5, batch 4 (optimizer and epochs are not published; Adam, 20 epochs here)."""
    return TrainConfig(out_dir="runs/classifier", optimizer="adam", lr=1e-5, epochs=20, batch_size=4)


@dataclass
class PretrainTaskConfig:
    train: TrainConfig = field(default_factory=_pretrain_train)
    data: VisualDataConfig = field(default_factory=VisualDataConfig)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class ClassifierTaskConfig:
    train: TrainConfig = field(default_factory=_classifier_train)
    data: VisualDataConfig = field(default_factory=VisualDataConfig)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    freeze_encoder: bool = False  # train only the heads (the encoder stays as initialised)
    # with a frozen encoder and no augmentation, the encoder's output h is the same every epoch: compute it once
    # per volume and keep it in memory (CT-RATE: 2048 floats x ~47k volumes = 0.4 GB), so later epochs and
    # validations train and score only the heads
    cache_frozen_encoder: bool = True


class _VisualTask(Task):
    model_cls: type = PretrainModel

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._pos_weight: torch.Tensor | None = None

    # -- data -------------------------------------------------------------------------------------------------
    def _dataset(self, labels_csv: str) -> Any:
        from ctagrg.data.dataset import CachedVolumeDataset

        if not self.cfg.data.cache_dir:
            raise ConfigError("data.cache_dir: not set (the folder written by `ctagrg preprocess`)")
        ds = CachedVolumeDataset(self.cfg.data.cache_dir, labels=labels_csv, dtype="uint8")
        if len(ds) == 0:
            raise ConfigError(f"{labels_csv}: none of its volumes is in {self.cfg.data.cache_dir}")
        return ds

    def train_dataset(self) -> Any:
        if not self.cfg.data.train_labels:
            raise ConfigError("data.train_labels: not set (a labels CSV: VolumeName + the 18 label columns)")
        ds = self._dataset(self.cfg.data.train_labels)
        if self.cfg.data.pos_weight == "auto":
            y = ds.label_matrix()
            pos = y.sum(0)
            w = np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0)
            self._pos_weight = torch.tensor(np.clip(w, 1.0 / self.cfg.data.max_pos_weight,
                                                    self.cfg.data.max_pos_weight), dtype=torch.float32)
        elif self.cfg.data.pos_weight != "none":
            raise ConfigError(f"data.pos_weight: expected none or auto, got {self.cfg.data.pos_weight!r}")
        return ds

    def valid_dataset(self) -> Any | None:
        return self._dataset(self.cfg.data.valid_labels) if self.cfg.data.valid_labels else None

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = self.model_cls(self.cfg.model)
        init = self.cfg.init
        if init.resnet18:
            if self.cfg.model.encoder != "ctnet":
                raise ConfigError("init.resnet18: only for the ctnet encoder")
            from ctagrg.models.weights import load_resnet18_trunk

            print(f"{init.resnet18}: {load_resnet18_trunk(model.encoder.trunk, init.resnet18).summary()}")
        if init.ctclip:
            if self.cfg.model.encoder != "ctvit":
                raise ConfigError("init.ctclip: only for the ctvit encoder")
            from ctagrg.models.weights import load_ctclip_ctvit

            print(f"{init.ctclip}: {load_ctclip_ctvit(model.encoder, init.ctclip).summary()}")
        if init.encoder_from:
            load_encoder_from(model, init.encoder_from)
        return model

    def save_model(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)

    def load_model(self, model: nn.Module, directory: Path) -> None:
        load_model_weights(model, directory)

    # -- steps ------------------------------------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pw = self._pos_weight.to(logits.device) if self._pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=pw)

    def _volumes(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's volumes as float32 (B, 1, D, H, W) on ``self.device``.

        A uint8 batch (with (B,) ``lo``/``hi``) is moved as uint8 and dequantised there; a float batch (a dataset
        built with the default dtype) is moved as is.
        """
        x = batch["volume"].to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = dequantize(x, batch["lo"], batch["hi"])  # lo/hi stay on the CPU: B float64 scalars
        return x

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        x = self._volumes(batch)  # dequantised before augmentation: its pad value is in normalised units
        y = batch["labels"].to(self.device, non_blocking=True)
        if self.cfg.data.augment.enabled:
            x = torch.stack([augment_volume(v, self.cfg.data.augment) for v in x])
        out = model(x)
        loss = self._loss(out["logits"], y)
        if "logits_detached" in out:  # CT-AGRG per-head backward (see VisualModelConfig.per_head_backward)
            loss = loss + self._loss(out["logits_detached"], y)
        return {"loss": loss}

    def predict(self, model: nn.Module, loader: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(labels (N, 18), probabilities (N, 18), names) over ``loader`` with ``model`` in eval mode."""
        labels, probs, names = [], [], []
        for batch in loader:
            logits = model(self._volumes(batch))["logits"]
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            labels.append(batch["labels"].numpy())
            names += list(batch["name"])
        return np.concatenate(labels), np.concatenate(probs), names

    def validate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        labels, probs, _ = self.predict(model, loader)
        eps = 1e-7
        p = np.clip(probs, eps, 1 - eps)
        loss = float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())
        rep = classification_report(labels, probs, 0.5)
        metrics = {"loss": loss, "macro_auroc": rep["macro"]["auroc"], "macro_f1@0.5": rep["macro"]["f1"]}
        metrics |= {f"auroc/{name}": m["auroc"] for name, m in rep["per_label"].items()}
        metrics["score"] = metrics["macro_auroc"] if not np.isnan(metrics["macro_auroc"]) else -loss
        return metrics

    def on_train_end(self, model: nn.Module, out_dir: Path) -> None:
        valid = self.valid_dataset()
        if valid is None:
            return
        tc = self.cfg.train
        loader = DataLoader(valid, batch_size=tc.eval_batch_size or tc.batch_size, num_workers=tc.num_workers)
        with torch.no_grad():
            labels, probs, names = self.predict(model, loader)
        best = Path(out_dir) / "best"
        thresholds: Any = 0.5
        if self.write_thresholds:
            content = compute_thresholds(labels, probs)
            save_thresholds(best, content)
            thresholds = np.array([content["thresholds"][n] for n in LABELS])
        rep = classification_report(labels, probs, thresholds)
        write_json_atomic(best / "validation.json", {"n": len(names), **rep})
        write_text_atomic(best / "validation.md", markdown_table(rep))

    write_thresholds = False


class PretrainTask(_VisualTask):
    """Pretraining: encoder + 2048 -> 512 -> 128 -> 18 head, multi-label BCE."""

    Config = PretrainTaskConfig
    model_cls = PretrainModel


class ClassifierTask(_VisualTask):
    """Step 1: encoder (initialised from pretraining) + 18 projection heads and classifiers; writes thresholds."""

    Config = ClassifierTaskConfig
    model_cls = Step1Model
    write_thresholds = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._h_cache: dict[str, torch.Tensor] = {}  # volume name -> frozen encoder output (in_dim,), on the CPU
        self._encoder: nn.Module | None = None  # set by on_train_start: the encoder whose outputs are cached
        self._pending: list[Any] = []  # datasets built before on_train_start, encoded there

    @property
    def _caching(self) -> bool:
        c = self.cfg
        return c.freeze_encoder and c.cache_frozen_encoder and not c.data.augment.enabled

    # -- frozen-encoder cache: h is computed once per volume before training, then the datasets read no volumes --
    # The loop builds the datasets before it resumes, so they are encoded in on_train_start, with the encoder the
    # run actually trains on (a resumed run's from last/, not whatever init.encoder_from points to now).
    def train_dataset(self) -> Any:
        return self._encoded(super().train_dataset())

    def valid_dataset(self) -> Any | None:
        ds = super().valid_dataset()
        return None if ds is None else self._encoded(ds)

    def on_train_start(self, model: nn.Module) -> None:
        if self._caching:
            self._encoder = unwrap(model).encoder
            pending, self._pending = self._pending, []
            for ds in pending:
                self._encoded(ds)

    def _encoded(self, ds: Any) -> Any:
        """With caching on: encode ``ds``'s volumes not yet in the cache, then make ``ds`` yield labels and names
        only, so that no epoch reads a volume again. Before ``on_train_start`` the dataset is only registered."""
        if not self._caching:
            return ds
        if self._encoder is None:
            self._pending.append(ds)
            return ds
        missing = [i for i, n in enumerate(ds.names) if n not in self._h_cache]
        if missing:
            self._encode(Subset(ds, missing))
        ds.volumes = False
        return ds

    @torch.no_grad()
    def _encode(self, ds: Any) -> None:
        """Frozen-encoder outputs of every volume of ``ds`` into the cache (eval mode: deterministic, exact)."""
        tc, encoder = self.cfg.train, self._encoder
        assert encoder is not None
        encoder.eval()
        start = time.perf_counter()
        # its own generator: iterating a loader draws a seed from the global RNG, which the training run's dropout
        # and augmentation streams (seeded just before this) must not see
        loader = DataLoader(ds, batch_size=tc.eval_batch_size or tc.batch_size, num_workers=tc.num_workers,
                            generator=torch.Generator().manual_seed(0))
        for batch in progress(loader, desc="encoding (frozen encoder, once)", total=len(loader)):
            with autocast_context(tc, self.device):  # as the uncached path computes h
                h = encoder(self._volumes(batch)).float().cpu()
            self._h_cache.update(zip(batch["name"], h, strict=True))
        print(f"frozen encoder: {len(ds)} volumes encoded once in {time.perf_counter() - start:.1f} s; "
              "epochs train the heads on the cached outputs", flush=True)

    def _cached_h(self, names: Sequence[str]) -> torch.Tensor:
        """(B, in_dim) cached encoder outputs of ``names`` on ``self.device``."""
        return torch.stack([self._h_cache[n] for n in names]).to(self.device, non_blocking=True)

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        if self.cfg.freeze_encoder:  # a frozen encoder also keeps its BatchNorm statistics and skips dropout
            unwrap(model).encoder.eval()
        if not self._caching:
            return super().training_step(model, batch)
        out = model(h=self._cached_h(batch["name"]))
        y = batch["labels"].to(self.device, non_blocking=True)
        loss = self._loss(out["logits"], y)
        if "logits_detached" in out:  # as the uncached path: with a frozen encoder this only doubles the heads' loss
            loss = loss + self._loss(out["logits_detached"], y)
        return {"loss": loss}

    def predict(self, model: nn.Module, loader: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if not self._caching:
            return super().predict(model, loader)
        labels, probs, names = [], [], []
        for batch in loader:
            logits = model(h=self._cached_h(batch["name"]))["logits"]
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            labels.append(batch["labels"].numpy())
            names += list(batch["name"])
        return np.concatenate(labels), np.concatenate(probs), names

    def param_groups(self, model: nn.Module) -> list[Any]:
        if self.cfg.freeze_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        return [p for p in model.parameters() if p.requires_grad]
