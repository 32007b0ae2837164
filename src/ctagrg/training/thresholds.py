"""Choosing the per-label decision thresholds on validation data (the file: :mod:`ctagrg.models.thresholds_file`).

The rule is documented in :mod:`ctagrg.evaluation.classification`.
"""

from __future__ import annotations

import math

import numpy as np

from ctagrg.evaluation.classification import select_thresholds
from ctagrg.labels import LABELS
from ctagrg.models.thresholds_file import FILENAME, save_thresholds  # noqa: F401 (re-exported)


def compute_thresholds(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The thresholds.json content for validation ``labels`` (N, 18) and ``probs`` (N, 18)."""
    thr, f1 = select_thresholds(labels, probs)
    positives = np.asarray(labels).sum(0).astype(int)
    return {
        "rule": "max_f1",
        "labels": list(LABELS),
        "thresholds": {name: float(t) for name, t in zip(LABELS, thr, strict=True)},
        "validation": {name: {"f1": None if math.isnan(f) else float(f), "positives": int(p)}
                       for name, f, p in zip(LABELS, f1, positives, strict=True)},
        "n_validation": int(len(labels)),
    }
