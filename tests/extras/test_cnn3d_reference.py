"""ctagrg.extras.cnn3d computes what the encoder computed as the one module ``ctagrg.models.cnn3d`` with its flat
config: the same state-dict layout, stem measurements and embeddings, bit for bit, from the flat config converted
by ``convert_legacy_cnn3d``; and the demo's committed configs are exactly the conversion of their old sections.
Reference: data/cnn3d_reference.safetensors (data/README.md gives the command that wrote it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from ctagrg.config import from_dict
from ctagrg.extras.cnn3d.config import CNN3DConfig, convert_legacy_cnn3d
from ctagrg.extras.cnn3d.encoder import CNN3DEncoder
from ctagrg.utils.array_memo import ArrayMemo

DATA = Path(__file__).parent / "data" / "cnn3d_reference.safetensors"
CONFIGS = Path(__file__).parents[2] / "configs" / "demo"


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(DATA), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _encoder(reference, name: str) -> CNN3DEncoder:  # noqa: ANN001
    tensors, meta = reference
    flat = json.loads(meta["tiny"])[name]
    enc = CNN3DEncoder(from_dict(CNN3DConfig, convert_legacy_cnn3d(flat)))
    prefix = f"{name}.state."
    enc.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    return enc


@pytest.mark.parametrize("name", ["all", "profile"])
def test_the_moved_encoder_reproduces_the_old_one_bit_for_bit(reference, name: str) -> None:
    tensors, _ = reference
    x = tensors["volume"]
    batch = torch.cat([x, x.flip(3)])
    enc = _encoder(reference, name)
    assert torch.equal(enc.stem.measure(x), tensors[f"{name}.measure"])
    torch.manual_seed(1)
    assert torch.equal(enc.train()(batch), tensors[f"{name}.h_train"])
    enc.eval()
    with torch.no_grad():
        out = enc.encode(batch)
        assert torch.equal(out.features, tensors[f"{name}.h_eval"])
        assert torch.equal(out.diagnostics["outlier_fraction"], tensors[f"{name}.outlier_fraction"])
        assert out.parts == enc.config.halves and out.diagnostics["outlier_fraction"].min() > 0
        assert torch.equal(enc(batch), tensors[f"{name}.h_eval"])  # forward is encode's features
        # with a memo, the second pass serves the sphere and node channels from it, and gives the same values
        memo = ArrayMemo(2**20)
        enc.set_memo(memo)
        first, second = enc(batch), enc(batch)
    assert memo.hits == 2 and len(memo) == 2
    assert torch.equal(first, tensors[f"{name}.h_eval"]) and torch.equal(second, first)


@pytest.mark.parametrize("stage", ["pretrain", "classifier"])
def test_the_demo_configs_are_their_old_sections_converted_with_the_same_sizes(reference, stage: str) -> None:
    from ctagrg.models.preprocess_match import with_preprocess
    from ctagrg.models.step1 import VisualModelConfig

    old = json.loads(reference[1]["demo"])[stage]
    model = yaml.safe_load((CONFIGS / f"{stage}.yaml").read_text())["model"]
    # the window and voxel size the old sections restated now come from the preprocessing (configs/demo/preprocess)
    filled = with_preprocess(from_dict(VisualModelConfig, model), yaml.safe_load((CONFIGS / "preprocess.yaml")
                                                                                   .read_text()))
    section = {k: v for k, v in filled.extras["cnn3d"].items() if k in convert_legacy_cnn3d(old["section"])}
    assert section == from_dict_roundtrip(convert_legacy_cnn3d(old["section"]))
    cfg = from_dict(CNN3DConfig, filled.extras["cnn3d"])
    enc = CNN3DEncoder(cfg)
    want = old["derived"]
    got = {"stem_channels": cfg.stem_channels, "measure_channels": enc.stem.measure_channels,
           "blob_channels": cfg.blob_channels, "sphere_channels": cfg.sphere_channels, "part_dim": cfg.part_dim,
           "pooled_dim": cfg.pooled_dim, "out_dim": cfg.out_dim, "halves": cfg.halves, "grid": list(cfg.grid),
           "lung_bins": cfg.lung_bins, "solid_bins": cfg.solid_bins,
           "blob_offsets": [[list(o) for o in shell] for shell in cfg.blob.offsets(cfg.voxel_mm)],
           "shapes": {k: list(v) for k, v in cfg.shapes().items()},
           "state": {k: list(v.shape) for k, v in enc.state_dict().items()}}
    assert got == want
    assert list(got["state"]) == list(want["state"])  # the same keys in the same order


def from_dict_roundtrip(section: dict) -> dict:
    """``section`` as a resolved config writes it (defaults filled in, tuples as lists), restricted to its keys."""
    from ctagrg.config import to_dict

    full = to_dict(from_dict(CNN3DConfig, section))
    return {k: full[k] for k in section}


def test_converting_keeps_a_converted_section_and_old_keys_name_their_new_place() -> None:
    flat = {"width": 4, "context": True, "context_patches": 1, "blob": False, "node_hu": [-400.0, -20.0]}
    nested = convert_legacy_cnn3d(flat)
    assert nested == {"width": 4, "context": {"enabled": True, "patches": 1}, "blob": {"enabled": False},
                      "node": {"hu": [-400.0, -20.0]}}
    assert convert_legacy_cnn3d(nested) == nested
    with pytest.raises(ValueError, match=r"model.cnn3d.context_patches: moved to context.patches .*convert_legacy"):
        from_dict(CNN3DConfig, flat, where="model.cnn3d")
