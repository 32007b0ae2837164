"""thresholds.json: the one reader and writer (training writes it, inference reads it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctagrg.config import ConfigError
from ctagrg.labels import LABELS
from ctagrg.models.thresholds_file import find_thresholds, read_threshold_file, read_thresholds, save_thresholds


def test_read_thresholds_formats(tmp_path: Path) -> None:
    values = [i / 100 for i in range(18)]
    for i, data in enumerate([values, dict(zip(LABELS, values, strict=True)), {"thresholds": values}]):
        (tmp_path / f"t{i}.json").write_text(json.dumps(data))
        assert read_thresholds(tmp_path / f"t{i}.json") == values
    (tmp_path / "bad.json").write_text(json.dumps([0.5] * 17))
    with pytest.raises(ConfigError, match="bad.json: expected 18 numeric thresholds"):
        read_thresholds(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"Cardiomegaly": 0.5}))
    with pytest.raises(ConfigError, match="partial.json: no threshold for Medical material"):
        read_thresholds(tmp_path / "partial.json")



def test_folder_missing_file_and_find(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="thresholds.json: thresholds file not found"):
        read_thresholds(tmp_path)
    best = tmp_path / "best"
    best.mkdir()
    assert find_thresholds(best) is None
    content = {"rule": "max_f1", "thresholds": {n: 0.25 for n in LABELS}}
    assert save_thresholds(tmp_path, content) == tmp_path / "thresholds.json"
    assert find_thresholds(best) == tmp_path / "thresholds.json"
    assert read_thresholds(tmp_path) == [0.25] * 18
    assert read_threshold_file(tmp_path)["rule"] == "max_f1"
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": [True] * 18}))
    with pytest.raises(ConfigError, match="expected 18 numeric thresholds"):
        read_thresholds(tmp_path)
