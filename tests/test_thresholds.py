"""Threshold selection (max F1, highest threshold on ties, midpoints) and thresholds.json round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from ctagrg.evaluation.classification import max_f1_threshold, select_thresholds
from ctagrg.labels import LABELS
from ctagrg.models.thresholds_file import read_thresholds, save_thresholds
from ctagrg.training.thresholds import compute_thresholds


def test_max_f1_hand_case_midpoint():
    y = np.array([1, 1, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.1])
    t, f1 = max_f1_threshold(y, p)
    # candidates: >=0.9 F1 .5, >=0.8 .8, >=0.7 .667, >=0.6 .857 (best), >=0.3 .75, ...
    assert f1 == pytest.approx(6 / 7) and t == pytest.approx(0.45)


def test_ties_go_to_the_highest_threshold():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2])
    # >=0.9: F1 2/3; >=0.8: 0.5; >=0.7: 0.8 (best); >=0.2: 2/3
    t, f1 = max_f1_threshold(y, p)
    assert f1 == pytest.approx(0.8) and t == pytest.approx(0.45)
    y2, p2 = np.array([1, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.6])  # >=0.9 and >=0.6 both F1 2/3
    t2, f2 = max_f1_threshold(y2, p2)
    assert f2 == pytest.approx(2 / 3) and t2 == pytest.approx(0.85)


def test_max_f1_equals_brute_force_with_repeated_scores():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[0] = 1
        p = rng.integers(0, 8, 30) / 8.0  # many ties in scores
        t, f1 = max_f1_threshold(y, p)
        brute = max(f1_score(y, p >= c) for c in np.unique(p))
        assert f1 == pytest.approx(brute)
        assert f1_score(y, p >= t) == pytest.approx(brute)  # the returned threshold realises it


def test_no_positive_gets_default():
    t, f1 = max_f1_threshold(np.zeros(5), np.linspace(0, 1, 5))
    assert t == 0.5 and np.isnan(f1)


def test_thresholds_json_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, (30, 18))
    labels[:, 4] = 0
    probs = rng.random((30, 18))
    content = compute_thresholds(labels, probs)
    path = save_thresholds(tmp_path, content)
    assert path == tmp_path / "thresholds.json"
    data = json.loads(path.read_text())
    assert data["rule"] == "max_f1" and data["labels"] == list(LABELS) and data["n_validation"] == 30
    assert data["validation"][LABELS[4]] == {"f1": None, "positives": 0}
    np.testing.assert_allclose(read_thresholds(tmp_path), select_thresholds(labels, probs)[0])
    del data["thresholds"][LABELS[7]]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"thresholds.json: no threshold for {LABELS[7]}"):
        read_thresholds(path)
