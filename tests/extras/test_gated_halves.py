"""Step 1's gated halves (model.extras.halves.condition_on_halves): the embedding step 2 reads keeps a half's units
only where the label is on in that half, with half thresholds chosen on validation volumes (the ``half_thresholds``
extension)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ctagrg.cli.main import main as cli_main
from ctagrg.extras.attributes.extension import AttributesExtension
from ctagrg.extras.halves.heads import SIDE_CLASSES, HalvesConfig, HalvesHeads
from ctagrg.extras.halves.thresholds import HalfThresholdsExtension, _middle_of_widest_run, select_half_thresholds
from ctagrg.labels import LABEL_INDEX, LABELS
from ctagrg.models.heads import HeadsConfig
from ctagrg.models.step1 import Step1Model
from tests.extras.test_attributes import LATERAL, side_blob_dataset

LEFT, RIGHT, BOTH = (SIDE_CLASSES.index(s) for s in ("left", "right", "bilateral"))


def _heads() -> HalvesHeads:
    return HalvesHeads(HeadsConfig(in_dim=16, embed_dim=3, classifier_hidden=4, variant="halves"),
                       HalvesConfig(lateral_halves=True, condition_on_halves=True)).eval()


def test_conditioning_keeps_only_the_halves_that_are_on():
    heads = _heads()
    heads.half_threshold.fill_(0.6)
    emb = torch.rand(2, 18, 6) + 1.0  # (B, L, 2 x E): [right 3, left 3]
    half = torch.full((2, 2, 18), -5.0)  # (B, [right, left], L)
    half[0, 0, 9] = 2.0  # volume 0, label 9: right half on (p 0.88), left off
    half[0, :, 12] = torch.tensor([2.0, 1.0])  # label 12: both on (0.88, 0.73)
    half[1, :, 9] = torch.tensor([-1.0, 0.0])  # volume 1: neither reaches 0.6, the higher (left, 0.5) is kept
    out = heads.conditioning(emb, half)
    assert out.shape == (2, 18, 10)
    rows = out.view(2, 18, 2, 5)  # per half: 3 units, probability, on
    torch.testing.assert_close(rows[0, 9, 0, :3], emb[0, 9, :3])
    assert torch.equal(rows[0, 9, 1, :3], torch.zeros(3))
    assert rows[0, 9, :, 4].tolist() == [1.0, 0.0]
    torch.testing.assert_close(rows[0, 9, :, 3], torch.sigmoid(torch.tensor([2.0, -5.0])))
    assert rows[0, 12, :, 4].tolist() == [1.0, 1.0] and torch.equal(rows[0, 12, :, :3].reshape(6), emb[0, 12])
    assert rows[1, 9, :, 4].tolist() == [0.0, 1.0] and torch.equal(rows[1, 9, 1, :3], emb[1, 9, 3:])
    # mirror image: swapping the halves of the embedding and of the logits swaps the halves of the output
    mirrored = heads.conditioning(emb.view(2, 18, 2, 3).flip(2).reshape(2, 18, 6), half.flip(1))
    assert torch.equal(mirrored.view(2, 18, 2, 5), rows.flip(2))


def test_config_errors_and_the_saved_threshold_buffer(tmp_path):
    from ctagrg.config import ConfigError, load_config
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig

    with pytest.raises(ConfigError, match="condition_on_halves needs lateral_halves: true"):
        HalvesConfig(lateral_halves=False, condition_on_halves=True)
    assert _heads().state_dict()["half_threshold"].shape == (18,)  # saved with the model
    # the halves options' order does not matter; what is missing is named
    sent = tmp_path / "s.csv"
    sent.write_text("VolumeName,AbnormalityName,Sentence\ntrain_1_a_1.nii.gz,Lung nodule,A left nodule.\n")
    over = ["model.heads.variant=halves", "model.extras.halves.condition_on_halves=true",
            "model.extras.halves.lateral_halves=true", "extras.half_thresholds={}"]
    cfg = load_config(ClassifierTaskConfig, None, over)
    with pytest.raises(ConfigError, match="extras.half_thresholds: needs data.valid_labels"):
        ClassifierTask(cfg)
    with pytest.raises(ConfigError, match="extras.half_thresholds: needs data.valid_labels"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, [*over, f"extras.half_thresholds.sentences_csv={sent}"]))
    with pytest.raises(ConfigError, match="extras.half_thresholds.sentences_csv: not set, and the stage has no "
                                          "extras.attributes"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, [*over, "data.valid_labels=v.csv"]))
    with pytest.raises(ConfigError, match="model.extras.halves.condition_on_halves needs lateral_halves: true"):
        load_config(ClassifierTaskConfig, None, [*over[:2], "model.extras.halves.lateral_halves=false"])
    # gated halves without their half thresholds would keep every half threshold at 0.5: refused
    with pytest.raises(ConfigError, match="condition_on_halves: step 1 needs extras.half_thresholds"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, over[:3]))
    # a head variant's section may come before heads.variant names it; an unknown variant is named at once
    assert load_config(ClassifierTaskConfig, None, [over[1], over[0]]).model.extras["halves"]["condition_on_halves"]
    with pytest.raises(ConfigError, match="model.heads.variant: unknown heads variant 'nosuch'"):
        load_config(ClassifierTaskConfig, None, ["model.heads.variant=nosuch"])
    with pytest.raises(ConfigError, match="extras.half_thresholds: needs heads.variant: halves with "
                                          "model.extras.halves.condition_on_halves: true"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, [over[0], *over[2:], "data.valid_labels=v.csv",
                                                                f"extras.half_thresholds.sentences_csv={sent}"]))
    # sentences loaded for the half thresholds even when no attribute loss is on
    task = ClassifierTask(load_config(ClassifierTaskConfig, None, [
        *over, f"extras.half_thresholds.sentences_csv={sent}", "data.valid_labels=v.csv"]))
    assert task.extension(AttributesExtension) is None
    assert "train_1_a_1" in task.extension(HalfThresholdsExtension).targets.table


def test_half_threshold_selection_edges():
    probs = np.zeros((4, 2, 18), np.float32)
    sides = np.full((4, 18), -1)
    # label 2: one-sided findings whose other half is at 0.1: every threshold above 0.1 is right, and the one kept is
    # the middle of that run of candidates (0.5 and 0.95)
    probs[:, :, 2] = [[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]]
    sides[:, 2] = [RIGHT, LEFT, RIGHT, LEFT]
    # label 3: neighbouring float32 values; the threshold must separate them in float32 as the model compares
    lo = np.float32(0.7)
    hi = np.nextafter(lo, np.float32(1))
    probs[:, :, 3] = [[1.0, lo], [1.0, hi], [1.0, lo], [1.0, hi]]
    sides[:, 3] = [RIGHT, BOTH, RIGHT, BOTH]
    chosen, report = select_half_thresholds(probs, sides, np.full(18, 0.3), min_findings=4)
    assert chosen[2] == pytest.approx(0.725) and report[2] == (1.0, 4)
    assert np.float32(chosen[3]) > lo and np.float32(chosen[3]) <= hi and report[3] == (1.0, 4)
    heads = _heads()
    heads.half_threshold.copy_(torch.from_numpy(chosen).float())
    # the model's own rule, on logits whose sigmoid gives these float32 probabilities back, agrees
    logits = torch.logit(torch.from_numpy(probs))  # (4, 2, 18)
    assert torch.equal(torch.sigmoid(logits[:, :, 3]), torch.from_numpy(probs[:, :, 3]))
    on = heads.conditioning(torch.zeros(4, 18, 6), logits).view(4, 18, 2, 5)[..., 4]
    assert on[:, 3].tolist() == [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    # no finding with a side: the fallback, even with min_findings 0
    chosen, report = select_half_thresholds(probs, np.full((4, 18), -1), np.full(18, 0.3), min_findings=0)
    assert (chosen == 0.3).all() and report[0] == (None, 0)


def test_half_thresholds_separate_one_sided_from_bilateral_findings():
    rng = np.random.default_rng(0)
    n = 40
    probs = np.zeros((n, 2, 18))
    sides = np.full((n, 18), -1)
    j = LABEL_INDEX["Pleural effusion"]
    for k in range(n):
        kind = (RIGHT, LEFT, BOTH)[k % 3]
        hi, lo = rng.uniform(0.95, 1.0), rng.uniform(0.0, 0.3)  # the other half of a one-sided finding <= 0.3
        probs[k, :, j] = {RIGHT: (hi, lo), LEFT: (lo, hi), BOTH: (hi, rng.uniform(0.7, 1.0))}[kind]
        sides[k, j] = kind
    fallback = np.full(18, 0.25)
    sides[:3, 0] = RIGHT  # label 0: too few findings with a side -> its fallback
    chosen, report = select_half_thresholds(probs, sides, fallback)
    lo_max = max(min(p) for p, s in zip(probs[:, :, j], sides[:, j], strict=True) if s != BOTH)
    both_min = min(min(p) for p, s in zip(probs[:, :, j], sides[:, j], strict=True) if s == BOTH)
    assert lo_max < chosen[j] < both_min
    assert chosen[j] == pytest.approx((lo_max + both_min) / 2, abs=0.02)  # the middle of the gap
    assert report[j] == (1.0, n)
    assert chosen[0] == 0.25 and report[0] == (None, 3)
    assert chosen[5] == 0.25 and report[5] == (None, 0)


def test_step1_training_chooses_half_thresholds_and_the_cache_records_halves(tmp_path):
    """Label 0 sits on one side of each volume, its sentence says which: step 1 with condition_on_halves stores
    validation-chosen half thresholds in the model and thresholds.json, its embeddings are the gated layout, and
    an embedding cache built from it records two halves."""
    from ctagrg.training.embedding_cache import EmbeddingCacheConfig, build_from_config, load_embedding_cache

    csvs, sent_csv = side_blob_dataset(tmp_path, seed=5)
    sets = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.05", "train.epochs=8", "train.log_every=4",
            f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={csvs['train']}",
            f"data.valid_labels={csvs['valid']}", "freeze_encoder=false", *LATERAL, "extras.attributes.half_weight=1.0",
            f"extras.attributes.sentences_csv={sent_csv}", "model.extras.halves.condition_on_halves=true",
            "extras.half_thresholds={}",
            f"train.out_dir={tmp_path / 'cls'}"]
    assert cli_main(["train", "classifier", *sum((["--set", s] for s in sets), [])]) == 0
    best = tmp_path / "cls" / "best"
    content = json.loads((best / "thresholds.json").read_text())
    model = Step1Model.from_pretrained(best)
    saved = [content["half_thresholds"][n] for n in LABELS]
    assert torch.allclose(model.heads.half_threshold, torch.tensor(saved))
    assert content["half_validation"][LABELS[0]]["findings"] == 8  # the 8 validation volumes state a side
    assert content["half_validation"][LABELS[0]]["side_accuracy"] == 1.0
    assert content["half_validation"][LABELS[1]] == {"side_accuracy": None, "findings": 0}
    assert saved[1] == content["thresholds"][LABELS[1]]  # no side known: the detection threshold
    out = model(torch.zeros(2, 1, 8, 32, 16))
    assert out["embeddings"].shape == (2, 18, 2 * (8 + 2)) and model.embedding_dim == 20
    names = [r[0].removesuffix(".nii.gz") for r in csv.reader(open(sent_csv)) if r[0] != "VolumeName"]
    sentences = tmp_path / "s.csv"
    sentences.write_text(open(sent_csv).read())
    build_from_config(EmbeddingCacheConfig(out_dir=str(tmp_path / "emb"), step1_dir=str(best),
                                           volume_cache=str(tmp_path / "cache"), sentences_csv=str(sentences)))
    table = load_embedding_cache(tmp_path / "emb")
    assert table.parts == 2 and table.embeddings.shape == (len(names), 18, 20)


def test_the_widest_run_of_best_thresholds_wins_and_ties_go_nearest_one_half():
    best = np.array([True, True, False, True, True])
    assert _middle_of_widest_run(np.array([0.0, 0.3, 0.5, 0.6, 0.7]), best) == pytest.approx(0.15)  # widths .3, .1
    assert _middle_of_widest_run(np.array([0.0, 0.2, 0.5, 0.6, 0.8]), best) == pytest.approx(0.7)  # .2 each
