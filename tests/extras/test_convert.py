"""ctagrg convert-model: a model packaged before the demo's extras became plug-ins (old visual/config.json and
reporter.json layouts) is refused with a one-line error naming the converter, and converts to a model that gives
the same reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ctagrg.cli.main import main as cli_main
from ctagrg.config import ConfigError
from ctagrg.generation.generate import GenerationSettings
from ctagrg.generation.reporter import Reporter, ReporterConfig
from ctagrg.models.decoder import load_tokenizer

SHAPE = (12, 32, 32)


def _reporter(tokenizer_dir: Path) -> Reporter:
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.models.conditioning import ConditioningConfig
    from ctagrg.models.ctnet import CTNetConfig
    from ctagrg.models.decoder import DecoderConfig, ReportDecoder
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.resnet import ResNetConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig

    torch.manual_seed(0)
    ctnet = CTNetConfig(input_shape=SHAPE, trunk=ResNetConfig(width=4, layers=(1, 1, 1, 1)),
                        reducer_channels=(4, 4, 4), reducer_kernels=((3, 1, 1), (3, 1, 1), (1, 1, 1)),
                        reducer_strides=((3, 1, 1), (3, 1, 1), (1, 1, 1)), embed_dim=32)
    heads = HeadsConfig(in_dim=32, embed_dim=16, classifier_hidden=8, pretrain_hidden=(8, 8), variant="halves")
    visual = Step1Model(VisualModelConfig(ctnet=ctnet, heads=heads, extras={
        "halves": {"lateral_halves": False, "attribute_heads": True}})).eval()
    cond = ConditioningConfig(input_dim=16, hidden_dims=(32,), output_dim=24)
    decoder = ReportDecoder(DecoderConfig(n_layer=2, n_embd=32, n_head=4, n_positions=64, conditioning=cond)).eval()
    config = ReporterConfig(generation=GenerationSettings(max_new_tokens=6),
                            postprocess={"nodule_size": {"offset_mm": 1.5}})
    return Reporter(visual, decoder, load_tokenizer(tokenizer_dir), [0.0] * 18,
                    PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE), config)


def _make_old(new: Path, old: Path) -> None:
    """The layout ctagrg wrote before: halves flags in heads, ood_fraction and nodule_size in reporter.json."""
    shutil.copytree(new, old)
    visual = json.loads((old / "visual" / "config.json").read_text())
    visual["heads"].pop("variant")
    visual["heads"] |= {"lateral_halves": False, "attribute_heads": True, "condition_on_halves": False}
    visual.pop("extras")
    (old / "visual" / "config.json").write_text(json.dumps(visual))
    settings = json.loads((old / "reporter.json").read_text())
    settings["nodule_size"] = {"enabled": True, **settings.pop("postprocess")["nodule_size"]}
    settings["ood_fraction"] = 0.01
    (old / "reporter.json").write_text(json.dumps(settings))


def test_old_packaged_model_is_refused_then_converted(tmp_path: Path, gpt2_tokenizer_dir: Path, capsys) -> None:
    reporter = _reporter(gpt2_tokenizer_dir)
    reporter.save_pretrained(tmp_path / "new")
    _make_old(tmp_path / "new", tmp_path / "old")
    with pytest.raises(ConfigError, match=r"heads.*ctagrg convert-model"):
        Reporter.from_pretrained(tmp_path / "old")

    assert cli_main(["convert-model", str(tmp_path / "old"), str(tmp_path / "conv")]) == 0
    assert "converted" in capsys.readouterr().out
    converted = Reporter.from_pretrained(tmp_path / "conv")
    assert converted.visual.config.heads.variant == "halves"
    assert converted.visual.config.extras["halves"]["attribute_heads"] is True
    # ood_fraction applied only to encoders reporting outliers (cnn3d): a ctnet model gets no ood_warning
    assert converted.config.postprocess == reporter.config.postprocess
    assert list(converted.config.postprocess) == ["nodule_size"]  # no ood_warning: a ctnet reports no outliers
    assert converted.config.postprocess["nodule_size"]["offset_mm"] == 1.5
    volume = torch.randn(2, *SHAPE).numpy()
    before = [r.to_dict() for r in reporter.report_volumes(volume)]
    after = [r.to_dict() for r in converted.report_volumes(volume)]
    assert after == before
    assert (tmp_path / "conv" / "README.md").read_text() == (tmp_path / "new" / "README.md").read_text()

    assert cli_main(["convert-model", str(tmp_path / "old"), str(tmp_path / "conv")]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(["convert-model", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "not a packaged ctagrg model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
