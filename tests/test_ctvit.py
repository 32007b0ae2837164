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
    assert "visual_transformer.vq._codebook.embed" not in report.loaded
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
