"""cnn3d's node stem channel (``channels.node``, ``CNN3DConfig.node``): the sphere finder with soft tissue as solid,
scored by the fat (and, at ``node.lung_weight``, the lung) on a 98-point shell. An enlarged lymph node in
mediastinal fat scores 1, a tube (the aorta, the esophagus) less, a nodule in lung ``node.lung_weight``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stem_fixtures import HU, MM, SHAPE, ball, points_mm, preprocessed

from ctagrg.data.augment import AugmentDraw, apply_augmentation
from ctagrg.extras.cnn3d.channels.node import NodeConfig
from ctagrg.extras.cnn3d.channels.sphere import SphereConfig
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.stem import HUBinStem
from ctagrg.models.preprocess_match import encoder_preprocess_mismatches

FAT, LUNG, SOFT = -90.0, -860.0, 40.0


def _config(sphere: bool = False, **node) -> CNN3DConfig:
    return CNN3DConfig(input_shape=SHAPE, input_hu=HU, width=2, region_grid=2, embed_dim=0, voxel_mm=MM,
                       sphere=SphereConfig(enabled=sphere), node=NodeConfig(**{"enabled": True, **node}))


def _node(hu: np.ndarray) -> torch.Tensor:
    return HUBinStem(_config()).measure(preprocessed(hu))[0, -1]


def test_a_node_in_fat_scores_one_a_nodule_in_lung_the_lung_weight():
    hu = np.full(SHAPE, FAT)
    ball(hu, (32.0, 32.0, 32.0), 7.0)  # a 14 mm node centred on voxel (8, 16, 16): patch (4, 4, 4)
    node = _node(hu)
    assert node.shape == (8, 8, 8)
    assert node[4, 4, 4] == 1.0 and node.max() == 1.0 and (node == 0).float().mean() > 0.95
    hu = np.full(SHAPE, LUNG)
    ball(hu, (32.0, 32.0, 32.0), 7.0)  # the same ball in lung: a nodule
    assert _node(hu).max() == pytest.approx(_config().node.lung_weight)


def test_a_tube_scores_less_than_a_ball_and_fat_or_small_specks_not_at_all():
    hu = np.full(SHAPE, FAT)
    hu[np.linalg.norm(points_mm()[..., 1:] - np.array([32.0, 32.0]), axis=-1) <= 7.0] = SOFT  # a 14 mm vessel
    tube = _node(hu)
    # along its axis the shell meets the tube itself (about a fifth of the 98 points)
    assert 0.6 < tube.max() < 0.9
    hu = np.full(SHAPE, FAT)
    ball(hu, (32.0, 20.0, 20.0), 3.0)  # a 6 mm speck: its radius is under node.radius_mm's 5
    ball(hu, (32.0, 46.0, 46.0), 7.0, value=-60.0)  # a ball of fat is not solid
    assert _node(hu).max() == 0.0
    hu = np.full(SHAPE, FAT)
    ball(hu, (32.0, 32.0, 32.0), 16.0)  # a 32 mm mass: over node.radius_mm's 13
    assert _node(hu).max() == 0.0


@pytest.mark.parametrize("draw", [AugmentDraw(flip_axis=1), AugmentDraw(flip_axis=2), AugmentDraw(rot90=1)])
def test_the_sphere_and_node_channels_commute_with_flips_exactly(draw):
    stem = HUBinStem(_config(sphere=True))
    rng = np.random.default_rng(0)
    hu = np.full(SHAPE, FAT) + rng.normal(0.0, 10.0, SHAPE)
    hu[:, :16] = LUNG + rng.normal(0.0, 30.0, (16, 16, 32))  # lung on one side, fat on the other
    ball(hu, (24.0, 14.0, 40.0), 5.0)
    ball(hu, (40.0, 44.0, 14.0), 8.0)
    v = preprocessed(hu)
    measured = stem.measure(v)
    assert stem.measure_channels == len(stem.config.hu_edges) + 3 + 2
    sphere, node = measured[0, -2], measured[0, -1]  # the sphere channel first, then the node channel
    assert sphere.max() > 1.0 and node.max() > 0.9
    expected = stem.measure(apply_augmentation(v[0], draw, -0.449)[None])
    got = apply_augmentation(measured[0], draw, stem.measure_padding(-0.449), scale=(2, 4, 4))[None]
    assert torch.equal(got, expected)


def test_node_config_errors_width_and_the_spacing_check():
    plain = CNN3DConfig(input_shape=SHAPE, input_hu=HU, width=2, region_grid=2, embed_dim=0)
    cfg = _config()
    assert cfg.stem_channels == plain.stem_channels + 1 and cfg.sphere_channels == 1
    assert _config(sphere=True).sphere_channels == 2
    assert cfg.out_dim == plain.out_dim + 2 * 8  # the stem's max and mean on its 8 regions
    for bad, match in (({"hu": (-30.0, -400.0)}, r"node.hu must increase"),
                       ({"hu": (-400.0,)}, r"node.hu: expected two numbers"),
                       ({"hu": (-1200.0, -30.0)}, r"node.hu .* inside the input's HU window \[-1000.0, 1500.0\]"),
                       ({"radius_mm": (6.0, 5.0)}, r"node.radius_mm must be \(min, max\)"),
                       ({"radius_mm": 5.0}, r"node.radius_mm: expected two numbers"),
                       ({"lung_weight": 1.5}, r"node.lung_weight must be in \[0, 1\], got 1.5"),
                       ({"gap_mm": -1.0}, r"node.gap_mm must be >= 0, got -1.0"),
                       ({"gap_mm": float("nan")}, r"node.gap_mm must be >= 0, got nan")):
        with pytest.raises(ValueError, match=match):
            _config(**bad)
    preprocess = {"shape": list(SHAPE), "hu_min": HU[0], "hu_max": HU[1], "offset": HU[2], "spacing": list(MM)}
    assert encoder_preprocess_mismatches(cfg, preprocess) == []
    problems = encoder_preprocess_mismatches(cfg, preprocess | {"spacing": [1.5, 0.75, 0.75]})
    assert problems == ["the encoder's voxel_mm [4.0, 2.0, 2.0] (the voxel size it measures in) is not the "
                        "preprocessing's spacing [1.5, 0.75, 0.75] mm"]
