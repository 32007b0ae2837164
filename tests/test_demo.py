"""Demo orchestration: stage markers, skipping, --force, failures naming the stage, override routing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctagrg import demo
from ctagrg.demo import (
    STAGE_OUTPUTS,
    STAGES,
    DemoConfig,
    DemoError,
    Stage,
    marker,
    run_stages,
    stage_overrides,
    stages_to_run,
)


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
    # a finished stage's outputs would be reused (the loop resumes a finished run and trains nothing; evaluate skips
    # predictions it has): a forced rerun removes them, an interrupted stage (no marker) keeps them to resume
    (tmp_path / "eval" / "predictions.jsonl").parent.mkdir()
    (tmp_path / "eval" / "predictions.jsonl").write_text("{}\n")
    (tmp_path / "runs" / "decoder" / "last").mkdir(parents=True)
    (tmp_path / "runs" / "pretrain" / "last").mkdir(parents=True)
    logs: list[str] = []
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path), force="decoder"), logs.append)
    assert calls == ["decoder", "package", "evaluate"]
    assert not (tmp_path / "runs" / "decoder").exists() and (tmp_path / "runs" / "pretrain" / "last").is_dir()
    assert set(STAGE_OUTPUTS) == set(STAGES)
    assert any("removed" in line and "decoder" in line for line in logs) and not (tmp_path / "eval").exists()
    calls.clear()
    marker(tmp_path, "classifier").unlink()
    (tmp_path / "runs" / "classifier" / "last").mkdir(parents=True)
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path)), lambda s: None)
    assert calls == ["classifier"] and (tmp_path / "runs" / "classifier" / "last").is_dir()
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


TINY_CONFIGS = {
    "preprocess.yaml": "spacing: [8.0, 4.0, 4.0]\nshape: [12, 32, 32]\n",
    "pretrain.yaml": """
train: {epochs: 1, batch_size: 4, lr: 1.0e-3, tensorboard: false, log_every: 1}
model:
  ctnet:
    input_shape: [12, 32, 32]
    trunk: {width: 4, layers: [1, 1, 1, 1]}
    reducer_channels: [4, 4, 4]
    reducer_kernels: [[3, 1, 1], [3, 1, 1], [1, 1, 1]]
    reducer_strides: [[3, 1, 1], [3, 1, 1], [1, 1, 1]]
    embed_dim: 32
  heads: {in_dim: 32, embed_dim: 16, classifier_hidden: 8, pretrain_hidden: [8, 8]}
""",
    "decoder.yaml": """
train: {epochs: 1, batch_size: 8, optimizer: adamw, lr: 1.0e-3, tensorboard: false, log_every: 1}
model:
  n_layer: 1
  n_embd: 32
  n_head: 4
  n_positions: 64
  freeze_gpt2: false
  conditioning: {input_dim: 0, hidden_dims: [32], output_dim: 32}
pairs: present
target: {max_tokens: 20}
generation: {strategy: greedy, max_new_tokens: 8}
""",
}


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every real stage on 16 tiny phantoms with tiny models: the wiring between the parts works, the packaged
    model loads, and a rerun skips every stage."""
    import torch

    configs = tmp_path / "configs"
    configs.mkdir()
    for name, text in TINY_CONFIGS.items():
        (configs / name).write_text(text)
    (configs / "classifier.yaml").write_text(TINY_CONFIGS["pretrain.yaml"])
    out = tmp_path / "demo"
    cfg = DemoConfig(out_dir=str(out), quick=True, n_volumes=16, threads=1, configs=str(configs),
                     phantom_size="tiny", overrides=["decoder.train.epochs=1"])
    torch.set_num_threads(1)
    assert demo.main(cfg) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["meta"]["failed"] == 0 and metrics["meta"]["evaluated"] >= 1
    assert "Headline metrics" in printed and "clinical.micro_f1" in printed
    assert printed.count("generated:") == min(3, metrics["meta"]["evaluated"])
    assert {"classification.macro_auroc", "nlg.bleu_4", "grounding.side_accuracy"} <= set(metrics["headline"])
    from ctagrg.generation.reporter import Reporter

    reporter = Reporter.from_pretrained(out / "model")
    assert "ctagrg phantom --n 16 --seed 0 --size tiny" in (out / "model" / "README.md").read_text()
    assert len(reporter.tokenizer) == json.loads(marker(out, "embeddings").read_text())["vocab_size"]
    assert all(marker(out, s).is_file() for s in STAGES)
    # every training stage trained on train and chose on valid (the names next to each run); test: evaluate's alone
    from ctagrg.training.embedding_cache import load_embedding_cache

    for stage in ("pretrain", "classifier", "decoder"):
        record = out / "runs" / stage / "splits"
        assert {n.split("_")[0] for n in (record / "train.txt").read_text().split()} == {"train"}
        assert {n.split("_")[0] for n in (record / "valid.txt").read_text().split()} == {"valid"}
    assert not [n for n in load_embedding_cache(out / "embeddings").names if n.startswith("test_")]
    logs: list[str] = []
    run_stages(demo.build_stages(), cfg, logs.append)
    assert all("skipped" in line for line in logs)


def test_a_folder_of_other_settings_is_not_reused(tmp_path: Path) -> None:
    """`make demo-quick` then `make demo` into one folder would skip every stage and print the quick run's results
    as the full demo's: refused with a message naming the difference, unless --force phantoms starts over."""
    calls: list[str] = []
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path), quick=True), lambda s: None)
    assert json.loads((tmp_path / "stages" / "settings.json").read_text())["n_volumes"] == 150
    with pytest.raises(DemoError, match=r"holds a demo run with other settings \(preset 'quick' there, 'full' now, "
                                        r"n_volumes 150 there, 600 now, .*--force phantoms"):
        run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path)), lambda s: None)
    calls.clear()
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path), quick=True), lambda s: None)  # same: resumes
    assert calls == []
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path), force="phantoms"), lambda s: None)
    assert calls == list(STAGES)
    assert json.loads((tmp_path / "stages" / "settings.json").read_text())["n_volumes"] == 600


def test_a_folder_of_an_earlier_design_is_not_reused(tmp_path: Path) -> None:
    """A folder made before the demo's design changed (its settings.json without, or with another, design) holds
    phantoms or an encoder this version cannot reuse: refused, naming the design."""
    calls: list[str] = []
    run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path), quick=True), lambda s: None)
    path = tmp_path / "stages" / "settings.json"
    old = json.loads(path.read_text())
    assert old["design"] == demo.DEMO_DESIGN
    del old["design"]
    path.write_text(json.dumps(old))
    with pytest.raises(DemoError, match=rf"other settings \(design None there, '{demo.DEMO_DESIGN}' now\)"):
        run_stages(_stages(calls), DemoConfig(out_dir=str(tmp_path), quick=True), lambda s: None)


def test_the_committed_demo_configs_build_their_models():
    """configs/demo's pretraining and step-1 configs agree with themselves (heads.in_dim is the encoder's
    embedding width, the two encoders are the same) and both models run on a demo-shaped volume."""
    import torch

    from ctagrg.config import load_config
    from ctagrg.models.step1 import PretrainModel, Step1Model
    from ctagrg.training.visual_tasks import ClassifierTaskConfig, PretrainTaskConfig

    configs = Path(__file__).resolve().parents[1] / "configs" / "demo"
    pre = load_config(PretrainTaskConfig, configs / "pretrain.yaml", [])
    cls = load_config(ClassifierTaskConfig, configs / "classifier.yaml", [])
    assert pre.model.encoder == cls.model.encoder == "cnn3d"
    # step 1 loads pretraining's encoder weights
    assert pre.model.extras["cnn3d"] == cls.model.extras["cnn3d"]
    assert pre.model.encoder_config() == cls.model.encoder_config()
    volume = torch.full((1, 1, *pre.model.encoder_config().input_shape), -0.449)
    volume[0, 0, 16:48, 32:96, 32:96] = 0.0  # something other than air
    with torch.no_grad():
        assert PretrainModel(pre.model).eval()(volume)["logits"].shape == (1, 18)
        assert Step1Model(cls.model).eval()(volume)["logits"].shape == (1, 18)
