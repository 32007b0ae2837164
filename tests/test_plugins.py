"""Plug-ins attach through entry points and registries; the core's typed encoder output."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ctagrg.models.encoder_output import EncoderOutput, encode, encode_from
from ctagrg.utils import plugins


def test_each_plugin_is_called_once_and_a_broken_one_is_logged(monkeypatch, caplog) -> None:
    calls: list[str] = []

    def ok() -> None:
        calls.append("ok")

    def broken() -> None:
        raise ImportError("no module named nowhere")

    eps = [SimpleNamespace(name="t_ok", value="x:ok", load=lambda: ok),
           SimpleNamespace(name="t_broken", value="x:broken", load=lambda: broken)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == plugins.GROUP else [])
    monkeypatch.setattr(plugins, "_loaded", set())
    with caplog.at_level(logging.WARNING, logger="ctagrg.utils.plugins"):
        assert plugins.load_plugins() == ["t_ok"]
    assert "plug-in t_broken (x:broken) failed to load: no module named nowhere" in caplog.text
    assert plugins.load_plugins() == [] and calls == ["ok"]


def test_the_installed_extras_are_found_by_name() -> None:
    from ctagrg.generation.postprocess import postprocessor_config
    from ctagrg.models.registry import encoder_entry, head_variant
    from ctagrg.training.extensions import extension_class

    assert encoder_entry("cnn3d")[1].__name__ == "CNN3DEncoder"
    assert head_variant("halves").abnormality_heads.__name__ == "HalvesHeads"
    assert head_variant("ctagrg") is None
    assert extension_class("mirror").stages == ("decoder",)
    assert postprocessor_config("ood_warning", {"fraction": 0.2}, "x").fraction == 0.2
    with pytest.raises(ValueError, match="unknown encoder 'nosuch'; available: ctnet, ctvit, "):
        encoder_entry("nosuch")


class _Plain(nn.Module):
    def forward(self, volume: torch.Tensor | None = None, *, stem: torch.Tensor | None = None) -> torch.Tensor:
        x = volume if volume is not None else stem
        return x.flatten(1).sum(1, keepdim=True)


class _Typed(_Plain):
    def encode(self, volume: torch.Tensor | None = None, *, stem: torch.Tensor | None = None) -> EncoderOutput:
        h = self.forward(volume, stem=stem)
        return EncoderOutput(torch.cat([h, -h], 1), parts=2, diagnostics={"outlier_fraction": torch.zeros(len(h))})


def test_encode_wraps_a_plain_encoder_and_uses_a_typed_one() -> None:
    x = torch.ones(3, 1, 2, 2, 2)
    plain = encode(_Plain(), x)
    assert plain.parts == 1 and plain.diagnostics == {} and plain.features.tolist() == [[8.0]] * 3
    typed = encode(_Typed(), x)
    assert typed.parts == 2 and typed.features.tolist() == [[8.0, -8.0]] * 3
    assert typed.diagnostics["outlier_fraction"].shape == (3,)
    assert encode_from(_Typed(), {"stem": 2 * x}).features.tolist() == [[16.0, -16.0]] * 3
    assert encode_from(_Plain(), {"stem": x}).features.tolist() == [[8.0]] * 3
