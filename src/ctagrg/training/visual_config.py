"""The visual stages' configs (``ctagrg train pretrain`` / ``classifier``) and the check of their ImageNet
initialisation. The stages themselves: :mod:`ctagrg.training.visual_tasks`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ctagrg.config import ConfigError
from ctagrg.data.augment import AugmentConfig
from ctagrg.models.step1 import VisualModelConfig
from ctagrg.training.config import TrainConfig
from ctagrg.training.splits import SplitConfig


@dataclass
class VisualDataConfig:
    """Where the volumes and labels are. Labels CSVs: CT-RATE ``VolumeName`` + the 18 label columns."""

    cache_dir: str = ""  # `ctagrg preprocess` output
    # labels CSVs (or folders of them); ``split`` chooses the volumes among their cached ones
    train_labels: str = ""  # e.g. ROOT/multi_abnormality_labels/train_predicted_labels.csv
    valid_labels: str = ""  # may be train_labels's file (split carves); empty: no validation (best = last epoch)
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

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "heads_from_pretrain": "moved to the stage's extras: extras: {heads_warm_start: {}} (docs/demo-encoder.md)"}


def _pretrain_train() -> TrainConfig:
    """CT-AGRG pretraining: Adam lr 1e-4, 40 epochs, batch 4, StepLR(40, 0.5)."""
    return TrainConfig(out_dir="runs/pretrain", optimizer="adam", lr=1e-4, epochs=40, global_batch_size=4,
                       batch_size=4, scheduler="step", step_size_epochs=40, gamma=0.5)


def _classifier_train() -> TrainConfig:
    """CT-AGRG step 1: lr 1e-5, batch 4 (optimizer and epochs are not published; Adam, 20 epochs here)."""
    return TrainConfig(out_dir="runs/classifier", optimizer="adam", lr=1e-5, epochs=20, global_batch_size=4,
                       batch_size=4)


@dataclass
class PretrainTaskConfig:
    train: TrainConfig = field(default_factory=_pretrain_train)
    data: VisualDataConfig = field(default_factory=VisualDataConfig)
    # which of the labels CSVs' cached volumes to train and select on (empty lists: all of train_labels / all of
    # valid_labels); ctagrg.training.splits
    split: SplitConfig = field(default_factory=SplitConfig)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    # training extensions (not in the published method) by name, with their options: ctagrg.training.extensions
    extras: dict[str, Any] = field(default_factory=dict)

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "attributes": "moved to extras.attributes (docs/demo-encoder.md)",
        "cache_stem": "moved to extras: {stem_cache: {}} (docs/demo-encoder.md)",
        "head_l1": "moved to extras: {head_l1: {weight: W}} (docs/demo-encoder.md)"}


@dataclass
class ClassifierTaskConfig:
    train: TrainConfig = field(default_factory=_classifier_train)
    data: VisualDataConfig = field(default_factory=VisualDataConfig)
    # which of the labels CSVs' cached volumes to train and select on (empty lists: all of train_labels / all of
    # valid_labels); ctagrg.training.splits
    split: SplitConfig = field(default_factory=SplitConfig)
    model: VisualModelConfig = field(default_factory=VisualModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    freeze_encoder: bool = False  # train only the heads (the encoder stays as initialised)
    # with a frozen encoder and no augmentation, the encoder's output h is the same every epoch: compute it once
    # per volume and keep it in memory (CT-RATE: 2048 floats x ~47k volumes = 0.4 GB), so later epochs and
    # validations train and score only the heads
    cache_frozen_encoder: bool = True
    # training extensions (not in the published method) by name, with their options: ctagrg.training.extensions
    extras: dict[str, Any] = field(default_factory=dict)

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "attributes": "moved to extras.attributes (docs/demo-encoder.md)",
        "nodule_size": "moved to extras.nodule_size (docs/demo-encoder.md)"}


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
