"""Training extensions (ctagrg.training.extensions): a stage's ``extras`` section names them; unknown names, a
stage an extension is not for and bad options are refused with the key named."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ctagrg.config import ConfigError, load_config
from ctagrg.training.extensions import Extension, build_extensions, extension_class, register_extension


def _task() -> SimpleNamespace:
    return SimpleNamespace(extensions=[], stage="pretrain")


def test_unknown_extension_lists_the_installed_ones():
    with pytest.raises(ConfigError, match=r"^extras.attribute: unknown training extension \(known: .*attributes"):
        build_extensions(_task(), {"attribute": {}}, "pretrain")
    with pytest.raises(ConfigError, match=r"^extras.nosuch: unknown training extension \(known: "):
        extension_class("nosuch")


@pytest.mark.parametrize(("name", "stage", "allowed"), [
    ("head_l1", "classifier", "pretrain"), ("stem_cache", "decoder", "pretrain"),
    ("mirror", "pretrain", "decoder"), ("half_thresholds", "pretrain", "classifier"),
    ("nodule_size", "decoder", "classifier"), ("attributes", "decoder", "pretrain, classifier")])
def test_an_extension_refuses_a_stage_it_is_not_for(name: str, stage: str, allowed: str):
    task = _task()
    with pytest.raises(ConfigError, match=rf"^extras.{name}: not for the {stage} stage \(only {allowed}\)$"):
        build_extensions(task, {name: {}}, stage)
    assert task.extensions == []


def test_options_are_read_into_the_extensions_config_and_checked():
    from ctagrg.extras.head_l1 import HeadL1Config, HeadL1Extension

    task = _task()
    (ext,) = build_extensions(task, {"head_l1": {"weight": "0.5"}}, "pretrain")
    assert isinstance(ext, HeadL1Extension) and ext.config == HeadL1Config(weight=0.5) and ext.task is task
    assert task.extensions == [ext]
    assert build_extensions(_task(), {"head_l1": None}, "pretrain")[0].config == HeadL1Config()
    with pytest.raises(ConfigError, match=r"^extras.head_l1: unknown key\(s\) weigth for HeadL1Config"):
        build_extensions(_task(), {"head_l1": {"weigth": 1.0}}, "pretrain")
    with pytest.raises(ConfigError, match=r"^extras.head_l1.weight: expected float, got 'much'"):
        build_extensions(_task(), {"head_l1": {"weight": "much"}}, "pretrain")


def test_an_extension_without_options_refuses_some(monkeypatch: pytest.MonkeyPatch):
    import ctagrg.training.extensions as extensions

    class Plain(Extension):
        stages = ("pretrain", "classifier")

    class Other(Extension):
        stages = ("pretrain",)

    monkeypatch.setattr(extensions, "_REGISTRY", dict(extensions._REGISTRY))
    register_extension("plain", Plain)
    register_extension("other", Other)
    with pytest.raises(ConfigError, match=r"^extras.plain: takes no options, got \{'x': 1\}"):
        build_extensions(_task(), {"plain": {"x": 1}}, "pretrain")
    task = _task()
    built = build_extensions(task, {"other": {}, "plain": None}, "pretrain")
    # in the section's order, each appended as it is built (a later one can find an earlier one)
    assert [type(e) for e in built] == [Other, Plain] and task.extensions is built and built[1].config is None


def test_stages_build_their_extras_section():
    from ctagrg.extras.head_l1 import HeadL1Extension
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig, PretrainTask, PretrainTaskConfig

    task = PretrainTask(load_config(PretrainTaskConfig, None, ["extras.head_l1.weight=0.25"]))
    (ext,) = task.extensions
    assert isinstance(ext, HeadL1Extension) and ext.config.weight == 0.25 and task.extension(HeadL1Extension) is ext
    assert PretrainTask(load_config(PretrainTaskConfig, None, [])).extensions == []
    with pytest.raises(ConfigError, match=r"^extras.head_l1: not for the classifier stage \(only pretrain\)"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, ["extras.head_l1.weight=0.25"]))


def test_the_decoder_stage_builds_its_extras_section():
    from ctagrg.extras.mirror.extension import MirrorExtension
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig

    (ext,) = DecoderTask(load_config(DecoderTaskConfig, None, ["extras.mirror.p=0.5"])).extensions
    assert isinstance(ext, MirrorExtension) and ext.config.p == 0.5
    with pytest.raises(ConfigError, match=r"^extras.stem_cache: not for the decoder stage \(only pretrain\)"):
        DecoderTask(load_config(DecoderTaskConfig, None, ["extras.stem_cache={}"]))
