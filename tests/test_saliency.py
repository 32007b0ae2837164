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
from test_encoders import TINY
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
# the tiny encoders of tests/test_encoders.py

# (channels, d, h, w) of each tiny encoder's feature_map: CT-Net's 4 triplets x the trunk's 1x1 maps (32 / 32),
# CT-ViT's 4 x 4 x 4 tokens, cnn3d's stem (12 HU-bin fractions, mean and max HU on 8 x 8 x 8 patches of 2x4x4)
FEATURE_MAPS = {"ctnet": (32, 4, 1, 1), "ctvit": (32, 4, 4, 4), "cnn3d": (14, 8, 8, 8)}


def _step1(name: str) -> Step1Model:
    torch.manual_seed(0)
    from ctagrg.config import to_dict
    from ctagrg.models.registry import encoder_config

    heads = HeadsConfig(in_dim=24, embed_dim=8, classifier_hidden=8, dropout=0.0)
    if name in ("ctnet", "ctvit"):
        cfg = VisualModelConfig(encoder=name, heads=heads, **{name: encoder_config(name, **TINY[name])})
    else:  # a plug-in encoder's section
        cfg = VisualModelConfig(encoder=name, heads=heads, extras={name: to_dict(encoder_config(name, **TINY[name]))})
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


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_a_frozen_model_gives_the_same_maps(name):
    """Inference code may freeze the weights (requires_grad False); cnn3d's stem then leaves no graph at all."""
    model = _step1(name)
    x = torch.randn(1, 1, *TINY[name]["input_shape"])
    before = saliency_maps(model, x, [3])[3]
    model.requires_grad_(False)
    with torch.no_grad():  # and a caller inside no_grad
        after = saliency_maps(model, x, [3])[3]
    np.testing.assert_allclose(after, before, atol=1e-6)
    assert before.max() == pytest.approx(1.0)


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


def _chest(rng: np.random.Generator, nodule: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A (16, 32, 32) preprocessed volume (window [-1000, 1500] HU, offset 0.449) like a tiny chest: air around a
    soft-tissue body holding two lungs (-850 HU) with a few soft-tissue vessels and a spine (600 HU), all of
    varying size and place, with noise; with ``nodule`` a calcified ball (1100 HU, radius 1.5 voxels) at a random
    place in one lung, whose centre (voxel index) is returned. The anatomy varies so that only the nodule tells
    the labels apart (a model of fixed anatomy may weigh constant features arbitrarily)."""
    hu = np.full((16, 32, 32), -1000.0, np.float32)
    a, b = rng.integers(0, 3, 2)
    hu[1:15, 2 + a:30 - b, 4 + b:28 - a] = rng.uniform(20.0, 60.0)
    lungs = [(rng.integers(4, 7), rng.integers(13, 15)), (rng.integers(17, 19), rng.integers(25, 28))]
    for lo, hi in lungs:
        hu[2:14, lo:hi, 8:24] = rng.uniform(-880.0, -820.0)
        for _ in range(rng.integers(0, 4)):  # vessels: soft tissue, not the nodule's calcium
            d, h, w = rng.integers(3, 13), rng.integers(lo, hi - 1), rng.integers(9, 22)
            hu[d:d + 2, h:h + 2, w:w + 2] = 40.0
    s = rng.integers(20, 24)
    hu[1:15, 15:17, s:s + 3] = 600.0
    centre = None
    if nodule:
        lo, hi = lungs[rng.integers(2)]
        centre = np.array([rng.integers(4, 12), rng.integers(lo + 2, hi - 2), rng.integers(10, 22)], np.float64)
        d, h, w = np.indices(hu.shape)
        hu[(d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2 <= 2.25] = 1100.0
    hu += rng.normal(0.0, 15.0, hu.shape).astype(np.float32)
    return (np.clip(hu, -1000.0, 1500.0) + 1000.0) / 2500.0 - 0.449, centre


@pytest.mark.slow
def test_pointing_game_of_a_trained_model_beats_a_random_peak():
    """A small demo-family model (cnn3d: HU-bin stem with context channels, CNN, region pooling) trained to detect
    nodules in tiny synthetic chests points at them: the peak of its map lies within the nodule's stem cell far
    more often than a peak drawn uniformly from the body (benchmarks/saliency_pointing.py's baseline). Synthetic
    chests, not phantoms: training a model that learns phantom findings takes minutes even at the tiny phantom size
    (docs/saliency.md); the demo model's own figures on its test phantoms are in BENCHMARKS.md."""
    from saliency_pointing import BODY_HU
    from sklearn.metrics import roc_auc_score

    from ctagrg.config import to_dict
    from ctagrg.extras.cnn3d.channels.context import ContextConfig
    from ctagrg.extras.cnn3d.config import CNN3DConfig

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    train = [_chest(rng, nodule=i % 2 == 0) for i in range(96)]
    x = torch.from_numpy(np.stack([v for v, _ in train]))[:, None]
    y = torch.zeros(len(train), 18)
    y[:, 9] = torch.tensor([c is not None for _, c in train], dtype=torch.float32)
    enc = CNN3DConfig(input_shape=(16, 32, 32), input_hu=(-1000.0, 1500.0, 0.449), width=4, region_grid=2,
                      embed_dim=0, context=ContextConfig(enabled=True, patches=1), dropout=0.0)
    model = Step1Model(VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(enc)}, heads=HeadsConfig(
        in_dim=enc.out_dim, embed_dim=8, classifier_hidden=8, dropout=0.0)))
    with torch.no_grad():
        stems = model.encoder.stem(x)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    model.train()
    for step in range(60):
        batch = torch.from_numpy(np.random.default_rng(step).choice(len(train), 16, replace=False))
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(h=model.encoder.forward_from_stem(stems[batch]))["logits"][:, 9], y[batch, 9])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    body_value = (BODY_HU + 1000.0) / 2500.0 - 0.449
    hits, random_hits = [], []
    for _ in range(20):
        volume, centre = _chest(rng, nodule=True)
        peak = np.array(peak_index(abnormality_saliency(model, volume, [9])[9]))
        hits.append(np.abs(peak - centre).max() <= 2.5)  # within the ball and the stem cell (2 x 4 x 4) around it
        body = np.argwhere(volume > body_value)
        random_hits.append((np.abs(body - centre).max(1) <= 2.5).mean())
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack([_chest(rng, n)[0] for n in (1, 0) * 8]))[:, None])["logits"][:, 9]
    assert roc_auc_score([1, 0] * 8, logits.numpy()) >= 0.9, "the model must have learned to detect the nodules"
    assert np.mean(hits) >= 0.6 and np.mean(hits) > 5 * np.mean(random_hits), (np.mean(hits), np.mean(random_hits))
