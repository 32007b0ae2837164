"""Clinical efficacy: label generated reports with a report labeler and compare with reference labels.

Counting is report-level: for each report and each of the 18 labels, the generated report either asserts the
abnormality (1) or not (0), and so does the reference. From those (N, 18) binary matrices:

- **micro** precision/recall/F1 pool TP, FP and FN over all reports and labels;
- **macro** averages the per-label precision/recall/F1 over the labels that occur in the references
  (support > 0); a label with no reference positive has no defined recall and is left out (``macro_labels``
  says how many were averaged);
- **per label**: precision, recall, F1, support (reference positives) and predicted positives.

A ratio with a zero denominator is 0 (sklearn's ``zero_division=0``); e.g. precision of a label never predicted.

Which reference labels are compared is the evaluation protocol's choice (:mod:`ctagrg.evaluation.protocols`):
the same labeler on the reference reports (``ctagrg``) or the dataset's label CSV (``vlm3d``, which macro-averages
over all 18 labels instead, :mod:`ctagrg.evaluation.vlm3d`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ctagrg.labels import LABELS, NUM_LABELS


def _check_binary(name: str, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != NUM_LABELS:
        raise ValueError(f"{name}: expected shape (N, {NUM_LABELS}), got {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: expected 0/1 labels, found values {np.unique(arr)[:5].tolist()}")
    return arr.astype(bool)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def prf_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from counts of any (matching) shape; 0 where undefined."""
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


def confusion_counts(pred: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per-report, per-label TP/FP/FN indicators, each (N, 18) int64 (what the bootstrap resamples)."""
    pred = _check_binary("generated labels", pred)
    ref = _check_binary("reference labels", ref)
    if pred.shape != ref.shape:
        raise ValueError(f"generated labels {pred.shape} and reference labels {ref.shape} differ in shape")
    return {"tp": (pred & ref).astype(np.int64), "fp": (pred & ~ref).astype(np.int64),
            "fn": (~pred & ref).astype(np.int64)}


def summarise_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, float]:
    """Micro and macro P/R/F1 from per-label totals ``tp, fp, fn`` of shape (..., 18); floats for 1-D input."""
    p, r, f = prf_from_counts(tp, fp, fn)
    micro_p, micro_r, micro_f = prf_from_counts(tp.sum(-1), fp.sum(-1), fn.sum(-1))
    present = (tp + fn) > 0
    n_present = present.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = {k: np.where(n_present > 0, (v * present).sum(-1) / np.maximum(n_present, 1), 0.0)
                 for k, v in (("precision", p), ("recall", r), ("f1", f))}
    return {"micro_precision": micro_p, "micro_recall": micro_r, "micro_f1": micro_f,
            "macro_precision": macro["precision"], "macro_recall": macro["recall"], "macro_f1": macro["f1"]}


def clinical_metrics(pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Micro, macro and per-label P/R/F1 of generated-report labels ``pred`` against ``ref``, both (N, 18) 0/1.

    Returns a JSON-ready dict: ``micro_*``, ``macro_*``, ``macro_labels`` (labels averaged), ``n_reports`` and
    ``per_label`` (label -> precision, recall, f1, support, predicted).
    """
    counts = confusion_counts(pred, ref)
    tp, fp, fn = (counts[k].sum(0) for k in ("tp", "fp", "fn"))
    out: dict[str, Any] = {k: float(v) for k, v in summarise_counts(tp, fp, fn).items()}
    out["macro_labels"] = int(((tp + fn) > 0).sum())
    out["n_reports"] = int(counts["tp"].shape[0])
    p, r, f = prf_from_counts(tp, fp, fn)
    out["per_label"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
               "support": int(tp[i] + fn[i]), "predicted": int(tp[i] + fp[i])}
        for i, name in enumerate(LABELS)
    }
    return out


def label_texts(texts: Sequence[str], labeler_spec: str = "rules") -> np.ndarray:
    """Label report texts with ``ctagrg.text.labeler.get_labeler(labeler_spec)``: (N, 18) int 0/1."""
    from ctagrg.text.labeler import get_labeler

    labeler = get_labeler(labeler_spec)
    labels = np.asarray(labeler.label_reports(list(texts)))
    if labels.shape != (len(texts), NUM_LABELS):
        raise ValueError(f"labeler {labeler_spec!r} returned shape {labels.shape}, expected ({len(texts)}, "
                         f"{NUM_LABELS})")
    return labels.astype(np.int64)
