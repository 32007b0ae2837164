"""``evaluate`` end to end on a tiny hand-written CT-RATE-layout dataset with a stand-in Reporter.

The stand-in returns fixed reports and probabilities, so every metric below is known in advance: this tests the
orchestration (split loading, resumable predictions, metrics.json keys, report files, CLI) without any model.
Each volume is a tiny constant NIfTI whose HU tells the stand-in which volume it is, read through the inference
front door as a real scan would be.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ct_fixtures import phantom_hu, write_nifti
from ctrate_fixtures import Volume, drop_rows, write_release_tree

from ctagrg.evaluation.evaluate import HEADLINE_KEYS, EvaluateConfig, classification_metrics, evaluate
from ctagrg.evaluation.predict import load_split, read_predictions, report_line
from ctagrg.labels import LABEL_INDEX, LABELS

NODULE, EFFUSION, CARDIO = LABEL_INDEX["Lung nodule"], LABEL_INDEX["Pleural effusion"], LABEL_INDEX["Cardiomegaly"]
# name -> (reference findings, present labels, ground-truth findings)
VOLUMES = {
    "test_1_a_1": ("A 12 mm nodule is seen in the upper lobe of the right lung.", [NODULE],
                   [{"label": "Lung nodule", "side": "right", "size_mm": 12.0}]),
    "test_2_a_1": ("Left pleural effusion is present.", [EFFUSION], [{"label": "Pleural effusion", "side": "left"}]),
    "test_3_a_1": ("The heart is enlarged.", [CARDIO], [{"label": "Cardiomegaly", "side": None}]),
    "test_3_b_1": ("No abnormality is seen.", [], []),
}
GENERATED = {  # what the stand-in model "writes": correct except the effusion side
    "test_1_a_1": {NODULE: "A 14 mm nodule is seen in the upper lobe of the right lung."},
    "test_2_a_1": {EFFUSION: "Right pleural effusion is present."},
    "test_3_a_1": {CARDIO: "The heart is enlarged."},
    "test_3_b_1": {},
}


def make_dataset(root: Path) -> Path:
    rows, labels = [], []
    for name, (text, present, findings) in VOLUMES.items():
        split, pid, scan, _ = name.split("_")
        folder = root / split / f"{split}_{pid}" / f"{split}_{pid}_{scan}"
        folder.mkdir(parents=True, exist_ok=True)
        write_nifti(folder / f"{name}.nii.gz", np.full((4, 4, 4), _volume_hu(name), np.int16), np.eye(4))
        rows.append({"VolumeName": f"{name}.nii.gz", "Findings_EN": text, "Impressions_EN": ""})
        labels.append({"VolumeName": f"{name}.nii.gz", **{n: int(i in present) for i, n in enumerate(LABELS)}})
        (root / "ground_truth").mkdir(exist_ok=True)
        (root / "ground_truth" / f"{name}.json").write_text(json.dumps({"name": name, "findings": findings}))
    (root / "radiology_text_reports").mkdir()
    pd.DataFrame(rows).to_csv(root / "radiology_text_reports" / "test_reports.csv", index=False)
    (root / "multi_abnormality_labels").mkdir()
    pd.DataFrame(labels).to_csv(root / "multi_abnormality_labels" / "test_predicted_labels.csv", index=False)
    return root


def _volume_hu(name: str) -> int:
    """The constant HU of volume ``name``'s NIfTI: 100 HU apart, so that preprocessing keeps them apart."""
    return -900 + 100 * list(VOLUMES).index(name)


class StandInReporter:
    """Detects exactly the generated labels (probability 0.9, others 0.1) and writes their sentences; tells the
    volumes apart by their HU (:func:`_volume_hu`)."""

    def __init__(self, fail_on: str | None = None) -> None:
        from ctagrg.data.preprocess import PreprocessConfig

        self.calls: list[int] = []
        self.fail_on = fail_on
        self.preprocess = PreprocessConfig(spacing=(1.0, 1.0, 1.0), shape=(2, 2, 2))

    def report_volumes(self, volumes: np.ndarray) -> list[Any]:
        from ctagrg.data.preprocessed import hu_from_preprocessed
        from ctagrg.generation.reporter import Abnormality, Report

        self.calls.append(len(volumes))
        out = []
        pp = self.preprocess
        for volume in volumes:
            hu = float(hu_from_preprocessed(volume, (pp.hu_min, pp.hu_max), pp.offset).mean())
            name = next(n for n in VOLUMES if abs(_volume_hu(n) - hu) < 1.0)
            if name == self.fail_on:
                raise ValueError("not a CT volume")
            sentences = GENERATED[name]
            abn = {n: Abnormality(probability=0.9 if i in sentences else 0.1, detected=i in sentences, threshold=0.5,
                                  sentence=sentences.get(i)) for i, n in enumerate(LABELS)}
            out.append(Report(" ".join(sentences.values()) or "No abnormalities detected.", abn))
        return out


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def test_load_split(dataset: Path) -> None:
    split = load_split(dataset, "test")
    assert split.names == list(VOLUMES)
    assert split.labels is not None and split.labels.shape == (4, 18) and split.labels[0, NODULE] == 1
    assert split.paths[0] == dataset / "test" / "test_1" / "test_1_a" / "test_1_a_1.nii.gz"
    assert split.references[2] == "The heart is enlarged."
    with pytest.raises(FileNotFoundError, match=r"radiology_text_reports/validation_reports.csv: file not found "
                                                r"\(the report texts of the valid split\)$"):
        load_split(dataset, "valid")
    with pytest.raises(ValueError, match="missing column.*Nope.*found VolumeName"):
        load_split(dataset, "test", reference_columns=("Nope",))


def test_load_split_errors_name_the_file(dataset: Path) -> None:
    labels = dataset / "multi_abnormality_labels" / "test_predicted_labels.csv"
    drop_rows(labels, ["test_3_a_1"])
    with pytest.raises(ValueError, match=rf"^{labels}: no row for 1 of the 4 volume\(s\) of split test, "
                                         r"e.g. test_3_a_1$"):
        load_split(dataset, "test")
    assert load_split(dataset, "test", limit=2).names == ["test_1_a_1", "test_2_a_1"]  # only the split's rows count
    reports = dataset / "radiology_text_reports" / "test_reports.csv"
    reports.write_text(reports.read_text().replace("VolumeName", "Name", 1))
    with pytest.raises(ValueError, match=rf"^{reports}: missing column\(s\) VolumeName; found Name,"):
        load_split(dataset, "test")


def test_evaluate_writes_metrics_predictions_and_report(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cfg = EvaluateConfig(meteor=False, bootstrap=200, batch_size=3)
    reporter = StandInReporter()
    metrics = evaluate(tmp_path / "model", dataset, out, cfg, reporter=reporter)
    assert reporter.calls == [3, 1]
    saved = json.loads((out / "metrics.json").read_text())
    assert set(HEADLINE_KEYS["ctagrg"]) <= set(saved["headline"]) == set(saved["definitions"])
    assert saved["meta"]["protocol"] == "ctagrg" and saved["clinical"]["reference"].startswith("labeler")
    h = saved["headline"]
    assert h["classification.macro_auroc"] == pytest.approx(1.0)  # positives 0.9, negatives 0.1
    assert h["classification.macro_f1"] == pytest.approx(1.0)
    assert h["clinical.micro_f1"] == pytest.approx(1.0)  # every generated sentence labels as its reference
    assert h["clinical.macro_f1"] == pytest.approx(1.0) and saved["clinical"]["macro_labels"] == 3
    assert h["grounding.side_accuracy"] == pytest.approx(0.5)  # nodule right (ok), effusion right vs left
    assert saved["grounding"]["nodule_size_within_5mm"] == pytest.approx(1.0)
    assert h["nlg.meteor"] is None and "disabled" in saved["nlg"]["notes"]["meteor"]
    assert 0 < h["nlg.bleu_4"] < h["nlg.bleu_1"] < 1
    lo, hi = saved["ci95"]["nlg.bleu_1"]
    assert lo <= h["nlg.bleu_1"] <= hi
    assert saved["meta"]["evaluated"] == 4 and saved["meta"]["failed"] == 0
    assert metrics["headline"] == saved["headline"]
    from ctagrg.evaluation.diversity import unique_fraction

    lines_ = read_predictions(out / "predictions.jsonl")
    assert h["diversity.unique_reports"] == pytest.approx(unique_fraction([line["report"] for line in lines_]))
    assert 0 < saved["diversity"]["distinct_2"] <= 1 and 0 < saved["diversity"]["reference_distinct_2"] <= 1
    lines = read_predictions(out / "predictions.jsonl")
    assert [line["name"] for line in lines] == list(VOLUMES)
    assert set(lines[0]) >= {"input", "report", "abnormalities", "seconds"}
    assert lines[0]["abnormalities"]["Lung nodule"]["detected"] is True
    for f in ("report.md", "report.html", "f1_per_label.png", "auroc_per_label.png", "roc_curves.png"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "| clinical.micro_f1 | 1.000 |" in md and "![ROC curves](roc_curves.png)" in md
    assert "Right pleural effusion is present." in md and "<table>" in (out / "report.html").read_text()
    # rerun resumes: no volume is predicted again
    again = StandInReporter()
    evaluate(tmp_path / "model", dataset, out, cfg, reporter=again)
    assert again.calls == []


def test_failed_volume_is_recorded_and_others_scored(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cfg = EvaluateConfig(meteor=False, bootstrap=0, batch_size=4)
    failing = StandInReporter(fail_on="test_2_a_1")
    metrics = evaluate(tmp_path / "model", dataset, out, cfg, reporter=failing)
    assert metrics["meta"]["failed"] == 1 and metrics["meta"]["evaluated"] == 3
    assert failing.calls == [4, 1, 1, 1, 1]  # the failed batch is retried volume by volume
    bad = [line for line in read_predictions(out / "predictions.jsonl") if "error" in line]
    assert bad == [{"name": "test_2_a_1", "input": str(dataset / "test/test_2/test_2_a/test_2_a_1.nii.gz"),
                    "error": f"{dataset / 'test/test_2/test_2_a/test_2_a_1.nii.gz'}: ValueError: not a CT volume",
                    "model": None}]  # no model folder here (a stand-in reporter): no fingerprint
    assert "ci95" not in metrics
    assert "Failed volumes" in (out / "report.md").read_text()
    # a rerun retries the failed volume only, and its new line is the one that counts
    again = StandInReporter()
    metrics = evaluate(tmp_path / "model", dataset, out, cfg, reporter=again)
    assert again.calls == [1] and metrics["meta"]["failed"] == 0 and metrics["meta"]["evaluated"] == 4


def test_predictions_of_another_model_are_refused(dataset: Path, tmp_path: Path) -> None:
    from ctagrg.generation.reporter import model_fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "thresholds.json").write_text("[0.5]")
    cfg = EvaluateConfig(meteor=False, bootstrap=0, limit=2)
    evaluate(model, dataset, tmp_path / "eval", cfg, reporter=StandInReporter())
    lines = read_predictions(tmp_path / "eval" / "predictions.jsonl")
    assert len(lines) == 2 and {line["model"] for line in lines} == {model_fingerprint(model)}
    (model / "thresholds.json").write_text("[0.999]")  # the same folder, another model
    again = StandInReporter()
    with pytest.raises(ValueError, match=r"predictions.jsonl: holds predictions of another model \(fingerprint "
                                         rf"{lines[0]['model']}; .* is {model_fingerprint(model)}\)"):
        evaluate(model, dataset, tmp_path / "eval", cfg, reporter=again)
    assert again.calls == []
    # a model folder that does not exist is refused before anything is read
    with pytest.raises(FileNotFoundError, match="nowhere: no such model folder"):
        evaluate(tmp_path / "nowhere", dataset, tmp_path / "eval2", cfg)


def test_the_labeler_is_checked_before_the_reports(dataset: Path, tmp_path: Path) -> None:
    again = StandInReporter()
    with pytest.raises(ValueError, match="unknown labeler 'foo'"):
        evaluate(tmp_path / "m", dataset, tmp_path / "e", EvaluateConfig(meteor=False, labeler="foo"), reporter=again)
    assert again.calls == [] and not (tmp_path / "e" / "predictions.jsonl").exists()
    from ctagrg.text.labeler import check_labeler_spec

    (tmp_path / "clf.pth").write_bytes(b"")  # a checkpoint file is a valid RadBERT spec, as a folder is
    check_labeler_spec(f"radbert:{tmp_path / 'clf.pth'}")
    check_labeler_spec(f"radbert:{tmp_path}")
    with pytest.raises(ValueError, match=r"/no: RadBERT folder or checkpoint not found \(labeler 'radbert:"):
        evaluate(tmp_path / "m", dataset, tmp_path / "e", EvaluateConfig(labeler=f"radbert:{tmp_path / 'no'}"),
                 reporter=again)


def test_without_label_csv_only_the_ctagrg_protocol_runs(dataset: Path, tmp_path: Path) -> None:
    (dataset / "multi_abnormality_labels" / "test_predicted_labels.csv").unlink()
    with pytest.raises(ValueError, match="^protocol vlm3d needs the dataset's label CSV"):
        evaluate(tmp_path / "m", dataset, tmp_path / "e1", EvaluateConfig(protocol="vlm3d", meteor=False,
                                                                          bootstrap=0), reporter=StandInReporter())
    metrics = evaluate(tmp_path / "m", dataset, tmp_path / "e2", EvaluateConfig(meteor=False, bootstrap=100),
                       reporter=StandInReporter())
    assert "classification" not in metrics and "classification.macro_auroc" not in metrics["headline"]
    assert metrics["headline"]["clinical.micro_f1"] == pytest.approx(1.0)
    assert set(metrics["ci95"]) >= {"clinical.micro_f1", "nlg.bleu_4"}
    assert (tmp_path / "e2" / "f1_per_label.png").is_file() and not (tmp_path / "e2" / "roc_curves.png").exists()


def test_classification_metrics_auroc_and_f1() -> None:
    labels = np.zeros((4, 18), dtype=int)
    labels[:2, 0] = 1
    probs = np.full((4, 18), 0.2)
    probs[:, 0] = [0.9, 0.4, 0.6, 0.1]  # one positive ranked below one negative: AUROC 3/4
    detected = (probs > 0.5).astype(int)
    m = classification_metrics(probs, detected, labels)
    assert m["per_label"][LABELS[0]]["auroc"] == pytest.approx(0.75)
    assert m["per_label"][LABELS[0]]["f1"] == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    assert m["per_label"][LABELS[1]]["auroc"] is None and m["auroc_labels"] == 1
    assert m["macro_auroc"] == pytest.approx(0.75)


def test_report_line_rejects_incomplete_abnormalities() -> None:
    with pytest.raises(ValueError, match="v1: the model's report lists 1 abnormalities"):
        report_line({"report": "x", "abnormalities": {"Lung nodule": {}}}, "v1", "v1", 0.0)


def test_cli_evaluate(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    import ctagrg.evaluation.evaluate as ev
    from ctagrg.cli.main import main

    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: real(*a, **k, reporter=StandInReporter()))
    (tmp_path / "m").mkdir()
    code = main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(dataset), "--out", str(tmp_path / "o"),
                 "--no-meteor", "--bootstrap", "50"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 of 4 volumes evaluated" in printed and "clinical.micro_f1" in printed
    model = str(tmp_path / "m")
    assert main(["evaluate", "--model", model, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]) == 1
    assert "nowhere/radiology_text_reports/test_reports.csv: file not found" in capsys.readouterr().err
    # usage errors exit 2 before any report, as `ctagrg report` and `ctagrg serve` do
    assert main(["evaluate", "--model", str(tmp_path / "none"), "--data", str(dataset), "--out", "o3"]) == 2
    assert "none: no such model folder" in capsys.readouterr().err
    (tmp_path / "file.nii.gz").write_bytes(b"")
    assert main(["evaluate", "--model", str(tmp_path / "file.nii.gz"), "--data", str(dataset), "--out", "o3"]) == 2
    assert "file.nii.gz: a file, not a model folder" in capsys.readouterr().err
    assert main(["evaluate", "--model", model, "--data", str(dataset), "--out", "o3", "--labeler", "foo"]) == 2
    assert "unknown labeler 'foo'" in capsys.readouterr().err
    assert main(["evaluate", "--model", model, "--data", str(dataset), "--out", "o3", "--device", "nonsense"]) == 2
    assert "device 'nonsense'" in capsys.readouterr().err
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "predictions.jsonl").write_bytes(b"\x8b\x00\xff")
    assert main(["evaluate", "--model", model, "--data", str(dataset), "--out", str(tmp_path / "bin")]) == 1
    assert "predictions.jsonl: not a predictions file (not UTF-8 text" in capsys.readouterr().err


# -- integration: real phantoms, real cache, a real (tiny, random) packaged Reporter -------------------------------
SHAPE = (12, 32, 32)


def _tiny_packaged_model(model_dir: Path, tokenizer_dir: Path) -> None:
    import torch

    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.conditioning import ConditioningConfig
    from ctagrg.models.ctnet import CTNetConfig
    from ctagrg.models.decoder import DecoderConfig, ReportDecoder, load_tokenizer
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.resnet import ResNetConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig

    torch.manual_seed(0)
    ctnet = CTNetConfig(input_shape=SHAPE, trunk=ResNetConfig(width=4, layers=(1, 1, 1, 1)),
                        reducer_channels=(4, 4, 4), reducer_kernels=((3, 1, 1), (3, 1, 1), (1, 1, 1)),
                        reducer_strides=((3, 1, 1), (3, 1, 1), (1, 1, 1)), embed_dim=32)
    visual = Step1Model(VisualModelConfig(ctnet=ctnet, heads=HeadsConfig(in_dim=32, embed_dim=16, classifier_hidden=8,
                                                                         pretrain_hidden=(8, 8))))
    cond = ConditioningConfig(input_dim=16, hidden_dims=(32,), output_dim=24)
    decoder = ReportDecoder(DecoderConfig(n_layer=1, n_embd=32, n_head=4, n_positions=64, conditioning=cond))
    reporter = Reporter(visual, decoder, load_tokenizer(tokenizer_dir), [0.5] * len(LABELS),
                        PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE),
                        ReporterConfig(generation=GenerationSettings(strategy="greedy", max_new_tokens=6)))
    reporter.save_pretrained(model_dir)


@pytest.mark.slow
def test_evaluate_with_real_parts(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    """Phantoms -> ctagrg preprocess -> packaged Reporter -> evaluate: the parts' contracts fit together, and the
    metrics equal an independent recomputation from predictions.jsonl."""
    import torch
    from sklearn.metrics import f1_score, roc_auc_score

    from ctagrg.cli.main import main
    from ctagrg.evaluation.clinical import label_texts
    from ctagrg.utils.atomic import write_text_atomic

    torch.set_num_threads(1)
    data, cache, model = tmp_path / "data", tmp_path / "cache", tmp_path / "model"
    assert main(["phantom", "--out", str(data), "--n", "10", "--size", "tiny", "--seed", "3",
                 "--split", "train=0.4,valid=0.2,test=0.4"]) == 0
    cfg_yaml = tmp_path / "pre.yaml"
    write_text_atomic(cfg_yaml, "spacing: [8.0, 4.0, 4.0]\nshape: [12, 32, 32]\n")
    assert main(["preprocess", str(data), "--out", str(cache), "--config", str(cfg_yaml)]) == 0
    _tiny_packaged_model(model, gpt2_tokenizer_dir)
    out = tmp_path / "eval"
    metrics = evaluate(model, data, out, EvaluateConfig(cache_dir=str(cache), meteor=False, bootstrap=50))
    split = load_split(data, "test")
    lines = read_predictions(out / "predictions.jsonl", split)
    assert len(lines) == len(split.names) >= 2 and not any("error" in line for line in lines)
    assert all(line["input"].endswith(".nii.gz") for line in lines)
    det = np.array([[line["abnormalities"][n]["detected"] for n in LABELS] for line in lines], dtype=int)
    probs = np.array([[line["abnormalities"][n]["probability"] for n in LABELS] for line in lines])
    labels = split.labels
    assert labels is not None
    cls = metrics["classification"]["per_label"]
    for j, name in enumerate(LABELS):
        assert cls[name]["f1"] == pytest.approx(f1_score(labels[:, j], det[:, j], zero_division=0))
        if 0 < labels[:, j].sum() < len(labels):
            assert cls[name]["auroc"] == pytest.approx(roc_auc_score(labels[:, j], probs[:, j]))
    gen = label_texts([line["report"] for line in lines]).astype(bool)
    ref = label_texts(split.references).astype(bool)  # protocol ctagrg: the labeler on the reference reports
    tp, fp, fn = (gen & ref).sum(), (gen & ~ref).sum(), (~gen & ref).sum()
    assert metrics["clinical"]["micro_f1"] == pytest.approx(2 * tp / max(2 * tp + fp + fn, 1))
    assert "grounding" in metrics and metrics["meta"]["split"] == "test"
    assert (out / "report.html").is_file() and (out / "roc_curves.png").is_file()


@pytest.mark.slow
def test_preprocess_then_evaluate_on_the_release_layout(tmp_path: Path, gpt2_tokenizer_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A tree with CT-RATE's exact file names and headers: ``ctagrg preprocess ROOT`` reads each split's metadata
    (validation_metadata.csv for valid/ and valid_fixed/), and ``ctagrg evaluate --split valid`` (or
    ``validation``) reads validation_reports.csv and valid_predicted_labels.csv."""
    import torch

    from ctagrg.cli.main import main
    from ctagrg.utils.atomic import write_text_atomic

    torch.set_num_threads(1)
    volumes = {  # valid/ stores raw values (HU + 1024) as the original release does; *_fixed/ stores HU
        "train_1_a_1": Volume("The heart is enlarged.", ["Cardiomegaly"], folder="train_fixed"),
        "valid_1_a_1": Volume("A 12 mm nodule is seen in the right lung.", ["Lung nodule"], folder="valid"),
        "valid_1_a_2": Volume("No abnormality is seen.", folder="valid_fixed"),
        "valid_2_a_1": Volume("Left pleural effusion is present.", ["Pleural effusion"], folder="valid_fixed"),
        "valid_3_a_1": Volume("Not downloaded: only its CSV rows are here."),
    }

    def write(path: Path, name: str, v: Volume) -> None:
        hu = phantom_hu(v.shape, seed=len(name) + int(name[6]))
        stored = hu + 1024 if v.folder in ("train", "valid") else hu
        write_nifti(path, stored.astype(np.int16), np.diag([-v.xy, -v.xy, v.z, 1.0]))  # LPS axes

    root = write_release_tree(tmp_path / "CT-RATE" / "dataset", volumes, write)
    cache, model, out = tmp_path / "cache", tmp_path / "model", tmp_path / "eval"
    pre = tmp_path / "pre.yaml"
    write_text_atomic(pre, "spacing: [8.0, 4.0, 4.0]\nshape: [12, 32, 32]\n")
    assert main(["preprocess", str(root), "--out", str(cache), "--config", str(pre)]) == 0
    with open(cache / "manifest.csv", newline="", encoding="utf-8") as fh:
        manifest = {r["name"]: r for r in csv.DictReader(fh)}
    assert sorted(manifest) == ["train_1_a_1", "valid_1_a_1", "valid_1_a_2", "valid_2_a_1"]
    for name in ("valid_1_a_1", "valid_1_a_2"):  # the metadata rescale applied to raw values only: both are HU
        assert manifest[name]["hu_min"].startswith("-10") and manifest[name]["spacing"] == "2x2x4", name
    _tiny_packaged_model(model, gpt2_tokenizer_dir)
    capsys.readouterr()
    common = ["--model", str(model), "--data", str(root), "--cache", str(cache), "--out", str(out), "--no-meteor",
              "--bootstrap", "0", "--limit", "3"]
    assert main(["evaluate", *common, "--split", "valid"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["split"] == "valid" and metrics["meta"]["evaluated"] == 3
    per_label = metrics["classification"]["per_label"]  # valid_predicted_labels.csv: two labels with both classes
    assert metrics["classification"]["auroc_labels"] == 2 and per_label["Cardiomegaly"]["auroc"] is None
    assert per_label["Lung nodule"]["auroc"] is not None and per_label["Pleural effusion"]["auroc"] is not None
    lines = read_predictions(out / "predictions.jsonl")
    assert [line["name"] for line in lines] == ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1"]
    assert lines[0]["input"].endswith("valid/valid_1/valid_1_a/valid_1_a_1.nii.gz")
    assert lines[1]["input"].endswith("valid_fixed/valid_1/valid_1_a/valid_1_a_2.nii.gz")
    examples = json.loads((out / "examples.json").read_text())
    assert "A 12 mm nodule is seen in the right lung." in json.dumps(examples)  # from validation_reports.csv
    # "validation" names the same split: the rerun finds every prediction done and scores the same volumes
    assert main(["evaluate", *common, "--split", "validation"]) == 0
    assert read_predictions(out / "predictions.jsonl") == lines
    assert json.loads((out / "metrics.json").read_text())["meta"]["split"] == "valid"
