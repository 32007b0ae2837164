"""The visual stages' configs (``ctagrg train pretrain`` / ``classifier``) and the check of their ImageNet
initialisation. The stages themselves: :mod:`ctagrg.training.visual_tasks`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctagrg.config import ConfigError
from ctagrg.data.augment import AugmentConfig
from ctagrg.extras.nodule.measure import NoduleSizeConfig
from ctagrg.models.step1 import VisualModelConfig
from ctagrg.training.attributes import AttributeConfig
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
    # step 1: start the abnormality heads from encoder_from's linear pretraining head (heads.pretrain_hidden: []),
    # so that step 1 begins with pretraining's logits (AbnormalityHeads.warm_start) instead of random heads. Not in
    # the published method: on ~300 phantoms randomly initialised heads on the frozen encoder lost validation
    # macro-AUROC against the pretraining head (0.05-0.08, docs/training.md)
    heads_from_pretrain: bool = False


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
