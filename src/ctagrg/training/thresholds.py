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
