from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from ctagrg.config import ConfigError, apply_overrides, from_dict, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Run:
    epochs: int = 2
    name: str = "x"
    amp: bool = False
    optim: Optim = field(default_factory=Optim)


def test_nested_and_overrides():
    cfg = from_dict(Run, {"epochs": 3, "optim": {"lr": 0.5, "betas": [0.8, 0.9]}})
    assert cfg.optim.betas == (0.8, 0.9)
    cfg = apply_overrides(cfg, ["optim.lr=1e-3", "amp=true", "name=run1"])
    assert (cfg.optim.lr, cfg.amp, cfg.name, cfg.epochs) == (1e-3, True, "run1", 3)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) epoch .*valid keys: epochs, name, amp, optim"):
        from_dict(Run, {"epoch": 3})
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'.*valid keys: lr, betas"):
        apply_overrides(Run(), ["optim.learning_rate=1"])


def test_bad_type():
    with pytest.raises(ConfigError, match="epochs: expected int, got 'many'"):
        apply_overrides(Run(), ["epochs=many"])


def test_roundtrip(tmp_path):
    cfg = apply_overrides(Run(), ["epochs=7"])
    for name in ("c.yaml", "c.json"):
        save_config(cfg, tmp_path / name)
        assert load_config(Run, tmp_path / name) == cfg


@dataclass
class Kinds:
    flags: list[bool] = field(default_factory=list)
    sizes: tuple[int, ...] = ()
    shape: tuple[int, int, int] = (1, 1, 1)
    ratio: float | None = None
    optim: Optim | None = None


def test_coercion_of_each_kind_of_field():
    cfg = from_dict(Kinds, {"flags": ["yes", "OFF", 0, 1], "sizes": [1, 2.0], "shape": ["4", 5, 6.0], "ratio": "0.5",
                            "optim": Optim(lr=2.0)})
    assert cfg.flags == [True, False, False, True]
    assert cfg.sizes == (1, 2) and all(type(s) is int for s in cfg.sizes)
    assert cfg.shape == (4, 5, 6) and cfg.ratio == 0.5 and cfg.optim == Optim(lr=2.0)
    assert from_dict(Kinds, {"ratio": None, "optim": None}).optim is None


@pytest.mark.parametrize(("data", "message"), [
    ({"flags": ["maybe"]}, "flags: expected true/false, got 'maybe'"),
    ({"sizes": 3}, "sizes: expected a list, got 3"),
    ({"shape": [1, 2]}, r"shape: expected 3 values, got 2: \[1, 2\]"),
    ({"sizes": [1.5]}, "sizes: expected int, got 1.5"),
    ({"optim": 3}, "optim: expected a mapping for Optim, got 3"),
])
def test_coercion_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Kinds, data)


@dataclass
class Stage:
    epochs: int = 1
    extras: dict = field(default_factory=dict)  # a free-form section: plug-in options by name


def test_overrides_into_a_free_form_section_create_nested_keys():
    """``--set extras.attributes.half_weight=0.5`` on a dict section (``_set_in_mapping``): nested keys are created
    as needed, values parsed as YAML, the other keys kept, the config it started from left as it was."""
    base = Stage(extras={"head_l1": {"weight": 0.001}})
    cfg = apply_overrides(base, ["extras.attributes.half_weight=0.5", "extras.attributes.sentences_csv=s.csv",
                                 "extras.stem_cache={}", "extras.mirror.labels=[Lung nodule, Emphysema]"])
    assert cfg.extras == {"head_l1": {"weight": 0.001},
                          "attributes": {"half_weight": 0.5, "sentences_csv": "s.csv"},
                          "stem_cache": {}, "mirror": {"labels": ["Lung nodule", "Emphysema"]}}
    assert base.extras == {"head_l1": {"weight": 0.001}}  # copies, not the caller's dict changed
    assert apply_overrides(cfg, ["extras.attributes.half_weight=1"]).extras["attributes"]["half_weight"] == 1
    assert apply_overrides(cfg, ["extras.head_l1.weight="]).extras["head_l1"] == {"weight": ""}
    with pytest.raises(ConfigError, match=r"override '.*weight.x': 'weight' is not a section"):
        apply_overrides(cfg, ["extras.head_l1.weight.x=1"])
    with pytest.raises(ConfigError, match=r"override 'epochs.x': 'epochs' is not a section"):
        apply_overrides(cfg, ["epochs.x=1"])


def test_removed_keys_say_what_replaces_them(tmp_path):
    @dataclass
    class Old:
        epochs: int = 1
        REMOVED_KEYS: ClassVar[dict[str, str]] = {"epoch": "renamed to epochs"}

    with pytest.raises(ConfigError, match=r"^run.yaml.epoch: renamed to epochs$"):
        from_dict(Old, {"epoch": 2}, where="run.yaml")
    with pytest.raises(ConfigError, match=r"^override Old.epoch: renamed to epochs$"):
        apply_overrides(Old(), ["epoch=2"])
