"""Grounding on phantoms: does a generated sentence name the right side, and the right nodule size?

Phantom datasets carry the truth in ``ROOT/ground_truth/<name>.json`` (see docs/architecture.md). Two numbers:

- **side accuracy**: over findings of a lateralised label (``ctagrg.labels.LATERALISED``) that are both detected
  by the model and present in the ground truth with a side, the fraction whose generated sentence states that
  side (``side_from_text``). The expected side is the union over that label's findings: only left -> "left",
  only right -> "right", both or any bilateral finding -> "bilateral". A sentence stating no side counts as wrong.
- **nodule size within 5 mm**: over detected, present lung nodules with a true size, the fraction whose sentence
  states a size (``size_mm_from_text``) within 5 mm of the nearest true nodule size. No stated size is wrong.

False detections (detected but absent) are not counted here; the classification metrics already charge them.
The text readers are :mod:`ctagrg.text.attributes`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ctagrg.data.names import volume_stem
from ctagrg.labels import LATERALISED
from ctagrg.text.attributes import side_from_text, size_mm_from_text

SIZE_TOLERANCE_MM = 5.0
NODULE = "Lung nodule"

def expected_side(findings: Iterable[Mapping[str, Any]], label: str) -> str | None:
    """Union of the sides of ``label``'s findings (None when none of them has a side)."""
    sides = {f.get("side") for f in findings if f.get("label") == label} - {None}
    if not sides:
        return None
    if "bilateral" in sides or sides >= {"left", "right"}:
        return "bilateral"
    return sides.pop()


def load_ground_truth(ground_truth_dir: str | Path, name: str) -> list[dict[str, Any]] | None:
    """Findings of ``name`` from ``<dir>/<name>.json`` (or ``<dir>/ground_truth/<name>.json``); None if absent."""
    base = Path(ground_truth_dir)
    for path in (base / f"{name}.json", base / "ground_truth" / f"{name}.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON: {exc}") from None
            findings = data.get("findings") if isinstance(data, dict) else None
            if not isinstance(findings, list):
                raise ValueError(f"{path}: expected an object with a 'findings' list")
            return findings
    return None


def grounding_metrics(predictions: Iterable[Mapping[str, Any]], ground_truth_dir: str | Path) -> dict[str, Any]:
    """Side accuracy and nodule-size agreement of predictions (prediction-line dicts) against phantom truth.

    Returns ``side_accuracy`` and ``nodule_size_within_5mm`` (None when nothing was eligible), with the counts
    behind them (``side_n``, ``side_unstated``, ``size_n``, ``size_unstated``, ``volumes``, ``missing_truth``).
    """
    side_ok = side_n = side_unstated = size_ok = size_n = size_unstated = volumes = missing = 0
    for pred in predictions:
        if "error" in pred:
            continue
        findings = load_ground_truth(ground_truth_dir, volume_stem(pred["input"]))
        if findings is None:
            missing += 1
            continue
        volumes += 1
        for label, info in pred.get("abnormalities", {}).items():
            if not info.get("detected"):
                continue
            sentence = info.get("sentence")
            truth = expected_side(findings, label) if label in LATERALISED else None
            if truth is not None:
                stated = side_from_text(sentence)
                side_n += 1
                side_ok += stated == truth
                side_unstated += stated is None
            sizes = [float(f["size_mm"]) for f in findings if f.get("label") == label and f.get("size_mm")]
            if label == NODULE and sizes:
                stated_mm = size_mm_from_text(sentence)
                size_n += 1
                size_unstated += stated_mm is None
                size_ok += stated_mm is not None and min(abs(stated_mm - s) for s in sizes) <= SIZE_TOLERANCE_MM
    return {
        "side_accuracy": side_ok / side_n if side_n else None,
        "side_n": side_n, "side_unstated": side_unstated,
        "nodule_size_within_5mm": size_ok / size_n if size_n else None,
        "size_n": size_n, "size_unstated": size_unstated,
        "volumes": volumes, "missing_truth": missing,
    }


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for ``correct`` successes in ``n`` trials; (nan, nan) when n = 0."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: need 0 <= correct <= n, got {correct} of {n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
