"""CT-ViT against CT-CLIP's own CTViT (a fixture its code wrote), and CT-CLIP checkpoints that do not fit.

``tests/data/ctclip_ctvit_tiny.safetensors`` was written by CT-CLIP's ``transformer_maskgit`` code (commit a2a155c)
in a throw-away venv: ``tests/data/ctclip_ctvit_reference.py generate --size tiny`` (docs/training.md, "CT-ViT and
CT-CLIP"). It holds CT-CLIP's state dict (seeded random weights), an input and CT-CLIP's tokens before its vector
quantiser.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ctagrg.models.checkpoint import CheckpointError
from ctagrg.models.ctvit import CTViTConfig, CTViTEncoder
from ctagrg.models.weights import load_ctclip_ctvit

FIXTURE = Path(__file__).parent / "data" / "ctclip_ctvit_tiny.safetensors"


@pytest.fixture(scope="module")
def ctclip() -> dict:
    """CT-CLIP's state dict, input, pre-VQ tokens and our config for the same hyperparameters."""
    tensors = load_file(str(FIXTURE))
    with safe_open(str(FIXTURE), "pt") as f:
        kw = json.loads(f.metadata()["ctvit_kwargs"])
    cfg = CTViTConfig(input_shape=tuple(tensors["input"].shape[2:]), dim=kw["dim"], patch_size=kw["patch_size"],
                      temporal_patch_size=kw["temporal_patch_size"], spatial_depth=kw["spatial_depth"],
                      temporal_depth=kw["temporal_depth"], heads=kw["heads"], dim_head=kw["dim_head"],
                      pool_grid=(2, 2), embed_dim=24, dropout=0.0)
    state = {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}
    return {"state": state, "input": tensors["input"], "tokens": tensors["tokens"], "config": cfg}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_forward_tokens_equal_ctclip_pre_vq_tokens(ctclip, tmp_path):
    # a whole CTCLIP checkpoint, as CT-CLIP saves it: the image encoder under visual_transformer.
    whole = {f"visual_transformer.{k}": v for k, v in ctclip["state"].items()}
    whole["text_transformer.embeddings.word_embeddings.weight"] = torch.zeros(5, 4)
    enc = CTViTEncoder(ctclip["config"]).eval()
    report = load_ctclip_ctvit(enc, _save(whole, tmp_path / "CT-CLIP_v2.pt"))
    assert not report.unexpected and "text_transformer.embeddings.word_embeddings.weight" in report.ignored
    assert "visual_transformer.vq._codebook.embed" in report.ignored
    assert set(report.loaded) == {k for k in enc.state_dict() if not k.startswith("fc.")}
    with torch.no_grad():
        ours = enc.forward_tokens(ctclip["input"])
    ref = ctclip["tokens"]
    assert ours.shape == ref.shape == (2, 4, 4, 4, 32)
    assert ((ours - ref).norm() / ref.norm()).item() <= 1e-4


def test_bare_ctvit_state_dict_loads_the_same(ctclip, tmp_path):
    enc = CTViTEncoder(ctclip["config"]).eval()
    save_file(ctclip["state"], str(tmp_path / "ctvit.safetensors"))
    report = load_ctclip_ctvit(enc, tmp_path / "ctvit.safetensors")
    assert "vq._codebook.embed" in report.ignored and "to_pixels.0.weight" in report.ignored
    with torch.no_grad():
        torch.testing.assert_close(enc.forward_tokens(ctclip["input"]), ctclip["tokens"], rtol=1e-4, atol=1e-4)


def _load_error(state: dict[str, torch.Tensor], path: Path, config: CTViTConfig, **kw) -> str:
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_ctclip_ctvit(CTViTEncoder(config), path, **kw)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_missing_and_unknown_ctclip_keys_are_named(ctclip, tmp_path):
    whole = {f"visual_transformer.{k}": v for k, v in ctclip["state"].items()}
    del whole["visual_transformer.enc_temporal_transformer.layers.1.1.to_q.weight"]
    message = _load_error(whole, tmp_path / "partial.pt", ctclip["config"])
    assert message.endswith("): missing [1]: visual_transformer.enc_temporal_transformer.layers.1.1.to_q.weight")
    odd = ctclip["state"] | {"enc_spatial_transformer.layers.0.9.weight": torch.zeros(1)}
    message = _load_error(odd, tmp_path / "odd.pt", ctclip["config"])
    assert message.endswith("not known to the CT-CLIP CTViT mapping [1]: enc_spatial_transformer.layers.0.9.weight")
    report = load_ctclip_ctvit(CTViTEncoder(ctclip["config"]), tmp_path / "odd.pt", strict=False)
    assert report.unexpected == ["enc_spatial_transformer.layers.0.9.weight"]
    bert = {"model.embeddings.word_embeddings.weight": torch.zeros(5, 4), "classifier.weight": torch.zeros(18, 4)}
    message = _load_error(bert, tmp_path / "radbert.pt", ctclip["config"])
    assert "mapping [2]: classifier.weight, model.embeddings.word_embeddings.weight" in message


def test_ctclip_weights_of_other_hyperparameters_are_refused(ctclip, tmp_path):
    cfg = ctclip["config"]
    file_desc = "file: dim 32, 32 voxels per tubelet, 2 spatial + 2 temporal blocks, 2 heads x 8, feed-forward 85"
    shallow = CTViTConfig(**{**cfg.__dict__, "temporal_depth": 1})
    message = _load_error(ctclip["state"], tmp_path / "deep.pt", shallow)
    assert f"({file_desc}; config: dim 32, 32 voxels per tubelet, 2 spatial + 1 temporal blocks" in message
    assert "unexpected [12]: enc_temporal_transformer.layers.1.0.dsconv.bias" in message
    wide = CTViTConfig(**{**cfg.__dict__, "dim": 48})
    message = _load_error(ctclip["state"], tmp_path / "narrow.pt", wide)
    assert "config: dim 48, 32 voxels per tubelet" in message
    assert "shape mismatch [" in message
    assert "enc_spatial_transformer.layers.0.0.dsconv.bias (model (48,), checkpoint (32,))" in message
    heads = CTViTConfig(**{**cfg.__dict__, "heads": 4, "dim_head": 4})  # same inner width 16
    message = _load_error(ctclip["state"], tmp_path / "heads.pt", heads)
    assert "config: dim 32, 32 voxels per tubelet, 2 spatial + 2 temporal blocks, 4 heads x 4" in message
    assert "enc_spatial_transformer.layers.0.1.k_scale (model (4,), checkpoint (8,))" in message
    assert "spatial_rel_pos_bias.net.2.bias (model (4,), checkpoint (2,))" in message


def test_ctclip_tensors_that_would_change_the_tokens_are_refused(ctclip, tmp_path):
    beta = dict(ctclip["state"])
    beta["enc_spatial_transformer.norm_out.beta"] = torch.full_like(beta["enc_spatial_transformer.norm_out.beta"], 0.1)
    message = _load_error(beta, tmp_path / "beta.pt", ctclip["config"])
    assert message.endswith("cannot compute: enc_spatial_transformer.norm_out.beta is not zero "
                            "(CTViTEncoder's LayerNorms there have no bias)")
    null_kv = dict(ctclip["state"])
    null_kv["enc_temporal_transformer.layers.0.1.null_kv"] = torch.zeros(2, 4, 8)
    message = _load_error(null_kv, tmp_path / "null_kv.pt", ctclip["config"])
    assert message.endswith("enc_temporal_transformer.layers.0.1.null_kv holds 2 null key/values "
                            "(CTViTEncoder has none)")
