"""Grounding: side and size parsing on hand-written sentences, metrics against hand-written ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctagrg.evaluation.grounding import expected_side, grounding_metrics
from ctagrg.text.attributes import side_from_text, size_mm_from_text


@pytest.mark.parametrize(("sentence", "side"), [
    ("A 12 mm solid nodule is seen in the upper lobe of the right lung.", "right"),
    ("Left-sided pleural effusion.", "left"),
    ("Pleural effusion in the left hemithorax.", "left"),
    ("Bilateral pleural effusion is present.", "bilateral"),
    ("Consolidation in both lungs.", "bilateral"),
    ("Nodules in the right upper and left lower lobes.", "bilateral"),
    ("A nodule is seen.", None),
    (None, None),
    ("Brightness is normal.", None),  # "right" must be a whole word
])
def test_side_from_text(sentence: str | None, side: str | None) -> None:
    assert side_from_text(sentence) == side


@pytest.mark.parametrize(("sentence", "mm"), [
    ("A 12 mm nodule", 12.0),
    ("a 3.5 mm nodule", 3.5),
    ("A 1.2 cm nodule", 12.0),
    ("nodule measuring 12x9.3 mm", 12.0),
    ("nodule of 8 x 14 x 6 mm", 14.0),
    ("a 0,8 cm nodule", 8.0),
    ("a 7 millimeter nodule", 7.0),
    ("a small nodule", None),
    ("in segment 6 of the lung", None),
])
def test_size_mm_from_text(sentence: str, mm: float | None) -> None:
    assert size_mm_from_text(sentence) == (pytest.approx(mm) if mm is not None else None)


def test_expected_side_union() -> None:
    findings = [{"label": "Lung nodule", "side": "left"}, {"label": "Lung nodule", "side": "right"},
                {"label": "Pleural effusion", "side": "right"}, {"label": "Cardiomegaly", "side": None}]
    assert expected_side(findings, "Lung nodule") == "bilateral"
    assert expected_side(findings, "Pleural effusion") == "right"
    assert expected_side(findings, "Cardiomegaly") is None


def _pred(name: str, **abn: tuple[bool, str | None]) -> dict:
    return {"input": f"/x/{name}.nii.gz", "report": "", "seconds": 0.1,
            "abnormalities": {k.replace("_", " "): {"probability": 0.9, "detected": d, "threshold": 0.5, "sentence": s}
                              for k, (d, s) in abn.items()}}


def test_grounding_metrics(tmp_path: Path) -> None:
    gt = tmp_path / "ground_truth"
    gt.mkdir()
    (gt / "v1.json").write_text(json.dumps({"name": "v1", "findings": [
        {"label": "Lung nodule", "side": "right", "lobe": "upper", "size_mm": 12.0, "extent": None},
        {"label": "Pleural effusion", "side": "bilateral", "lobe": None, "size_mm": None, "extent": "small"}]}))
    (gt / "v2.json").write_text(json.dumps({"name": "v2", "findings": [
        {"label": "Consolidation", "side": "left", "size_mm": None}, {"label": "Lung nodule", "side": "left",
                                                                      "size_mm": 25.0}]}))
    preds = [
        _pred("v1", Lung_nodule=(True, "A 15 mm nodule in the right upper lobe."),  # side ok, size ok (3 mm)
              Pleural_effusion=(True, "Left pleural effusion."),  # side wrong
              Consolidation=(True, "Consolidation in the right lung.")),  # absent in truth: not counted
        _pred("v2", Consolidation=(True, "Consolidation is seen."),  # no side stated: wrong
              Lung_nodule=(True, "A 1.5 cm nodule in the left lower lobe.")),  # side ok, size 15 vs 25: wrong
        _pred("v3", Lung_nodule=(True, "right nodule")),  # no ground truth file
        {"input": "/x/v4.nii.gz", "error": "unreadable"},
    ]
    m = grounding_metrics(preds, tmp_path)  # the dataset root works as well as ROOT/ground_truth
    assert m["side_n"] == 4 and m["side_accuracy"] == pytest.approx(2 / 4)
    assert m["side_unstated"] == 1
    assert m["size_n"] == 2 and m["nodule_size_within_5mm"] == pytest.approx(0.5)
    assert m["volumes"] == 2 and m["missing_truth"] == 1
    assert grounding_metrics(preds, gt)["side_accuracy"] == pytest.approx(0.5)


def test_grounding_without_eligible_findings_is_none(tmp_path: Path) -> None:
    assert grounding_metrics([], tmp_path)["side_accuracy"] is None


def test_bad_ground_truth_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "v1.json").write_text("{not json")
    with pytest.raises(ValueError, match="v1.json: not valid JSON"):
        grounding_metrics([_pred("v1", Lung_nodule=(True, "right"))], tmp_path)


def test_the_wilson_interval_matches_known_values():
    from ctagrg.evaluation.grounding import wilson_interval

    # 45 of 50: 0.90, Wilson 95% interval [0.786, 0.957] (textbook value)
    low, high = wilson_interval(45, 50)
    assert low == pytest.approx(0.7864, abs=1e-3) and high == pytest.approx(0.9565, abs=1e-3)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(0, 10)[0] == pytest.approx(0.0)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-3)  # all right in 10: still wide
    assert all(np.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="correct <= n"):
        wilson_interval(11, 10)
