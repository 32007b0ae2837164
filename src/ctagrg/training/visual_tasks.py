"""The visual stages: ``pretrain`` (encoder + 18-label head) and ``classifier`` (step 1: encoder + abnormality
heads, then per-label thresholds). What they share (data selection, the training step, validation) is in
:mod:`ctagrg.training.visual_base`; their configs in :mod:`ctagrg.training.visual_config`.

``ctagrg train pretrain --config configs/demo/pretrain.yaml``;
``ctagrg train classifier --config configs/demo/classifier.yaml --set init.encoder_from=runs/pretrain/best``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ctagrg.config import ConfigError, from_dict, read_json_object, to_dict
from ctagrg.data.augment import AugmentDraw, apply_augmentation
from ctagrg.extras.nodule.measure import NODULE_SIZE_FILE
from ctagrg.labels import LABEL_INDEX, LABELS
from ctagrg.models.checkpoint import unwrap
from ctagrg.models.heads import SIDE_CLASSES
from ctagrg.models.step1 import PretrainModel, Step1Model
from ctagrg.training.attributes import (  # noqa: F401 (re-exported: the visual stages' public names)
    AttributeConfig,
    AttributeTargets,
    attribute_losses,
    half_side_loss,
)
from ctagrg.training.loop import autocast_context
from ctagrg.training.thresholds import save_thresholds, select_half_thresholds
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
from ctagrg.utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)


class PretrainTask(VisualTask):
    """Pretraining: encoder + 2048 -> 512 -> 128 -> 18 head, multi-label BCE."""

    Config = PretrainTaskConfig
    model_cls = PretrainModel

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._stems = PerVolumeCache("stem: {n} volumes measured once in {s:.1f} s; epochs augment the measurements")
        self._stem: Any = None  # the encoder's HUBinStem, set by on_train_start
        self._pad: torch.Tensor | None = None  # measurements of a patch of data.augment.pad_value
        if cfg.cache_stem:
            self._check_cache_stem()
        if cfg.attributes.side_weight > 0 or cfg.attributes.size_weight > 0:
            raise ConfigError("attributes.side_weight / size_weight: step 1 only (its abnormality embeddings carry "
                              "the read-outs); pretraining takes attributes.half_weight")

    def _check_cache_stem(self) -> None:
        cfg = self.cfg
        if cfg.model.encoder != "cnn3d":
            raise ConfigError(f"cache_stem: only for the cnn3d encoder (its stem has no weights), not "
                              f"{cfg.model.encoder!r}")
        aug, patch = cfg.data.augment, cfg.model.cnn3d.patch
        if aug.enabled:
            bad = [a for a in range(3) if aug.max_shift[a] >= aug.shift_step[a] and aug.shift_step[a] % patch[a]]
            if bad:
                raise ConfigError(f"cache_stem: data.augment.shift_step {list(aug.shift_step)} must be a multiple of "
                                  f"model.cnn3d.patch {list(patch)} along each shifted axis (whole-patch shifts), "
                                  f"or a max_shift below shift_step there (no shift)")
            if aug.rot90_p > 0 and patch[1] != patch[2]:
                raise ConfigError(f"cache_stem: data.augment.rot90_p > 0 needs square patches in-plane, got "
                                  f"model.cnn3d.patch {list(patch)}")

    # -- stem cache: each volume's patch measurements are computed once, then the datasets read no volumes ------
    def train_dataset(self) -> Any:
        ds = super().train_dataset()
        return self._stems.register(ds) if self.cfg.cache_stem else ds

    def valid_dataset(self) -> Any | None:
        ds = super().valid_dataset()
        return self._stems.register(ds) if self.cfg.cache_stem and ds is not None else ds

    def on_train_start(self, model: nn.Module) -> None:
        super().on_train_start(model)
        if not self.cfg.cache_stem:
            return
        self._stem = stem = unwrap(model).encoder.stem
        self._pad = stem.measure_padding(self.cfg.data.augment.pad_value)
        tc = self.cfg.train
        encoder = unwrap(model).encoder  # its input-shape check, as the uncached path runs it
        self._stems.start(lambda batch: stem.measure(encoder.check_input(self._volumes(batch))).cpu(),
                          batch_size=tc.eval_batch_size or tc.batch_size, num_workers=tc.num_workers)

    def _stem_batch(self, names: Sequence[str], draws: Sequence[AugmentDraw] | None) -> torch.Tensor:
        """(B, stem_channels, d, h, w): the stem of each volume from its cached measurements, augmented per volume
        by ``draws`` (the same random draws as the volume path makes, so the run equals the uncached one)."""
        m = self._stems.gather(names, "cpu")
        if draws is not None:
            patch = self.cfg.model.cnn3d.patch
            m = torch.stack([apply_augmentation(v, d, self._pad, scale=patch) for v, d in zip(m, draws, strict=True)])
        return self._stem.assemble(m.to(self.device, non_blocking=True))

    def _inputs(self, batch: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        if not self.cfg.cache_stem:
            return super()._inputs(batch, train)
        return {"stem": self._stem_batch(batch["name"], self._draws(batch, train))}

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        result = super().training_step(model, batch)
        if self.cfg.head_l1 > 0:
            l1 = unwrap(model).head.net[-1].weight.abs().sum()
            result["loss"] = result["loss"] + self.cfg.head_l1 * l1
            result["head_l1"] = l1.detach()
        return result


class ClassifierTask(VisualTask):
    """Step 1: encoder (initialised from pretraining) + 18 projection heads and classifiers; writes thresholds."""

    Config = ClassifierTaskConfig
    model_cls = Step1Model
    write_thresholds = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        # volume name -> frozen encoder output (in_dim,), on the CPU
        self._h = PerVolumeCache("frozen encoder: {n} volumes encoded once in {s:.1f} s; epochs train the heads on "
                                 "the cached outputs")
        a = cfg.attributes
        if (a.side_weight > 0 or a.size_weight > 0) and not cfg.model.heads.attribute_heads:
            raise ConfigError("attributes: side_weight / size_weight > 0 need model.heads.attribute_heads: true "
                              "(the read-outs the attribute loss trains)")
        # the sides the validation volumes' sentences state, for the half thresholds (heads.condition_on_halves)
        self._half_sides: AttributeTargets | None = None
        if cfg.model.heads.condition_on_halves:  # (its need for lateral halves: AbnormalityHeads checks it)
            if not a.sentences_csv or not cfg.data.valid_labels:
                raise ConfigError("model.heads.condition_on_halves: needs attributes.sentences_csv and "
                                  "data.valid_labels (its half thresholds are chosen on the sides that the validation "
                                  "volumes' sentences state)")
            self._half_sides = self._attributes or AttributeTargets.from_sentences_csv(a.sentences_csv)
        if cfg.nodule_size.enabled and (not a.sentences_csv or not cfg.data.valid_labels):
            raise ConfigError("nodule_size.enabled: needs attributes.sentences_csv and data.valid_labels (its offset "
                              "is calibrated on the sizes that the validation volumes' nodule sentences state)")

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

    def on_train_end(self, model: nn.Module, out_dir: Path) -> None:
        super().on_train_end(model, out_dir)
        if self._half_sides is not None:
            self._set_half_thresholds(model, Path(out_dir) / "best")
        if self.cfg.nodule_size.enabled:
            self._calibrate_nodule_size(Path(out_dir) / "best")
        else:  # a calibration left by an earlier run into this folder must not turn the measurement on
            (Path(out_dir) / "best" / NODULE_SIZE_FILE).unlink(missing_ok=True)

    def _calibrate_nodule_size(self, best: Path) -> None:
        """``nodule_size.enabled``: measure, in each validation volume whose lung-nodule sentence states a size and
        one side, the largest isolated solid sphere in that side's half; ``offset_mm`` = the median of stated
        diameter - 2 x radius (fewer than 5 measured: the configured offset, recorded as such). Writes
        ``best/nodule_size.json`` (the NoduleSizeConfig the Reporter loads, with ``calibration``: how it was
        chosen and its validation agreement within 5 mm, in-sample)."""
        from ctagrg.data.dataset import CachedVolumeDataset
        from ctagrg.data.preprocess import PreprocessConfig
        from ctagrg.extras.nodule.measure import (
            SIDES,
            calibrate_offset,
            check_window,
            hu_from_input,
            largest_isolated_radius,
            solid_spheres,
        )

        cfg, data = self.cfg.nodule_size, self.cfg.data
        path = Path(data.cache_dir) / "preprocess.json"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; nodule_size needs the cache's spacing and HU window")
        pp = from_dict(PreprocessConfig, read_json_object(path), where=str(path))
        if pp.axcodes != "SLP":
            raise ConfigError(f"{path}: nodule_size needs SLP volumes, the cache is {pp.axcodes}")
        check_window(cfg, pp.hu_min, pp.hu_max, str(path))
        targets = self._half_sides or self._attributes or AttributeTargets.from_sentences_csv(
            self.cfg.attributes.sentences_csv)
        i = LABEL_INDEX["Lung nodule"]
        radii, stated = [], []
        found = 0
        ds = CachedVolumeDataset(data.cache_dir, labels=self._labels(data.valid_labels), names=self.selection().valid)
        sides, sizes = targets.gather(ds.names, torch.from_numpy(ds.label_matrix()), "cpu")
        for k in range(len(ds)):
            where = SIDE_CLASSES[int(sides[k, i])] if sides[k, i] >= 0 else None
            if where not in SIDES or torch.isnan(sizes[k, i]):
                continue
            found += 1
            volume = ds[k]["volume"][0].numpy()
            spheres = solid_spheres(hu_from_input(volume, pp.hu_min, pp.hu_max, pp.offset), pp.spacing, cfg)
            r = largest_isolated_radius(spheres, volume.shape[1], cfg, where)
            if r is not None:
                radii.append(r)
                stated.append(float(sizes[k, i]))
        calibrated = len(radii) >= 5
        offset = calibrate_offset(radii, stated) if calibrated else cfg.offset_mm
        within = (float(np.mean(np.abs(2 * np.array(radii) + offset - np.array(stated)) <= 5.0)) if radii
                  else None)
        result = replace(cfg, offset_mm=offset, calibration={
            "rule": ("median of stated diameter - 2 x radius over the validation nodules whose sentence states a "
                     "size and one side (fewer than 5 measured: the configured offset)"),
            "calibrated": calibrated, "sentences_from": targets.source, "validation_nodules": found,
            "measured": len(radii), "validation_within_5mm_in_sample": within})
        write_json_atomic(best / NODULE_SIZE_FILE, to_dict(result))
        logger.info(f"nodule size: offset {offset:+.2f} mm from {len(radii)} of {found} validation nodules"
              + (f"; within 5 mm of the stated size (in-sample): {within:.3f}" if within is not None else ""))

    def _set_half_thresholds(self, model: nn.Module, best: Path) -> None:
        """``heads.condition_on_halves``: choose the half thresholds on the validation volumes (the sides their
        sentences state; the detection thresholds for labels with fewer than 5 such findings), store them in the
        model and in thresholds.json, and save ``best/`` again. Until then the model's half thresholds are 0.5, as
        in the checkpoints saved during training."""
        tc = self.cfg.train
        loader = DataLoader(self.valid_dataset(), batch_size=tc.eval_batch_size or tc.batch_size,
                            num_workers=tc.num_workers)
        halves, sides, targets = [], [], self._half_sides

        def collect(out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
            halves.append(torch.sigmoid(out["half_logits"].float()).cpu())
            sides.append(targets.gather(batch["name"], batch["labels"], "cpu")[0])

        with torch.no_grad():
            self._predict_with(model, loader, lambda batch: self._inputs(batch, train=False), collect)
        content = json.loads((best / "thresholds.json").read_text(encoding="utf-8"))
        detection = np.array([content["thresholds"][n] for n in LABELS])
        chosen, report = select_half_thresholds(torch.cat(halves).numpy(), torch.cat(sides).numpy(), detection)
        model.heads.half_threshold.copy_(torch.from_numpy(chosen).float())
        self.save_model(model, best)
        content["half_rule"] = ("max side accuracy on the validation findings whose sentence states a side "
                                "(fewer than 5: the detection threshold)")
        content["half_sides_from"] = targets.source
        content["half_thresholds"] = {n: float(t) for n, t in zip(LABELS, chosen, strict=True)}
        content["half_validation"] = {n: {"side_accuracy": acc, "findings": k}
                                      for n, (acc, k) in zip(LABELS, report, strict=True)}
        save_thresholds(best, content)

    def param_groups(self, model: nn.Module) -> list[Any]:
        if self.cfg.freeze_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        a = self.cfg.attributes
        if model.heads.attribute_heads and not (a.side_weight > 0 or a.size_weight > 0):
            # read-outs without a loss get no gradient: frozen, so that DDP (find_unused_parameters off) does not
            # wait for theirs
            for name in ("side_weight", "side_bias", "size_weight", "size_bias"):
                getattr(model.heads, name).requires_grad_(False)
        return [p for p in model.parameters() if p.requires_grad]
