"""Preemption: a stop signal sent to a `ctagrg train` subprocess stops it after the current optimizer step with
exit status 75 and a complete last/; the resumed run ends with the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_report_cli import model_dir  # noqa: F401 - the tiny packaged model fixture
from test_training_loop import read_rows

from ctagrg.training.checkpoint import atomic_dir, load_train_state, recover_dir
from ctagrg.utils.signals import EXIT_STOPPED, parse_signals

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

# A `ctagrg train toy` entry point: the loop tests' ToyTask, marking a file once it reaches a given micro-batch or
# validation and then sleeping, so that the test's signal lands in the middle of the run.
SCRIPT = '''
import os, sys, time
from pathlib import Path
sys.path[:0] = [{tests!r}, {here!r}]
from test_training_loop import ToyTask
from ctagrg.training.task import TASKS

class SlowToyTask(ToyTask):
    def training_step(self, model, batch):
        out = super().training_step(model, batch)
        if os.environ.get("TOY_MARK_STEP") == str(self.calls):
            Path(os.environ["TOY_MARK"]).touch()
        time.sleep(float(os.environ.get("TOY_SLEEP", "0")))
        return out

    def validate(self, model, loader):
        if os.environ.get("TOY_MARK_VALID"):
            Path(os.environ["TOY_MARK"]).touch()
            time.sleep(float(os.environ["TOY_MARK_VALID"]))
        return super().validate(model, loader)

TASKS["toy"] = "toyrun:SlowToyTask"
if __name__ == "__main__":
    from ctagrg.cli.main import main
    sys.exit(main(sys.argv[1:]))
'''
SETTINGS = ["train.epochs=3", "train.global_batch_size=8", "train.batch_size=4", "train.lr=0.05",
            "train.log_every=1", "train.tensorboard=false", "train.device=cpu"]  # 9 steps, 3 per epoch


def _command(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    script = tmp_path / "toyrun.py"
    if not script.is_file():
        script.write_text(SCRIPT.format(tests=str(TESTS), here=str(tmp_path)))
    sets = [a for s in [*SETTINGS, f"train.out_dir={out}"] for a in ("--set", s)]
    return [sys.executable, str(script), *extra, "train", "toy", *sets]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               CTAGRG_PROGRESS="lines", **extra)
    return env


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=240)


def _signal_when_marked(cmd: list[str], mark: Path, sig: signal.Signals, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, env=_env(TOY_MARK=str(mark), **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mark.exists(), f"the run never reached the mark: {proc.communicate(timeout=60)[1][-3000:]}"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("full")
    run = _run(_command(tmp, tmp / "run"))
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["SIGTERM mid-epoch", "SIGUSR1 mid-epoch", "SIGUSR2 configured",
                                  "SIGUSR1 in validation"])
def test_stop_signal_then_resume_equals_uninterrupted_run(tmp_path: Path, uninterrupted: Path, case: str) -> None:
    name = case.split()[0]
    extra = ["--stop-signals", "SIGUSR2"] if "configured" in case else []
    where = {"TOY_MARK_VALID": "30"} if "validation" in case else {"TOY_MARK_STEP": "5", "TOY_SLEEP": "0.2"}
    out = tmp_path / "run"
    cut = _signal_when_marked(_command(tmp_path, out, *extra), tmp_path / "mark", signal.Signals[name], **where)
    assert cut.returncode == EXIT_STOPPED, cut.stderr[-3000:]
    assert f"stopped on {name}" in cut.stderr and "run the same command again to resume" in cut.stderr
    state = load_train_state(out / "last")
    if "validation" in case:  # aborted in epoch 1's validation: last/ is epoch 1's trained state, to validate
        assert (state["step"], state["epoch"], state["micro"]) == (3, 0, 6)
        assert "during validation" in cut.stderr
    else:  # after the optimizer step in progress (micro-batch 5 belongs to step 3): 2 micro-batches per step
        assert 3 <= state["step"] < 9 and state["step"] == 3 * state["epoch"] + state["micro"] // 2
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no partial last/
    resumed = _run(_command(tmp_path, out, *extra))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {out / 'last'}: step {state['step']}" in resumed.stderr
    for folder in ("last", "best"):
        a, b = load_file(uninterrupted / folder / "model.safetensors"), load_file(out / folder / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    for phase, name in (("train", "loss"), ("train", "lr"), ("valid", "score")):  # no missing or repeated rows
        assert read_rows(out / "metrics.csv", phase, name) == read_rows(uninterrupted / "metrics.csv", phase, name)


def test_without_handling_a_signal_not_in_the_list_kills(tmp_path: Path) -> None:
    cut = _signal_when_marked(_command(tmp_path, tmp_path / "run", "--stop-signals", "SIGUSR2"), tmp_path / "mark",
                              signal.SIGUSR1, TOY_MARK_STEP="2", TOY_SLEEP="0.2")
    assert cut.returncode == -signal.SIGUSR1  # the default action: no clean stop promised for other signals


def test_atomic_dir_replaces_a_folder_whole_and_recovers_a_cut_swap(tmp_path: Path) -> None:
    last = tmp_path / "last"
    with atomic_dir(last) as d:
        (d / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(last) as d:
        (d / "a.txt").write_text("2")
        raise RuntimeError("killed while writing")
    assert (last / "a.txt").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    with atomic_dir(last) as d:
        (d / "b.txt").write_text("2")
    assert sorted(p.name for p in last.iterdir()) == ["b.txt"]
    os.replace(last, tmp_path / ".last.previous")  # a crash between the swap's two renames
    recover_dir(last)
    assert (last / "b.txt").read_text() == "2"


def test_parse_signals() -> None:
    assert parse_signals("SIGTERM, usr1,") == [signal.SIGTERM, signal.SIGUSR1]
    assert parse_signals("") == []
    with pytest.raises(ValueError, match="'SIGNOPE' is not a signal name"):
        parse_signals("SIGNOPE")
    with pytest.raises(ValueError, match="SIGKILL cannot be caught"):
        parse_signals("KILL")


def _stop_after_first_progress_line(cmd: list[str], tmp_path: Path, sig: signal.Signals, what: str
                                    ) -> tuple[int, str]:
    """Run ``cmd`` with stderr to a file (a batch job's log), send ``sig`` once a progress line of ``what`` is in
    it; return the exit status and the log."""
    log = tmp_path / f"{what}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while f"ctagrg.progress: {what}: 1/" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.02)
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, log.read_text()


@pytest.mark.slow
def test_preprocess_stops_between_volumes_with_a_complete_manifest(tmp_path: Path) -> None:
    import csv

    import numpy as np
    from ct_fixtures import phantom_hu, write_nifti

    from ctagrg.data.cache import load_cached

    scans = tmp_path / "in"
    scans.mkdir()
    for k in range(24):
        write_nifti(scans / f"s{k:02d}.nii.gz", phantom_hu((64, 64, 40), seed=k), np.diag([1.0, 1.0, 2.0, 1.0]))
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "ctagrg.cli.main", "preprocess", str(scans), "--out", str(cache),
           "--set", "shape=[32,64,64]", "--progress-interval", "0"]
    code, log = _stop_after_first_progress_line(cmd, tmp_path, signal.SIGTERM, "preprocess")
    assert code == EXIT_STOPPED, log[-3000:]
    assert "ctagrg preprocess: stopped on SIGTERM" in log
    files = sorted(p.stem for p in cache.glob("*.safetensors"))
    with open(cache / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 1 <= len(files) < 24 and sorted(r["name"] for r in rows if r["status"] == "ok") == files
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # no half-written file
    assert all(load_cached(cache / f"{name}.safetensors").shape == (32, 64, 64) for name in files)
    again = subprocess.run(cmd[:-2], env=_env(), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{24 - len(files)} done, {len(files)} already cached, 0 failed" in again.stdout


@pytest.mark.slow
def test_report_stops_between_batches_with_whole_lines_and_resumes(tmp_path: Path, model_dir: Path  # noqa: F811
                                                                   ) -> None:
    import json

    from test_report_cli import write_scan

    for k in range(40):
        write_scan(tmp_path / "scans" / f"s{k:02d}.nii.gz", k)
    out = tmp_path / "reports.jsonl"
    cmd = [sys.executable, "-m", "ctagrg.cli.main", "report", str(tmp_path / "scans"), "--model", str(model_dir),
           "--out", str(out), "--device", "cpu", "--progress-interval", "0"]
    code, log = _stop_after_first_progress_line(cmd, tmp_path, signal.SIGUSR1, "reports")
    assert code == EXIT_STOPPED, log[-3000:]
    assert f"ctagrg report: stopped on SIGUSR1: report stopped between batches; {out} holds" in log
    text = out.read_text()
    lines = [json.loads(x) for x in text.splitlines()]  # every line whole
    assert text.endswith("\n") and 1 <= len(lines) < 40 and all("report" in line for line in lines)
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    inputs = [json.loads(x)["input"] for x in out.read_text().splitlines()]
    assert len(inputs) == 40 and len(set(inputs)) == 40
