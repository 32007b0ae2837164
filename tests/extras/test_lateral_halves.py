"""cnn3d's ``lateral_halves`` and the heads that read them: the right and the (mirrored) left half of the chest
pooled apart, read by shared weights, combined by a soft maximum; step 1's embeddings keep both halves."""

from __future__ import annotations

import pytest
import torch

from ctagrg.config import to_dict
from ctagrg.extras.cnn3d.channels.context import ContextConfig
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.encoder import CNN3DEncoder
from ctagrg.extras.halves.heads import HalvesConfig, HalvesHeads, HalvesPretrainHead
from ctagrg.extras.warm_start import warm_start
from ctagrg.models.heads import HeadsConfig
from ctagrg.models.step1 import PretrainModel, Step1Model, VisualModelConfig

SHAPE = (8, 32, 16)


def _encoder(**kw) -> CNN3DEncoder:
    # region_grid 4: a half's stem regions are 4 x 2 x 4, so a half read unmirrored would pool differently
    cfg = CNN3DConfig(input_shape=SHAPE, width=2, region_grid=4, embed_dim=0, context=ContextConfig(enabled=True), **kw)
    torch.manual_seed(0)
    return CNN3DEncoder(cfg).eval()


def _symmetric(encoder: CNN3DEncoder) -> CNN3DEncoder:
    """Make every conv kernel mirror-symmetric along H (the L axis): the CNN then commutes with a left-right flip."""
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.weight.copy_((m.weight + m.weight.flip(3)) / 2)
    return encoder


def test_widths():
    whole = CNN3DConfig(lateral_halves=False, context=ContextConfig(enabled=True), embed_dim=0)
    halves = CNN3DConfig(lateral_halves=True, context=ContextConfig(enabled=True), embed_dim=0)
    c, s = 8 * whole.width, whole.stem_channels
    assert whole.pooled_dim == whole.out_dim == 16 * c + c + s + 2 * s * 64 == 3152
    assert halves.part_dim == 8 * c + c + s + 2 * s * 32  # 4 regions of the CNN maps, 4 x 2 x 4 stem regions
    assert halves.out_dim == halves.pooled_dim == 2 * halves.part_dim == 3232
    assert CNN3DConfig(lateral_halves=True, embed_dim=64).out_dim == 128
    with pytest.raises(ValueError, match="region_grid must be even"):
        CNN3DConfig(lateral_halves=True, region_grid=3)


def test_a_mirrored_volume_swaps_the_halves():
    """h = [right half, left half]; the mirror image of a volume (a finding moved to the other side) gives the same
    two vectors swapped, when the CNN itself commutes with the mirror (symmetric kernels)."""
    enc = _symmetric(_encoder(lateral_halves=True))
    x = torch.rand(2, 1, *SHAPE) - 0.4
    x[:, :, 2:6, 2:8, 4:12] = 0.3  # soft tissue in the right half only (axis 3 grows toward the left)
    with torch.no_grad():
        h, h_mirror = enc(x), enc(x.flip(3))
    half = enc.config.part_dim
    assert h.shape == (2, 2 * half)
    # float32 convolutions sum the mirrored kernel in another order: agreement to rounding, not bit for bit
    torch.testing.assert_close(h_mirror[:, :half], h[:, half:], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(h_mirror[:, half:], h[:, :half], rtol=1e-4, atol=1e-3)
    assert (h[:, :half] - h[:, half:]).abs().max() > 0.1  # the two halves do differ
    # the first half is the right one (low indices along axis 3, SLP): tissue added at the right wall changes its
    # stem statistics and leaves the left half's alone (the CNN features may change on both: at the coarsest maps
    # its receptive field crosses the midline)
    y = x.clone()
    y[:, :, 2:6, 0:4, 12:16] = 0.3
    with torch.no_grad():
        h_y = enc(y)
    cfg = enc.config
    n_stem = cfg.stem_channels * (1 + 2 * cfg.region_grid**3 // 2)  # a half's stem max + region statistics, last
    assert (h_y[:, half - n_stem:half] - h[:, half - n_stem:half]).abs().max() > 0.1
    torch.testing.assert_close(h_y[:, 2 * half - n_stem:], h[:, 2 * half - n_stem:])


def test_the_left_half_is_mirrored():
    """A symmetric pattern (the same blob at the same distance from each side wall) gives two equal halves: the
    left half is read from the lateral wall inward, as the right one is. Unmirrored it would not match."""
    enc = _symmetric(_encoder(lateral_halves=True))
    x = torch.full((1, 1, *SHAPE), -0.4)
    x[:, :, 2:6, 0:4, 4:12] = 0.3  # right lateral wall
    x[:, :, 2:6, 28:32, 4:12] = 0.3  # left lateral wall
    with torch.no_grad():
        h = enc(x)
    half = enc.config.part_dim
    torch.testing.assert_close(h[:, :half], h[:, half:], rtol=1e-4, atol=1e-3)
    x_shifted = torch.full((1, 1, *SHAPE), -0.4)
    x_shifted[:, :, 2:6, 0:4, 4:12] = 0.3
    x_shifted[:, :, 2:6, 16:20, 4:12] = 0.3  # same place within the left half, but not mirrored: next to the midline
    with torch.no_grad():
        h2 = enc(x_shifted)
    assert (h2[:, :half] - h2[:, half:]).abs().max() > 0.1


def test_heads_read_each_half_with_the_same_weights():
    cfg = HeadsConfig(in_dim=2 * 12, embed_dim=4, classifier_hidden=3, pretrain_hidden=(), variant="halves",
                      dropout=0.0)
    halves = HalvesConfig(lateral_halves=True)
    torch.manual_seed(1)
    head, heads = HalvesPretrainHead(cfg, halves).eval(), HalvesHeads(cfg, halves).eval()
    h = torch.randn(3, 24)
    swapped = torch.cat([h[:, 12:], h[:, :12]], dim=1)
    z = head(h)
    per_half = torch.stack([head.net(h[:, :12]), head.net(h[:, 12:])], dim=1)
    torch.testing.assert_close(z, torch.logsumexp(per_half, dim=1))
    torch.testing.assert_close(head(swapped), z)  # which side fired does not change whether it is there
    logits, emb = heads(h)
    logits_s, emb_s = heads(swapped)
    assert emb.shape == (3, 18, 8) and heads.out_dim == 8
    torch.testing.assert_close(emb[..., :4], torch.relu(heads.project(h[:, :12])).view(3, 18, 4))
    torch.testing.assert_close(emb_s[..., :4], emb[..., 4:])  # the embedding says which side fired
    torch.testing.assert_close(logits_s, logits)
    # warm start from the linear pretraining head: step 1 begins with pretraining's logits
    warm_start(heads, head.net[0].weight, head.net[0].bias)
    torch.testing.assert_close(heads(h)[0], z, rtol=1e-5, atol=1e-5)


def test_models_check_that_encoder_and_heads_agree():
    enc = CNN3DConfig(input_shape=SHAPE, width=2, region_grid=2, embed_dim=0, lateral_halves=True)
    heads = HeadsConfig(in_dim=enc.out_dim, embed_dim=4, classifier_hidden=3, pretrain_hidden=(), variant="halves")
    extras = {"cnn3d": to_dict(enc), "halves": {"lateral_halves": True}}
    model = Step1Model(VisualModelConfig(encoder="cnn3d", heads=heads, extras=extras)).eval()
    out = model(torch.rand(2, 1, *SHAPE))
    assert out["logits"].shape == (2, 18) and out["embeddings"].shape == (2, 18, 8)
    assert PretrainModel(VisualModelConfig(encoder="cnn3d", heads=heads, extras=extras)).eval()(
        torch.rand(1, 1, *SHAPE))["logits"].shape == (1, 18)
    with pytest.raises(ValueError, match=r"heads \(halves\) read 1 part\(s\) of the features, the cnn3d encoder "
                                         r"writes 2"):
        Step1Model(VisualModelConfig(encoder="cnn3d", heads=HeadsConfig(in_dim=enc.out_dim, variant="halves"),
                                     extras={**extras, "halves": {"lateral_halves": False}}))
    with pytest.raises(ValueError, match=r"heads \(ctagrg\) read 1 part\(s\) of the features, the cnn3d encoder "
                                         r"writes 2"):
        Step1Model(VisualModelConfig(encoder="cnn3d", heads=HeadsConfig(in_dim=enc.out_dim),
                                     extras={"cnn3d": extras["cnn3d"]}))
