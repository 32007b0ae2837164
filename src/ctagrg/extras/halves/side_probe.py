"""The side probe of a model with lateral halves (the demo's ``halves`` heads): for each finding whose side is
known, does the half that holds it score higher? Used by the phantom benchmarks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ctagrg.evaluation.grounding import wilson_interval
from ctagrg.labels import LABEL_INDEX, LATERALISED, NUM_LABELS


def half_side_probe(half_logits: Any, findings: Iterable[Mapping[str, Any]],
                    labels: Iterable[str] = LATERALISED) -> list[dict[str, Any]]:
    """The side probe of a model with lateral halves, for one volume: for each finding of ``labels`` whose side is
    "left" or "right", is the higher of its label's two half logits on that side?

    Args:
        half_logits: (2, 18) array-like: row 0 the right half's logits, row 1 the mirrored left half's
            (``PretrainModel``'s ``half_logits`` for one volume).
        findings: the volume's ground-truth findings (:func:`load_ground_truth`).

    Returns one dict per such finding: ``label``, ``side`` (the truth), ``said`` (the probe's; None when the two
    logits are equal, which counts as wrong), ``correct`` and
    ``size_mm`` (None when the truth has none). A volume with one-sided findings of a label on both sides counts
    each, so at most one of them can be right: the probe is a two-way choice."""

    rows = [[float(v) for v in row] for row in half_logits]
    if len(rows) != 2 or any(len(row) != NUM_LABELS for row in rows):
        raise ValueError(f"half_side_probe: expected (2, {NUM_LABELS}) half logits, got "
                         f"{[len(row) for row in rows]} values per row")
    wanted = set(labels)
    out = []
    for f in findings:
        if f.get("label") not in wanted or f.get("side") not in ("left", "right"):
            continue
        i = LABEL_INDEX[f["label"]]
        right, left = rows[0][i], rows[1][i]
        said = "right" if right > left else "left" if left > right else None  # a tie names no side: wrong
        size = f.get("size_mm")
        out.append({"label": f["label"], "side": f["side"], "said": said, "correct": said == f["side"],
                    "size_mm": float(size) if size else None})
    return out


def side_probe_summary(entries: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy of :func:`half_side_probe` entries per label and over all (key ``"all"``): ``correct``, ``n``,
    ``accuracy`` (nan when n = 0) and ``ci95`` (:func:`wilson_interval`)."""
    groups: dict[str, list[bool]] = {"all": []}
    for e in entries:
        groups.setdefault(e["label"], []).append(bool(e["correct"]))
        groups["all"].append(bool(e["correct"]))
    out = {}
    for name, hits in groups.items():
        correct, n = sum(hits), len(hits)
        out[name] = {"correct": correct, "n": n, "accuracy": correct / n if n else math.nan,
                     "ci95": list(wilson_interval(correct, n))}
    return out
