"""Demo orchestration: stage markers, skipping, --force, failures naming the stage, override routing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctagrg import demo
from ctagrg.demo import STAGES, DemoConfig, DemoError, Stage, marker, run_stages, stage_overrides, stages_to_run


def _stages(calls: list[str], fail: str | None = None) -> list[Stage]:
    def make(name: str):  # noqa: ANN202
        def run(out: Path, cfg: DemoConfig) -> dict:
            calls.append(name)
            if name == fail:
                raise ValueError("broken input")
            return {"stage": name}
        return run
    return [Stage(name, make(name), f"doing {name}") for name in STAGES]


def test_run_stages_writes_markers_and_skips_on_rerun(tmp_path: Path) -> None:
    cfg = DemoConfig(out_dir=str(tmp_path))
    calls: list[str] = []
    logs: list[str] = []
    seconds = run_stages(_stages(calls), cfg, logs.append)
    assert calls == list(STAGES) and set(seconds) == set(STAGES)
    assert json.loads(marker(tmp_path, "pretrain").read_text())["stage"] == "pretrain"
    assert logs[0] == f"[1/{len(STAGES)}] phantoms: doing phantoms"
    calls.clear()
    logs.clear()
    run_stages(_stages(calls), cfg, logs.append)
    assert calls == [] and all("skipped" in line for line in logs)


def test_force_reruns_stage_and_later_ones(tmp_path: Path) -> None:
    calls: list[str] = []
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path)), lambda s: None)
    calls.clear()
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path), force="decoder"), lambda s: None)
    assert calls == ["decoder", "package", "evaluate"]
    with pytest.raises(DemoError, match="unknown stage 'nope'"):
        stages_to_run(tmp_path, "nope")


def test_failure_names_stage_and_resumes_there(tmp_path: Path) -> None:
    calls: list[str] = []
    with pytest.raises(DemoError, match="stage classifier failed: ValueError: broken input"):
        run_stages(_stages(calls, fail="classifier"), DemoConfig(out_dir=str(tmp_path)), lambda s: None)
    assert not marker(tmp_path, "classifier").exists() and marker(tmp_path, "pretrain").exists()
    assert stages_to_run(tmp_path, None) == list(STAGES[STAGES.index("classifier"):])


def test_stage_overrides_routing() -> None:
    cfg = DemoConfig(overrides=["pretrain.train.lr=0.01", "decoder.train.epochs=2", "pretrain.model.x=1"])
    assert stage_overrides(cfg, "pretrain") == ["train.lr=0.01", "model.x=1"]
    assert stage_overrides(cfg, "decoder") == ["train.epochs=2"]
    assert stage_overrides(cfg, "classifier") == []


def test_presets_and_volume_override() -> None:
    assert DemoConfig(quick=True).preset.n_volumes < DemoConfig().preset.n_volumes
    assert DemoConfig(quick=True, n_volumes=12).preset.n_volumes == 12


def test_examples_text(tmp_path: Path) -> None:
    (tmp_path / "examples.json").write_text(json.dumps(
        [{"name": f"v{i}", "generated": f"gen {i}", "reference": f"ref {i}"} for i in range(5)]))
    text = demo.examples_text(tmp_path, n=3)
    assert text.count("generated:") == 3 and "--- v2" in text and "v3" not in text
