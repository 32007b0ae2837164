"""``ctagrg evaluate --runs DIR...``: mean ± sd over finished evaluations, refusing incomparable ones."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from ctagrg.evaluation.runs import aggregate_runs, summary_table


def _run(root: Path, name: str, headline: dict[str, Any], protocol: str = "ctagrg", split: str = "valid",
         labeler: str = "rules") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    meta = {"protocol": protocol, "split": split,
            "config": {"labeler": labeler, "reference_columns": ["Findings_EN"], "protocol": protocol}}
    (folder / "metrics.json").write_text(json.dumps({"headline": headline, "meta": meta}))
    return folder


def test_mean_and_sd_over_runs(tmp_path: Path) -> None:
    f1 = [0.50, 0.52, 0.47, 0.55, 0.49]
    runs = [_run(tmp_path, f"seed{i}", {"clinical.micro_f1": v, "nlg.meteor": None if i == 2 else 0.2 + i / 100})
            for i, v in enumerate(f1)]
    s = aggregate_runs(runs)
    m = s["metrics"]["clinical.micro_f1"]
    assert m["mean"] == pytest.approx(statistics.mean(f1)) and m["sd"] == pytest.approx(statistics.stdev(f1))
    assert m["n"] == 5 and m["values"] == f1
    meteor = s["metrics"]["nlg.meteor"]
    assert meteor["n"] == 4 and meteor["values"][2] is None
    assert meteor["mean"] == pytest.approx(statistics.mean([0.2, 0.21, 0.23, 0.24]))
    assert s["settings"]["protocol"] == "ctagrg" and s["settings"]["split"] == "valid"
    table = summary_table(s)
    assert f"| clinical.micro_f1 | {statistics.mean(f1):.3f} ± {statistics.stdev(f1):.3f} | 5 |" in table
    one = aggregate_runs(runs[:1])["metrics"]["clinical.micro_f1"]
    assert one["mean"] == 0.50 and one["sd"] is None


def test_incomparable_runs_are_refused(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", {"x": 1.0})
    b = _run(tmp_path, "b", {"x": 2.0}, protocol="vlm3d")
    c = _run(tmp_path, "c", {"x": 2.0}, split="test")
    d = _run(tmp_path, "d", {"x": 2.0}, labeler="radbert:/w")
    with pytest.raises(ValueError, match=rf"^runs were evaluated with different protocol: {a} \(ctagrg\), "
                                         rf"{b} \(vlm3d\)$"):
        aggregate_runs([a, b])
    with pytest.raises(ValueError, match=rf"different split: {a} \(valid\), {c} \(test\)$"):
        aggregate_runs([a, c])
    with pytest.raises(ValueError, match=r"different labeler: .* \(radbert:/w\)$"):
        aggregate_runs([a, d])
    with pytest.raises(FileNotFoundError, match=r"nowhere/metrics.json: file not found"):
        aggregate_runs([a, tmp_path / "nowhere"])
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({"headline": {}, "meta": {"split": "valid"}}))
    with pytest.raises(ValueError, match="no protocol recorded"):
        aggregate_runs([a, old])


def test_cli_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ctagrg.cli.main import main

    runs = [str(_run(tmp_path, f"r{i}", {"vlm3d.crg.CRG": 0.6 + i / 10}, protocol="vlm3d")) for i in range(3)]
    out = tmp_path / "agg"
    assert main(["evaluate", "--runs", *runs, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| vlm3d.crg.CRG | 0.700 ± 0.100 | 3 |" in printed and "3 runs, protocol vlm3d" in printed
    saved = json.loads((out / "runs_summary.json").read_text())
    assert saved["metrics"]["vlm3d.crg.CRG"]["mean"] == pytest.approx(0.7) and saved["runs"] == runs
    assert (out / "runs_summary.md").read_text().startswith("3 runs")
    other = str(_run(tmp_path, "other", {"vlm3d.crg.CRG": 0.1}))
    assert main(["evaluate", "--runs", runs[0], other, "--out", str(tmp_path / "agg2")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different protocol" in err and other in err
    assert main(["evaluate", "--runs", *runs, "--model", "m", "--out", str(out)]) == 2
    assert main(["evaluate", "--out", str(out)]) == 2
    assert "--model and --data are required" in capsys.readouterr().err
