"""cnn3d's sphere stem channel (``channels.sphere``, ``CNN3DConfig.sphere``): per patch, the best isolated solid
sphere of the nodule measurement's finder, scored by the lung on a 98-point shell plus a radius term. A nodule in
lung scores 1 + weight x radius / cap at its patch; a vessel scores less; the channel commutes with flips exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stem_fixtures import HU, MM, SHAPE, ball, points_mm, preprocessed

from ctagrg.data.augment import AugmentDraw, apply_augmentation
from ctagrg.extras.cnn3d.channels.sphere import SPHERE_DIRECTIONS, SphereConfig
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.encoder import CNN3DEncoder
from ctagrg.extras.cnn3d.stem import HUBinStem
from ctagrg.extras.nodule.measure import DIRECTIONS, shell_directions
from ctagrg.models.preprocess_match import encoder_preprocess_mismatches
from ctagrg.utils.array_memo import ArrayMemo


def _config(**sphere) -> CNN3DConfig:
    return CNN3DConfig(input_shape=SHAPE, input_hu=HU, width=2, region_grid=2, embed_dim=0, voxel_mm=MM,
                       sphere=SphereConfig(**{"enabled": True, **sphere}))


def _vessel(hu: np.ndarray, start_mm, end_mm, radius_mm: float) -> None:
    a, b = np.asarray(start_mm, float), np.asarray(end_mm, float)
    p = points_mm()
    t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0.0, 1.0)
    hu[np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1) <= radius_mm] = 40.0


def test_shell_directions_are_unit_vectors_closed_under_flips():
    d = shell_directions(2)
    assert d.shape == (98, 3) and np.allclose(np.linalg.norm(d, axis=1), 1.0)
    assert len({tuple(np.round(v, 9)) for v in d}) == 98  # one point per direction
    for axis in range(3):
        flipped = d.copy()
        flipped[:, axis] *= -1
        assert {tuple(np.round(v, 9)) for v in flipped} == {tuple(np.round(v, 9)) for v in d}
    assert np.array_equal(shell_directions(1), DIRECTIONS) and DIRECTIONS.shape == (26, 3)
    assert np.array_equal(SPHERE_DIRECTIONS, d)
    # a direction's nearest neighbour lies 16-27 degrees away (26 directions: 35-45)
    for dirs, widest in ((d, 27.0), (DIRECTIONS, 45.1)):
        cos = dirs @ dirs.T
        np.fill_diagonal(cos, -1.0)
        assert np.degrees(np.arccos(cos.max(1))).max() < widest


def test_a_nodule_in_lung_scores_its_radius_term_above_one_and_a_vessel_less():
    cfg = _config()
    stem = HUBinStem(cfg)
    hu = np.full(SHAPE, -860.0)
    ball(hu, (32.0, 16.0, 16.0), 4.0)  # an 8 mm nodule centred on voxel (8, 8, 8)
    _vessel(hu, (0.0, 40.0, 10.0), (64.0, 62.0, 54.0), 3.0)  # an oblique 6 mm vessel through the volume
    measured = stem.measure(preprocessed(hu))
    assert measured.shape == (1, stem.measure_channels, 8, 8, 8)
    assert stem.measure_channels == len(cfg.hu_edges) + 3 + 1
    sphere = measured[0, -1]
    # the nodule: all 98 shell points in lung, so 1 + weight x radius / cap, where the finder's radius (the distance
    # to the nearest voxel centre outside) is ~4 mm
    radius_mm = (float(sphere[4, 2, 2]) - 1.0) / cfg.sphere.radius_weight * cfg.sphere.radius_cap_mm
    assert sphere[4, 2, 2] == sphere.max() and 3.9 <= radius_mm <= 4.5
    vessel = sphere.clone()
    vessel[3:6, 1:4, 1:4] = 0.0  # the nodule's patches
    # the vessel's candidates are as wide (radius term up to the nodule's) but its own course blocks some of their
    # shell points (fraction ~0.94), so its best patch scores clearly lower
    assert 0.0 < vessel.max() < sphere[4, 2, 2] - 0.04
    assert (sphere == 0).float().mean() > 0.8  # patches without a candidate (open lung) read 0


def test_small_candidates_and_solid_outside_lung_do_not_score_one():
    stem = HUBinStem(_config())
    hu = np.full(SHAPE, -860.0)
    hu[8, 8, 12] = 40.0  # a one-voxel speck: its distance transform (2 mm) is under sphere.min_radius_mm (2.7)
    hu[:, :, -5:] = 45.0  # a 10 mm chest wall
    sphere = stem.measure(preprocessed(hu))[0, -1]
    assert sphere[:, :, :6].max() == 0.0  # no candidate at the speck (patch (4, 2, 3)) or in open lung
    assert 0.5 < sphere[:, :, 6:].max() < 1.0  # the chest wall: lung on one side only


@pytest.mark.parametrize("draw", [AugmentDraw(flip_axis=1), AugmentDraw(flip_axis=0), AugmentDraw(flip_axis=2),
                                  AugmentDraw(rot90=1)])
def test_the_sphere_channel_commutes_with_flips_and_rotations_exactly(draw):
    stem = HUBinStem(_config())
    rng = np.random.default_rng(0)
    hu = np.full(SHAPE, -860.0) + rng.normal(0.0, 30.0, SHAPE)
    ball(hu, (20.0, 18.0, 40.0), 5.0)
    ball(hu, (44.0, 48.0, 12.0), 3.5)
    _vessel(hu, (0.0, 10.0, 20.0), (64.0, 50.0, 60.0), 2.8)
    v = preprocessed(hu)
    expected = stem.measure(apply_augmentation(v[0], draw, -0.449)[None])
    got = apply_augmentation(stem.measure(v)[0], draw, stem.measure_padding(-0.449), scale=(2, 4, 4))[None]
    assert torch.equal(got, expected)
    assert expected[0, -1].max() > 1.0


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the pool path: each volume of a batch on its own thread
    yield
    torch.set_num_threads(before)


def test_a_batch_is_measured_on_threads_and_remembered_by_contents(two_threads):
    memo = ArrayMemo(2**20)
    stem = HUBinStem(_config(), memo)
    rng = np.random.default_rng(1)
    volumes = []
    for k in range(3):
        hu = np.full(SHAPE, -860.0) + rng.normal(0.0, 30.0, SHAPE)
        ball(hu, (16.0 + 8 * k, 20.0, 30.0), 3.0 + k)
        volumes.append(preprocessed(hu))
    batch = torch.cat(volumes)
    alone = [stem.measure(v)[0, -1] for v in volumes]  # 3 misses, one volume at a time
    assert memo.hits == 0 and len(memo) == 3
    together = stem.measure(batch)[:, -1]  # all three from the memo
    assert memo.hits == 3 and len(memo) == 3
    assert all(torch.equal(a, t) for a, t in zip(alone, together, strict=True))
    fresh = HUBinStem(_config()).measure(batch)[:, -1]  # no memo: recomputed, on two threads
    assert torch.equal(fresh, together) and fresh[0].max() > 1.0 and memo.hits == 3
    # another setting is another key: a smaller radius weight changes the channel, and is not served the old one
    other = HUBinStem(_config(radius_weight=0.25), memo).measure(batch)[:, -1]
    assert not torch.equal(other, fresh) and len(memo) == 6 and memo.hits == 3


def test_the_encoder_widens_by_the_sphere_channel_and_config_errors():
    plain = CNN3DConfig(input_shape=SHAPE, input_hu=HU, width=2, region_grid=2, embed_dim=0)
    cfg = _config()
    assert cfg.stem_channels == plain.stem_channels + 1
    assert cfg.out_dim == plain.out_dim + 2 * 8  # the stem's max and mean on its 8 regions, for the one channel
    hu = np.full(SHAPE, -860.0)
    ball(hu, (32.0, 16.0, 16.0), 5.0)
    assert CNN3DEncoder(cfg).eval()(preprocessed(hu)).shape == (1, cfg.out_dim)
    with pytest.raises(ValueError, match=r"sphere: hu must increase"):
        _config(hu=(-400.0, -700.0))
    with pytest.raises(ValueError, match=r"min_radius_mm and radius_cap_mm positive"):
        _config(min_radius_mm=0.0)


def test_a_sphere_encoder_is_checked_against_the_preprocessing_spacing():
    cfg = _config()
    preprocess = {"shape": list(SHAPE), "hu_min": HU[0], "hu_max": HU[1], "offset": HU[2], "spacing": [4.0, 2.0, 2.0]}
    assert encoder_preprocess_mismatches(cfg, preprocess) == []
    problems = encoder_preprocess_mismatches(cfg, preprocess | {"spacing": [1.5, 0.75, 0.75]})
    assert len(problems) == 1 and "voxel_mm [4.0, 2.0, 2.0]" in problems[0] and "[1.5, 0.75, 0.75]" in problems[0]
