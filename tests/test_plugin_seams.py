"""Errors and switches at the plug-in seams: a bad key inside a plug-in section names its file, a missing plug-in
entry point says how to fix it, `--set section=null` removes a section, and a saliency failure keeps the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctagrg.config import ConfigError, apply_overrides, from_dict, load_config
from ctagrg.labels import LABELS


def _visual_config(tmp_path: Path, extras: dict) -> Path:
    folder = tmp_path / "visual"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "ctagrg-step1", "labels": list(LABELS), "encoder": "cnn3d",
        "heads": {"variant": "halves", "in_dim": 3752}, "extras": extras}))
    return folder


def test_a_bad_extras_key_in_a_packaged_config_names_the_file(tmp_path):
    from ctagrg.models.step1 import Step1Model

    folder = _visual_config(tmp_path, {"cnn3d": {"bogus": 1}, "halves": {}})
    with pytest.raises(ConfigError) as err:
        Step1Model.config_from_dir(folder)
    assert str(folder / "config.json") in str(err.value), str(err.value)


def test_a_bad_postprocess_key_in_reporter_json_names_the_file():
    from ctagrg.generation.reporter import ReporterConfig

    with pytest.raises(ConfigError) as err:
        from_dict(ReporterConfig, {"postprocess": {"nodule_size": {"bogus": 1}}}, where="model/reporter.json")
    assert "model/reporter.json" in str(err.value), str(err.value)


def test_missing_plugin_entry_point_says_how_to_fix(tmp_path, monkeypatch):
    """An editable install made before [project.entry-points."ctagrg.plugins"] existed has no entry point."""
    import ctagrg.models.registry as registry
    import ctagrg.utils.plugins as plugins

    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    monkeypatch.setattr(plugins, "_loaded", set())
    monkeypatch.setattr(registry, "HEADS", {})
    monkeypatch.setattr(registry, "ENCODERS", {k: v for k, v in registry.ENCODERS.items()
                                               if k in registry.BUILTIN_ENCODERS})
    from ctagrg.models.step1 import Step1Model

    folder = _visual_config(tmp_path, {"cnn3d": {}, "halves": {}})
    with pytest.raises(ConfigError) as err:
        Step1Model.config_from_dir(folder)
    message = str(err.value)
    assert str(folder / "config.json") in message and "pip install" in message, message


def test_set_null_removes_a_plugin_section():
    """Switching the demo classifier to the published heads with --set is refused: the section cannot be removed."""
    from ctagrg.training.task import get_task

    cfg = load_config(get_task("classifier").Config, Path(__file__).parents[1] / "configs" / "demo" / "classifier.yaml")
    cfg = apply_overrides(cfg, ["model.heads.variant=ctagrg", "model.extras.halves=null"])
    assert "halves" not in cfg.model.extras, cfg.model.extras["halves"]
    # a training extension switched off for an ablation
    assert "nodule_size" in cfg.extras and "nodule_size" not in apply_overrides(cfg, ["extras.nodule_size=null"]).extras


def test_a_saliency_failure_does_not_cost_the_report(monkeypatch, tmp_path, gpt2_tokenizer_dir) -> None:
    import numpy as np

    import ctagrg.generation.saliency as saliency
    from ctagrg.generation.inference import InferenceItem, run_inference
    from ctagrg.generation.reporter import Reporter as R

    model = _tiny_model(tmp_path, gpt2_tokenizer_dir)
    reporter = R.from_pretrained(model)
    volume = np.random.default_rng(0).normal(0, 0.2, tuple(reporter.preprocess.shape)).astype(np.float32)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(saliency, "saliency_maps", out_of_memory)
    [[plain]] = list(run_inference(reporter, [InferenceItem("a", volume)]))
    assert plain.report is not None and plain.report.detected, "the test volume must have a finding"
    [[result]] = list(run_inference(reporter, [InferenceItem("a", volume)], saliency=True))
    assert result.report is not None and result.report.text == plain.report.text, result.error
    assert result.report.saliency == {}
    assert "saliency: not computed (RuntimeError: CUDA out of memory" in result.report.warnings[-1]


def _tiny_model(tmp_path: Path, tokenizer_dir: Path) -> Path:
    """The tiny packaged model of tests/test_report_cli.py, with every label detected."""
    import torch
    from test_reporter import SHAPE, tiny_decoder, tiny_visual

    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.decoder import load_tokenizer

    torch.manual_seed(0)
    reporter = Reporter(tiny_visual(), tiny_decoder(), load_tokenizer(tokenizer_dir), [0.0] * 18,
                        PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE),
                        ReporterConfig(generation=GenerationSettings(max_new_tokens=4)))
    return reporter.save_pretrained(tmp_path / "model")
