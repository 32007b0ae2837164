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


def select_half_thresholds(half_probs: np.ndarray, sides: np.ndarray, fallback: np.ndarray,
                           min_findings: int = 5) -> tuple[np.ndarray, list[tuple[float | None, int]]]:
    """Per-label half thresholds for step 1's ``heads.condition_on_halves``, chosen on validation findings.

    A half is "on" when its probability reaches the threshold, and where neither does the higher one is
    (``ctagrg.models.heads.halves_on``, the rule the model applies); the halves that are on must equal the stated
    side's halves (right -> {right}, bilateral -> {right, left}). Per label, the threshold with the highest such
    accuracy over the findings whose side is known. Candidates are float32 values (the model compares in float32)
    between the sorted probabilities; of equally good ones, the middle of the widest run of them, in probability,
    so that it lies midway between the groups the validation findings separate (the middle by count would sit among
    the many probabilities near 1), and of equally wide runs the one whose middle is nearest 0.5. ``fallback[j]``
    (e.g. the label's detection threshold) when fewer than ``min_findings`` (at least 1) findings state a side.

    Args:
        half_probs: (N, 2, L) probabilities of each half, [right, left]; sides: (N, L) index into
            ``SIDE_CLASSES`` ("left", "right", "bilateral"), -1 unknown; fallback: (L,).
    Returns (L,) thresholds and, per label, (validation side accuracy at it or None, findings with a side).
    """
    import torch

    from ctagrg.models.heads import SIDE_HALVES, halves_on

    probs = torch.as_tensor(np.asarray(half_probs), dtype=torch.float32)
    sides = torch.as_tensor(np.asarray(sides), dtype=torch.long)
    out, report = np.asarray(fallback, np.float64).copy(), []
    for j in range(sides.shape[1]):
        known = sides[:, j] >= 0
        n = int(known.sum())
        if n < max(min_findings, 1):
            report.append((None, n))
            continue
        p, truth = probs[known, :, j], SIDE_HALVES[sides[known, j]]  # (n, 2) each
        values = torch.unique(p).double()
        mids = torch.cat([values[:1] / 2, (values[:-1] + values[1:]) / 2, (values[-1:] + 1) / 2]).float()
        candidates = torch.unique(mids)  # float32, sorted; a midpoint that rounds onto a value is still scored
        scores = torch.stack([(halves_on(p, t) == truth).all(-1).float().mean() for t in candidates])
        # rounded to float32, the model's threshold dtype: it stays between the run's ends, which are float32
        out[j] = float(np.float32(_middle_of_widest_run(candidates.double().numpy(), (scores == scores.max()).numpy())))
        report.append((float(scores.max()), n))
    return out, report


def _middle_of_widest_run(candidates: np.ndarray, best: np.ndarray) -> float:
    """The midpoint of the widest run of consecutive ``best`` candidates (sorted; of equally wide runs, the one whose
    midpoint is nearest 0.5), measured in candidate value. Every value between a run's ends scores as they do."""
    runs, start = [], None
    for k, flag in enumerate([*best.tolist(), False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            runs.append((start, k - 1))
            start = None
    lo, hi = max(runs, key=lambda r: (candidates[r[1]] - candidates[r[0]],
                                      -abs((candidates[r[0]] + candidates[r[1]]) / 2 - 0.5)))
    return float((candidates[lo] + candidates[hi]) / 2)
