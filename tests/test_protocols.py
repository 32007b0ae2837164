"""``ctagrg evaluate --protocol vlm3d`` end to end, and the bootstrap intervals of the VLM3D figures.

Uses the hand-written dataset and stand-in Reporter of tests/test_evaluate.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import VOLUMES, StandInReporter, make_dataset

from ctagrg.evaluation.clinical import label_texts
from ctagrg.evaluation.definitions import DEFINITIONS
from ctagrg.evaluation.evaluate import EvaluateConfig, evaluate
from ctagrg.evaluation.predict import load_split, read_predictions
from ctagrg.evaluation.protocols import HEADLINE_KEYS, PROTOCOLS, _vlm3d_label_intervals
from ctagrg.evaluation.vlm3d import crg_score, label_scores, vlm3d_metrics
from ctagrg.labels import LABELS, NUM_LABELS


def test_every_headline_key_has_a_definition() -> None:
    for protocol in PROTOCOLS:
        assert set(HEADLINE_KEYS[protocol]) <= set(DEFINITIONS), protocol
    with pytest.raises(ValueError, match="unknown protocol 'x'; choose one of ctagrg, vlm3d"):
        EvaluateConfig(protocol="x")


def test_evaluate_vlm3d_protocol(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "eval"
    metrics = evaluate(tmp_path / "model", data, out, EvaluateConfig(protocol="vlm3d", meteor=False, bootstrap=100),
                       reporter=StandInReporter())
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["meta"]["protocol"] == "vlm3d" and "clinical" not in saved and "nlg" not in saved
    assert set(HEADLINE_KEYS["vlm3d"]) - {"vlm3d.generation.METEOR"} <= set(saved["headline"])
    assert saved["headline"]["vlm3d.generation.METEOR"] is None and saved["vlm3d"]["notes"]["METEOR"]
    assert set(saved["definitions"]) == set(saved["headline"])
    # the section equals the module's figures on the same reports, labels and label CSV
    split = load_split(data, "test")
    lines = read_predictions(out / "predictions.jsonl", split)
    gen_reports = [line["report"] for line in lines]
    gen_labels = label_texts(gen_reports)
    expected = vlm3d_metrics(split.names, gen_reports, split.references, gen_labels, split.labels, meteor=False)
    for part in ("generation", "classification", "crg"):
        assert saved["vlm3d"][part] == expected[part], part  # JSON keeps floats exactly
    # three labels present, each found: F1 1 for them, 0 for the other 15 (the harness's macro counts all 18)
    assert saved["headline"]["vlm3d.classification.macro.f1"] == pytest.approx(3 / NUM_LABELS)
    assert saved["vlm3d"]["crg"]["TP"] == 3 and saved["vlm3d"]["crg"]["FP"] == 0
    for key in ("vlm3d.classification.macro.f1", "vlm3d.crg.CRG", "vlm3d.generation.BLEU_mean"):
        lo, hi = saved["ci95"][key]
        assert lo <= saved["headline"][key] <= hi, key
    # the files a user submits or inspects
    rows = list(csv.DictReader((out / "generated_labels.csv").open()))
    assert [r["VolumeName"] for r in rows] == [f"{n}.nii.gz" for n in VOLUMES]
    assert np.array_equal([[int(r[c]) for c in LABELS] for r in rows], gen_labels)
    sub = json.loads((out / "vlm3d_submission.json").read_text())
    pairs = zip(VOLUMES, gen_reports, strict=True)
    assert sub["generated_reports"] == [{"input_image_name": n, "report": r} for n, r in pairs]
    assert "protocol vlm3d" in (out / "report.md").read_text()
    assert metrics["headline"] == saved["headline"]


def test_vlm3d_intervals_recompute_the_figures_on_each_resample() -> None:
    rng = np.random.default_rng(0)
    ref = (rng.random((30, NUM_LABELS)) < 0.2).astype(int)
    gen = (rng.random((30, NUM_LABELS)) < 0.2).astype(int)
    full = _vlm3d_label_intervals(gen, ref, np.ones((1, 30)))
    assert full["vlm3d.classification.macro.f1"][0] == pytest.approx(label_scores(gen, ref)["macro"]["f1"])
    assert full["vlm3d.classification.macro.accuracy"][0] == pytest.approx(label_scores(gen, ref)["macro"]["accuracy"])
    assert full["vlm3d.crg.CRG"][0] == pytest.approx(crg_score(gen, ref)["CRG"])
    idx = rng.integers(0, 30, 30)  # one resample, given as counts
    w = np.bincount(idx, minlength=30)[None].astype(float)
    one = _vlm3d_label_intervals(gen, ref, w)
    direct = label_scores(gen[idx], ref[idx])["macro"]
    assert one["vlm3d.classification.macro.recall"][0] == pytest.approx(direct["recall"])
    assert one["vlm3d.crg.CRG"][0] == pytest.approx(crg_score(gen[idx], ref[idx])["CRG"])


def test_ctagrg_protocol_reference_is_the_labeler_or_the_csv() -> None:
    from ctagrg.evaluation.clinical import clinical_metrics
    from ctagrg.evaluation.protocols import ScoringInput, score

    refs = ["There is a left pleural effusion.", "Cardiomegaly is noted.", "No abnormality."]
    gen = ["Cardiomegaly.", "Cardiomegaly is noted.", "No abnormality."]
    gen_labels = label_texts(gen, "rules")
    csv_labels = np.zeros((3, NUM_LABELS), int)
    csv_labels[0, LABELS.index("Cardiomegaly")] = 1  # a CSV that disagrees with the reference text
    common = dict(names=["a", "b", "c"], generated=gen, references=refs, generated_labels=gen_labels,
                  csv_labels=csv_labels, labeler="rules", meteor=False, reference_columns=("Findings_EN",),
                  weights=None)
    by_text, _ = score("ctagrg", ScoringInput(**common))
    by_csv, _ = score("ctagrg", ScoringInput(**common, clinical_reference="csv"))
    assert by_text["clinical"]["reference"] == "labeler on reference reports"
    assert by_csv["clinical"]["reference"] == "label CSV"
    assert by_text["clinical"]["micro_f1"] == pytest.approx(
        clinical_metrics(gen_labels, label_texts(refs, "rules"))["micro_f1"])
    assert by_csv["clinical"]["micro_f1"] == pytest.approx(clinical_metrics(gen_labels, csv_labels)["micro_f1"])
    assert by_text["clinical"]["micro_f1"] != pytest.approx(by_csv["clinical"]["micro_f1"])
    with pytest.raises(ValueError, match="clinical_reference: expected 'reports' or 'csv'"):
        EvaluateConfig(clinical_reference="text")
