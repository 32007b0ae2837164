"""Per-abnormality saliency (ctagrg.generation.saliency), the encoders' feature_map, output_affine and the NIfTI
writer, and the pointing game of a trained cnn3d model on phantoms against a random peak (benchmarks/
saliency_pointing.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from ctagrg.data.ctio import CTVolume
from ctagrg.data.preprocess import PreprocessConfig, output_affine, preprocess_volume
from ctagrg.generation.saliency import (
    abnormality_saliency,
    feature_layer,
    peak_index,
    saliency_maps,
    save_saliency_nifti,
)
from ctagrg.models.heads import HeadsConfig
from ctagrg.models.registry import ENCODERS
from ctagrg.models.step1 import Step1Model, VisualModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {
    "ctnet": dict(input_shape=(12, 32, 32), trunk={"width": 4}, embed_dim=24, dropout=0.0,
                  reducer_kernels=[[3, 1, 1], [3, 1, 1], [2, 1, 1]], reducer_strides=[[2, 1, 1], [2, 1, 1], [1, 1, 1]]),
    "ctvit": dict(input_shape=(8, 16, 16), dim=32, patch_size=4, temporal_patch_size=2, spatial_depth=1,
                  temporal_depth=1, heads=2, dim_head=16, pool_grid=(2, 2), embed_dim=24, dropout=0.0),
    "cnn3d": dict(input_shape=(16, 32, 32), width=2, region_grid=2, embed_dim=24, dropout=0.0),
}
# (channels, d, h, w) of each tiny encoder's feature_map: CT-Net's 4 triplets x the trunk's 1x1 maps (32 / 32),
# CT-ViT's 4 x 4 x 4 tokens, cnn3d's stem (12 HU-bin fractions, mean and max HU on 8 x 8 x 8 patches of 2x4x4)
FEATURE_MAPS = {"ctnet": (32, 4, 1, 1), "ctvit": (32, 4, 4, 4), "cnn3d": (14, 8, 8, 8)}


def _step1(name: str) -> Step1Model:
    torch.manual_seed(0)
    from ctagrg.models.registry import encoder_config

    cfg = VisualModelConfig(encoder=name, heads=HeadsConfig(in_dim=24, embed_dim=8, classifier_hidden=8, dropout=0.0))
    setattr(cfg, name, encoder_config(name, **TINY[name]))
    return Step1Model(cfg).eval()


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_encoder_passes_its_3d_map_through_feature_map(name):
    model = _step1(name)
    seen = []
    feature_layer(model).register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        model(torch.randn(2, 1, *TINY[name]["input_shape"]))
    assert seen == [(2, *FEATURE_MAPS[name])]


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("method", ["hirescam", "gradcam"])
def test_maps_have_the_input_grid_and_are_normalised(name, method):
    model = _step1(name)
    model.train()  # saliency runs in eval mode and gives the mode back
    shape = TINY[name]["input_shape"]
    torch.manual_seed(1)
    x = torch.randn(2, 1, *shape)
    maps = saliency_maps(model, x, [0, 9], method=method)
    assert model.training and sorted(maps) == [0, 9]
    for m in maps.values():
        assert m.shape == (2, *shape) and m.dtype == np.float32 and m.min() >= 0.0
        for one in m:  # each volume's own maximum is 1 (or the map is empty: nothing raises the logit)
            assert one.max() == pytest.approx(1.0) or one.max() == 0.0
    assert any(one.max() == pytest.approx(1.0) for m in maps.values() for one in m)
    single = abnormality_saliency(model, x[1, 0].numpy(), [9], method=method)
    np.testing.assert_allclose(single[9], maps[9][1], atol=1e-5)  # a volume's map does not depend on the batch


def test_errors_name_the_problem():
    model = _step1("cnn3d")
    x = torch.randn(1, 1, *TINY["cnn3d"]["input_shape"])
    with pytest.raises(ValueError, match="label index 18 is not in 0..17"):
        saliency_maps(model, x, [18])
    with pytest.raises(ValueError, match="method must be one of hirescam, gradcam, got 'occlusion'"):
        saliency_maps(model, x, [0], method="occlusion")
    with pytest.raises(ValueError, match=r"expected a volume batch \(B, 1, D, H, W\), got \(1, 16, 32, 32\)"):
        saliency_maps(model, x[0], [0])
    with pytest.raises(ValueError, match="expected one volume"):
        abnormality_saliency(model, torch.randn(2, 1, 16, 32, 32), [0])
    with pytest.raises(ValueError, match="no feature_map module"):
        feature_layer(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"expected a \(D, H, W\) map"):
        peak_index(np.zeros((4, 4)))


class _RegionModel(nn.Module):
    """Hand-built step-1 stand-in: a fixed 1x1x1 conv to 2 channels (the feature map, 8x8x8 cells of 2 voxels),
    then logit i = sum of the map over region i only (label 0: the cells [1:3, 1:3, 5:7], label 1: [5:7, 4:6, 0:2]).
    The map is largest elsewhere (a bright block outside both regions), so only where the logit reads counts."""

    REGIONS = {0: (slice(1, 3), slice(1, 3), slice(5, 7)), 1: (slice(5, 7), slice(4, 6), slice(0, 2))}

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.feature_map = nn.Identity()
        self.conv = nn.Conv3d(1, 2, 2, stride=2)
        with torch.no_grad():
            self.conv.weight.fill_(0.125)
            self.conv.bias.fill_(1.0)

    def forward(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.encoder.feature_map(self.conv(volume))
        logits = torch.zeros(volume.shape[0], 18)
        for i, region in self.REGIONS.items():
            logits = logits.index_add(1, torch.tensor([i]), fmap[(slice(None), slice(None), *region)].sum((1, 2, 3, 4))
                                      [:, None])
        return {"logits": logits}


def test_a_logit_read_from_one_region_peaks_there():
    model = _RegionModel()
    x = torch.rand(1, 1, 16, 16, 16)
    x[0, 0, 8:14, 8:14, 8:14] = 50.0  # the brightest activations lie outside both regions
    maps = abnormality_saliency(model, x, [0, 1])
    for i, (sd, sh, sw) in _RegionModel.REGIONS.items():
        d, h, w = peak_index(maps[i])
        assert 2 * sd.start <= d < 2 * sd.stop and 2 * sh.start <= h < 2 * sh.stop and 2 * sw.start <= w < 2 * sw.stop
        inside = np.zeros((16, 16, 16), bool)
        inside[tuple(slice(max(0, 2 * s.start - 1), 2 * s.stop + 1) for s in (sd, sh, sw))] = True
        assert maps[i][~inside].max() == 0.0  # HiResCAM: nothing outside the region (beyond the upsampling's voxel)
    # Grad-CAM weighs whole channels by their mean gradient, so it highlights the bright block the logit never reads
    gradcam = abnormality_saliency(model, x, [0], method="gradcam")[0]
    assert gradcam[10, 10, 10] == pytest.approx(1.0)


def _marker_volume(affine: np.ndarray, at: tuple[int, int, int] = (20, 10, 22)) -> tuple[CTVolume, np.ndarray]:
    """A (40, 36, 30) air volume with a 3x3x3 block of 1000 HU centred on voxel ``at`` (off the centre on every
    axis, so a wrong flip or shift moves it), and that voxel's world position (RAS mm)."""
    hu = np.full((40, 36, 30), -1000.0, np.float32)
    hu[tuple(slice(i - 1, i + 2) for i in at)] = 1000.0
    return CTVolume(hu=hu, affine=affine, source="marker"), (affine @ np.array([*at, 1.0]))[:3]


def _affines() -> list[np.ndarray]:
    spacing = (0.9, 1.3, 2.5)
    lps = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # DICOM-like, as stored by most scanners
    ras = np.diag([*spacing, 1.0])
    permuted = np.zeros((4, 4))  # axes (P, R, I): the output SLP needs a permutation and two flips
    permuted[1, 0], permuted[0, 1], permuted[2, 2], permuted[3, 3] = -spacing[0], -spacing[1], -spacing[2], 1.0
    out = []
    for a in (lps, ras, permuted):
        a = a.copy()
        a[:3, 3] = (31.0, -48.5, 117.0)
        out.append(a)
    return out


@pytest.mark.parametrize("affine", _affines(), ids=["lps", "ras", "permuted"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(("shape", "at"), [((24, 30, 44), (20, 10, 22)), ((12, 20, 16), (23, 16, 17))],
                         ids=["pad", "crop"])
def test_output_affine_maps_the_preprocessed_marker_to_its_world_position(affine, align_corners, shape, at):
    vol, world = _marker_volume(affine, at)
    cfg = PreprocessConfig(spacing=(2.0, 1.5, 1.0), shape=shape, hu_min=-1000.0, hu_max=1500.0,
                           align_corners=align_corners)
    x = preprocess_volume(vol, cfg)
    weight = x - x.min()  # air is the minimum: only the marker's resampled voxels weigh
    assert weight.sum() > 0, "the marker must survive the crop"
    centroid = (np.indices(x.shape).reshape(3, -1) * weight.reshape(-1)).sum(1) / weight.sum()
    found = (output_affine(vol, cfg) @ np.append(centroid, 1.0))[:3]
    assert np.linalg.norm(found - world) < 0.5  # half the finest output spacing (1 mm)
    # the affine's columns are the output axes: S, L, P at the target spacing
    a = output_affine(vol, cfg)[:3, :3]
    assert np.sign(a[2, 0]) == 1 and np.sign(a[0, 1]) == -1 and np.sign(a[1, 2]) == -1


def test_output_affine_keeps_obliquity_and_the_scan_origin():
    theta = np.deg2rad(12.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.8, -0.8, 2.0])
    affine[:3, 3] = (10.0, 20.0, -30.0)
    vol, world = _marker_volume(affine)
    cfg = PreprocessConfig(spacing=(2.0, 1.6, 1.6), shape=(40, 18, 18), hu_min=-1000.0, hu_max=1500.0)
    x = preprocess_volume(vol, cfg)
    weight = x - x.min()
    centroid = (np.indices(x.shape).reshape(3, -1) * weight.reshape(-1)).sum(1) / weight.sum()
    np.testing.assert_allclose((output_affine(vol, cfg) @ np.append(centroid, 1.0))[:3], world, atol=0.5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_saliency_nifti_round_trip(tmp_path, suffix):
    saliency = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    affine = _affines()[0]
    path = save_saliency_nifti(saliency, affine, tmp_path / "sub" / f"map{suffix}")
    img = nib.load(path)
    assert img.get_data_dtype() == np.float32 and img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_array_equal(np.asarray(img.dataobj), saliency)
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"map.nii: expected a 4x4 affine"):
        save_saliency_nifti(saliency, np.eye(3), tmp_path / "map.nii")
