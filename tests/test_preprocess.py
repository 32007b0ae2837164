"""ctagrg.data.preprocess: SLP geometry, resampling equal to F.interpolate, HU window, crop/pad, real scans."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from ct_fixtures import phantom_hu, write_nifti

from ctagrg.data.ctio import CTVolume, load_ct
from ctagrg.data.preprocess import PreprocessConfig, plan, preprocess_file, preprocess_volume

# ---------------------------------------------------------------- geometry: a marker at a known patient position


def _affine(perm: tuple[int, int, int], signs: tuple[int, int, int], spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Array axis i runs along RAS world axis perm[i] with sign signs[i]."""
    aff = np.eye(4)
    aff[:3, :3] = 0
    for i, (w, s) in enumerate(zip(perm, signs, strict=True)):
        aff[w, i] = s * spacing[i]
    aff[:3, 3] = [7.0, -3.0, 11.0]
    return aff


GEOMETRIES = {
    "LPS": ((0, 1, 2), (-1, -1, 1)),
    "RAS": ((0, 1, 2), (1, 1, 1)),
    "permuted-SPL": ((2, 1, 0), (1, -1, -1)),
    "permuted-IRA": ((2, 0, 1), (-1, 1, 1)),
}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_marker_lands_where_slp_says(geometry: str) -> None:
    perm, signs = GEOMETRIES[geometry]
    spacing = (2.0, 1.5, 1.0)
    shape = (9, 11, 13)
    hu = np.full(shape, -1000, np.int16)
    marker = (2, 7, 4)
    hu[marker] = 1000
    aff = _affine(perm, signs, spacing)
    # Independent expectation from the corners' world coordinates: SLP index = distance from the
    # most-inferior / most-right / most-anterior voxel centre, in voxels of the output spacing.
    corners = np.array([aff @ [*c, 1] for c in itertools.product(*[(0, n - 1) for n in shape])])[:, :3]
    p = (aff @ [*marker, 1])[:3]
    world_spacing = {perm[i]: spacing[i] for i in range(3)}  # world axis -> mm per voxel
    expected = (
        round((p[2] - corners[:, 2].min()) / world_spacing[2]),  # toward Superior: +z
        round((corners[:, 0].max() - p[0]) / world_spacing[0]),  # toward Left: -x
        round((corners[:, 1].max() - p[1]) / world_spacing[1]),  # toward Posterior: -y
    )
    out_spacing = (world_spacing[2], world_spacing[0], world_spacing[1])
    out_shape = tuple(shape[perm.index(w)] for w in (2, 0, 1))
    cfg = PreprocessConfig(spacing=out_spacing, shape=out_shape)
    out = preprocess_volume(CTVolume(raw=hu, affine=aff), cfg)
    assert out.shape == out_shape
    assert np.unravel_index(np.argmax(out), out.shape) == expected
    assert out.max() == pytest.approx(1 - 0.449) and np.sum(out > 0) == 1


def test_marker_after_real_resampling_and_crop() -> None:
    """LPS volume at 0.5 mm resampled to 1 mm and centre-cropped: the marker moves by the crop offset."""
    hu = np.full((40, 40, 20), -1000, np.int16)
    hu[9:11, 29:31, 14:16] = 1000  # LPS voxel block; centre (9.5, 29.5, 14.5)
    aff = np.diag([-0.5, -0.5, 1.0, 1.0])
    cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0), shape=(16, 16, 16))
    p = plan(CTVolume(raw=hu, affine=aff), cfg)
    assert p.resampled_shape == (20, 20, 20) and p.start == (2, 2, 2)
    out = preprocess_volume(CTVolume(raw=hu, affine=aff), cfg)
    # S: voxels 14, 15 at 1 mm stay 14, 15. L: 0.5 mm voxels 9, 10 -> 1 mm voxels 4, 5, each half marker
    # (source positions 8.5 and 10.5). P: 29, 30 -> 14, 15. Minus the crop of 2 on every axis.
    # half weight on L and on P: 1/4 marker, 3/4 air = -500 HU
    quarter = (-500.0 + 1000) / 1200 - 0.449
    hits = np.argwhere(np.isclose(out, quarter, atol=1e-5))
    assert sorted(map(tuple, hits)) == list(itertools.product((12, 13), (2, 3), (12, 13)))
    assert out.max() == pytest.approx(quarter, abs=1e-5)


# ---------------------------------------------------------------- resampling equals torch's trilinear


def _reference_torch(raw: np.ndarray, aff: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    import nibabel.orientations as nio
    import torch
    import torch.nn.functional as F

    p = plan(CTVolume(raw=raw, affine=aff), cfg)
    x = torch.from_numpy(nio.apply_orientation(raw, p.ornt).astype(np.float32).copy())[None, None]
    r = F.interpolate(x, size=p.resampled_shape, mode="trilinear", align_corners=cfg.align_corners)[0, 0]
    r = ((r.clamp(cfg.hu_min, cfg.hu_max) - cfg.hu_min) / (cfg.hu_max - cfg.hu_min) - cfg.offset).numpy()
    out = np.full(cfg.shape, -cfg.offset, np.float32)
    dst, src = [], []
    for n, t, s in zip(p.resampled_shape, cfg.shape, p.start, strict=True):
        lo, hi = max(0, -s), min(t, n - s)
        dst.append(slice(lo, hi))
        src.append(slice(lo + s, hi + s))
    out[tuple(dst)] = r[tuple(src)]
    return out


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
def test_equals_torch_trilinear_for_every_orientation(align_corners: bool, order: str) -> None:
    rng = np.random.default_rng(0)
    cfg = PreprocessConfig(spacing=(1.1, 0.9, 1.3), shape=(14, 13, 17), align_corners=align_corners)
    worst = 0.0
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            raw = np.asarray(rng.integers(-1100, 400, (12, 15, 18)).astype(np.int16), order=order)
            aff = _affine(perm, signs, (1.0, 1.3, 1.6))
            out = preprocess_volume(CTVolume(raw=raw, affine=aff), cfg)
            worst = max(worst, float(np.abs(out - _reference_torch(raw, aff, cfg)).max()))
    assert worst < 1e-5


def test_slope_intercept_applied_after_interpolation_is_exact() -> None:
    raw = np.random.default_rng(1).integers(0, 1500, (10, 12, 14)).astype(np.uint16)
    aff = np.diag([0.7, 0.8, 2.0, 1.0])
    cfg = PreprocessConfig(spacing=(1.5, 0.75, 0.75), shape=(16, 16, 16))
    lazy = preprocess_volume(CTVolume(raw=raw, slope=0.5, intercept=-1024.0, affine=aff), cfg)
    eager = preprocess_volume(CTVolume(raw.astype(np.float32) * 0.5 - 1024.0, aff), cfg)
    np.testing.assert_allclose(lazy, eager, atol=1e-5)


# ---------------------------------------------------------------- size rule, window, crop/pad


def test_size_rule_window_and_pad_convention() -> None:
    hu = np.full((8, 8, 64), -400, np.int16)  # LPS, 64 slices of 5 mm
    hu[:, :, 0] = -3000
    hu[:, :, 63] = 3000
    vol = CTVolume(raw=hu, affine=np.diag([-0.8418, -0.8418, 5.0, 1.0]))
    cfg = PreprocessConfig(spacing=(1.5, 0.75, 0.75), shape=(240, 8, 8))
    p = plan(vol, cfg)
    assert p.resampled_shape == (int(64 * 5 / 1.5), int(8 * 0.8418 / 0.75), int(8 * 0.8418 / 0.75)) == (213, 8, 8)
    assert p.start == (-13, 0, 0)  # pad (240 - 213) // 2 = 13 before, 14 after
    out = preprocess_volume(vol, cfg)
    assert np.all(out[:13] == np.float32(-0.449)) and np.all(out[13 + 213:] == np.float32(-0.449))
    assert out[13, 4, 4] == pytest.approx(-0.449)  # -3000 HU clipped to -1000 -> 0 - 0.449
    assert out[13 + 212, 4, 4] == pytest.approx(0.551)  # +3000 HU clipped to 200 -> 1 - 0.449
    assert out[120, 4, 4] == pytest.approx((-400 + 1000) / 1200 - 0.449, abs=1e-6)
    assert p.effective_spacing[0] == pytest.approx(64 * 5 / 213)


def test_crop_convention_takes_the_floor_half_before() -> None:
    aff = np.zeros((4, 4))
    aff[0, 0], aff[2, 1], aff[1, 2], aff[3, 3] = -1.0, 1.0, -1.0, 1.0  # axes toward L, S, P
    vol = CTVolume(raw=np.full((7, 4, 4), -1000, np.int16), affine=aff)
    p = plan(vol, PreprocessConfig(spacing=(1.0, 1.0, 1.0), shape=(4, 4, 4)))
    assert p.reoriented_shape == (4, 7, 4) and p.start == (0, 1, 0)  # (7 - 4) // 2 = 1 before, 2 after


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="axcodes"):
        PreprocessConfig(axcodes="SLL")
    with pytest.raises(ValueError, match="hu_max"):
        PreprocessConfig(hu_min=100, hu_max=0)
    with pytest.raises(ValueError, match="spacing"):
        PreprocessConfig(spacing=(1.0, 0.0, 1.0))
    assert PreprocessConfig(axcodes="ras").axcodes == "RAS"
    assert PreprocessConfig().pad_value == pytest.approx(-0.449)


def test_preprocess_file_default_shape(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "p.nii.gz", phantom_hu((20, 20, 10)), np.diag([-12.0, -12.0, 24.0, 1.0]))
    out = preprocess_file(path)
    assert out.shape == (240, 480, 480) and out.dtype == np.float32
    assert out.min() == pytest.approx(-0.449) and out.max() < 0.551


# ---------------------------------------------------------------- real scans (../shared/data)


def reference_preprocess(path: Path, spacing: tuple[float, float, float], shape: tuple[int, int, int]) -> np.ndarray:
    """A deliberately simple, independent reading of the seed's description: SimpleITK I/O (ITK's own NIfTI
    and DICOM readers), float64 HU, reorientation from ITK's LPS direction cosines with numpy, scipy's
    linear zoom (pixel-edge grid, edge replication), clip [-1000, 200], (x + 1000) / 1200 - 0.449, and the
    seed's centre crop / pad (crop start (n - t) // 2, pad (t - n) // 2 before, value -0.449)."""
    import SimpleITK as sitk
    from scipy import ndimage

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).astype(np.float64)  # (k, j, i)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)  # column c: LPS direction of ITK index c
    axes, spacings = [], []
    for world in (2, 0, 1):  # LPS +z = Superior, +x = Left, +y = Posterior
        c = int(np.argmax(np.abs(direction[world])))
        arr_axis = 2 - c
        if direction[world, c] < 0:
            arr = np.flip(arr, axis=arr_axis)
        axes.append(arr_axis)
        spacings.append(img.GetSpacing()[c])
    arr = np.transpose(arr, axes)
    new = [int(n * s / t) for n, s, t in zip(arr.shape, spacings, spacing, strict=True)]
    arr = ndimage.zoom(arr, [m / n for m, n in zip(new, arr.shape, strict=True)], order=1, mode="nearest",
                       grid_mode=True)
    arr = (np.clip(arr, -1000, 200) + 1000) / 1200 - 0.449
    for axis, t in enumerate(shape):
        n = arr.shape[axis]
        if n >= t:
            arr = np.take(arr, range((n - t) // 2, (n - t) // 2 + t), axis=axis)
        else:
            pad = [(0, 0)] * 3
            pad[axis] = ((t - n) // 2, t - n - (t - n) // 2)
            arr = np.pad(arr, pad, constant_values=-0.449)
    return arr.astype(np.float32)


SMALL = PreprocessConfig(spacing=(3.0, 1.5, 1.5), shape=(96, 192, 192))


@pytest.mark.shared
@pytest.mark.parametrize("name", ["lung-pet-ct-dx-A0001.nii.gz", "lung-pet-ct-dx-A0001-dicom",
                                  "totalseg-chest-crop.nii.gz"])
def test_agrees_with_independent_reference_on_real_chest_ct(shared_data: Path, name: str) -> None:
    path = shared_data / "ct" / name
    ours = preprocess_file(path, config=SMALL)
    ref = reference_preprocess(path, SMALL.spacing, SMALL.shape)
    assert ours.shape == ref.shape == SMALL.shape
    assert np.abs(ours - ref).max() < 1e-5
    assert (ours > -0.449).mean() > 0.2  # real content, not just padding


@pytest.mark.shared
def test_real_nrrd_dicom_nifti_forms_agree(shared_data: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    nrrd = shared_data / "ct" / "cip-ct64.nrrd"
    nifti = tmp_path / "cip-ct64.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(nrrd)), str(nifti))  # ITK writes the LPS geometry as a NIfTI sform
    cfg = PreprocessConfig(spacing=(4.0, 2.0, 2.0), shape=(80, 128, 128))
    a = preprocess_file(nrrd, config=cfg)
    b = preprocess_file(shared_data / "ct" / "cip-ct64-dicom", config=cfg)
    c = preprocess_file(nifti, config=cfg)
    assert np.abs(a - c).max() < 1e-5
    assert np.abs(a - b).max() < 1e-5
    assert (a > -0.449).mean() > 0.2


@pytest.mark.shared
def test_real_a0001_nifti_and_dicom_agree_default_config(shared_data: Path) -> None:
    ct = shared_data / "ct"
    a = preprocess_file(ct / "lung-pet-ct-dx-A0001.nii.gz", config=SMALL)
    b = preprocess_file(ct / "lung-pet-ct-dx-A0001-dicom", config=SMALL)
    assert np.abs(a - b).max() < 1e-5
    vol = load_ct(ct / "lung-pet-ct-dx-A0001.nii.gz")
    assert plan(vol, PreprocessConfig()).resampled_shape == (213, 574, 574)


# ---------------------------------------------------------------- ctagrg inspect


def test_inspect_prints_geometry_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ctagrg.cli.main import main

    path = write_nifti(tmp_path / "p.nii.gz", phantom_hu((20, 20, 10)), np.diag([-2.0, -2.0, 5.0, 1.0]))
    assert main(["inspect", str(path), "--run", "--set", "shape=[40,32,32]", "--set", "spacing=[1.5,1.0,1.0]"]) == 0
    out = capsys.readouterr().out
    assert "shape:        20 x 20 x 10" in out and "spacing:      2 x 2 x 5 mm" in out
    assert "orientation:  LPS (axis i points toward Left, Posterior, Superior)" in out
    assert "resampled:  33 x 40 x 40" in out  # int(10 * 5 / 1.5) = 33, int(20 * 2 / 1) = 40
    assert "D (S): pad 3 before, 4 after with -0.449 (air)" in out
    assert "H (L): crop 4 before, 4 after (4 / 4 mm of the scan dropped)" in out
    assert "output:       40 x 32 x 32 float32" in out and "ran:" in out
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"nope")
    assert main(["inspect", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(str(bad))
