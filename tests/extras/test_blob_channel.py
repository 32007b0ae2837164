"""cnn3d's blob stem channel (``channels.blob``, ``CNN3DConfig.blob``): an isolated solid blob in aerated lung
scores 1, a thin vessel, the chest wall and open lung score 0; the score commutes with flips exactly
(``extras.stem_cache`` relies on it)."""

from __future__ import annotations

import pytest
import torch

from ctagrg.data.augment import AugmentDraw, apply_augmentation
from ctagrg.extras.cnn3d.channels.blob import BlobConfig, blob_score
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.encoder import CNN3DEncoder
from ctagrg.extras.cnn3d.stem import HUBinStem

SHAPE = (16, 32, 32)
HU = (-1000.0, 1500.0, 0.449)


def _config(**blob) -> CNN3DConfig:
    return CNN3DConfig(input_shape=SHAPE, input_hu=HU, width=2, region_grid=2, embed_dim=0, voxel_mm=(4.0, 2.0, 2.0),
                       blob=BlobConfig(**{"enabled": True, "radii_mm": (8.0, 12.0), **blob}))


def _score(stem: HUBinStem, bins: torch.Tensor) -> torch.Tensor:
    """The stem's blob score at full resolution, before its maximum per patch."""
    cfg = stem.config
    return blob_score(bins, cfg.blob, cfg.voxel_mm, len(cfg.lung_bins), cfg.solid_bins)


def _preprocessed(hu: torch.Tensor) -> torch.Tensor:
    lo, hi, off = HU
    return ((hu - lo) / (hi - lo) - off)[None, None]


def _lung() -> torch.Tensor:
    """(D, H, W) HU: aerated lung (-860) with a soft-tissue chest wall along the last 4 voxels of W."""
    hu = torch.full(SHAPE, -860.0)
    hu[:, :, -4:] = 45.0
    return hu


def _ball(hu: torch.Tensor, center: tuple[int, int, int], radius_mm: float, value: float = 40.0) -> None:
    d, h, w = torch.meshgrid(*(torch.arange(n) for n in SHAPE), indexing="ij")
    r2 = ((d - center[0]) * 4.0) ** 2 + ((h - center[1]) * 2.0) ** 2 + ((w - center[2]) * 2.0) ** 2
    hu[r2 <= radius_mm**2] = value


def test_an_isolated_blob_scores_one_and_vessels_wall_and_lung_score_zero():
    stem = HUBinStem(_config())
    hu = _lung()
    _ball(hu, (8, 8, 12), 7.0)  # a 14 mm nodule
    hu[:, 22:24, 12:14] = 40.0  # a 4 mm vessel running through every slice
    score = _score(stem, torch.bucketize(_preprocessed(hu)[:, 0], (stem.edges - HU[0]) / (HU[1] - HU[0]) - HU[2]))
    assert score.shape == (1, 1, *SHAPE)
    assert score[0, 0, 8, 8, 12] == 1.0  # the nodule's centre: solid after erosion, lung all around
    assert score[0, 0, :, 20:26, 10:16].max() == 0.0  # the vessel does not survive the erosion
    assert 0.0 < score[0, 0, :, :, -4:].max() < 0.5  # the chest wall: solid, but lung on one side only
    assert score[0, 0, :, 24:, :8].max() == 0.0  # open lung: not solid
    # measured per patch (max), the nodule's patch holds it and the channel is the stem's last measurement
    measured = stem.measure(_preprocessed(hu))
    assert measured.shape == (1, stem.measure_channels, 8, 8, 8) and stem.measure_channels == len(stem.edges) + 4
    assert measured[0, -1, 4, 2, 3] == 1.0
    assert (measured[0, -1] > 0.5).sum() < 8  # only the nodule's few patches


@pytest.mark.parametrize("draw", [AugmentDraw(flip_axis=1), AugmentDraw(flip_axis=0), AugmentDraw(flip_axis=2),
                                  AugmentDraw(rot90=1)])
def test_the_blob_score_commutes_with_flips_and_rotations_exactly(draw):
    stem = HUBinStem(_config())
    g = torch.Generator().manual_seed(0)
    hu = _lung() + torch.randn(SHAPE, generator=g) * 30.0
    _ball(hu, (5, 9, 20), 9.0)
    _ball(hu, (11, 24, 6), 6.0)
    v = _preprocessed(hu)
    expected = stem.measure(apply_augmentation(v[0], draw, -0.449)[None])
    got = apply_augmentation(stem.measure(v)[0], draw, stem.measure_padding(-0.449), scale=(2, 4, 4))[None]
    assert torch.equal(got, expected)
    assert expected[0, -1].max() == 1.0


def test_a_whole_patch_shift_changes_the_score_only_near_the_border():
    """Outside the volume is neither lung nor solid, so a shifted volume's score differs from the shifted score at
    most within the shell's reach of the new border (the stem_cache extension's runs equal uncached ones up to that)."""
    stem = HUBinStem(_config())
    hu = _lung()
    _ball(hu, (8, 14, 14), 8.0)
    v = _preprocessed(hu)
    draw = AugmentDraw((2, 4, 0))
    expected = stem.measure(apply_augmentation(v[0], draw, -0.449)[None])[0, -1]
    got = apply_augmentation(stem.measure(v)[0], draw, stem.measure_padding(-0.449), scale=(2, 4, 4))[-1]
    # the shell reaches 12 mm (3 voxels along D, 6 along H) and the erosion one voxel more: patches further than
    # that from both ends of the shifted axes are the same
    assert torch.equal(got[3:-2, 3:-2], expected[3:-2, 3:-2])
    assert not torch.equal(got, expected)  # near the borders they are not (so the test above compares something)
    assert got.max() == expected.max() == 1.0


def test_the_encoder_widens_by_the_blob_channel_and_config_errors():
    plain = CNN3DConfig(input_shape=SHAPE, input_hu=HU, width=2, region_grid=2, embed_dim=0)
    cfg = _config()
    assert cfg.stem_channels == plain.stem_channels + 1
    enc = CNN3DEncoder(cfg).eval()
    assert enc(_preprocessed(_lung())).shape == (1, cfg.out_dim)
    assert cfg.out_dim == plain.out_dim + 2 * 8  # the stem's max and mean on its 8 regions, for the one channel
    with pytest.raises(ValueError, match=r"blob: erosion must be odd"):
        _config(erosion=(2, 3, 3))
    with pytest.raises(ValueError, match=r"radii_mm positive"):
        _config(radii_mm=())
    with pytest.raises(ValueError, match=r"voxel_mm must be positive with the blob, sphere or node channel"):
        CNN3DConfig(input_shape=SHAPE, voxel_mm=(4.0, 0.0, 2.0), blob=BlobConfig(enabled=True))


def test_the_blob_profile_scores_each_radius_and_a_nodule_only_on_shells_wider_than_itself():
    """With ``blob.profile`` the channel is one score per radius: a nodule of radius R reads 1 at its centre on the
    shells wider than R and less on narrower ones, so which shells fire carries its size; their maximum is the
    plain blob score."""
    radii = (4.0, 8.0, 12.0, 16.0)
    cfg = _config(profile=True, radii_mm=radii)
    stem = HUBinStem(cfg)
    small, large = _lung(), _lung()
    _ball(small, (8, 16, 12), 5.0)  # a 10 mm nodule
    _ball(large, (8, 16, 12), 10.0)  # a 20 mm one

    def profile(hu):
        bins = torch.bucketize(_preprocessed(hu)[:, 0], (stem.edges - HU[0]) / (HU[1] - HU[0]) - HU[2])
        return _score(stem, bins)

    p_small, p_large = profile(small), profile(large)
    assert p_small.shape == (1, len(radii), *SHAPE) and cfg.blob_channels == len(radii)
    centre = (0, slice(None), 8, 16, 12)
    assert p_small[centre].tolist()[1:] == [1.0, 1.0, 1.0]  # lung on every shell from 8 mm out
    assert p_small[centre][0] < 1.0  # the 4 mm shell lies inside the 10 mm nodule
    assert p_large[centre].tolist()[2:] == [1.0, 1.0]  # 12 and 16 mm: outside the 20 mm nodule
    assert p_large[centre][:2].max() == 0.0  # 4 and 8 mm: inside it
    # the maximum over radii is what the plain (best-radius) channel gives
    plain = HUBinStem(_config(radii_mm=radii))
    bins = torch.bucketize(_preprocessed(large)[:, 0], (stem.edges - HU[0]) / (HU[1] - HU[0]) - HU[2])
    assert torch.equal(_score(plain, bins)[:, 0], p_large.amax(1))
    assert stem.measure(_preprocessed(large)).shape[1] == len(stem.edges) + 3 + len(radii)
    assert CNN3DEncoder(cfg).eval()(_preprocessed(large)).shape == (1, cfg.out_dim)
    with pytest.raises(ValueError, match=r"blob.profile needs blob.enabled"):
        CNN3DConfig(input_shape=SHAPE, blob=BlobConfig(profile=True))


def test_the_whole_shell_channel_keeps_small_nodules_and_drops_vessels():
    """``blob.whole_shell_erosion``: one more 0/1 channel, solid eroded by a smaller kernel with lung at all 26
    points of a shell. An 8 mm nodule, which the (3, 3, 3) erosion removes at 4 mm slices, is 1 at its centre; a
    vessel running through every slice (lung surrounds it except along its axis) and the chest wall are 0."""
    cfg = _config(whole_shell_erosion=(1, 3, 3))
    stem = HUBinStem(cfg)
    hu = _lung()
    _ball(hu, (8, 16, 12), 4.0)  # an 8 mm nodule
    hu[:, 26:29, 4:7] = 40.0  # a 6 mm vessel through every slice
    bins = torch.bucketize(_preprocessed(hu)[:, 0], (stem.edges - HU[0]) / (HU[1] - HU[0]) - HU[2])
    score = _score(stem, bins)
    assert score.shape == (1, 2, *SHAPE) and cfg.blob_channels == 2
    assert score[0, 0, 8, 16, 12] == 0.0  # the plain channel: eroded away
    assert score[0, 1, 8, 16, 12] == 1.0  # the whole-shell channel: kept
    assert score[0, 1, :, 24:31, 2:9].max() == 0.0 and score[0, 1, :, :, -4:].max() == 0.0
    # without it, the plain channel is unchanged
    assert torch.equal(_score(HUBinStem(_config()), bins)[:, 0], score[:, 0])
    assert stem.measure(_preprocessed(hu)).shape[1] == len(stem.edges) + 3 + 2
    with pytest.raises(ValueError, match=r"blob.whole_shell_erosion: three odd sizes"):
        _config(whole_shell_erosion=(2, 3, 3))
