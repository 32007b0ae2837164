"""Heads and the step-1 model: per-label independence, per-head backward equivalence, save/load round trips."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ctagrg.config import from_dict
from ctagrg.models.checkpoint import CheckpointError
from ctagrg.models.heads import AbnormalityHeads, HeadsConfig, PretrainHead
from ctagrg.models.step1 import PretrainModel, Step1Model, VisualModelConfig, load_encoder_from

SMALL = HeadsConfig(in_dim=24, embed_dim=16, classifier_hidden=8, pretrain_hidden=(12, 6), dropout=0.0)


def tiny_model_config(**kw) -> VisualModelConfig:
    return from_dict(VisualModelConfig, {
        "encoder": "ctnet",
        "ctnet": {"input_shape": [12, 32, 32], "trunk": {"width": 4}, "embed_dim": 24, "dropout": 0.0,
                  "reducer_kernels": [[3, 1, 1], [3, 1, 1], [2, 1, 1]],
                  "reducer_strides": [[2, 1, 1], [2, 1, 1], [1, 1, 1]]},
        "heads": {"in_dim": 24, "embed_dim": 16, "classifier_hidden": 8, "pretrain_hidden": [12, 6], "dropout": 0.0},
        **kw,
    })


def test_abnormality_heads_equal_18_separate_heads():
    torch.manual_seed(0)
    heads = AbnormalityHeads(SMALL).eval()
    h = torch.randn(3, 24)
    logits, emb = heads(h)
    assert logits.shape == (3, 18) and emb.shape == (3, 18, 16)
    for i in range(18):  # label i = Linear block i of the projection, then its own 16 -> 8 -> 1 classifier
        proj = nn.Linear(24, 16)
        proj.weight.data = heads.project.weight[i * 16:(i + 1) * 16]
        proj.bias.data = heads.project.bias[i * 16:(i + 1) * 16]
        e = torch.relu(proj(h))
        z = torch.relu(e @ heads.fc1_weight[i].T + heads.fc1_bias[i])
        torch.testing.assert_close(emb[:, i], e)
        torch.testing.assert_close(logits[:, i], z @ heads.fc2_weight[i] + heads.fc2_bias[i])
    # label 5's loss reaches only classifier 5 and projection block 5
    heads(h)[0][:, 5].sum().backward()
    assert heads.fc1_weight.grad[torch.arange(18) != 5].abs().sum() == 0 and heads.fc1_weight.grad[5].abs().sum() > 0
    assert heads.project.weight.grad[:80].abs().sum() == 0 and heads.project.weight.grad[80:96].abs().sum() > 0
    assert PretrainHead(SMALL)(h).shape == (3, 18)


def _train_without_bn_updates(model: nn.Module) -> None:
    model.train()
    for m in model.modules():  # BatchNorm in eval so every pass sees identical activations
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def test_per_head_backward_matches_two_phase_scheme():
    """Our one-pass loss gives CT-AGRG's gradients: per-head backward with frozen encoder, then a summed backward."""
    torch.manual_seed(0)
    model = Step1Model(tiny_model_config(per_head_backward=True))
    _train_without_bn_updates(model)
    x, y = torch.randn(2, 1, 12, 32, 32), torch.randint(0, 2, (2, 18)).float()
    bce = nn.functional.binary_cross_entropy_with_logits
    out = model(x)
    (bce(out["logits"], y) + bce(out["logits_detached"], y)).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    h = model.encoder(x)
    for i in range(18):  # phase 1: one backward per head (BCE mean over B x 18 = sum over labels / 18)
        bce(model.heads(h)[0][:, i], y[:, i]).div(18).backward()
    for p in model.encoder.parameters():
        p.requires_grad_(True)
    bce(model(x)["logits"], y).backward()  # phase 2: the summed loss, encoder trainable
    for n, p in model.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)
    assert ours["heads.fc2_weight"].abs().sum() > 0 and ours["encoder.fc.weight"].abs().sum() > 0


def test_step1_save_load_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = Step1Model(tiny_model_config()).eval()
    x = torch.randn(2, 1, 12, 32, 32)
    with torch.no_grad():
        before = model(x)
    model.save_pretrained(tmp_path / "visual")
    cfg = json.loads((tmp_path / "visual" / "config.json").read_text())
    assert cfg["model_type"] == "ctagrg-step1" and "ctvit" not in cfg and cfg["ctnet"]["trunk"]["width"] == 4
    assert "not for diagnostic use" in (tmp_path / "visual" / "README.md").read_text()
    loaded = Step1Model.from_pretrained(tmp_path / "visual")
    with torch.no_grad():
        after = loaded(x)
    assert torch.equal(before["logits"], after["logits"]) and torch.equal(before["embeddings"], after["embeddings"])
    with pytest.raises(CheckpointError, match="model_type is 'ctagrg-step1', expected 'ctagrg-pretrain'"):
        PretrainModel.from_pretrained(tmp_path / "visual")


def test_config_checkpoint_mismatch_names_tensors(tmp_path):
    Step1Model(tiny_model_config()).save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["heads"]["classifier_hidden"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch \[3\]: heads.fc1_bias \(model \(18, 4\), "
                                              r"checkpoint \(18, 8\)\), heads.fc1_weight"):
        Step1Model.from_pretrained(tmp_path / "m")


def test_encoder_initialised_from_pretraining(tmp_path):
    torch.manual_seed(0)
    pre = PretrainModel(tiny_model_config())
    pre.save_pretrained(tmp_path / "pre")
    torch.manual_seed(1)
    step1 = Step1Model(tiny_model_config())
    load_encoder_from(step1, tmp_path / "pre")
    for (n, a), b in zip(pre.encoder.state_dict().items(), step1.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    other = tiny_model_config()
    other.ctnet.embed_dim = other.heads.in_dim = 32
    with pytest.raises(CheckpointError, match=r"encoder weights do not match.*shape mismatch \[2\]: fc.bias"):
        load_encoder_from(Step1Model(other), tmp_path / "pre")




def test_head_variants_come_from_the_registry():
    """heads.variant picks the head family (the published ``ctagrg`` heads, or a plug-in's, here the demo's
    ``halves``, whose options are model.extras.halves); a plug-in section for an unselected variant is refused, and
    so are the old halves keys of the published heads."""
    from ctagrg.config import ConfigError
    from ctagrg.extras.halves.heads import HalvesConfig, HalvesHeads, HalvesPretrainHead

    plain = Step1Model(tiny_model_config())
    assert type(plain.heads) is AbnormalityHeads and plain.heads.parts == 1
    cfg = tiny_model_config(heads={**SMALL.__dict__, "variant": "halves"},
                            extras={"halves": {"lateral_halves": False, "attribute_heads": True}})
    assert cfg.extras["halves"] == {"lateral_halves": False, "attribute_heads": True, "condition_on_halves": False}
    model = Step1Model(cfg).eval()
    assert isinstance(model.heads, HalvesHeads) and model.heads.attribute_heads and model.heads.parts == 1
    out = model(torch.zeros(2, 1, 12, 32, 32))
    assert out["side_logits"].shape == (2, 18, 3) and out["size_mm"].shape == (2, 18)
    assert isinstance(PretrainModel(cfg).head, HalvesPretrainHead)
    # the halves variant's defaults: lateral halves on
    assert HalvesConfig().lateral_halves and not HalvesConfig().attribute_heads
    with pytest.raises(ValueError, match=r"unknown heads variant 'nosuch'; available: ctagrg, .*halves"):
        Step1Model(tiny_model_config(heads={**SMALL.__dict__, "variant": "nosuch"}))
    with pytest.raises(ConfigError, match=r"^model.extras.nosuch: no plug-in encoder or head variant of that name"):
        tiny_model_config(extras={"nosuch": {}})
    # a variant's section may be set before heads.variant names it, but a model does not keep an unused one
    with pytest.raises(ConfigError, match=r"^model.extras.halves: not used by this model .*heads.variant 'ctagrg'"):
        Step1Model(tiny_model_config(extras={"halves": {}}))
    with pytest.raises(ConfigError, match=r"^model.heads.lateral_halves: moved out of the published heads: set "
                                          r"heads.variant: halves and model.extras.halves"):
        from_dict(HeadsConfig, {"lateral_halves": True}, where="model.heads")
