"""ImageNet ResNet-18 weights in torchvision's layout into the CT-Net trunk, and the ``init.resnet18`` policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ctagrg.config import ConfigError, load_config
from ctagrg.models.checkpoint import CheckpointError
from ctagrg.models.resnet import ResNetConfig, ResNetTrunk
from ctagrg.models.weights import RESNET18_FILE, RESNET18_URL, load_resnet18_trunk
from ctagrg.training.visual_tasks import (
    ClassifierTaskConfig,
    PretrainTask,
    PretrainTaskConfig,
    check_resnet18_init,
)

ROOT = Path(__file__).resolve().parents[1]


def torchvision_resnet18_state(seed: int = 0, counters: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's ``resnet18()`` state-dict keys and shapes, written out from torchvision's
    ``ResNet`` / ``BasicBlock`` (conv1 7x7 no bias, bn1, layer1-4 of two BasicBlocks, a 1x1 ``downsample.0`` conv +
    ``downsample.1`` BatchNorm on the first block of layers 2-4, fc 512 -> 1000), not derived from our trunk.
    ``counters=False`` leaves out BatchNorm's ``num_batches_tracked``, as torchvision's ImageNet files do."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(key: str, out_ch: int, in_ch: int, k: int) -> None:
        sd[key] = torch.randn(out_ch, in_ch, k, k, generator=g) * 0.05

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g) * 0.1
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g) * 0.1
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        if counters:
            sd[f"{prefix}.num_batches_tracked"] = torch.tensor(int(torch.randint(1, 10**6, (), generator=g)))

    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    in_ch = 64
    for stage, ch in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            conv(f"{p}.conv1.weight", ch, in_ch if block == 0 else ch, 3)
            bn(f"{p}.bn1", ch)
            conv(f"{p}.conv2.weight", ch, ch, 3)
            bn(f"{p}.bn2", ch)
            if block == 0 and stage > 1:
                conv(f"{p}.downsample.0.weight", ch, in_ch, 1)
                bn(f"{p}.downsample.1", ch)
        in_ch = ch
    sd["fc.weight"] = torch.randn(1000, 512, generator=g) * 0.01
    sd["fc.bias"] = torch.randn(1000, generator=g) * 0.01
    return sd


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("counters", [True, False])
def test_every_trunk_tensor_loads(tmp_path: Path, suffix: str, counters: bool) -> None:
    state = torchvision_resnet18_state(counters=counters)
    assert len(state) == (122 if counters else 102)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_b" not in k) == 11_689_512
    trunk = ResNetTrunk()
    report = load_resnet18_trunk(trunk, save(state, tmp_path / f"resnet18{suffix}"))
    assert report.ignored == ["fc.bias", "fc.weight"] and not report.unexpected
    assert report.loaded == sorted(k for k in state if not k.startswith("fc."))
    loaded = trunk.state_dict()
    assert len(loaded) == 120
    for key, tensor in loaded.items():
        if key.endswith("num_batches_tracked") and not counters:
            assert int(tensor) == 0, key
        else:
            assert torch.equal(tensor, state[key]), key
    with torch.no_grad():  # the loaded trunk computes with them: conv1 + bn1 (eval) on a known input
        trunk.eval()
        x = torch.randn(1, 3, 64, 64)
        stem = torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x, state["conv1.weight"], stride=2, padding=3),
                                              state["bn1.running_mean"], state["bn1.running_var"],
                                              state["bn1.weight"], state["bn1.bias"])
        torch.testing.assert_close(trunk.bn1(trunk.conv1(x)), stem)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("change, message", [
    ("missing", r"missing \[1\]: layer4\.1\.bn2\.weight"),
    ("extra", r"unexpected \[1\]: layer4\.2\.conv1\.weight"),
    ("shape", r"shape mismatch \[1\]: layer2\.0\.conv1\.weight \(model \(128, 64, 3, 3\), checkpoint "
              r"\(128, 64, 5, 5\)\)"),
])
def test_a_mismatch_is_one_line_naming_the_file(tmp_path: Path, suffix: str, change: str, message: str) -> None:
    state = torchvision_resnet18_state()
    if change == "missing":
        del state["layer4.1.bn2.weight"]
    elif change == "extra":
        state["layer4.2.conv1.weight"] = torch.zeros(512, 512, 3, 3)
    else:
        state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = save(state, tmp_path / f"broken{suffix}")
    with pytest.raises(CheckpointError) as err:
        load_resnet18_trunk(ResNetTrunk(), path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: torchvision ResNet-18 state dict does not fit: ")
    assert len(re.findall(r"\[\d+\]", text)) == 1, text
    assert re.search(message, text), text


def test_a_non_tensor_pickle_is_refused(tmp_path: Path) -> None:
    import argparse

    state = {**torchvision_resnet18_state(), "args": argparse.Namespace(lr=0.1)}
    path = save(state, tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match=f"^{path}: cannot read as a torch state dict \\(weights_only=True\\)"):
        load_resnet18_trunk(ResNetTrunk(), path)


# -- init.resnet18 ----------------------------------------------------------------------------------------------
def test_the_papers_ctnet_refuses_to_start_from_random_weights() -> None:
    cfg = PretrainTaskConfig()  # encoder ctnet, trunk torchvision's resnet18 shape
    assert cfg.model.encoder == "ctnet" and cfg.model.ctnet.trunk.is_resnet18
    with pytest.raises(ConfigError) as err:
        check_resnet18_init(cfg)
    text = str(err.value)
    assert "\n" not in text and text.startswith("init.resnet18: not set")
    assert RESNET18_FILE in text and RESNET18_URL in text and "init.resnet18: none" in text
    cfg.init.resnet18 = "none"
    check_resnet18_init(cfg)  # the explicit opt-out
    cfg.init.resnet18, cfg.init.encoder_from = "", "runs/pretrain/best"
    check_resnet18_init(cfg)  # the encoder comes from that checkpoint


@pytest.mark.parametrize("override", ["model.ctnet.trunk.width=4", "model.ctnet.trunk.layers=[1,1,1,1]",
                                      "model.ctnet.trunk.stem=light", "model.encoder=cnn3d"])
def test_other_trunks_and_encoders_need_no_imagenet_file(override: str) -> None:
    cfg = load_config(PretrainTaskConfig, None, [override])
    assert not (cfg.model.encoder == "ctnet" and cfg.model.ctnet.trunk.is_resnet18)
    check_resnet18_init(cfg)


def test_ctrate_pretrain_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/ctrate/pretrain.yaml, unchanged, run where the file is missing, then where it has been put."""
    cfg = load_config(PretrainTaskConfig, ROOT / "configs" / "ctrate" / "pretrain.yaml")
    assert cfg.init.resnet18 == f"checkpoints/{RESNET18_FILE}"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        PretrainTask(cfg).build_model()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"init.resnet18: checkpoints/{RESNET18_FILE} not found; ")
    assert RESNET18_URL in text and "init.resnet18: none" in text
    (tmp_path / "checkpoints").mkdir()
    state = torchvision_resnet18_state(seed=5, counters=False)
    save(state, tmp_path / "checkpoints" / RESNET18_FILE)
    trunk = PretrainTask(cfg).build_model().encoder.trunk
    assert torch.equal(trunk.layer3[0].downsample[0].weight, state["layer3.0.downsample.0.weight"])
    assert torch.equal(trunk.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    ctvit = ["model.encoder=ctvit"]
    with pytest.raises(ConfigError, match=r"init.resnet18: only for the ctnet encoder, not 'ctvit' \(set "
                                          r"init.resnet18: none\)"):
        check_resnet18_init(load_config(PretrainTaskConfig, ROOT / "configs" / "ctrate" / "pretrain.yaml", ctvit))
    check_resnet18_init(load_config(PretrainTaskConfig, ROOT / "configs" / "ctrate" / "pretrain.yaml",
                                    [*ctvit, "init.resnet18=none"]))


def test_ctrate_classifier_and_demo_configs_start_without_imagenet() -> None:
    check_resnet18_init(load_config(ClassifierTaskConfig, ROOT / "configs" / "ctrate" / "classifier.yaml"))
    check_resnet18_init(load_config(PretrainTaskConfig, ROOT / "configs" / "demo" / "pretrain.yaml"))
    check_resnet18_init(load_config(ClassifierTaskConfig, ROOT / "configs" / "demo" / "classifier.yaml"))
    assert ResNetConfig().is_resnet18 and not ResNetConfig(in_channels=6).is_resnet18


def test_the_cli_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ctagrg.cli.main import main as cli_main

    assert cli_main(["train", "pretrain", "--set", f"train.out_dir={tmp_path}"]) == 1
    # the refusal is one line; the timestamped info lines of the log (the batch layout) come before it
    err = "".join(x for x in capsys.readouterr().err.splitlines(keepends=True) if " INFO ctagrg." not in x)
    assert err.count("\n") == 1 and err.startswith("error: init.resnet18: not set, and the paper's CT-Net starts ")
    assert not (tmp_path / "last").exists()
