"""``thresholds.json``: one decision threshold per label, chosen on validation data, saved beside the model.

The one reader and writer of the file, for training (which writes it) and inference (which reads it). A label is
detected when its probability (the sigmoid of its logit) is ``>= threshold``. Written by training::

    {"rule": "max_f1", "labels": [...18 names...], "thresholds": {name: float},
     "validation": {name: {"f1": float|null, "positives": int}}, "n_validation": int}

Read: that file, a folder holding it, or JSON holding a list of 18 numbers or a ``{label: number}`` mapping, either
one possibly under a ``"thresholds"`` key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctagrg.config import ConfigError
from ctagrg.labels import LABELS, NUM_LABELS
from ctagrg.utils.atomic import write_json_atomic

FILENAME = "thresholds.json"


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / FILENAME if path.is_dir() else path


def read_thresholds(path: str | Path) -> list[float]:
    """18 probability thresholds in ``LABELS`` order; FileNotFoundError or ConfigError naming the file."""
    path = _file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: thresholds file not found")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read thresholds ({exc})") from None
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"]
    if isinstance(data, dict):
        missing = [label for label in LABELS if label not in data]
        if missing:
            raise ConfigError(f"{path}: no threshold for {', '.join(missing)}")
        data = [data[label] for label in LABELS]
    if not isinstance(data, list) or len(data) != NUM_LABELS or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
        raise ConfigError(f"{path}: expected 18 numeric thresholds (a list or a label → value mapping)")
    return [float(v) for v in data]


def read_threshold_file(path: str | Path) -> dict[str, Any]:
    """The whole JSON object of a thresholds.json (or the folder holding one), to add fields and save again."""
    path = _file(path)
    thresholds = read_thresholds(path)  # checks it
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {"thresholds": dict(zip(LABELS, thresholds, strict=True))}


def find_thresholds(step1_dir: str | Path) -> Path | None:
    """thresholds.json in the step-1 checkpoint folder or its parent (the run folder), if any."""
    step1_dir = Path(step1_dir)
    for candidate in (step1_dir / FILENAME, step1_dir.parent / FILENAME):
        if candidate.is_file():
            return candidate
    return None


def save_thresholds(path: str | Path, content: dict[str, Any]) -> Path:
    """Write ``content`` atomically to ``path`` (a folder: ``path/thresholds.json``)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / FILENAME
    write_json_atomic(path, content)
    return path
