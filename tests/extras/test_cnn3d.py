"""The small 3D CNN encoder (demo): HU-bin stem values, shapes, side-awareness, config errors, registry, the typed
output and the feature-map hook point."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ctagrg.config import to_dict
from ctagrg.extras.cnn3d.channels.context import ContextConfig
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.encoder import OUTLIER_SD, CNN3DEncoder
from ctagrg.extras.cnn3d.stem import HUBinStem
from ctagrg.models.encoder_output import encode
from ctagrg.models.registry import create_encoder
from ctagrg.models.step1 import PretrainModel, Step1Model, VisualModelConfig
from ctagrg.utils.array_memo import ArrayMemo

SMALL = {"input_shape": (8, 16, 16), "input_hu": (-1000.0, 1500.0, 0.449), "width": 2, "embed_dim": 32,
         "region_grid": 2}


def _preprocessed(hu: np.ndarray, cfg: CNN3DConfig) -> torch.Tensor:
    lo, hi, off = cfg.input_hu
    return torch.from_numpy(((hu - lo) / (hi - lo) - off).astype(np.float32))[None, None]


def test_stem_matches_a_numpy_reference() -> None:
    cfg = CNN3DConfig(**SMALL)
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, (8, 16, 16)).astype(np.float32)
    out = HUBinStem(cfg)(torch.cat([_preprocessed(hu, cfg), _preprocessed(hu[::-1].copy(), cfg)])).numpy()
    assert out.shape == (2, cfg.stem_channels, 4, 4, 4)
    patches = hu.reshape(4, 2, 4, 4, 4, 4)
    bins = np.digitize(patches, cfg.hu_edges)
    fractions = np.stack([(bins == k).mean(axis=(1, 3, 5)) for k in range(len(cfg.hu_edges) + 1)])
    np.testing.assert_allclose(out[0, :-2], np.sqrt(fractions), atol=1e-6)
    np.testing.assert_allclose(out[0, -2], patches.mean(axis=(1, 3, 5)) / 1000.0, atol=2e-4)
    np.testing.assert_allclose(out[0, -1], patches.max(axis=(1, 3, 5)) / 1000.0, atol=2e-4)
    np.testing.assert_allclose(out[0, :-2].__pow__(2).sum(0), 1.0, atol=1e-6)  # every voxel is in one bin
    # the second sample (flipped along D) is binned on its own, not mixed with the first
    np.testing.assert_allclose(out[1, :-2], out[0, :-2][:, ::-1], atol=1e-6)


def test_stem_sees_calcium_that_a_soft_tissue_window_would_clip() -> None:
    cfg = CNN3DConfig(**SMALL)
    hu = np.full((8, 16, 16), 40.0, np.float32)
    hu[0, 0, 0] = 1100.0  # one calcified voxel in the first patch
    out = HUBinStem(cfg)(_preprocessed(hu, cfg))[0]
    calcium = cfg.hu_edges.index(900.0) + 1
    assert out[calcium, 0, 0, 0].item() == pytest.approx(np.sqrt(1 / 32), abs=1e-6)
    assert out[calcium].sum().item() == pytest.approx(np.sqrt(1 / 32), abs=1e-6)
    assert out[-1, 0, 0, 0].item() == pytest.approx(1.1, abs=0.01)


def test_encoder_shapes_and_registry() -> None:
    enc = create_encoder("cnn3d", **SMALL)
    assert isinstance(enc, CNN3DEncoder)
    enc.eval()
    h = enc(torch.zeros(3, 1, 8, 16, 16))
    assert h.shape == (3, 32)
    assert enc.forward_features(torch.zeros(1, 1, 8, 16, 16)).shape == (1, enc.config.pooled_dim)
    assert enc.shapes["stage3"] == (16, 1, 1, 1)
    with pytest.raises(ValueError, match=r"expected \(B, 1, 8, 16, 16\)"):
        enc(torch.zeros(1, 1, 8, 16, 8))


def test_pooled_features_know_left_from_right() -> None:
    """A bright blob in the left half and its mirror image in the right half give different features."""
    cfg = CNN3DConfig(**SMALL)
    torch.manual_seed(0)
    enc = CNN3DEncoder(cfg).eval()
    hu = np.full((8, 16, 16), -860.0, np.float32)
    left = hu.copy()
    left[2:6, 10:14, 4:8] = 40.0  # SLP: axis 1 grows toward the patient's left
    right = left[:, ::-1].copy()
    with torch.no_grad():
        fl = enc.forward_features(_preprocessed(left, cfg))
        fr = enc.forward_features(_preprocessed(right, cfg))
    assert not torch.allclose(fl, fr)
    # globally pooled parts (the CNN's global max) are mirror-invariant only up to the learned kernels; the stem's
    # region statistics are exactly mirrored: the left region's values move to the right region
    n_stem = 2 * cfg.stem_channels * cfg.region_grid**3
    stem_l = fl[0, -n_stem:].view(2, cfg.stem_channels, 2, 2, 2)
    stem_r = fr[0, -n_stem:].view(2, cfg.stem_channels, 2, 2, 2)
    torch.testing.assert_close(stem_l, stem_r.flip(3))


def test_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    enc = CNN3DEncoder(CNN3DConfig(**{**SMALL, "dropout": 0.0}))
    x = torch.randn(2, 1, 8, 16, 16) * 0.3
    enc(x).square().sum().backward()
    plain = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    enc.gradient_checkpointing_enable()
    enc(x).square().sum().backward()
    for a, p in zip(plain, enc.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("bad, message", [
    ({"input_shape": (8, 16, 12)}, "W=12 is not divisible"),
    ({"hu_edges": (0.0, -100.0)}, "hu_edges must increase"),
    ({"input_hu": (100.0, -100.0, 0.0)}, "hu_max must exceed hu_min"),
])
def test_config_errors(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CNN3DConfig(**{**SMALL, **bad})


def test_visual_models_build_on_cnn3d_and_save_only_its_section(tmp_path) -> None:
    cfg = VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(CNN3DConfig(**SMALL))})
    cfg.heads.in_dim = 32
    cfg.heads.embed_dim = 16
    model = Step1Model(cfg).eval()
    out = model(torch.zeros(2, 1, 8, 16, 16))
    assert out["logits"].shape == (2, 18) and out["embeddings"].shape == (2, 18, 16)
    data = model.config_dict()
    assert data["encoder"] == "cnn3d" and "ctnet" not in data and "ctvit" not in data
    assert data["extras"] == {"cnn3d": to_dict(CNN3DConfig(**SMALL))}  # the plug-in's section, defaults filled in
    assert PretrainModel(cfg).eval()(torch.zeros(1, 1, 8, 16, 16))["logits"].shape == (1, 18)
    with pytest.raises(ValueError, match="expected one of ctnet, ctvit, cnn3d"):
        Step1Model(VisualModelConfig(encoder="resnet3d"))


def test_embed_dim_zero_makes_the_pooled_features_the_embedding() -> None:
    cfg = CNN3DConfig(**{**SMALL, "embed_dim": 0})
    enc = CNN3DEncoder(cfg).eval()
    assert enc.fc is None and cfg.out_dim == cfg.pooled_dim == enc.shapes["embedding"][0]
    x = torch.randn(2, 1, 8, 16, 16) * 0.3
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.norm(enc.forward_features(x)))
    vis = VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(cfg)})
    vis.heads.in_dim, vis.heads.pretrain_hidden = cfg.pooled_dim, ()
    model = PretrainModel(vis).eval()
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(cfg.pooled_dim, 18)]  # a linear read-out
    vis.heads.in_dim = 32
    with pytest.raises(ValueError, match=f"embedding width {cfg.pooled_dim} .* != heads.in_dim 32"):
        PretrainModel(vis)


def test_a_training_batch_of_one_uses_the_running_statistics() -> None:
    """The last, partial batch of an epoch can hold one volume: BatchNorm1d has no batch statistics for it."""
    torch.manual_seed(0)
    enc = CNN3DEncoder(CNN3DConfig(**{**SMALL, "dropout": 0.0, "input_shape": (16, 32, 32)}))
    enc.train()
    enc(torch.randn(4, 1, 16, 32, 32) * 0.3)  # updates the running statistics
    before = enc.norm.running_mean.clone()
    x = torch.randn(1, 1, 16, 32, 32) * 0.3
    h = enc(x)
    assert h.shape == (1, 32)
    torch.testing.assert_close(enc.norm.running_mean, before)  # not updated by the single volume
    h.sum().backward()
    assert enc.fc.weight.grad is not None


def test_model_card_states_the_window_the_encoder_expects(tmp_path) -> None:
    cfg = VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(CNN3DConfig(**SMALL))})
    cfg.heads.in_dim, cfg.heads.embed_dim = 32, 8
    card = (Step1Model(cfg).save_pretrained(tmp_path / "m") / "README.md").read_text()
    assert "HU windowed to [-1000, 1500], mapped to [0, 1] then minus 0.449" in card
    assert "not for diagnostic use" in card


def test_context_channels_mark_solid_tissue_surrounded_by_lung() -> None:
    """Stem grid 8x8x8 (patch 2x4x4 on 16x32x32): a solid 8 mm patch inside lung scores 1 x 1; the same patch
    against soft tissue (the body wall) scores by the lung fraction around it only; values by hand."""
    cfg = CNN3DConfig(input_shape=(16, 32, 32), input_hu=(-1000.0, 1500.0, 0.449), width=2, region_grid=2,
                      embed_dim=0, context=ContextConfig(enabled=True))
    assert cfg.stem_channels == 16 and cfg.lung_bins == [0, 1, 2] and cfg.solid_bins == [6, 7, 8]
    hu = np.full((16, 32, 32), -860.0, np.float32)  # lung everywhere
    hu[8:10, 8:12, 8:12] = 40.0  # one solid stem patch (grid (4, 2, 2)) surrounded by lung
    hu[:, :, 28:] = 45.0  # a soft-tissue wall: the last stem column (grid w = 7)
    hu[8:10, 8:12, 24:28] = 40.0  # a solid patch touching it (grid (4, 2, 6))
    stem = HUBinStem(cfg)(_preprocessed(hu, cfg))[0]
    around, isolated = stem[-2], stem[-1]
    assert isolated[4, 2, 2].item() == pytest.approx(1.0)
    # the wall patch: 5 of its 6 neighbours two patches away are lung, the one at w = 8 is past the edge and
    # replicates the wall column (w = 7, soft tissue)
    assert around[4, 2, 6].item() == pytest.approx(5 / 6)
    assert isolated[4, 2, 6].item() == pytest.approx(5 / 6)
    assert isolated[0, 0, 0].item() == 0.0  # lung is not solid
    enc = CNN3DEncoder(cfg).eval()
    with torch.no_grad():
        assert enc.forward_features(_preprocessed(hu, cfg)).shape == (1, cfg.pooled_dim)
    with pytest.raises(ValueError, match="lung_hu_max: -700 HU is not one of hu_edges"):
        CNN3DConfig(context=ContextConfig(enabled=True), lung_hu_max=-700.0)


def test_encode_gives_the_halves_and_the_outlier_fraction_in_eval_mode_only() -> None:
    torch.manual_seed(0)
    enc = CNN3DEncoder(CNN3DConfig(**{**SMALL, "input_shape": (8, 32, 16), "lateral_halves": True, "embed_dim": 0}))
    x = torch.randn(3, 1, 8, 32, 16) * 0.3
    train = enc.encode(x)
    assert train.features.shape == (3, enc.config.out_dim) and train.parts == 2 and train.diagnostics == {}
    enc.eval()
    with torch.no_grad():
        enc.norm.running_var.fill_(1e-4)  # many standardised features now lie beyond OUTLIER_SD
        out = encode(enc, x)  # the core's entry point calls the encoder's own encode
    h = enc.norm((enc.forward_features(x)).view(6, -1)).view(3, -1)
    expected = (h.abs() > OUTLIER_SD).float().mean(1)
    assert 0.2 < expected.min() and torch.equal(out.diagnostics["outlier_fraction"], expected)
    assert torch.equal(enc.last_outlier_fraction, expected)
    torch.testing.assert_close(out.features, h.clamp(-OUTLIER_SD, OUTLIER_SD))  # clipped at inference
    with pytest.raises(ValueError, match="exactly one of volume and stem"):
        enc.encode()


def test_the_stem_maps_pass_through_feature_map() -> None:
    """The saliency hook point: the stem's maps (B, stem_channels, d, h, w) over the whole volume, which the CNN and
    the pooling both read; replacing them changes the embedding."""
    torch.manual_seed(0)
    enc = CNN3DEncoder(CNN3DConfig(**{**SMALL, "input_shape": (16, 32, 32)})).eval()
    seen = []
    enc.feature_map.register_forward_hook(lambda module, args, out: seen.append(out))
    x = torch.randn(2, 1, 16, 32, 32) * 0.3
    with torch.no_grad():
        h = enc(x)
        assert len(seen) == 1 and tuple(seen[0].shape) == (2, *enc.shapes["stem"]) == (2, 14, 8, 8, 8)
        assert torch.equal(seen[0], enc.stem(x))
        enc.feature_map.register_forward_hook(lambda module, args, out: out * 0)
        assert not torch.equal(enc(x), h)
    assert "feature_map" not in {k.split(".")[0] for k in enc.state_dict()}  # no weights: checkpoints unchanged


def test_the_memo_is_injected_and_shared_by_copies() -> None:
    enc = CNN3DEncoder(CNN3DConfig(**SMALL))
    assert enc.stem.memo is None  # no memo unless one is given
    memo = ArrayMemo(2**20)
    enc.set_memo(memo)
    assert enc.stem.memo is memo and copy.deepcopy(enc).stem.memo is memo  # an EMA shadow uses the same memo
    assert CNN3DEncoder(CNN3DConfig(**SMALL), memo=memo).stem.memo is memo
    assert "memo" not in "".join(enc.state_dict())


def test_the_demo_injects_its_memo_into_the_models_it_builds() -> None:
    from types import SimpleNamespace

    from ctagrg.demo import DemoConfig

    memo = ArrayMemo(1 << 20)
    model = SimpleNamespace(encoder=CNN3DEncoder(CNN3DConfig(**SMALL)))
    assert model.encoder.stem.memo is None  # no memo unless one is injected
    DemoConfig(memo=memo).inject_memo(model)
    assert model.encoder.stem.memo is memo
    DemoConfig().inject_memo(SimpleNamespace(encoder=torch.nn.Linear(2, 2)))  # an encoder without a memo: nothing
