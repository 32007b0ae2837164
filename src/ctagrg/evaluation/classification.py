"""Per-label classification metrics for the 18 abnormalities, and the threshold rule used to pick detections.

Inputs are NumPy arrays: ``labels`` (N, L) in {0, 1}, ``probs`` (N, L) in [0, 1] (sigmoid of the logits).
AUROC is scikit-learn's; a label with only one class in ``labels`` has no AUROC (NaN) and is left out of the macro
mean, which is reported with the number of labels it averages.

Threshold rule (:func:`max_f1_threshold`): predict positive when ``prob >= t``. Among the distinct predicted
probabilities, take the candidate with the highest F1; ties go to the **highest** threshold (fewer false positives
for the same F1). The threshold returned is the midpoint between that probability and the next lower distinct
one, so scores that fall between validation scores are treated consistently. A label with no positive in the
validation set gets ``default`` (0.5) and F1 NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ctagrg.labels import LABELS


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 2:
        raise ValueError(f"labels and probs must both be (N, L); got {labels.shape} and {probs.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return labels, probs


def auroc_per_label(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(L,) AUROC per label; NaN where a label has a single class."""
    from sklearn.metrics import roc_auc_score

    labels, probs = _check(labels, probs)
    out = np.full(labels.shape[1], np.nan)
    for j in range(labels.shape[1]):
        if 0 < labels[:, j].sum() < len(labels):
            out[j] = roc_auc_score(labels[:, j], probs[:, j])
    return out


def prf(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label precision, recall, F1 of 0/1 ``preds`` (0 where undefined, as sklearn's zero_division=0)."""
    tp = (labels * preds).sum(0)
    fp = ((1 - labels) * preds).sum(0)
    fn = (labels * (1 - preds)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return precision, recall, f1


def max_f1_threshold(y: np.ndarray, p: np.ndarray, default: float = 0.5) -> tuple[float, float]:
    """(threshold, F1 at it) for one label by the rule in the module docstring."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    n_pos = y.sum()
    if n_pos == 0:
        return default, float("nan")
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    last = np.r_[ps[1:] != ps[:-1], True]  # end of each run of equal scores: predictions change only there
    tp = np.cumsum(ys)[last]
    k = np.arange(1, len(ys) + 1)[last]  # number predicted positive at threshold = this score
    f1 = 2 * tp / (k + n_pos)
    best = int(np.flatnonzero(f1 == f1.max())[0])  # first = highest threshold among ties
    cand = ps[last]
    lower = cand[best + 1] if best + 1 < len(cand) else cand[best] - 1e-6
    return float((cand[best] + lower) / 2), float(f1[best])


def select_thresholds(labels: np.ndarray, probs: np.ndarray, default: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(L,) thresholds and (L,) validation F1 at them, one label at a time with :func:`max_f1_threshold`."""
    labels, probs = _check(labels, probs)
    pairs = [max_f1_threshold(labels[:, j], probs[:, j], default) for j in range(labels.shape[1])]
    return np.array([t for t, _ in pairs]), np.array([f for _, f in pairs])


def classification_report(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | float = 0.5,
                          names: Sequence[str] = LABELS) -> dict:
    """Per-label AUROC/precision/recall/F1/support/prevalence plus macro averages, as plain data.

    Returns ``{"per_label": {name: {...}}, "macro": {"auroc", "auroc_labels", "precision", "recall", "f1"},
    "micro": {"precision", "recall", "f1"}}``.
    """
    labels, probs = _check(labels, probs)
    thr = np.broadcast_to(np.asarray(thresholds, np.float64), (labels.shape[1],))
    preds = (probs >= thr).astype(np.float64)
    auc = auroc_per_label(labels, probs)
    precision, recall, f1 = prf(labels, preds)
    mp, mr, mf = prf(labels.reshape(-1, 1), preds.reshape(-1, 1))
    per_label = {
        name: {"auroc": float(auc[j]), "precision": float(precision[j]), "recall": float(recall[j]),
               "f1": float(f1[j]), "threshold": float(thr[j]), "support": int(labels[:, j].sum()),
               "prevalence": float(labels[:, j].mean())}
        for j, name in enumerate(names)
    }
    valid = ~np.isnan(auc)
    macro = {"auroc": float(auc[valid].mean()) if valid.any() else float("nan"), "auroc_labels": int(valid.sum()),
             "precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())}
    return {"per_label": per_label, "macro": macro,
            "micro": {"precision": float(mp[0]), "recall": float(mr[0]), "f1": float(mf[0])}}


def markdown_table(report: dict) -> str:
    """The per-label part of :func:`classification_report` as a Markdown table (for docs and run folders)."""
    rows = ["| label | AUROC | F1 | precision | recall | threshold | positives |", "|---|---|---|---|---|---|---|"]
    for name, m in report["per_label"].items():
        rows.append(f"| {name} | {m['auroc']:.3f} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                    f"{m['threshold']:.3f} | {m['support']} |")
    mac = report["macro"]
    rows.append(f"| **macro** | **{mac['auroc']:.3f}** | **{mac['f1']:.3f}** | {mac['precision']:.3f} | "
                f"{mac['recall']:.3f} | | |")
    return "\n".join(rows) + "\n"
