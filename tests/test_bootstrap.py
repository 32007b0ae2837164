"""Bootstrap: vectorised statistics equal the direct computations on the full sample and on a resample."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from sklearn.metrics import roc_auc_score

from ctagrg.evaluation import bootstrap as bs
from ctagrg.evaluation.clinical import clinical_metrics, confusion_counts
from ctagrg.evaluation.nlg import tokenize
from ctagrg.labels import NUM_LABELS

HYPS = ["a small nodule in the right lung", "no effusion", "the heart is enlarged", "aortic calcification is seen"]
REFS = ["a nodule in the right upper lobe", "no pleural effusion", "cardiomegaly", "calcified plaques in the aorta"]


def test_resample_weights_rows_sum_to_n_and_are_seeded() -> None:
    w = bs.resample_weights(7, n_resamples=50, seed=1)
    assert w.shape == (50, 7)
    assert (w.sum(1) == 7).all()
    assert (w == bs.resample_weights(7, n_resamples=50, seed=1)).all()
    assert not (w == bs.resample_weights(7, n_resamples=50, seed=2)).all()


def test_percentile_interval() -> None:
    assert bs.percentile_interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert bs.percentile_interval(np.array([np.nan])) is None


def test_bleu_from_stats_equals_pycocoevalcap_on_full_and_resampled_corpus() -> None:
    hyps, refs = [tokenize(h) for h in HYPS], [tokenize(r) for r in REFS]
    stats = bs.bleu_statistics(hyps, refs)
    full = bs.bleu_samples(stats, np.ones((1, len(hyps))))[0]
    expected, _ = Bleu(4).compute_score({i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)},
                                        verbose=0)
    assert full == pytest.approx(expected, rel=1e-9)
    # a resample drawing report 0 twice and report 2 once equals scoring that duplicated corpus directly
    resampled = bs.bleu_samples(stats, np.array([[2.0, 0.0, 1.0, 0.0]]))[0]
    idx = [0, 0, 2]
    direct, _ = Bleu(4).compute_score({k: [refs[i]] for k, i in enumerate(idx)},
                                      {k: [hyps[i]] for k, i in enumerate(idx)}, verbose=0)
    assert resampled == pytest.approx(direct, rel=1e-9)


def test_clinical_samples_equal_direct_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = (rng.random((12, NUM_LABELS)) < 0.3).astype(int)
    pred = (rng.random((12, NUM_LABELS)) < 0.3).astype(int)
    w = bs.resample_weights(12, n_resamples=3, seed=5)
    samples = bs.clinical_samples(confusion_counts(pred, ref), w)
    for r in range(3):
        idx = np.repeat(np.arange(12), w[r].astype(int))
        direct = clinical_metrics(pred[idx], ref[idx])
        for key in ("micro_f1", "micro_precision", "micro_recall", "macro_f1"):
            assert samples[key][r] == pytest.approx(direct[key])


def test_auroc_samples_equal_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((30, 3)) < 0.4).astype(int)
    scores = np.round(rng.random((30, 3)) + 0.3 * labels, 1)  # rounding creates ties
    w = bs.resample_weights(30, n_resamples=4, seed=2)
    got = bs.auroc_samples(scores, labels, w)
    for r in range(4):
        idx = np.repeat(np.arange(30), w[r].astype(int))
        for j in range(3):
            assert got[r, j] == pytest.approx(roc_auc_score(labels[idx, j], scores[idx, j]))
    macro = bs.macro_auroc_samples(scores, labels, w)
    assert macro == pytest.approx(got.mean(1))


def test_auroc_undefined_without_both_classes() -> None:
    got = bs.auroc_samples(np.array([[0.1], [0.9]]), np.array([[1], [1]]), np.ones((1, 2)))
    assert np.isnan(got[0, 0])


def test_mean_samples() -> None:
    assert bs.mean_samples([1.0, 3.0], np.array([[2.0, 0.0], [1.0, 1.0]])) == pytest.approx([1.0, 2.0])
