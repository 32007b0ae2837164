"""Scoring a labeler against manual labels, and the fixed development / held-out split of the 800 dev reports.

The split is a hash of the VolumeName, fixed before any rule was written, so anyone can reproduce which reports
were looked at while developing rules (``"develop"``) and which were only scored at the end (``"holdout"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctagrg.data.names import volume_stem
from ctagrg.labels import LABELS

HOLDOUT_BUCKETS = 3  # of 10: about 30 % of reports are held out


def split_of(volume_name: str) -> str:
    """``"holdout"`` or ``"develop"`` for a report, from the MD5 of its volume's name (its VolumeName without the
    suffix: ``.nii.gz`` ignored)."""
    name = volume_stem(volume_name)
    bucket = int(hashlib.md5(name.encode("utf-8")).hexdigest(), 16) % 10
    return "holdout" if bucket < HOLDOUT_BUCKETS else "develop"


@dataclass
class LabelScore:
    label: str
    support: int  # number of positive reports in the reference
    precision: float
    recall: float
    f1: float


@dataclass
class Scores:
    micro_f1: float
    macro_f1: float
    micro_precision: float
    micro_recall: float
    per_label: list[LabelScore]


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score_labels(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str] = LABELS) -> Scores:
    """Report-level precision / recall / F1 per label, micro and macro averaged.

    Args:
        y_true, y_pred: (N, L) arrays of 0/1 (reference, prediction), L = len(labels).
    """
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != len(labels):
        raise ValueError(f"expected two (N, {len(labels)}) arrays, got {y_true.shape} and {y_pred.shape}")
    tp = (y_true & y_pred).sum(0)
    fp = (~y_true & y_pred).sum(0)
    fn = (y_true & ~y_pred).sum(0)
    per_label = []
    for i, name in enumerate(labels):
        p, r, f = _prf(int(tp[i]), int(fp[i]), int(fn[i]))
        per_label.append(LabelScore(name, int(y_true[:, i].sum()), p, r, f))
    mp, mr, mf = _prf(int(tp.sum()), int(fp.sum()), int(fn.sum()))
    macro = float(np.mean([s.f1 for s in per_label]))
    return Scores(micro_f1=mf, macro_f1=macro, micro_precision=mp, micro_recall=mr, per_label=per_label)


def format_scores(scores: Scores) -> str:
    """A Markdown table: one row per label (support, P, R, F1) and the micro / macro rows."""
    lines = ["| label | support | precision | recall | F1 |", "| --- | ---: | ---: | ---: | ---: |"]
    for s in scores.per_label:
        lines.append(f"| {s.label} | {s.support} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} |")
    lines.append(f"| **micro** | | {scores.micro_precision:.3f} | {scores.micro_recall:.3f} | {scores.micro_f1:.3f} |")
    lines.append(f"| **macro** | | | | {scores.macro_f1:.3f} |")
    return "\n".join(lines)
