"""A scan unlike the training data is flagged: cnn3d counts its standardised features beyond OUTLIER_SD training
standard deviations (and at inference clips them to it), the visual model hands that count on as its
"diagnostics", and the Reporter's ``ood_warning`` post-processor adds a warning to the report (and its JSON line)
above its ``fraction``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.encoder import OUTLIER_SD, CNN3DEncoder
from tests.test_reporter import tiny_decoder

SHAPE = (8, 32, 32)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calibrated(encoder: torch.nn.Module, volumes: torch.Tensor) -> torch.nn.Module:
    """BatchNorm running statistics set to exactly those of ``volumes`` (cumulative average over one pass)."""
    for m in encoder.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    encoder.train()
    with torch.no_grad():
        encoder(volumes)
    return encoder.eval()


def _training_like(n: int, seed: int) -> torch.Tensor:
    """Air-and-soft-tissue volumes in the preprocessed units of input_hu (-1000, 1500, 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, *SHAPE), 0.0)  # -1000 HU
    x[:, :, 2:6, 4:28, 4:28] = 0.42 + 0.01 * torch.randn(n, 1, 4, 24, 24, generator=g)  # ~40 HU
    return x


def test_encoder_counts_features_beyond_the_training_spread():
    torch.manual_seed(0)
    enc = CNN3DEncoder(CNN3DConfig(input_shape=SHAPE, width=2, region_grid=2, embed_dim=0, lateral_halves=True))
    _calibrated(enc, _training_like(16, 0))
    with torch.no_grad():
        enc(_training_like(3, 1))
        usual = enc.last_outlier_fraction
        metal = torch.full((2, 1, *SHAPE), 0.6)  # +500 HU everywhere, then a metal block
        metal[:, :, 2:4, 8:16, 8:16] = 1.0
        enc(metal)
        odd = enc.last_outlier_fraction
    assert usual.shape == (3,) and odd.shape == (2,)
    assert float(usual.max()) < 0.01 and float(odd.min()) > 0.05
    with torch.no_grad():
        h = enc.norm(enc.features_from_stem(enc.stem(metal))[0].view(4, -1)).view(2, -1)
    torch.testing.assert_close(odd, (h.abs() > OUTLIER_SD).float().mean(1))
    # at inference the features beyond OUTLIER_SD are clipped to it (the decoder never saw such values); the rest
    # pass unchanged
    assert float(h.abs().max()) > 2 * OUTLIER_SD
    with torch.no_grad():
        out = enc(metal)
    torch.testing.assert_close(out, h.clamp(-OUTLIER_SD, OUTLIER_SD))
    with torch.no_grad():
        usual_h = enc(_training_like(3, 1))
        usual_raw = enc.norm(enc.features_from_stem(enc.stem(_training_like(3, 1)))[0].view(6, -1)).view(3, -1)
    torch.testing.assert_close(usual_h, usual_raw.clamp(-OUTLIER_SD, OUTLIER_SD))
    assert float((usual_h != usual_raw).float().mean()) < 0.01
    enc.train()
    enc.last_outlier_fraction = None
    enc(_training_like(2, 2))
    assert enc.last_outlier_fraction is None  # training batches are not scored


def test_reporter_warns_about_an_unusual_scan(gpt2_tokenizer_dir: Path):
    from ctagrg.config import to_dict
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.extras.ood import OODWarningPostprocessor
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.decoder import load_tokenizer
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig

    torch.manual_seed(0)
    cnn = CNN3DConfig(input_shape=SHAPE, width=2, region_grid=2, embed_dim=0)
    visual = Step1Model(VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(cnn)}, heads=HeadsConfig(
        in_dim=cnn.out_dim, embed_dim=16, classifier_hidden=8)))
    _calibrated(visual.encoder, _training_like(16, 0))
    visual.eval()

    odd = np.full(SHAPE, 0.6, np.float32)
    # the encoder's outlier fraction is among the visual model's outputs in eval mode only
    with torch.no_grad():
        diagnostics = visual(torch.from_numpy(odd)[None, None])["diagnostics"]
        assert set(diagnostics) == {"outlier_fraction"} and float(diagnostics["outlier_fraction"][0]) > 0.05
        training = copy.deepcopy(visual).train()  # a copy: a training pass would move BatchNorm's statistics
        assert "diagnostics" not in training(torch.from_numpy(np.stack([odd, odd]))[:, None])

    def make(fraction: float | None) -> Reporter:
        post = {} if fraction is None else {"ood_warning": {"fraction": fraction}}
        cfg = ReporterConfig(generation=GenerationSettings(max_new_tokens=4), postprocess=post)
        return Reporter(visual, tiny_decoder(), load_tokenizer(gpt2_tokenizer_dir), [0.5] * 18,
                        PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE, hu_max=1500.0, offset=0.0), cfg)

    usual = _training_like(1, 3)[0, 0].numpy()
    reporter = make(0.01)
    assert [type(p) for p in reporter.postprocessors] == [OODWarningPostprocessor]
    reports = reporter.report_volumes(np.stack([usual, odd]))
    assert reports[0].warnings == [] and "warnings" not in reports[0].to_dict()
    assert len(reports[1].warnings) == 1 and reports[1].warnings[0].startswith("out of distribution: ")
    assert "not to be trusted" in reports[1].to_dict()["warnings"][0]
    assert f"more than {OUTLIER_SD:g} standard deviations" in reports[1].warnings[0]  # limit_sd's default
    assert make(0.0).report_volumes(odd[None])[0].warnings == []  # 0: off
    assert make(None).report_volumes(odd[None])[0].warnings == []  # no post-processor: no warning
