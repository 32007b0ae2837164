"""CT-Net options for small CPU runs: HU-window input channels and the light ResNet stem (defaults unchanged)."""

from __future__ import annotations

import pytest
import torch

from ctagrg.models.ctnet import CTNetConfig, CTNetEncoder
from ctagrg.models.registry import create_encoder
from ctagrg.models.resnet import ResNetConfig, ResNetTrunk

WINDOWS = ((-1000.0, -700.0), (-800.0, -100.0), (-100.0, 200.0))
SMALL = dict(input_shape=(12, 32, 32), trunk={"width": 4, "layers": (1, 1, 1, 1), "stem": "light"}, reducer="pool",
             embed_dim=24, dropout=0.0)


def test_defaults_are_the_published_network():
    cfg = CTNetConfig()
    assert cfg.trunk.stem == "resnet" and cfg.input_windows == () and cfg.trunk.in_channels == 3
    assert cfg.shapes()["trunk"] == (80, 512, 15, 15)


def test_light_stem_halves_instead_of_quartering():
    x = torch.randn(2, 3, 64, 64)
    assert ResNetTrunk(ResNetConfig(width=4, layers=(1, 1, 1, 1))).eval()(x).shape == (2, 32, 2, 2)
    light = ResNetTrunk(ResNetConfig(width=4, layers=(1, 1, 1, 1), stem="light")).eval()
    assert light(x).shape == (2, 32, 4, 4)
    assert not any("maxpool" in k for k in light.state_dict())
    with pytest.raises(ValueError, match="stem"):
        ResNetConfig(stem="vit")


@pytest.mark.parametrize("windows", [(), WINDOWS])
def test_shapes_match_forward_and_backward(windows):
    torch.manual_seed(0)
    enc = create_encoder("ctnet", **SMALL, input_windows=windows)
    assert enc.config.trunk.in_channels == 3 * max(1, len(windows))
    maps = enc.trunk(torch.randn(2, enc.config.trunk.in_channels, 32, 32))
    assert tuple(maps.shape[1:]) == enc.shapes["trunk"][1:] == (32, 2, 2)
    out = enc(torch.randn(2, 1, 12, 32, 32))
    assert out.shape == (2, 24) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_windows_map_hu_to_channels_slice_major():
    enc = CTNetEncoder(CTNetConfig(**SMALL, input_windows=WINDOWS))
    hu_min, hu_max, offset = enc.config.input_hu
    hu = torch.tensor([-1000.0, -850.0, -450.0, 50.0, 200.0])
    x = ((hu - hu_min) / (hu_max - hu_min) - offset).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = enc._windows(x)
    assert out.shape == (1, 9, 1, 5)
    expected = torch.tensor([[-0.5, 0.0, 0.5, 0.5, 0.5],  # lung window -1000..-700
                             [-0.5, -0.5, 0.0, 0.5, 0.5],  # parenchyma -800..-100
                             [-0.5, -0.5, -0.5, 0.0, 0.5]])  # soft tissue -100..200
    for s in range(3):  # channel 3 * slice + window
        torch.testing.assert_close(out[0, 3 * s: 3 * s + 3, 0], expected, atol=1e-4, rtol=0)


def test_bad_window_is_rejected():
    with pytest.raises(ValueError, match="hi > lo"):
        CTNetConfig(input_windows=((200.0, -100.0),))
