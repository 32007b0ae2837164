from dataclasses import dataclass, field

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
