"""``ctagrg.evaluation.vlm3d`` against figures that the VLM3D challenge's own harness produced.

tests/data/vlm3d_reference.json was written by tests/data/vlm3d_make_reference.py (its docstring has the command):
the harness's calc_scores.py, crg_score.py and nlg_metrics.py, run in a throw-away venv with its pinned
scikit-learn 1.2.2, on the inputs of tests/vlm3d_fixtures.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from vlm3d_fixtures import dev_inputs

from ctagrg.evaluation import nlg
from ctagrg.evaluation.vlm3d import (
    clean_generated,
    clean_reference,
    crg_score,
    generation_scores,
    label_scores,
    submission,
    vlm3d_metrics,
    write_generated_labels,
)
from ctagrg.labels import LABELS, NUM_LABELS

REFERENCE = json.loads((Path(__file__).parent / "data" / "vlm3d_reference.json").read_text(encoding="utf-8"))
TOL = 1e-6


def _ours(inputs: dict[str, Any], meteor: bool) -> dict[str, Any]:
    return vlm3d_metrics(inputs["names"], inputs["generated"], inputs["references"],
                         np.array(inputs["generated_labels"]), np.array(inputs["reference_labels"]), meteor=meteor)


def _assert_equal_to_harness(ours: dict[str, Any], harness: dict[str, Any], meteor: bool) -> None:
    for key, value in harness["generation"].items():
        if key == "METEOR" and not meteor:
            continue
        assert ours["generation"][key] == pytest.approx(value, abs=TOL), key
    for key, value in harness["classification"]["macro"].items():
        assert ours["classification"]["macro"][key] == pytest.approx(value, abs=TOL), key
    for row in harness["classification"]["per_pathology"]:
        mine = ours["classification"]["per_label"][row["name"]]
        for key in ("precision", "recall", "f1", "accuracy"):
            assert mine[key] == pytest.approx(row[key], abs=TOL), (row["name"], key)
    for key, value in harness["crg"].items():
        assert ours["crg"][key] == pytest.approx(value, abs=TOL), key


@pytest.mark.parametrize("meteor", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_synthetic_set_equals_the_harness(meteor: bool) -> None:
    if meteor and nlg.java_available() is None:
        pytest.skip("java not on PATH: METEOR cannot run")
    case = REFERENCE["synthetic"]
    ours = _ours(case["inputs"], meteor)
    _assert_equal_to_harness(ours, case["harness_output"], meteor)
    # the set exercises a label with no reference positive, which the harness's macro counts as 0
    assert any(row["recall"] == 0 and sum(r[LABELS.index(row["name"])] for r in case["inputs"]["reference_labels"])
               == 0 for row in case["harness_output"]["classification"]["per_pathology"])


def test_dev_reports_equal_the_harness(shared_data: Path) -> None:
    """40 real CT-RATE reports: every figure, METEOR included when Java is there."""
    meteor = nlg.java_available() is not None
    ours = _ours(dev_inputs(shared_data / "reports"), meteor)
    _assert_equal_to_harness(ours, REFERENCE["dev"]["harness_output"], meteor)


def test_the_clean_up_and_tokenisation_matter() -> None:
    """Without the harness's clean-up, or on our tokenisation, BLEU differs: the comparisons above can fail."""
    inp = REFERENCE["synthetic"]["inputs"]
    harness_bleu = REFERENCE["synthetic"]["harness_output"]["generation"]["BLEU_1"]
    uncleaned = generation_scores(inp["generated"], inp["references"], meteor=False)[0]["BLEU_1"]
    tokenised = nlg.nlg_metrics(inp["generated"], inp["references"], meteor=False).scores["bleu_1"]
    assert abs(uncleaned - harness_bleu) > 1e-3 and abs(tokenised - harness_bleu) > 1e-3


def test_clean_up_rules() -> None:
    assert clean_reference("Effusion .\nNo nodule . Heart normal .") == "Effusion.No nodule.Heart normal."
    assert clean_generated('"Left_lung" nodule . Done .<|eot_id|>') == "Leftlung nodule.Done."
    assert clean_reference('"a_b"') == '"a_b"'  # quotes and underscores are removed from predictions only


def test_label_scores_and_crg_by_hand() -> None:
    gen, ref = np.zeros((4, NUM_LABELS), dtype=int), np.zeros((4, NUM_LABELS), dtype=int)
    ref[:2, 0] = 1
    gen[[0, 2], 0] = 1  # label 0: TP 1, FP 1, FN 1
    gen[3, 1] = 1  # label 1: FP 1, no reference positive
    s = label_scores(gen, ref)
    assert s["per_label"][LABELS[0]]["f1"] == pytest.approx(0.5)
    assert s["per_label"][LABELS[1]]["precision"] == 0.0 and s["per_label"][LABELS[1]]["accuracy"] == 0.75
    assert s["per_label"][LABELS[5]]["f1"] == 0.0  # nothing predicted, nothing present: 0, not left out
    assert s["macro"]["f1"] == pytest.approx(0.5 / NUM_LABELS)
    assert s["macro"]["accuracy"] == pytest.approx((0.5 + 0.75 + 16) / NUM_LABELS)
    c = crg_score(gen, ref)
    x, a = NUM_LABELS * 4, 2
    r, u = (x - a) / (2 * a), (x - a) / 2
    s_ = r * 1 - r * 1 - 2
    assert (c["TP"], c["FN"], c["FP"], c["X"], c["A"]) == (1, 1, 2, x, a)
    assert c["CRG"] == pytest.approx(u / (2 * u - s_))
    with pytest.raises(ValueError, match="CRG is undefined"):
        crg_score(gen, np.zeros_like(ref))


def test_without_java_meteor_is_null_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nlg, "java_available", lambda: None)
    case = REFERENCE["synthetic"]
    ours = _ours(case["inputs"], meteor=True)
    assert ours["generation"]["METEOR"] is None and "java not found" in ours["notes"]["METEOR"]
    _assert_equal_to_harness(ours, case["harness_output"], meteor=False)


def test_submission_and_generated_labels_files(tmp_path: Path) -> None:
    sub = submission(["valid_1_a_1", "valid_2_a_1"], ["Report one.", ""])
    assert sub["generated_reports"][1] == {"input_image_name": "valid_2_a_1", "report": ""}
    assert sub["type"] == "Report generation" and sub["version"] == {"major": 1, "minor": 0}
    labels = np.zeros((2, NUM_LABELS), dtype=int)
    labels[1, 3] = 1
    write_generated_labels(tmp_path / "g.csv", ["valid_1_a_1.nii.gz", "valid_2_a_1.nii.gz"], labels)
    rows = list(csv.reader((tmp_path / "g.csv").open()))
    assert rows[0] == ["VolumeName", *LABELS] and rows[2][0] == "valid_2_a_1.nii.gz" and rows[2][4] == "1"
    with pytest.raises(ValueError, match="repeat"):
        vlm3d_metrics(["a", "a"], ["x", "y"], ["x", "y"], labels, labels, meteor=False)
