"""Encoders: registry, shapes (including the paper's CT-Net shapes), and pretrained-weight loading by key layout."""

from __future__ import annotations

import pytest
import torch

from ctagrg.models.checkpoint import CheckpointError
from ctagrg.models.ctnet import CTNetConfig, CTNetEncoder
from ctagrg.models.registry import ENCODERS, create_encoder
from ctagrg.models.resnet import ResNetTrunk
from ctagrg.models.weights import load_resnet18_trunk

TINY = {
    "ctnet": dict(input_shape=(12, 32, 32), trunk={"width": 4}, embed_dim=24, dropout=0.0,
                  reducer_kernels=[[3, 1, 1], [3, 1, 1], [2, 1, 1]], reducer_strides=[[2, 1, 1], [2, 1, 1], [1, 1, 1]]),
    "ctvit": dict(input_shape=(8, 16, 16), dim=32, patch_size=4, temporal_patch_size=2, spatial_depth=1,
                  temporal_depth=1, heads=2, dim_head=16, pool_grid=(2, 2), embed_dim=24, dropout=0.0),
    "cnn3d": dict(input_shape=(16, 32, 32), width=2, region_grid=2, embed_dim=24, dropout=0.0),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_registry_encoders_shapes_grad_checkpointing(name):
    torch.manual_seed(0)
    enc = create_encoder(name, **TINY[name])
    x = torch.randn(2, 1, *TINY[name]["input_shape"])
    out = enc(x)
    assert out.shape == (2, 24) and torch.isfinite(out).all()
    out.sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    assert len(grads) == sum(1 for p in enc.parameters() if p.requires_grad)
    enc.zero_grad()
    enc.gradient_checkpointing_enable()  # same numbers, recomputed in backward
    out2 = enc(x)
    out2.sum().backward()
    torch.testing.assert_close(out2, out)
    for n, p in enc.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        enc(torch.randn(1, 1, 4, 16, 16))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown encoder 'unet'; available: ctnet, ctvit"):
        create_encoder("unet")
    with pytest.raises(ValueError, match="unknown key.*widht.*valid keys: in_channels, width, layers"):
        create_encoder("ctnet", trunk={"widht": 3})
    with pytest.raises(ValueError, match=r"reducer conv 2 \(kernel \(3, 3, 3\), stride \(3, 1, 1\)\) leaves no output"):
        CTNetConfig(input_shape=(240, 128, 128)).shapes()


def test_ctnet_paper_shapes():
    cfg = CTNetConfig()
    s = cfg.shapes()
    assert s["trunk"] == (80, 512, 15, 15)
    assert (s["reducer1"], s["reducer2"], s["reducer3"]) == ((64, 170, 13, 13), (32, 56, 11, 11), (16, 18, 5, 5))
    assert s["flat"] == (7200,)
    enc = CTNetEncoder(cfg)
    assert enc.fc.in_features == 7200 and enc.fc.out_features == 2048
    assert tuple(enc.reducer[0].weight.shape) == (64, 80, 3, 3, 3)
    with torch.no_grad():  # the real layers agree with the arithmetic
        assert enc.reducer(torch.zeros(1, 80, 512, 15, 15)).shape == (1, 16, 18, 5, 5)
        narrow = ResNetTrunk(type(cfg.trunk)(in_channels=3, width=4)).eval()
        assert narrow(torch.zeros(1, 3, 480, 480)).shape == (1, 32, 15, 15)


def test_ctnet_triplets_are_consecutive_slices():
    enc = create_encoder("ctnet", **TINY["ctnet"]).eval()
    seen = []
    enc.trunk.forward = lambda images: seen.append(images) or torch.zeros(images.shape[0], 32, 1, 1)
    x = torch.arange(2 * 12, dtype=torch.float32).view(2, 1, 12, 1, 1).expand(2, 1, 12, 32, 32).contiguous()
    enc.forward_features(x)
    assert seen[0].shape == (8, 3, 32, 32)
    assert seen[0][:, :, 0, 0].tolist()[:5] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14]]


def torchvision_resnet18_layout(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision resnet18's exact keys and shapes (written out here, not derived from ours)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{prefix}.{k}"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    sd["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g) * 0.05
    bn("bn1", 64)
    cin = 64
    for i, c in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{i}.{b}"
            sd[f"{p}.conv1.weight"] = torch.randn(c, cin if b == 0 else c, 3, 3, generator=g) * 0.05
            bn(f"{p}.bn1", c)
            sd[f"{p}.conv2.weight"] = torch.randn(c, c, 3, 3, generator=g) * 0.05
            bn(f"{p}.bn2", c)
            if b == 0 and i > 1:
                sd[f"{p}.downsample.0.weight"] = torch.randn(c, cin, 1, 1, generator=g) * 0.05
                bn(f"{p}.downsample.1", c)
        cin = c
    sd["fc.weight"] = torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_load_torchvision_resnet18(tmp_path):
    sd = torchvision_resnet18_layout()
    assert len(sd) == 122 and sum(v.numel() for k, v in sd.items() if "running" not in k and "num_b" not in k
                                  and "fc." not in k) == 11_176_512  # torchvision's resnet18 minus fc
    torch.save(sd, tmp_path / "resnet18.pth")
    trunk = ResNetTrunk()
    report = load_resnet18_trunk(trunk, tmp_path / "resnet18.pth")
    assert report.ignored == ["fc.bias", "fc.weight"] and len(report.loaded) == 120 and not report.unexpected
    assert torch.equal(trunk.layer3[0].downsample[0].weight, sd["layer3.0.downsample.0.weight"])
    assert torch.equal(trunk.bn1.running_var, sd["bn1.running_var"])
    del sd["layer4.1.bn2.weight"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken.pth: .*missing \[1\]: layer4.1.bn2.weight; "
                                              r"unexpected \[1\]: layer5.0.conv1.weight"):
        load_resnet18_trunk(ResNetTrunk(), tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatch \[\d+\]: bn1.bias \(model \(8,\), checkpoint \(64,\)"):
        load_resnet18_trunk(ResNetTrunk(type(trunk.config)(width=8)), tmp_path / "resnet18.pth")


def test_ctnet_pool_reducer_is_invariant_to_triplet_order():
    torch.manual_seed(0)
    enc = create_encoder("ctnet", input_shape=(12, 32, 32), input_pool=(1, 2, 2), reducer="pool", trunk={"width": 4},
                         embed_dim=24, dropout=0.0).eval()
    assert enc.shapes == {"trunk": (4, 32, 1, 1), "flat": (64,), "embedding": (24,)} and len(enc.reducer) == 0
    x = torch.randn(2, 1, 12, 32, 32)
    swapped = torch.cat([x[:, :, 6:9], x[:, :, 0:3], x[:, :, 9:12], x[:, :, 3:6]], dim=2)  # triplets reordered
    with torch.no_grad():
        torch.testing.assert_close(enc(swapped), enc(x))
        assert not torch.allclose(enc(x.flip(2)), enc(x))  # slice order inside a triplet still matters
    with pytest.raises(ValueError, match=r"input_shape \(12, 32, 32\) is not divisible by input_pool \(1, 3, 3\)"):
        create_encoder("ctnet", input_shape=(12, 32, 32), input_pool=(1, 3, 3), reducer="pool")
