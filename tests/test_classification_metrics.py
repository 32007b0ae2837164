"""Per-label AUROC/F1 and macro averages against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from ctagrg.evaluation.classification import auroc_per_label, classification_report, markdown_table, prf
from ctagrg.labels import LABELS


def test_auroc_hand_case_and_single_class_is_nan():
    labels = np.array([[0, 1], [0, 1], [1, 1], [1, 1]])
    probs = np.array([[0.1, 0.3], [0.6, 0.2], [0.4, 0.9], [0.8, 0.5]])
    auc = auroc_per_label(labels, probs)
    assert auc[0] == pytest.approx(0.75)  # pairs (pos, neg): (.4,.1) (.4,.6)x (.8,.1) (.8,.6) -> 3/4
    assert np.isnan(auc[1])


def test_prf_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (50, 18))
    preds = rng.integers(0, 2, (50, 18))
    labels[:, 3] = 0
    preds[:, 3] = 0  # nothing predicted, nothing present: sklearn zero_division=0 gives 0
    p, r, f = prf(labels.astype(float), preds.astype(float))
    for j in range(18):
        assert f[j] == pytest.approx(f1_score(labels[:, j], preds[:, j], zero_division=0))
        assert p[j] == pytest.approx(precision_score(labels[:, j], preds[:, j], zero_division=0))
        assert r[j] == pytest.approx(recall_score(labels[:, j], preds[:, j], zero_division=0))


def test_classification_report_macro_and_table():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (40, 18))
    labels[:, 0] = 1  # single class: excluded from the macro AUROC
    probs = np.clip(labels * 0.6 + rng.random((40, 18)) * 0.5, 0, 1)
    rep = classification_report(labels, probs, thresholds=0.55)
    aucs = auroc_per_label(labels, probs)
    assert rep["macro"]["auroc_labels"] == 17
    assert rep["macro"]["auroc"] == pytest.approx(np.nanmean(aucs))
    assert rep["per_label"][LABELS[2]]["f1"] == pytest.approx(f1_score(labels[:, 2], probs[:, 2] >= 0.55))
    assert rep["micro"]["f1"] == pytest.approx(f1_score(labels.ravel(), probs.ravel() >= 0.55))
    table = markdown_table(rep)
    assert table.count("\n") == 2 + 18 + 1 and f"| {LABELS[5]} | " in table


def test_bad_input():
    with pytest.raises(ValueError, match=r"must both be \(N, L\); got \(3, 2\) and \(3, 3\)"):
        auroc_per_label(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="labels must be 0/1"):
        auroc_per_label(np.full((2, 2), 0.5), np.zeros((2, 2)))
