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

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ctagrg.config import ConfigError, from_dict, read_json_object, to_dict
from ctagrg.data.augment import AugmentConfig, AugmentDraw, apply_augmentation, draw_augmentation
from ctagrg.data.cache import dequantize
from ctagrg.evaluation.classification import classification_report, markdown_table
from ctagrg.labels import LABEL_INDEX, LABELS
from ctagrg.measurement.nodule_size import NODULE_SIZE_FILE, NoduleSizeConfig
from ctagrg.models.heads import SIDE_CLASSES, SIDE_HALVES, SIZE_SCALE_MM
from ctagrg.models.preprocess_match import check_cache_preprocess
from ctagrg.models.step1 import PretrainModel, Step1Model, VisualModelConfig, load_encoder_from
from ctagrg.training.checkpoint import load_model_weights, unwrap
from ctagrg.training.config import TrainConfig
from ctagrg.training.loop import autocast_context
from ctagrg.training.task import Task
from ctagrg.training.thresholds import compute_thresholds, save_thresholds, select_half_thresholds
from ctagrg.training.volume_cache import PerVolumeCache
from ctagrg.utils.atomic import write_json_atomic, write_text_atomic


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
    # torchvision's ImageNet resnet18 (.pth or .safetensors) -> the CT-Net trunk. The paper's CT-Net (a resnet18-shaped
    # trunk) trained without init.encoder_from needs it set: a path, or "none" to start from random weights
    resnet18: str = ""
    ctclip: str = ""  # CT-CLIP checkpoint -> CT-ViT encoder
    # step 1: start the abnormality heads from encoder_from's linear pretraining head (heads.pretrain_hidden: []),
    # so that step 1 begins with pretraining's logits (AbnormalityHeads.warm_start) instead of random heads. Not in
    # the published method: on ~300 phantoms randomly initialised heads on the frozen encoder lost validation
    # macro-AUROC against the pretraining head (0.05-0.08, docs/training.md)
    heads_from_pretrain: bool = False


def _pretrain_train() -> TrainConfig:
    """CT-AGRG pretraining: Adam lr 1e-4, 40 epochs, batch 4, StepLR(40, 0.5)."""
    return TrainConfig(out_dir="runs/pretrain", optimizer="adam", lr=1e-4, epochs=40, global_batch_size=4, batch_size=4,
                       scheduler="step", step_size_epochs=40, gamma=0.5)


def _classifier_train() -> TrainConfig:
    """CT-AGRG step 1: lr 1e-5, batch 4 (optimizer and epochs are not published; Adam, 20 epochs here)."""
    return TrainConfig(out_dir="runs/classifier", optimizer="adam", lr=1e-5, epochs=20, global_batch_size=4,
                       batch_size=4)


@dataclass
class AttributeConfig:
    """Supervision from the sides and sizes that report sentences state (not in the published method; off unless a
    weight is > 0). The targets come from report text, as CT-RATE has it, not from any image annotation.

    - ``half_weight`` (pretraining and step 1, with ``heads.lateral_halves``): a present finding whose sentence states
      its side tells the label's two half logits which half holds it: binary cross-entropy of the right half's logit
      against "right or bilateral" and of the left half's against "left or bilateral". The label alone only says
      that one half holds it, and the soft maximum sends most of the gradient to whichever half already scores
      higher, right or wrong; told the side, the encoder learns from the difference between a patient's two halves,
      one with the finding and one without (docs/training.md, "Half supervision").
    - ``side_weight``, ``size_weight`` (step 1, with ``heads.attribute_heads``): label i's side read-out
      (cross-entropy over left / right / bilateral) and size read-out (smooth L1 in cm) on embedding i. Step 2
      writes each sentence from that embedding alone, and the presence loss does not ask it to keep where or how
      large the finding is."""

    sentences_csv: str = ""  # `ctagrg sentences` output (VolumeName, AbnormalityName, Sentence): a file or folder
    half_weight: float = 0.0
    side_weight: float = 0.0
    size_weight: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.half_weight > 0 or self.side_weight > 0 or self.size_weight > 0


@dataclass
class PretrainTaskConfig:
    train: TrainConfig = field(default_factory=_pretrain_train)
    data: VisualDataConfig = field(default_factory=VisualDataConfig)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    attributes: AttributeConfig = field(default_factory=AttributeConfig)  # only half_weight applies here
    # cnn3d only: its HU-bin stem has no weights, so measure each volume's patches once, keep them in memory
    # (float32, measure_channels x the patch grid: 1.8 MB per volume at the demo's shape, 2.4 MB with the demo's two
    # blob channels and sphere and node channels; not for CT-RATE-sized sets) and augment them instead of the volume.
    # Needs whole-patch shifts (data.augment.shift_step a multiple of model.cnn3d.patch). The same losses and weights
    # as computing the stem every step, exactly (tested), except that with cnn3d's ``blob``, ``sphere`` or ``node``
    # a shift changes those channels near the border.
    cache_stem: bool = False
    # L1 penalty on the head's last Linear weights: loss += head_l1 x sum |W|. With ~300 volumes and a linear
    # read-out of ~1800 pooled features per half, a small finding's few telling features (the maximum of one stem
    # channel) are outweighed by many that fit the training volumes by chance; the penalty keeps each label's
    # read-out sparse (docs/training.md, "Models", "L1 read-out"). 0: off.
    head_l1: float = 0.0


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
    attributes: AttributeConfig = field(default_factory=AttributeConfig)
    # measured nodule diameters for the Reporter (not in the published method; docs/measurement.md): with
    # ``enabled``, its offset is calibrated after training on the validation nodules whose sentence states a size
    # and a side, and written to best/nodule_size.json
    nodule_size: NoduleSizeConfig = field(default_factory=NoduleSizeConfig)


RESNET18_NONE = "none"  # init.resnet18's explicit opt-out: CT-Net's trunk starts from random weights


def check_resnet18_init(cfg: Any) -> None:
    """Refuse a run that would silently train the paper's CT-Net from random weights, or that names a missing file.

    A ``ctnet`` encoder whose trunk is torchvision's resnet18 shape, trained without ``init.encoder_from``, needs
    ``init.resnet18``: the ImageNet weights' path (the paper always starts there) or ``none``. Other trunks (the
    tests' and demos' narrow ones) and other encoders are unaffected.
    """
    from ctagrg.models.weights import RESNET18_FILE, RESNET18_URL

    value, model = cfg.init.resnet18, cfg.model
    fetch = (f"download torchvision's ImageNet ResNet-18 ({RESNET18_URL}, ResNet18_Weights.IMAGENET1K_V1) and set "
             f"init.resnet18 to its path, or set init.resnet18: {RESNET18_NONE} to start CT-Net's trunk from random "
             "weights")
    if value == RESNET18_NONE:
        return
    if value:
        if model.encoder != "ctnet":
            raise ConfigError(f"init.resnet18: only for the ctnet encoder, not {model.encoder!r} (set "
                              f"init.resnet18: {RESNET18_NONE})")
        if not Path(value).is_file():
            raise ConfigError(f"init.resnet18: {value} not found; {fetch}")
        return
    if model.encoder == "ctnet" and model.ctnet.trunk.is_resnet18 and not cfg.init.encoder_from:
        raise ConfigError(f"init.resnet18: not set, and the paper's CT-Net starts from ImageNet ({RESNET18_FILE}): "
                          f"{fetch}")


class _VisualTask(Task):
    model_cls: type = PretrainModel

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._pos_weight: torch.Tensor | None = None
        self._attributes: AttributeTargets | None = None
        self._attribute_counts: dict[str, Any] = {}  # filled by predict, read by validate
        a = cfg.attributes
        if a.enabled:
            if a.half_weight > 0 and not cfg.model.heads.lateral_halves:
                raise ConfigError("attributes.half_weight > 0 needs model.heads.lateral_halves: true (the two half "
                                  "logits it supervises)")
            if not a.sentences_csv:
                raise ConfigError("attributes.sentences_csv: not set (the `ctagrg sentences` CSV of the training "
                                  "and validation reports, where the sides and sizes are read)")
            aug = cfg.data.augment
            if (a.half_weight > 0 or a.side_weight > 0) and aug.enabled and aug.rot90_p > 0:
                raise ConfigError("attributes.half_weight / side_weight > 0 with data.augment.rot90_p > 0: a rotated "
                                  "volume's left and right are no longer the sides its sentence states; set rot90_p: "
                                  "0 or those weights to 0")
            self._attributes = AttributeTargets.from_sentences_csv(a.sentences_csv)

    # -- data -------------------------------------------------------------------------------------------------
    def _dataset(self, labels_csv: str) -> Any:
        from ctagrg.data.dataset import CachedVolumeDataset

        if not self.cfg.data.cache_dir:
            raise ConfigError("data.cache_dir: not set (the folder written by `ctagrg preprocess`)")
        ds = CachedVolumeDataset(self.cfg.data.cache_dir, labels=labels_csv, dtype="uint8")
        if len(ds) == 0:
            raise ConfigError(f"{labels_csv}: none of its volumes is in {self.cfg.data.cache_dir}")
        # the encoder's input_shape, input_hu and voxel_mm against the cache's preprocess.json
        check_cache_preprocess(self.cfg.model.encoder_config(), self.cfg.data.cache_dir)
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
        if self._attributes is not None:
            print(self._attributes.summary(ds))
        return ds

    def valid_dataset(self) -> Any | None:
        return self._dataset(self.cfg.data.valid_labels) if self.cfg.data.valid_labels else None

    # -- model ------------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = self.model_cls(self.cfg.model)
        check_resnet18_init(self.cfg)  # the loop builds the model first: a run refuses before reading any data
        init = self.cfg.init
        if init.resnet18 and init.resnet18 != RESNET18_NONE:
            from ctagrg.models.weights import load_resnet18_trunk

            print(f"{init.resnet18}: {load_resnet18_trunk(model.encoder.trunk, init.resnet18).summary()}")
        if init.ctclip:
            if self.cfg.model.encoder != "ctvit":
                raise ConfigError("init.ctclip: only for the ctvit encoder")
            from ctagrg.models.weights import load_ctclip_ctvit

            print(f"{init.ctclip}: {load_ctclip_ctvit(model.encoder, init.ctclip).summary()}")
        if init.encoder_from:
            load_encoder_from(model, init.encoder_from)
        if init.heads_from_pretrain:
            self._warm_start_heads(model)
        return model

    def _warm_start_heads(self, model: nn.Module) -> None:
        """init.heads_from_pretrain: step 1's heads from init.encoder_from's linear pretraining head."""
        from ctagrg.training.checkpoint import load_state_file

        init = self.cfg.init
        if not isinstance(model, Step1Model):
            raise ConfigError("init.heads_from_pretrain: only for step 1 (train classifier)")
        if not init.encoder_from:
            raise ConfigError("init.heads_from_pretrain: needs init.encoder_from (the pretraining checkpoint folder)")
        path = Path(init.encoder_from) / "model.safetensors"
        state = load_state_file(path)
        head = sorted(k for k in state if k.startswith("head.net."))
        if head != ["head.net.0.bias", "head.net.0.weight"]:
            raise ConfigError(f"init.heads_from_pretrain: {path} has no linear pretraining head (expected "
                              f"head.net.0.weight and head.net.0.bias, i.e. heads.pretrain_hidden: [], found "
                              f"{', '.join(head) or 'no head.* tensors'})")
        try:
            model.heads.warm_start(state["head.net.0.weight"], state["head.net.0.bias"])
        except ValueError as exc:
            raise ConfigError(f"init.heads_from_pretrain ({path}): {exc}") from None

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
        """The model's keyword inputs for ``batch``: the volumes, augmented in training (subclasses: cached stems
        or encoder outputs looked up by name instead). Augmentation records which volumes it mirrored left-right
        in ``batch["lr_flipped"]`` ((B,) bool), for the side targets."""
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

    def _loss_terms(self, out: dict[str, torch.Tensor], batch: dict[str, Any], y: torch.Tensor) -> dict[str, Any]:
        """``{"loss": ...}`` (+ logged extras) from the model's outputs on a training batch with labels ``y``."""
        loss = self._loss(out["logits"], y)
        if "logits_detached" in out:  # CT-AGRG per-head backward (see VisualModelConfig.per_head_backward)
            loss = loss + self._loss(out["logits_detached"], y)
        result: dict[str, Any] = {"loss": loss}
        a = self.cfg.attributes
        if self._attributes is not None:
            side, size = self._attributes.gather(batch["name"], y, self.device, batch.get("lr_flipped"))
            if a.half_weight > 0:
                half_loss = half_side_loss(out["half_logits"], side)
                result["loss"] = result["loss"] + a.half_weight * half_loss
                result["half_loss"] = half_loss.detach()
            if a.side_weight > 0 or a.size_weight > 0:
                side_loss, size_loss = attribute_losses(out["side_logits"], out["size_mm"], side, size)
                result["loss"] = result["loss"] + a.side_weight * side_loss + a.size_weight * size_loss
                result |= {"side_loss": side_loss.detach(), "size_loss": size_loss.detach()}
        return result

    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        out = model(**self._inputs(batch, train=True))
        return self._loss_terms(out, batch, batch["labels"].to(self.device, non_blocking=True))

    def predict(self, model: nn.Module, loader: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(labels (N, 18), probabilities (N, 18), names) over ``loader`` with ``model`` in eval mode. With
        ``attributes``, also counts what :meth:`validate` reports about sides and sizes, in the same pass."""
        inputs = lambda batch: self._inputs(batch, train=False)  # noqa: E731
        if self._attributes is None:
            return self._predict_with(model, loader, inputs)
        self._attribute_counts = counts = {"half": 0, "n_half": 0, "right": 0, "n_side": 0, "abs_err": [],
                                           "outputs": set()}
        targets = self._attributes
        left, right = SIDE_CLASSES.index("left"), SIDE_CLASSES.index("right")

        def collect(out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
            side, size = targets.gather(batch["name"], batch["labels"], "cpu")
            counts["outputs"] |= set(out)
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

        return self._predict_with(model, loader, inputs, collect)

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
        if self._attributes is not None:
            # over the present findings whose sentence states a side (one side, for the halves) or a size
            # NaN where the model has the output but no validation finding states the attribute
            c, nan = self._attribute_counts, float("nan")
            if "half_logits" in c["outputs"]:
                metrics["half_side_accuracy"] = c["half"] / c["n_half"] if c["n_half"] else nan
            if "side_logits" in c["outputs"]:
                metrics["side_accuracy"] = c["right"] / c["n_side"] if c["n_side"] else nan
            if "size_mm" in c["outputs"]:
                metrics["size_mae_mm"] = float(np.mean(c["abs_err"])) if c["abs_err"] else nan
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


class ClassifierTask(_VisualTask):
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
        from ctagrg.measurement.nodule_size import (
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
        ds = CachedVolumeDataset(data.cache_dir, labels=data.valid_labels)
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
        print(f"nodule size: offset {offset:+.2f} mm from {len(radii)} of {found} validation nodules"
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


def half_side_loss(half_logits: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each half's logit against "the stated side holds the finding", over the present
    findings whose side is known.

    Args:
        half_logits: (B, 2, L), [right half, left half]; side: (B, L) index into ``SIDE_CLASSES`` (left, right,
            bilateral), -1 where unknown.
    Returns a scalar; 0 (still connected to the graph) when the batch has no known side."""
    known = side >= 0
    if not known.any():
        return half_logits.sum() * 0.0
    target = SIDE_HALVES.to(side.device)[side.clamp(min=0)].permute(0, 2, 1).float()  # (B, 2, L)
    mask = known.unsqueeze(1).expand_as(target)
    return F.binary_cross_entropy_with_logits(half_logits.float()[mask], target[mask])


def attribute_losses(side_logits: torch.Tensor, size_mm: torch.Tensor, side: torch.Tensor, size: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Side cross-entropy and size smooth L1 (in units of SIZE_SCALE_MM, 1 cm) over the known targets.

    Args:
        side_logits: (B, L, 3) over ``SIDE_CLASSES``; size_mm: (B, L) predicted sizes in mm.
        side: (B, L) int64 class index, -1 where unknown; size: (B, L) float32 mm, NaN where unknown.
    Returns two scalars; each is 0 (still connected to the graph) when the batch has no known target."""
    known = side >= 0
    side_loss = (F.cross_entropy(side_logits[known].float(), side[known]) if known.any()
                 else side_logits.sum() * 0.0)
    sized = ~torch.isnan(size)
    size_loss = (F.smooth_l1_loss(size_mm[sized].float() / SIZE_SCALE_MM, size[sized] / SIZE_SCALE_MM)
                 if sized.any()
                 else size_mm.sum() * 0.0)
    return side_loss, size_loss


class AttributeTargets:
    """Per volume and label, the side and the size (mm) that the label's report sentence states.

    Read from a sentences CSV with :func:`ctagrg.evaluation.grounding.side_from_text` and
    :func:`~ctagrg.evaluation.grounding.size_mm_from_text`, the same parsers the grounding metric uses."""

    def __init__(self, table: dict[str, tuple[np.ndarray, np.ndarray]], source: str = "") -> None:
        self.table = table  # volume stem -> (side (L,) int64, -1 unknown; size (L,) float32 mm, NaN unknown)
        self.source = source

    @classmethod
    def from_sentences_csv(cls, path: str | Path) -> AttributeTargets:
        from ctagrg.evaluation.grounding import side_from_text, size_mm_from_text
        from ctagrg.training.embedding_cache import csv_files, read_sentences_csv

        table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for file in csv_files(path):
            for name, sentences in read_sentences_csv(file).items():
                side = np.full(len(LABELS), -1, np.int64)
                size = np.full(len(LABELS), np.nan, np.float32)
                for label, sentence in sentences.items():
                    i = LABEL_INDEX[label]
                    stated = side_from_text(sentence)
                    side[i] = SIDE_CLASSES.index(stated) if stated else -1
                    mm = size_mm_from_text(sentence)
                    size[i] = np.nan if mm is None else mm
                table[name] = (side, size)
        return cls(table, str(path))

    def gather(self, names: Sequence[str], labels: torch.Tensor, device: torch.device | str,
               lr_flipped: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) side classes and (B, L) sizes for ``names``; unknown (-1 / NaN) where the label is not present
        (``labels`` (B, L) < 0.5 or NaN) or its sentence states none. ``lr_flipped`` (B,) bool: volumes that
        augmentation mirrored left-right, whose left and right are swapped."""
        from ctagrg.data.dataset import volume_stem

        missing = (np.full(len(LABELS), -1, np.int64), np.full(len(LABELS), np.nan, np.float32))
        rows = [self.table.get(volume_stem(n), missing) for n in names]
        side = torch.from_numpy(np.stack([r[0] for r in rows]))
        size = torch.from_numpy(np.stack([r[1] for r in rows]))
        present = labels.detach().cpu() > 0.5  # NaN compares False
        side = torch.where(present, side, -1)
        size = torch.where(present, size, torch.nan)
        if lr_flipped is not None:
            left, right = SIDE_CLASSES.index("left"), SIDE_CLASSES.index("right")
            swapped = torch.where(side == left, right, torch.where(side == right, left, side))
            side = torch.where(lr_flipped.cpu().bool().unsqueeze(1), swapped, side)
        return side.to(device), size.to(device)

    def summary(self, dataset: Any) -> str:
        names = list(getattr(dataset, "names", []))
        rows = [self.table[n] for n in names if n in self.table]
        sides = sum(int((r[0] >= 0).sum()) for r in rows)
        sizes = sum(int((~np.isnan(r[1])).sum()) for r in rows)
        return (f"attributes: {self.source}: {len(rows)} of {len(names)} training volumes have sentences; "
                f"{sides} state a side, {sizes} a size")
