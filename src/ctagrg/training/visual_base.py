"""The visual stages' shared part: data selection, model building, the training step, validation and the
best model's validation report. :mod:`ctagrg.training.visual_tasks` holds the two stages, ``pretrain`` (encoder +
18-label head) and ``classifier`` (step 1: encoder + abnormality heads, then per-label thresholds). Both read the
preprocessed cache through ``CachedVolumeDataset``.

Data: ``data.train_labels`` and ``data.valid_labels`` give the labels (a CSV, or a folder of CSVs); ``split``
(:mod:`ctagrg.training.splits`) chooses the training and validation volumes among their cached volumes, by split
name, patient-level carve or name list. The chosen names are written to ``out_dir/splits/`` when training starts.
On CT-RATE (configs/ctrate) both labels fields name the train CSV and ``split`` carves the validation patients out
of it, so that CT-RATE's ``valid`` is left to ``ctagrg evaluate``.

The loaders deliver the cache's uint8 levels (``dtype="uint8"``): a worker then only reads the file (no float32
copy in the worker or in the default collate, a quarter of the bytes to pin and send), and ``training_step`` /
``predict`` dequantise the batch on the training device (:func:`ctagrg.data.cache.dequantize`), bit-identical to
the float32 dataset (BENCHMARKS.md, "Training data loading").

Augmentation (flips, rot90, shifts; ``data.augment``) runs in ``training_step`` in the main process with the torch
RNG, not in DataLoader workers, so the checkpointed RNG state makes resumed runs exact.

Validation reports per-label AUROC and F1 at 0.5; ``score`` is the macro AUROC. At the end, the best model is run
on the validation set once more to write ``best/validation.json`` + ``best/validation.md`` and, for the classifier,
``best/thresholds.json`` (max-F1 rule, :mod:`ctagrg.evaluation.classification`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ctagrg.config import ConfigError, read_json_object
from ctagrg.data.augment import AugmentDraw, apply_augmentation, draw_augmentation
from ctagrg.data.cache import dequantize
from ctagrg.evaluation.classification import classification_report, markdown_table
from ctagrg.generation.postprocess import POSTPROCESS_FILE
from ctagrg.labels import LABELS
from ctagrg.models.checkpoint import load_model_weights
from ctagrg.models.preprocess_match import check_cache_preprocess, with_preprocess
from ctagrg.models.registry import head_variant
from ctagrg.models.step1 import PretrainModel, load_encoder_from
from ctagrg.training.extensions import Extension, build_extensions
from ctagrg.training.splits import Selection, resolve, write_record
from ctagrg.training.task import Task
from ctagrg.training.thresholds import compute_thresholds, save_thresholds
from ctagrg.training.visual_config import RESNET18_NONE, check_resnet18_init
from ctagrg.utils.atomic import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


class VisualTask(Task):
    """What the pretrain and classifier stages share (see the module docstring)."""


    model_cls: type = PretrainModel

    stage = ""  # "pretrain" | "classifier": which training extensions may join

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._pos_weight: torch.Tensor | None = None
        self._selection: Selection | None = None
        self._label_tables: dict[str, dict[str, np.ndarray]] = {}
        pp_path = Path(cfg.data.cache_dir) / "preprocess.json" if cfg.data.cache_dir else None
        if pp_path is not None and pp_path.is_file():  # the window and voxel size the encoder reads, not restated
            cfg.model = with_preprocess(cfg.model, read_json_object(pp_path), str(pp_path))
        self.extensions: list[Extension] = []
        build_extensions(self, cfg.extras, self.stage)
        variant = head_variant(cfg.model.heads.variant)
        if variant is not None and variant.check_stage is not None:
            variant.check_stage(self.stage, cfg.model.heads_variant_config(), cfg.extras)

    def extension(self, cls: type) -> Any:
        """The stage's extension of class ``cls``, or None."""
        return next((e for e in self.extensions if isinstance(e, cls)), None)

    # -- data -------------------------------------------------------------------------------------------------
    def _labels(self, path: str) -> dict[str, np.ndarray]:
        """The labels CSV at ``path`` (or every CSV of a folder), read once: stem -> (18,) float32."""
        from ctagrg.data.dataset import read_labels_csv
        from ctagrg.training.embedding_cache import csv_files

        if path not in self._label_tables:
            table: dict[str, np.ndarray] = {}
            for file in csv_files(path):
                table.update(read_labels_csv(file))
            self._label_tables[path] = table
        return self._label_tables[path]

    def selection(self) -> Selection:
        """The training and validation volumes: ``split`` applied to the volumes of ``data.train_labels`` /
        ``data.valid_labels`` that are in the cache (an empty list: all of them; no ``data.valid_labels``: no
        validation). Resolved once; written to ``out_dir/splits/`` when training starts."""
        if self._selection is None:
            from ctagrg.data.dataset import cached_names

            data, split = self.cfg.data, self.cfg.split
            if not data.train_labels:
                raise ConfigError("data.train_labels: not set (a labels CSV: VolumeName + the 18 label columns)")
            if not data.cache_dir:
                raise ConfigError("data.cache_dir: not set (the folder written by `ctagrg preprocess`)")
            if split.valid and not data.valid_labels:
                raise ConfigError("split.valid: set, but data.valid_labels is not (the labels CSV of the validation "
                                  "volumes: data.train_labels's own file when they are carved out of it)")
            cached = set(cached_names(data.cache_dir))
            pools = [[n for n in self._labels(path) if n in cached] if path else []
                     for path in (data.train_labels, data.valid_labels)]
            for path, pool in zip((data.train_labels, data.valid_labels), pools, strict=True):
                if path and not pool:
                    raise ConfigError(f"{path}: none of its volumes is in {data.cache_dir}")
            self._selection = resolve(split, pools[0], pools[1], f"data.train_labels in {data.cache_dir}")
        return self._selection

    def _dataset(self, labels_csv: str, names: Sequence[str]) -> Any:
        from ctagrg.data.dataset import CachedVolumeDataset

        ds = CachedVolumeDataset(self.cfg.data.cache_dir, labels=self._labels(labels_csv), names=names,
                                 dtype="uint8")
        # the encoder's input_shape, input_hu and voxel_mm against the cache's preprocess.json
        check_cache_preprocess(self.cfg.model.encoder_config(), self.cfg.data.cache_dir)
        return ds

    def train_dataset(self) -> Any:
        ds = self._dataset(self.cfg.data.train_labels, self.selection().train)
        if self.cfg.data.pos_weight == "auto":
            y = ds.label_matrix()
            pos = y.sum(0)
            w = np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0)
            self._pos_weight = torch.tensor(np.clip(w, 1.0 / self.cfg.data.max_pos_weight,
                                                    self.cfg.data.max_pos_weight), dtype=torch.float32)
        elif self.cfg.data.pos_weight != "none":
            raise ConfigError(f"data.pos_weight: expected none or auto, got {self.cfg.data.pos_weight!r}")
        for ext in self.extensions:
            ds = ext.wrap_dataset(ds, "train")
        return ds

    def valid_dataset(self) -> Any | None:
        names = self.selection().valid
        if not names:
            return None
        ds = self._dataset(self.cfg.data.valid_labels, names)
        for ext in self.extensions:
            ds = ext.wrap_dataset(ds, "valid")
        return ds

    def on_train_start(self, model: nn.Module) -> None:
        data = self.cfg.data
        folder = write_record(self.cfg.train.out_dir, self.selection(), self.cfg.split, {
            "train": f"data.train_labels {data.train_labels}", "valid": f"data.valid_labels {data.valid_labels}",
            "cache": data.cache_dir})
        selection = self.selection()
        logger.info(f"split: {len(selection.train)} training and {len(selection.valid)} validation volumes "
                    f"(names in {folder})")
        for ext in self.extensions:
            ext.on_train_start(model)

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = self.model_cls(self.cfg.model)
        check_resnet18_init(self.cfg)  # the loop builds the model first: a run refuses before reading any data
        init = self.cfg.init
        if init.resnet18 and init.resnet18 != RESNET18_NONE:
            from ctagrg.models.weights import load_resnet18_trunk

            logger.info(f"{init.resnet18}: {load_resnet18_trunk(model.encoder.trunk, init.resnet18).summary()}")
        if init.ctclip:
            if self.cfg.model.encoder != "ctvit":
                raise ConfigError("init.ctclip: only for the ctvit encoder")
            from ctagrg.models.weights import load_ctclip_ctvit

            logger.info(f"{init.ctclip}: {load_ctclip_ctvit(model.encoder, init.ctclip).summary()}")
        if init.encoder_from:
            load_encoder_from(model, init.encoder_from)
        for ext in self.extensions:
            ext.on_build(model)
        if self.model_hook is not None:
            self.model_hook(model)
        return model

    def param_groups(self, model: nn.Module) -> list[Any]:
        for ext in self.extensions:
            ext.trainable(model)
        return [p for p in model.parameters() if p.requires_grad]

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

    def _inputs(self, batch: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for ``batch``: an extension's, or the volumes, augmented in training
        (subclasses: encoder outputs looked up by name instead). Augmentation records which volumes it mirrored
        left-right in ``batch["lr_flipped"]`` ((B,) bool), for whatever reads sides from the labels' text."""
        for ext in self.extensions:
            replaced = ext.inputs(batch, train)
            if replaced is not None:
                return replaced
        return self._volume_inputs(batch, train)

    def _volume_inputs(self, batch: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        """The volumes of ``batch``, augmented in training."""
        x = self._volumes(batch)  # dequantised before augmentation: its pad value is in normalised units
        draws = self._draws(batch, train)
        if draws is not None:
            pad = self.cfg.data.augment.pad_value
            x = torch.stack([apply_augmentation(v, d, pad) for v, d in zip(x, draws, strict=True)])
        return {"volume": x}

    def _draws(self, batch: dict[str, Any], train: bool) -> list[AugmentDraw] | None:
        """One augmentation draw per volume of a training batch (None when not augmenting), as
        :func:`augment_volume` draws them; records the left-right mirrors in ``batch["lr_flipped"]``."""
        if not (train and self.cfg.data.augment.enabled):
            return None
        draws = [draw_augmentation(self.cfg.data.augment) for _ in batch["name"]]
        batch["lr_flipped"] = torch.tensor([d.flip_axis == 1 for d in draws])
        return draws

    def _loss_terms(self, model: nn.Module, out: dict[str, torch.Tensor], batch: dict[str, Any], y: torch.Tensor
                    ) -> dict[str, Any]:
        """``{"loss": ...}`` (+ logged extras) from the model's outputs on a training batch with labels ``y``; each
        extension may add its terms."""
        loss = self._loss(out["logits"], y)
        if "logits_detached" in out:  # CT-AGRG per-head backward (see VisualModelConfig.per_head_backward)
            loss = loss + self._loss(out["logits_detached"], y)
        result: dict[str, Any] = {"loss": loss}
        for ext in self.extensions:
            result |= ext.loss_terms(model, out, batch, y, result["loss"])
        return result

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        out = model(**self._inputs(batch, train=True))
        return self._loss_terms(model, out, batch, batch["labels"].to(self.device, non_blocking=True))

    def predict(self, model: nn.Module, loader: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(labels (N, 18), probabilities (N, 18), names) over ``loader`` with ``model`` in eval mode; the
        extensions see every batch's output in the same pass (their validation metrics)."""
        for ext in self.extensions:
            ext.start_validation()

        def collect(out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
            for ext in self.extensions:
                ext.collect(out, batch)

        return self._predict_with(model, loader, lambda batch: self._inputs(batch, train=False),
                                  collect if self.extensions else None)

    @staticmethod
    def _predict_with(model: nn.Module, loader: Any, inputs: Any, collect: Any = None
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """:meth:`predict` with the model's keyword inputs from ``inputs(batch)``: the volumes, or for batches
        without volumes cached stems or encoder outputs looked up by name. ``collect(out, batch)``, if given, sees
        every batch's model output (step 1's attribute metrics, in the same pass)."""
        labels, probs, names = [], [], []
        for batch in loader:
            out = model(**inputs(batch))
            if collect is not None:
                collect(out, batch)
            logits = out["logits"]
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
        for ext in self.extensions:
            metrics |= ext.metrics()
        return metrics

    def on_train_end(self, model: nn.Module, out_dir: Path) -> None:
        self._validation_report(model, out_dir)
        self.finish_extensions(model, out_dir)

    def _validation_report(self, model: nn.Module, out_dir: Path) -> None:
        """best/validation.json and .md, and for step 1 best/thresholds.json, from the best model."""
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

    def finish_extensions(self, model: nn.Module, out_dir: Path) -> None:
        """The extensions' end-of-training work on ``out_dir/best`` (after :meth:`on_train_end`'s own)."""
        best = Path(out_dir) / "best"
        (best / POSTPROCESS_FILE).unlink(missing_ok=True)  # a section left by an earlier run must not stay on
        for ext in self.extensions:
            ext.on_train_end(model, best)

    write_thresholds = False
