"""``thresholds.json``: one decision threshold per label, chosen on validation data and saved next to the model.

Format (probabilities, i.e. sigmoid of the logits; a label is detected when ``prob >= threshold``)::

    {"rule": "max_f1", "labels": [...18 names...], "thresholds": {name: float},
     "validation": {name: {"f1": float|null, "positives": int}}, "n_validation": int}

The rule is documented in :mod:`ctagrg.evaluation.classification`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ctagrg.evaluation.classification import select_thresholds
from ctagrg.labels import LABELS
from ctagrg.utils.atomic import write_json_atomic

FILENAME = "thresholds.json"


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


def save_thresholds(path: str | Path, content: dict) -> Path:
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / FILENAME
    write_json_atomic(path, content)
    return path


def load_thresholds(path: str | Path) -> np.ndarray:
    """(18,) float thresholds in LABELS order from a thresholds.json (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: thresholds file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        table = data["thresholds"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a thresholds.json ({exc})") from None
    missing = [name for name in LABELS if name not in table]
    if missing:
        raise ValueError(f"{path}: no threshold for {', '.join(missing)}")
    return np.array([float(table[name]) for name in LABELS])


def select_half_thresholds(half_probs: np.ndarray, sides: np.ndarray, fallback: np.ndarray,
                           min_findings: int = 5) -> tuple[np.ndarray, list[tuple[float | None, int]]]:
    """Per-label half thresholds for step 1's ``heads.condition_on_halves``, chosen on validation findings.

    A half is "on" when its probability reaches the threshold; the halves that are on (the higher one when none
    is) are the finding's predicted sides, which must equal the stated side's halves (right -> {right}, bilateral
    -> {right, left}). Per label, the threshold with the highest such accuracy over the findings whose side is
    known (candidates: midpoints between the sorted probabilities); of equally good ones, the middle of the widest
    run of them, in probability, so that it lies midway between the groups the validation findings separate (the
    middle by count would sit among the many probabilities near 1); ``fallback[j]`` (e.g. the label's detection
    threshold) when fewer than ``min_findings`` findings state a side.

    Args:
        half_probs: (N, 2, L) probabilities of each half, [right, left]; sides: (N, L) index into
            ``SIDE_CLASSES`` ("left", "right", "bilateral"), -1 unknown; fallback: (L,).
    Returns (L,) thresholds and, per label, (validation side accuracy at it or None, findings with a side).
    """
    from ctagrg.models.heads import SIDE_CLASSES

    half_probs, sides = np.asarray(half_probs, np.float64), np.asarray(sides)
    wanted = {SIDE_CLASSES.index("right"): (True, False), SIDE_CLASSES.index("left"): (False, True),
              SIDE_CLASSES.index("bilateral"): (True, True)}
    out, report = np.asarray(fallback, np.float64).copy(), []
    for j in range(sides.shape[1]):
        known = sides[:, j] >= 0
        if known.sum() < min_findings:
            report.append((None, int(known.sum())))
            continue
        p = half_probs[known, :, j]  # (n, 2)
        truth = np.array([wanted[int(s)] for s in sides[known, j]])  # (n, 2) bool
        values = np.unique(p)
        candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2, [(values[-1] + 1) / 2]])
        best_halves = p == p.max(1, keepdims=True)

        def accuracy(t: float, p: np.ndarray = p, truth: np.ndarray = truth, top: np.ndarray = best_halves) -> float:
            on = p >= t
            on = np.where(on.any(1, keepdims=True), on, top)
            return float((on == truth).all(1).mean())

        scores = np.array([accuracy(t) for t in candidates])
        out[j] = _middle_of_widest_run(candidates, scores == scores.max())
        report.append((float(scores.max()), int(known.sum())))
    return out, report


def _middle_of_widest_run(candidates: np.ndarray, best: np.ndarray) -> float:
    """The midpoint of the widest run of consecutive ``best`` candidates (sorted), measured in candidate value."""
    runs, start = [], None
    for k, flag in enumerate([*best.tolist(), False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            runs.append((start, k - 1))
            start = None
    lo, hi = max(runs, key=lambda r: candidates[r[1]] - candidates[r[0]])
    return float((candidates[lo] + candidates[hi]) / 2)
