"""Step 1's attribute supervision: sides and sizes read from report sentences train per-label read-outs on the
abnormality embeddings (the ``attributes`` training extension, model.extras.halves.attribute_heads)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctagrg.cli.main import main as cli_main
from ctagrg.extras.attributes.extension import AttributesExtension
from ctagrg.extras.attributes.targets import AttributeTargets, attribute_losses
from ctagrg.extras.halves.heads import SIDE_CLASSES, HalvesConfig, HalvesHeads
from ctagrg.labels import LABEL_INDEX, LABELS
from ctagrg.models.heads import HeadsConfig
from ctagrg.models.step1 import Step1Model

# a tiny cnn3d: its stem statistics pooled on a 2 x 2 x 2 grid of regions keep where a finding is
CNN3D = ["model.encoder=cnn3d", "model.extras.cnn3d.input_shape=[8,32,16]", "model.extras.cnn3d.width=2",
         "model.extras.cnn3d.region_grid=2", "model.extras.cnn3d.embed_dim=0", "model.heads.in_dim=496",
         "model.heads.embed_dim=8",
         "model.heads.classifier_hidden=4", "model.heads.dropout=0.0"]
# the same with the two lateral halves pooled apart and read by shared heads (the demo's setting)
LATERAL = [*CNN3D[:-4], "model.extras.cnn3d.lateral_halves=true", "model.heads.variant=halves",
           "model.extras.halves.lateral_halves=true", "model.heads.in_dim=512", *CNN3D[-3:]]
# the halves head variant's attribute read-outs (with or without lateral halves)
ATTRIBUTE_HEADS = ["model.heads.variant=halves", "model.extras.halves.attribute_heads=true"]
WHOLE = ["model.extras.halves.lateral_halves=false"]  # the halves variant without lateral halves

NODULE, EFFUSION = LABEL_INDEX["Lung nodule"], LABEL_INDEX["Pleural effusion"]


def write_sentences(path, rows: list[tuple[str, str, str]]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["VolumeName", "AbnormalityName", "Sentence"])
        w.writerows(rows)
    return str(path)


def side_blob_dataset(tmp_path, seed: int, n_train: int = 16, n_valid: int = 8) -> tuple[dict, str]:
    """A cache of (8, 32, 16) volumes in ``tmp_path / "cache"`` where label 0 is present in every volume as a bright
    blob on the left or the right (axis 1: high index = left), its sentence stating which; no other label.
    Returns ({"train": labels CSV, "valid": labels CSV}, sentences CSV)."""
    from ctagrg.data.cache import cache_path, save_cached

    rng = np.random.default_rng(seed)
    rows, sentences = {"train": [], "valid": []}, []
    for split, n in (("train", n_train), ("valid", n_valid)):
        for i in range(n):
            vol = rng.normal(0, 0.05, (8, 32, 16)).astype(np.float32)
            side = "left" if i % 2 else "right"
            vol[2:4, (22 if side == "left" else 2):(30 if side == "left" else 10), 4:12] += 0.5
            name = f"{split}_{i}_a_1"
            save_cached(cache_path(tmp_path / "cache", name), vol, -0.449, 0.551)
            y = np.zeros(18, int)
            y[0] = 1
            rows[split].append(f"{name}.nii.gz," + ",".join(map(str, y)))
            sentences.append((f"{name}.nii.gz", LABELS[0], f"A catheter is seen on the {side} side."))
    csvs = {}
    for split, r in rows.items():
        csvs[split] = tmp_path / f"{split}.csv"
        csvs[split].write_text("VolumeName," + ",".join(LABELS) + "\n" + "\n".join(r) + "\n")
    return csvs, write_sentences(tmp_path / "sentences.csv", sentences)


def test_targets_parse_sides_and_sizes_and_keep_only_present_labels(tmp_path):
    path = write_sentences(tmp_path / "s.csv", [
        ("train_1_a_1.nii.gz", "Lung nodule", "A 1.2 cm solid nodule is seen in the left upper lobe."),
        ("train_1_a_1.nii.gz", "Pleural effusion", "Bilateral pleural effusion is present."),
        ("train_1_a_1.nii.gz", "Cardiomegaly", "The heart is enlarged."),
        ("train_2_a_1.nii.gz", "Lung nodule", "A nodule of 7 mm in the right lower lobe."),
    ])
    targets = AttributeTargets.from_sentences_csv(path)
    labels = torch.zeros(3, len(LABELS))
    labels[0, [NODULE, EFFUSION, LABEL_INDEX["Cardiomegaly"]]] = 1.0
    labels[1, NODULE] = 1.0
    labels[2, NODULE] = 1.0  # train_3 has no sentences at all
    side, size = targets.gather(["train_1_a_1", "train_2_a_1.nii.gz", "train_3_a_1"], labels, "cpu")
    assert side.dtype == torch.int64 and side.shape == size.shape == (3, 18)
    assert side[0, NODULE] == SIDE_CLASSES.index("left") and size[0, NODULE] == 12.0
    assert side[0, EFFUSION] == SIDE_CLASSES.index("bilateral") and torch.isnan(size[0, EFFUSION])
    assert side[0, LABEL_INDEX["Cardiomegaly"]] == -1  # no side stated
    assert side[1, NODULE] == SIDE_CLASSES.index("right") and size[1, NODULE] == 7.0
    assert (side[2] == -1).all() and torch.isnan(size[2]).all()
    assert int((side >= 0).sum()) == 3 and int((~torch.isnan(size)).sum()) == 2
    # a label the labels mark absent gives no target, even when a sentence states a side
    labels[0, NODULE] = 0.0
    side, size = targets.gather(["train_1_a_1"], labels[:1], "cpu")
    assert side[0, NODULE] == -1 and torch.isnan(size[0, NODULE])


def test_losses_are_the_masked_cross_entropy_and_smooth_l1():
    torch.manual_seed(0)
    side_logits, size_mm = torch.randn(2, 18, 3, requires_grad=True), torch.randn(2, 18) * 10 + 15
    side = torch.full((2, 18), -1)
    side[0, 9], side[1, 12] = 0, 2
    size = torch.full((2, 18), float("nan"))
    size[0, 9] = 12.0
    side_loss, size_loss = attribute_losses(side_logits, size_mm, side, size)
    expected = (F.cross_entropy(side_logits[0, 9][None], torch.tensor([0]))
                + F.cross_entropy(side_logits[1, 12][None], torch.tensor([2]))) / 2
    torch.testing.assert_close(side_loss, expected)
    d = abs(float(size_mm[0, 9]) - 12.0) / 10.0
    assert float(size_loss) == pytest.approx(0.5 * d * d if d < 1 else d - 0.5, rel=1e-5)
    # no known target: zero, still differentiable (every parameter gets a gradient, as DDP needs)
    side_loss, size_loss = attribute_losses(side_logits, size_mm, torch.full((2, 18), -1),
                                            torch.full((2, 18), float("nan")))
    assert float(side_loss.detach()) == 0.0 and float(size_loss) == 0.0
    side_loss.backward()
    assert side_logits.grad is not None and float(side_logits.grad.abs().sum()) == 0.0


def test_attribute_read_outs_use_each_labels_own_embedding(tmp_path):
    cfg = HeadsConfig(in_dim=16, embed_dim=8, classifier_hidden=4, variant="halves")
    heads = HalvesHeads(cfg, HalvesConfig(lateral_halves=False, attribute_heads=True)).eval()
    emb = torch.rand(2, 18, 8)
    side, size = heads.attributes(emb)
    assert side.shape == (2, 18, 3) and size.shape == (2, 18)
    changed = emb.clone()
    changed[:, 3] += 1.0
    side2, size2 = heads.attributes(changed)
    others = [i for i in range(18) if i != 3]
    assert torch.equal(side2[:, others], side[:, others]) and torch.equal(size2[:, others], size[:, others])
    assert not torch.equal(side2[:, 3], side[:, 3])
    expected = (emb[1, 5] @ heads.side_weight[5].T) + heads.side_bias[5]
    torch.testing.assert_close(side[1, 5], expected)
    with pytest.raises(RuntimeError, match="built without model.extras.halves.attribute_heads"):
        HalvesHeads(HeadsConfig(in_dim=16, embed_dim=8, variant="halves"),
                    HalvesConfig(lateral_halves=False)).attributes(emb)


@pytest.mark.parametrize("variant", ["frozen_cached", "lateral_trained_encoder"])
def test_classifier_learns_the_side_from_sentences(tmp_path, variant):
    """Label 0's blob sits on the left or the right of the volume and its sentence says which: with the attribute
    loss the side read-out learns it (training side loss falls, validation side accuracy is reported), the saved
    model gives side logits, and the configuration errors name what is missing. Both on cached outputs of a frozen
    encoder and with lateral halves and the encoder trained (volumes read every step)."""
    from ctagrg.config import ConfigError, load_config
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig

    csvs, sent_csv = side_blob_dataset(tmp_path, seed=5)
    common = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.05", "train.epochs=12",
              "train.log_every=4", f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={csvs['train']}",
              f"data.valid_labels={csvs['valid']}",
              *(["freeze_encoder=true", *CNN3D, "model.heads.variant=halves", *WHOLE] if variant == "frozen_cached"
                else ["freeze_encoder=false", *LATERAL])]
    attr = ["model.extras.halves.attribute_heads=true", "extras.attributes.side_weight=1.0",
            "extras.attributes.size_weight=1.0", f"extras.attributes.sentences_csv={sent_csv}"]
    out = tmp_path / "cls"
    assert cli_main(["train", "classifier", "--set", f"train.out_dir={out}",
                     *sum((["--set", s] for s in [*common, *attr]), [])]) == 0
    log = list(csv.DictReader(open(out / "metrics.csv", encoding="utf-8")))
    side_losses = [float(r["value"]) for r in log if r["name"] == "side_loss"]
    assert len(side_losses) >= 8 and side_losses[-1] < 0.1 * side_losses[0]
    assert all(float(r["value"]) == 0.0 for r in log if r["name"] == "size_loss")  # no sentence states a size
    accuracy = [float(r["value"]) for r in log if r["name"] == "side_accuracy"]
    assert len(accuracy) == 12 and accuracy[-1] == 1.0  # the 8 validation volumes' sides
    model = Step1Model.from_pretrained(out / "best")
    out_ = model(torch.zeros(2, 1, 8, 32, 16))
    assert out_["side_logits"].shape == (2, 18, 3) and out_["size_mm"].shape == (2, 18)

    with pytest.raises(ConfigError, match="need model.extras.halves.attribute_heads: true"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, [*common, *attr[1:]]))
    with pytest.raises(ConfigError, match="extras.attributes.sentences_csv: not set"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, [*common, *attr[:3]]))


def test_side_targets_refuse_rotations_and_allow_mirroring(tmp_path):
    """An axial rotation leaves no left and right to state; a left-right mirror swaps them, which the targets follow
    (tests/test_half_supervision.py)."""
    from ctagrg.config import ConfigError, load_config
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig

    sent = write_sentences(tmp_path / "s.csv", [("train_1_a_1.nii.gz", "Lung nodule", "A left nodule.")])
    heads = [*ATTRIBUTE_HEADS, *WHOLE]
    over = [*heads, "extras.attributes.side_weight=1.0", f"extras.attributes.sentences_csv={sent}",
            "data.augment.enabled=true", "data.augment.rot90_p=0.5"]
    with pytest.raises(ConfigError, match=r"rot90_p > 0: a rotated volume's left and right are no longer"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, over))
    ok = ClassifierTask(load_config(ClassifierTaskConfig, None, [*over[:-1], "data.augment.rot90_p=0.0",
                                                                 "data.augment.flip_axes=[1]"]))
    attributes = ok.extension(AttributesExtension)
    assert attributes is not None and "train_1_a_1" in attributes.targets.table
    # sizes alone do not depend on the side
    ClassifierTask(load_config(ClassifierTaskConfig, None, [*heads, "extras.attributes.size_weight=1.0",
                                                            *over[len(heads) + 1:]]))


def test_read_outs_without_their_loss_are_frozen(tmp_path):
    """attribute_heads with both weights 0 (an ablation): the read-outs get no gradient, so they are left out of
    training (DDP without find_unused_parameters would otherwise wait for their gradients); with a weight they
    train."""
    from ctagrg.config import load_config
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig

    sent = write_sentences(tmp_path / "s.csv", [("train_1_a_1.nii.gz", "Lung nodule", "A 9 mm left nodule.")])
    for model_cfg, extra, trained in (
            ([*CNN3D, "model.heads.variant=halves", *WHOLE], [], False),
            ([*CNN3D, "model.heads.variant=halves", *WHOLE],
             ["extras.attributes.size_weight=1.0", f"extras.attributes.sentences_csv={sent}"], True),
            # half supervision trains the half logits, not the read-outs: they stay frozen
            (LATERAL, ["extras.attributes.half_weight=1.0", f"extras.attributes.sentences_csv={sent}"], False)):
        task = ClassifierTask(load_config(ClassifierTaskConfig, None,
                                          [*model_cfg, *ATTRIBUTE_HEADS, *extra]))
        model = task.build_model()
        params = {id(p) for p in task.param_groups(model)}
        heads = model.heads
        for p in (heads.side_weight, heads.side_bias, heads.size_weight, heads.size_bias):
            assert (id(p) in params) == trained and p.requires_grad == trained
        assert id(heads.fc1_weight) in params and id(heads.project.weight) in params
