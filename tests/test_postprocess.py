"""Report post-processors (ctagrg.generation.postprocess): the registry, its errors, and the Reporter applying the
post-processors its config names, in order."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.generation.postprocess import ReportBatch, build_postprocessors, postprocessor_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_unknown_post_processor_is_refused_with_the_installed_ones_named():
    with pytest.raises(ConfigError, match=r"^postprocess.nodule_sise: unknown report post-processor \(known: "
                                          r".*nodule_size.*ood_warning"):
        build_postprocessors({"nodule_sise": {}}, preprocess=None, visual=None)
    with pytest.raises(ConfigError, match=r"^reporter.json.nosuch: unknown report post-processor"):
        postprocessor_config("nosuch", {}, "reporter.json")
    with pytest.raises(ConfigError, match=r"^postprocess.ood_warning: unknown key\(s\) ood_fraction"):
        build_postprocessors({"ood_warning": {"ood_fraction": 0.1}}, preprocess=None, visual=None)


def test_report_batch_starts_with_empty_measurements_and_warnings():
    batch = ReportBatch(volumes=np.zeros((2, 1, 1, 1), np.float32), preprocess=None, outputs={},
                        detected=torch.zeros(2, 18, dtype=torch.bool), sentences=[{}, {3: "x"}])
    assert batch.measurements == [{}, {}] and batch.warnings == [[], []]
    assert batch.measurements[0] is not batch.measurements[1]


@dataclass
class ShoutConfig:
    suffix: str = "!"


class Shout:
    """A test post-processor: every sentence upper-cased with ``suffix``, and a warning per volume."""

    def __init__(self, config: ShoutConfig, preprocess, visual) -> None:
        self.config, self.calls = config, []

    def __call__(self, batch: ReportBatch) -> None:
        self.calls.append(len(batch.sentences))
        for v, sentences in enumerate(batch.sentences):
            for i in sentences:
                sentences[i] = sentences[i].upper() + self.config.suffix
            batch.warnings[v].append(f"shouted {len(sentences)}")


@pytest.fixture
def shout(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctagrg.generation.postprocess as postprocess

    monkeypatch.setattr(postprocess, "_REGISTRY", dict(postprocess._REGISTRY))
    postprocess.register_postprocessor("shout", ShoutConfig, Shout)


def _reporter(postprocess: dict, tokenizer_dir: Path):
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.decoder import load_tokenizer
    from tests.test_reporter import SHAPE, tiny_decoder, tiny_visual

    torch.manual_seed(0)
    config = ReporterConfig(generation=GenerationSettings(max_new_tokens=4), postprocess=postprocess)
    return Reporter(tiny_visual(), tiny_decoder(), load_tokenizer(tokenizer_dir), [0.0] * 18,
                    PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE), config)


def test_the_reporter_applies_its_post_processors_in_order(shout, gpt2_tokenizer_dir: Path, tmp_path: Path):
    from ctagrg.generation.reporter import Reporter
    from tests.test_reporter import volumes

    plain = _reporter({}, gpt2_tokenizer_dir).report_volumes(volumes(2))
    twice = _reporter({"shout": {"suffix": "?"}}, gpt2_tokenizer_dir)
    (shouter,) = twice.postprocessors
    assert isinstance(shouter, Shout) and shouter.config == ShoutConfig("?")
    reports = twice.report_volumes(volumes(2))
    assert shouter.calls == [2]  # once per batch
    for before, after in zip(plain, reports, strict=True):
        for label, a in after.abnormalities.items():
            b = before.abnormalities[label]
            assert a.detected and a.sentence == b.sentence.upper() + "?"
        assert after.warnings == ["shouted 18"] and before.warnings == []
    # packaged and loaded again, the post-processors come back from reporter.json
    twice.save_pretrained(tmp_path / "pkg")
    assert json.loads((tmp_path / "pkg" / "reporter.json").read_text())["postprocess"] == {"shout": {"suffix": "?"}}
    again = Reporter.from_pretrained(tmp_path / "pkg").report_volumes(volumes(2))
    assert [r.text for r in again] == [r.text for r in reports]
    # a reporter.json naming a post-processor that is not installed: the file is named
    settings = json.loads((tmp_path / "pkg" / "reporter.json").read_text())
    (tmp_path / "pkg" / "reporter.json").write_text(json.dumps({**settings, "postprocess": {"whisper": {}}}))
    with pytest.raises(ConfigError, match=r"whisper: unknown report post-processor"):
        Reporter.from_pretrained(tmp_path / "pkg")


@pytest.mark.parametrize(("key", "value", "moved_to"), [
    ("ood_fraction", 0.01, "postprocess.ood_warning.fraction"), ("nodule_size", {"enabled": True},
                                                                  "postprocess.nodule_size")])
def test_reporter_json_of_an_older_model_says_where_its_keys_moved(key: str, value, moved_to: str, tmp_path: Path):
    from ctagrg.config import from_dict, load_config
    from ctagrg.generation.reporter import ReporterConfig

    path = tmp_path / "reporter.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}.{key}: moved to {moved_to}") +
                                          r"; `ctagrg convert-model` converts a model packaged before$"):
        load_config(ReporterConfig, path)
    with pytest.raises(ConfigError, match=rf"^reporter.json.{key}: moved to {re.escape(moved_to)}"):
        from_dict(ReporterConfig, {key: value}, where="reporter.json")
