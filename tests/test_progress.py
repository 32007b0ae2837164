"""Progress off a terminal: timestamped done/total/rate/ETA lines at a bounded interval; --quiet silences them."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from ct_fixtures import phantom_hu, write_nifti

from ctagrg.cli.main import main
from ctagrg.utils.progress import ProgressLines, format_duration, progress, progress_mode

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
LINE = re.compile(rf"^{STAMP} INFO ctagrg\.progress: preprocess: (\d+)/3 \((\d+)%\), [\d.e+]+ scans/s, "
                  r"elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d$")


def test_lines_every_interval_with_done_total_rate_eta(caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 10.0, 30.0, 70.0, 80.0, 150.0])  # start, then after each of 5 items
    monkeypatch.setattr("ctagrg.utils.progress.time.monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger="ctagrg")
    items = list(ProgressLines(range(5), desc="work", unit="scans", interval=60.0))
    assert items == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records if r.name == "ctagrg.progress"]
    # 70 s after the start (item 3) and the end (item 5, 80 s after the last line); not items 1, 2, 4
    assert lines == ["work: 3/5 (60%), 0.0429 scans/s, elapsed 0:01:10, ETA 0:00:47",
                     "work: 5/5 (100%), 0.0333 scans/s, elapsed 0:02:30, ETA 0:00:00"]


def test_a_short_loop_writes_nothing_and_an_unknown_total_has_no_eta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ctagrg")
    list(ProgressLines(range(3), desc="short", interval=60.0))
    assert not caplog.records
    list(ProgressLines(iter(range(2)), desc="open", interval=0.0))
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["open: 1 done", "open: 2 done"]
    assert format_duration(3725.4) == "1:02:05" and format_duration(float("nan")) == "?"


def test_mode_from_environment_terminal_and_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTAGRG_PROGRESS", raising=False)
    assert progress_mode() == "lines"  # pytest's captured stderr is not a terminal
    for value, mode in (("bar", "bar"), ("1", "bar"), ("0", "lines"), ("off", "off")):
        monkeypatch.setenv("CTAGRG_PROGRESS", value)
        assert progress_mode() == mode
    monkeypatch.setenv("RANK", "1")
    assert progress_mode() == "off" and list(progress([1, 2])) == [1, 2]
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("CTAGRG_PROGRESS_INTERVAL", "soon")
    monkeypatch.setenv("CTAGRG_PROGRESS", "lines")
    with pytest.raises(ValueError, match="CTAGRG_PROGRESS_INTERVAL: expected seconds >= 0, got 'soon'"):
        progress([1])


def _scans(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k in range(3):
        write_nifti(folder / f"s{k}.nii.gz", phantom_hu((20, 20, 12), seed=k), np.diag([2.0, 2.0, 4.0, 1.0]))
    return folder


def test_preprocess_logs_timestamped_progress_lines_and_quiet_silences_them(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTAGRG_PROGRESS", raising=False)
    monkeypatch.setenv("CTAGRG_PROGRESS_INTERVAL", "60")  # main() sets it from --progress-interval
    scans = _scans(tmp_path / "in")
    common = ["preprocess", str(scans), "--set", "shape=[8,16,16]", "--set", "spacing=[4.0,2.0,2.0]"]
    assert main([*common, "--out", str(tmp_path / "a"), "--progress-interval", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    progress_lines = [LINE.match(x) for x in err if "ctagrg.progress" in x]
    assert all(progress_lines) and [(int(m[1]), int(m[2])) for m in progress_lines] == [(1, 33), (2, 67), (3, 100)]
    assert main(["--quiet", *common, "--out", str(tmp_path / "b"), "--progress-interval", "0"]) == 0
    captured = capsys.readouterr()
    assert " INFO " not in captured.err and captured.err == ""
    assert "3 done" in captured.out  # the command's result is still printed
    # --log-level warning after the subcommand's name, as --quiet: no info lines
    assert main([*common, "--out", str(tmp_path / "c"), "--log-level", "warning", "--progress-interval", "0"]) == 0
    assert " INFO " not in capsys.readouterr().err
