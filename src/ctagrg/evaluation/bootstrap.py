"""Non-parametric bootstrap confidence intervals over reports (percentile method).

Each resample draws N reports with replacement. A resample is represented by a weight matrix ``W`` (R, N):
``W[r, i]`` = how many times report i was drawn in resample r. Every statistic here is a function of per-report
sufficient statistics summed with those weights, so all R resamples are computed at once with a matrix product
instead of R calls to a scorer:

- clinical micro/macro P/R/F1: per-report TP/FP/FN indicators (N, 18);
- corpus BLEU-n: per-report n-gram matches, n-gram counts, hypothesis and reference lengths (pycocoevalcap's
  ``BleuScorer`` sufficient statistics, so the full-sample value equals pycocoevalcap's exactly);
- means of per-report scores (ROUGE-L; CIDEr-D with document frequencies fixed to the full corpus);
- macro AUROC: weighted Mann-Whitney statistic per label, ties counted as one half.

METEOR has no interval: the jar's corpus score is not a function of its per-report scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ctagrg.evaluation.clinical import summarise_counts


def resample_weights(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """(R, N) float64 counts of each report in each bootstrap resample; every row sums to N."""
    if n < 1:
        raise ValueError("bootstrap: need at least one report")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """[low, high] percentile interval of the finite values in ``samples`` (None when there are none)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def clinical_samples(counts: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Micro/macro P/R/F1 for each resample from per-report ``tp/fp/fn`` (N, 18): dict of (R,) arrays."""
    tp, fp, fn = (weights @ counts[k].astype(np.float64) for k in ("tp", "fp", "fn"))
    return summarise_counts(tp, fp, fn)


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(N, 10) per-report BLEU sufficient statistics from pycocoevalcap on *tokenised* text.

    Columns: correct n-grams (n = 1..4), guessed n-grams (n = 1..4), hypothesis length, reference length.
    """
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=4)
    for hyp, ref in zip(hypotheses, references, strict=True):
        scorer += (hyp, [ref])
    rows = [c["correct"] + c["guess"] + [c["testlen"], min(c["reflen"])] for c in scorer.ctest]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 10)


def corpus_bleu_from_stats(summed: np.ndarray) -> np.ndarray:
    """Corpus BLEU-1..4 from summed statistics (..., 10) -> (..., 4), with pycocoevalcap's smoothing constants."""
    correct, guess = summed[..., 0:4], summed[..., 4:8]
    testlen, reflen = summed[..., 8], summed[..., 9]
    log_p = np.log((correct + 1e-15) / (guess + 1e-9))
    bleus = np.exp(np.cumsum(log_p, axis=-1) / np.arange(1, 5))
    ratio = (testlen + 1e-15) / (reflen + 1e-9)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, 1e-300)), 1.0)
    return bleus * penalty[..., None]


def bleu_samples(stats: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, 4) corpus BLEU-1..4 for each resample."""
    return corpus_bleu_from_stats(weights @ stats)


def mean_samples(values: Sequence[float], weights: np.ndarray) -> np.ndarray:
    """(R,) weighted means of per-report scores."""
    values = np.asarray(values, dtype=np.float64)
    return weights @ values / weights.sum(1)


def auroc_samples(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, L) AUROC per resample and label (NaN where a resample lacks positives or negatives).

    Args:
        scores: (N, L) predicted probabilities. labels: (N, L) 0/1. weights: (R, N) resample counts.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    out = np.full((weights.shape[0], scores.shape[1]), np.nan)
    for j in range(scores.shape[1]):
        out[:, j] = _weighted_auroc(scores[:, j], labels[:, j], weights)
    return out


def _weighted_auroc(score: np.ndarray, label: np.ndarray, weights: np.ndarray) -> np.ndarray:
    order = np.argsort(score, kind="stable")
    s, y, w = score[order], label[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each group of tied scores
    pos_w = np.add.reduceat(w * y, starts, axis=1)  # (R, G) positive weight per tie group
    neg_w = np.add.reduceat(w * ~y, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    n_pos, n_neg = pos_w.sum(1), neg_w.sum(1)
    u = (pos_w * (neg_below + 0.5 * neg_w)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def macro_auroc_samples(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R,) mean AUROC over labels that are defined in each resample (NaN if none is)."""
    per_label = auroc_samples(scores, labels, weights)
    defined = np.isfinite(per_label)
    total = np.where(defined, per_label, 0.0).sum(1)
    count = defined.sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), math.nan)
