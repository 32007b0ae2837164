"""Half supervision (``extras.attributes.half_weight``): with lateral halves, the side a report sentence states tells a
label's two half logits which half holds the finding, in pretraining and in step 1; left-right flips in
augmentation swap the stated side."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctagrg.cli.main import main as cli_main
from ctagrg.config import ConfigError, load_config
from ctagrg.extras.attributes.extension import AttributesExtension
from ctagrg.extras.attributes.targets import AttributeTargets, half_side_loss
from ctagrg.extras.halves.heads import SIDE_CLASSES
from ctagrg.labels import LABEL_INDEX
from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig, PretrainTask, PretrainTaskConfig
from tests.extras.test_attributes import LATERAL, side_blob_dataset, write_sentences

LEFT, RIGHT, BOTH = (SIDE_CLASSES.index(c) for c in ("left", "right", "bilateral"))
NODULE = LABEL_INDEX["Lung nodule"]


def test_half_loss_is_the_bce_of_each_half_against_the_stated_side():
    torch.manual_seed(0)
    half = torch.randn(2, 2, 18, requires_grad=True)  # (B, [right, left], L)
    side = torch.full((2, 18), -1)
    side[0, 9], side[1, 12], side[1, 0] = LEFT, BOTH, RIGHT
    expected = F.binary_cross_entropy_with_logits(
        torch.stack([half[0, 0, 9], half[0, 1, 9], half[1, 0, 0], half[1, 1, 0], half[1, 0, 12], half[1, 1, 12]]),
        torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(half_side_loss(half, side), expected)
    # no stated side: zero, still differentiable (every parameter gets a gradient, as DDP needs)
    loss = half_side_loss(half, torch.full((2, 18), -1))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert half.grad is not None and float(half.grad.abs().sum()) == 0.0


def test_gather_swaps_the_sides_of_volumes_mirrored_left_right(tmp_path):
    path = write_sentences(tmp_path / "s.csv", [
        ("train_1_a_1.nii.gz", "Lung nodule", "A 12 mm nodule in the left upper lobe."),
        ("train_1_a_1.nii.gz", "Pleural effusion", "Bilateral pleural effusion."),
        ("train_2_a_1.nii.gz", "Lung nodule", "A nodule in the right lower lobe."),
    ])
    targets = AttributeTargets.from_sentences_csv(path)
    labels = torch.zeros(2, 18)
    labels[0, [NODULE, LABEL_INDEX["Pleural effusion"]]] = 1.0
    labels[1, NODULE] = 1.0
    names = ["train_1_a_1", "train_2_a_1"]
    side, size = targets.gather(names, labels, "cpu", torch.tensor([True, False]))
    assert side[0, NODULE] == RIGHT and side[0, LABEL_INDEX["Pleural effusion"]] == BOTH and size[0, NODULE] == 12.0
    assert side[1, NODULE] == RIGHT  # not mirrored: as stated
    side, _ = targets.gather(names, labels, "cpu", torch.tensor([False, True]))
    assert side[0, NODULE] == LEFT and side[1, NODULE] == LEFT


@pytest.mark.parametrize("cache_stem", [False, True])
def test_pretraining_learns_which_half_holds_the_finding_under_mirroring(tmp_path, cache_stem):
    """Every volume has label 0, so the label alone cannot say where it is; the sentences say the side. Half of the
    training volumes are mirrored left-right each epoch (flip_axes [1]): with the side swapped for them the half
    logits learn the side (validation half_side_accuracy 1.0); without the swap, the targets of a mirrored volume
    would contradict its image."""
    csvs, sent = side_blob_dataset(tmp_path, seed=7)
    out = tmp_path / "pre"
    common = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.05", "train.epochs=12",
              "train.log_every=4", f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={csvs['train']}",
              f"data.valid_labels={csvs['valid']}", "data.augment.enabled=true", "data.augment.flip_p=0.5",
              "data.augment.flip_axes=[1]", "data.augment.rot90_p=0.0", "data.augment.max_shift=[0,0,0]",
              *(["extras.stem_cache={}"] if cache_stem else []), "model.heads.pretrain_hidden=[]", *LATERAL,
              "extras.attributes.half_weight=1.0", f"extras.attributes.sentences_csv={sent}"]
    assert cli_main(["train", "pretrain", "--set", f"train.out_dir={out}",
                     *sum((["--set", s] for s in common), [])]) == 0
    log = list(csv.DictReader(open(out / "metrics.csv", encoding="utf-8")))
    half_losses = [float(r["value"]) for r in log if r["name"] == "half_loss"]
    assert len(half_losses) >= 8 and np.mean(half_losses[-3:]) < 0.3 * np.mean(half_losses[:3])
    accuracy = [float(r["value"]) for r in log if r["name"] == "half_side_accuracy"]
    assert len(accuracy) == 12 and accuracy[-1] == 1.0  # the 8 validation volumes' sides


def test_step1_learns_which_half_on_a_frozen_cached_encoder(tmp_path):
    """Step 1 with a frozen (random) encoder, its outputs cached: the heads learn to fire on the stated half."""
    csvs, sent = side_blob_dataset(tmp_path, seed=7)
    out = tmp_path / "cls"
    # a gentler rate than pretraining's: at 0.01 and above the heads' ReLU embeddings die (both halves tie)
    common = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.005", "train.epochs=30",
              "train.log_every=8", f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={csvs['train']}",
              f"data.valid_labels={csvs['valid']}", "freeze_encoder=true", *LATERAL,
              "extras.attributes.half_weight=1.0", f"extras.attributes.sentences_csv={sent}"]
    assert cli_main(["train", "classifier", "--set", f"train.out_dir={out}",
                     *sum((["--set", s] for s in common), [])]) == 0
    log = list(csv.DictReader(open(out / "metrics.csv", encoding="utf-8")))
    half_losses = [float(r["value"]) for r in log if r["name"] == "half_loss"]
    assert len(half_losses) >= 12 and half_losses[-1] < 0.3 * half_losses[0]
    accuracy = [float(r["value"]) for r in log if r["name"] == "half_side_accuracy"]
    assert len(accuracy) == 30 and accuracy[-1] == 1.0
    assert not any(r["name"] == "side_accuracy" for r in log)  # no side read-out in this model


def test_half_supervision_config_errors(tmp_path):
    sent = write_sentences(tmp_path / "s.csv", [("train_1_a_1.nii.gz", "Lung nodule", "A left nodule.")])
    half = ["extras.attributes.half_weight=1.0", f"extras.attributes.sentences_csv={sent}"]
    with pytest.raises(ConfigError, match=r"half_weight > 0 needs heads.variant: halves with lateral halves"):
        PretrainTask(load_config(PretrainTaskConfig, None, half))
    with pytest.raises(ConfigError, match=r"with data.augment.rot90_p > 0: a rotated volume's left and right"):
        PretrainTask(load_config(PretrainTaskConfig, None, [*LATERAL, *half, "data.augment.enabled=true",
                                                             "data.augment.rot90_p=0.5"]))
    with pytest.raises(ConfigError, match=r"side_weight / size_weight: step 1 only"):
        PretrainTask(load_config(PretrainTaskConfig, None, [*LATERAL, "extras.attributes.size_weight=1.0",
                                                             f"extras.attributes.sentences_csv={sent}"]))
    with pytest.raises(ConfigError, match="extras.attributes.sentences_csv: not set"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, [*LATERAL, half[0]]))
    # mirroring is allowed (the stated side is swapped for mirrored volumes)
    task = PretrainTask(load_config(PretrainTaskConfig, None, [*LATERAL, *half, "data.augment.enabled=true",
                                                                "data.augment.rot90_p=0.0",
                                                                "data.augment.flip_axes=[1]"]))
    attributes = task.extension(AttributesExtension)
    assert attributes is not None and "train_1_a_1" in attributes.targets.table
