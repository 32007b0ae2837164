"""PreprocessedVolume: the volume carries its HU window, offset, spacing and orientation; to_hu inverts the map."""

from __future__ import annotations

import numpy as np
import pytest
from ct_fixtures import phantom_hu

from ctagrg.data.ctio import CTVolume
from ctagrg.data.preprocess import PreprocessConfig, preprocess_volume
from ctagrg.data.preprocessed import PreprocessedVolume, hu_from_preprocessed, preprocess_to_volume


def test_hu_from_preprocessed_inverts_the_intensity_map_and_stays_in_the_window() -> None:
    lo, hi, offset = -1000.0, 200.0, 0.449
    hu = np.array([-1000, -999, -600, 0, 37, 199, 200], dtype=np.float32)
    array = ((hu - lo) / (hi - lo) - offset).astype(np.float32)
    back = hu_from_preprocessed(array, (lo, hi), offset)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, hu, atol=1e-3)
    # a value just past the window's ends (float rounding, the cache's levels) is held at the end
    edges = hu_from_preprocessed(np.array([-offset - 1e-4, 1 - offset + 1e-4], np.float32), (lo, hi), offset)
    assert edges.tolist() == [lo, hi]
    with pytest.raises(ValueError, match=r"HU window: expected lo < hi, got \(200, -1000\)"):
        hu_from_preprocessed(array, (hi, lo), offset)


def test_hu_from_preprocessed_takes_a_tensor_as_an_encoder_has_it() -> None:
    import torch

    lo, hi, offset = -1000.0, 1500.0, 0.0
    array = np.random.default_rng(0).uniform(-0.01, 1.01, size=(2, 1, 3, 4, 5)).astype(np.float32)
    x = torch.from_numpy(array).requires_grad_()
    hu = hu_from_preprocessed(x, (lo, hi), offset)
    assert isinstance(hu, torch.Tensor) and hu.dtype == torch.float32 and hu.shape == x.shape
    np.testing.assert_allclose(hu.detach().numpy(), hu_from_preprocessed(array, (lo, hi), offset), atol=1e-3)
    hu.sum().backward()  # differentiable where not clipped: 2500 HU per unit of input
    inside = (array > 0) & (array < 1)
    assert np.allclose(x.grad.numpy()[inside], 2500.0) and np.all(x.grad.numpy()[~inside] == 0)


def test_preprocess_to_volume_carries_the_config_and_to_hu_round_trips() -> None:
    config = PreprocessConfig(spacing=(4.0, 2.0, 2.0), shape=(16, 32, 32), hu_min=-1000.0, hu_max=1500.0, offset=0.1)
    raw = phantom_hu((32, 32, 16))  # file axes R, A, S at 2 x 2 x 4 mm: preprocessing only reorients to SLP
    vol = CTVolume(raw=raw, affine=np.diag([2.0, 2.0, 4.0, 1.0]), slope=1.0, intercept=0.0, source="phantom")
    out = preprocess_to_volume(vol, config)
    assert isinstance(out, PreprocessedVolume)
    assert out.shape == (16, 32, 32) and out.array.dtype == np.float32
    assert out.hu_window == (-1000.0, 1500.0) and out.offset == 0.1
    assert out.spacing_mm == (4.0, 2.0, 2.0) and out.axcodes == "SLP"
    np.testing.assert_array_equal(out.array, preprocess_volume(vol, config))
    # S = file axis 2; L = file axis 0 reversed (R); P = file axis 1 reversed (A); HU clipped to the window
    expected = np.clip(raw[::-1, ::-1, :].transpose(2, 0, 1).astype(np.float32), -1000.0, 1500.0)
    np.testing.assert_allclose(out.to_hu(), expected, atol=0.01)
    assert (expected > 0).any() and (expected < -900).any()  # body and lungs/air both round-trip


def test_from_config_checks_the_shape_and_to_hu_uses_the_volumes_own_window() -> None:
    config = PreprocessConfig(spacing=(2.0, 1.0, 1.0), shape=(2, 3, 4), hu_min=-500.0, hu_max=500.0, offset=0.5)
    array = np.linspace(-0.5, 0.5, 24, dtype=np.float32).reshape(2, 3, 4)
    vol = PreprocessedVolume.from_config(array, config)
    np.testing.assert_allclose(vol.to_hu().ravel(), np.linspace(-500.0, 500.0, 24), atol=1e-3)
    other = PreprocessedVolume(array, (-1000.0, 0.0), 0.5, (1.0, 1.0, 1.0), "SLP")
    np.testing.assert_allclose(other.to_hu().ravel(), np.linspace(-1000.0, 0.0, 24), atol=1e-3)
    with pytest.raises(ValueError, match=r"expected a preprocessed volume of shape \(2, 3, 4\) \(D, H, W\), got "
                                         r"\(3, 3, 4\)"):
        PreprocessedVolume.from_config(np.zeros((3, 3, 4), np.float32), config)
    with pytest.raises(ValueError, match=r"expected a \(D, H, W\) array, got shape \(3, 4\)"):
        PreprocessedVolume(np.zeros((3, 4), np.float32), (-1.0, 1.0), 0.0, (1.0, 1.0, 1.0), "SLP")
