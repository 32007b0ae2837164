"""Clinical efficacy: micro/macro/per-label P/R/F1 on hand-computed cases, and reference-label selection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from ctagrg.evaluation.clinical import clinical_metrics
from ctagrg.labels import LABELS, NUM_LABELS


def _labels(rows: list[list[int]]) -> np.ndarray:
    """Rows of label indices that are present -> (N, 18) 0/1."""
    out = np.zeros((len(rows), NUM_LABELS), dtype=int)
    for i, idx in enumerate(rows):
        out[i, idx] = 1
    return out


def test_hand_computed_micro_macro() -> None:
    ref = _labels([[0, 1], [1], [2]])
    pred = _labels([[0], [1, 3], [2]])
    m = clinical_metrics(pred, ref)
    # TP = 3 (0@r0, 1@r1, 2@r2), FP = 1 (3@r1), FN = 1 (1@r0)
    assert m["micro_precision"] == pytest.approx(0.75)
    assert m["micro_recall"] == pytest.approx(0.75)
    assert m["micro_f1"] == pytest.approx(0.75)
    # labels with reference support: 0 (F1 1), 1 (P 1, R 0.5, F1 2/3), 2 (F1 1); label 3 has no support
    assert m["macro_labels"] == 3
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert m["macro_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["per_label"][LABELS[3]] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1}
    assert m["per_label"][LABELS[1]]["support"] == 2


def test_matches_sklearn_on_random_labels() -> None:
    rng = np.random.default_rng(3)
    ref = (rng.random((40, NUM_LABELS)) < 0.3).astype(int)
    pred = (rng.random((40, NUM_LABELS)) < 0.3).astype(int)
    m = clinical_metrics(pred, ref)
    p, r, f, _ = precision_recall_fscore_support(ref, pred, average="micro", zero_division=0)
    assert (m["micro_precision"], m["micro_recall"], m["micro_f1"]) == pytest.approx((p, r, f))
    _, _, f_each, support = precision_recall_fscore_support(ref, pred, average=None, zero_division=0)
    assert m["macro_f1"] == pytest.approx(f_each[support > 0].mean())


def test_bad_shapes_and_values_are_errors() -> None:
    with pytest.raises(ValueError, match=r"expected shape \(N, 18\)"):
        clinical_metrics(np.zeros((2, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="0/1"):
        clinical_metrics(np.full((1, NUM_LABELS), 2), np.zeros((1, NUM_LABELS)))
    with pytest.raises(ValueError, match="differ in shape"):
        clinical_metrics(np.zeros((2, NUM_LABELS)), np.zeros((3, NUM_LABELS)))
