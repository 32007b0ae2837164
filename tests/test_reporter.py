"""Reporter: detection → batched generation → assembly; packaging round trip; inputs; model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.generation.assemble import assemble_report
from ctagrg.generation.generate import GenerationSettings
from ctagrg.generation.reporter import Report, Reporter, ReporterConfig
from ctagrg.labels import LABELS
from ctagrg.models.conditioning import ConditioningConfig
from ctagrg.models.decoder import DecoderConfig, ReportDecoder, load_tokenizer

SHAPE = (12, 32, 32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_visual() -> torch.nn.Module:
    from ctagrg.models.ctnet import CTNetConfig
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.resnet import ResNetConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig

    ctnet = CTNetConfig(input_shape=SHAPE, trunk=ResNetConfig(width=4, layers=(1, 1, 1, 1)),
                        reducer_channels=(4, 4, 4), reducer_kernels=((3, 1, 1), (3, 1, 1), (1, 1, 1)),
                        reducer_strides=((3, 1, 1), (3, 1, 1), (1, 1, 1)), embed_dim=32)
    heads = HeadsConfig(in_dim=32, embed_dim=16, classifier_hidden=8, pretrain_hidden=(8, 8))
    return Step1Model(VisualModelConfig(ctnet=ctnet, heads=heads)).eval()


def tiny_decoder() -> ReportDecoder:
    cond = ConditioningConfig(input_dim=16, hidden_dims=(32,), output_dim=24)
    model = ReportDecoder(DecoderConfig(n_layer=2, n_embd=32, n_head=4, n_positions=64, conditioning=cond))
    with torch.no_grad():  # a strong conditioning slot, so different abnormalities get different sentences
        for p in [*model.uk.parameters(), *model.uv.parameters(), *model.conditioning.parameters()]:
            p.normal_(0.0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def reporter(gpt2_tokenizer_dir: Path) -> Reporter:
    from ctagrg.data.preprocess import PreprocessConfig

    torch.manual_seed(0)
    visual = tiny_visual()
    probe = visual(torch.randn(4, 1, *SHAPE))
    probs = torch.sigmoid(probe["logits"])
    # Thresholds at each label's median over 4 random volumes: roughly half the labels detected per volume.
    thresholds = probs.median(0).values.tolist()
    config = ReporterConfig(generation=GenerationSettings(max_new_tokens=8))
    return Reporter(visual, tiny_decoder(), load_tokenizer(gpt2_tokenizer_dir), thresholds,
                    PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE), config,
                    card={"training_data": "unit-test phantoms", "metrics": {"clinical F1 (test)": 0.5}})


def volumes(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


def test_report_batch_structure_and_consistency(reporter: Reporter) -> None:
    reports = reporter.report_batch(list(volumes(3)))
    assert len(reports) == 3 and all(isinstance(r, Report) for r in reports)
    total_detected = 0
    for r in reports:
        assert list(r.abnormalities) == list(LABELS)
        for i, a in enumerate(r.abnormalities.values()):
            assert a.threshold == reporter.thresholds[i]
            assert a.detected == (a.probability >= a.threshold)
            assert (a.sentence is not None) == a.detected
        sentences = {label: a.sentence for label, a in r.abnormalities.items() if a.detected}
        assert r.text == assemble_report(sentences)
        total_detected += len(r.detected)
    assert 0 < total_detected < 54
    line = reports[0].to_dict()
    assert set(line) == {"report", "abnormalities"}
    assert set(line["abnormalities"]["Cardiomegaly"]) == {"probability", "detected", "threshold", "sentence", "size_mm",
                                                               "numbers"}
    json.dumps(line)  # JSON-serialisable


def test_batched_equals_single(reporter: Reporter) -> None:
    vols = volumes(3, seed=2)
    batched = [r.to_dict() for r in reporter.report_batch(list(vols))]
    single = [reporter.report(v).to_dict() for v in vols]
    # The same reports, sentences and detections. Probabilities may differ in the last float32 bit: a convolution
    # over a batch of 3 can sum in another order than over a batch of 1 (seen on an AMD EPYC: 0.46870819 vs
    # 0.46870822).
    for b, s in zip(batched, single, strict=True):
        assert b["report"] == s["report"]
        for label, got in b["abnormalities"].items():
            want = s["abnormalities"][label]
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-6), label
            assert {k: v for k, v in got.items() if k != "probability"} == {
                k: v for k, v in want.items() if k != "probability"}, label


def test_nothing_detected_gives_the_no_findings_text(reporter: Reporter) -> None:
    saved = reporter.thresholds
    reporter.thresholds = [1.01] * 18
    try:
        report = reporter.report(volumes(1)[0])
    finally:
        reporter.thresholds = saved
    assert report.text == "No abnormalities detected."
    assert report.detected == [] and all(a.sentence is None for a in report.abnormalities.values())


def test_bad_array_shape_is_a_clear_error(reporter: Reporter) -> None:
    with pytest.raises(ValueError, match=r"expected a preprocessed volume of shape \(12, 32, 32\)"):
        reporter.report(np.zeros((10, 10, 10), np.float32))


def test_path_input_is_preprocessed(reporter: Reporter, tmp_path: Path) -> None:
    import nibabel as nib

    hu = np.random.default_rng(0).integers(-1000, 400, size=(20, 20, 14)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 5.0, 1.0])), tmp_path / "scan.nii.gz")
    from ctagrg.data.preprocess import preprocess_file

    expected = reporter.report(preprocess_file(tmp_path / "scan.nii.gz", config=reporter.preprocess))
    assert reporter.report(tmp_path / "scan.nii.gz").to_dict() == expected.to_dict()


def test_save_and_load_roundtrip(reporter: Reporter, tmp_path: Path) -> None:
    reporter.save_pretrained(tmp_path / "model")
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == ["README.md", "decoder", "preprocess.json", "reporter.json", "thresholds.json", "tokenizer",
                     "visual"]
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Not for diagnostic use" in card and "unit-test phantoms" in card and "clinical F1 (test)" in card
    assert "(12, 32, 32)" in card or "[12, 32, 32]" in card
    loaded = Reporter.from_pretrained(tmp_path / "model", device="auto")
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert loaded.thresholds == pytest.approx(reporter.thresholds)
    assert loaded.config == reporter.config and tuple(loaded.preprocess.shape) == SHAPE
    vols = list(volumes(2, seed=3))
    assert [r.to_dict() for r in loaded.report_batch(vols)] == [r.to_dict() for r in reporter.report_batch(vols)]
    (tmp_path / "model" / "thresholds.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing thresholds.json"):
        Reporter.from_pretrained(tmp_path / "model")


def test_from_training_outputs(reporter: Reporter, tmp_path: Path) -> None:
    reporter.visual.save_pretrained(tmp_path / "step1" / "best")
    (tmp_path / "step1" / "best" / "thresholds.json").write_text(json.dumps(reporter.thresholds))
    reporter.decoder.save_pretrained(tmp_path / "dec" / "best")
    reporter.tokenizer.save_pretrained(str(tmp_path / "dec" / "best" / "tokenizer"))
    (tmp_path / "dec" / "best" / "generation.json").write_text(json.dumps({"generation": {"max_new_tokens": 8}}))
    (tmp_path / "pre.json").write_text(json.dumps({"spacing": [8.0, 4.0, 4.0], "shape": list(SHAPE)}))
    (tmp_path / "dec" / "best" / "metrics.json").write_text(json.dumps({"epoch": 3, "loss": 1.5, "perplexity": 4.5}))
    (tmp_path / "step1" / "best" / "metrics.json").write_text(
        '{"epoch": 2, "macro_auroc": 0.8, "auroc/Cardiomegaly": NaN, "loss": 0.3}')
    built = Reporter.from_training_outputs(tmp_path / "step1" / "best", tmp_path / "dec" / "best",
                                           preprocess=tmp_path / "pre.json")
    assert built.config.generation.max_new_tokens == 8 and built.thresholds == reporter.thresholds
    assert built.card["metrics"] == {"step 1 validation macro_auroc": 0.8, "step 1 validation loss": 0.3,
                                     "decoder validation loss": 1.5, "decoder validation perplexity": 4.5}
    vol = volumes(1, seed=4)[0]
    assert built.report(vol).to_dict() == reporter.report(vol).to_dict()

    # the same assembly as a command
    from ctagrg.cli.main import main

    argv = ["package", "--classifier", str(tmp_path / "step1" / "best"), "--decoder", str(tmp_path / "dec" / "best"),
            "--preprocess", str(tmp_path / "pre.json"), "--out", str(tmp_path / "packaged"),
            "--training-data", "tiny test volumes"]
    assert main(argv) == 0
    packaged = Reporter.from_pretrained(tmp_path / "packaged")
    assert packaged.report(vol).to_dict() == reporter.report(vol).to_dict()
    assert "tiny test volumes" in (tmp_path / "packaged" / "README.md").read_text()
    assert main(argv) == 2  # the folder now holds a model: refused without --force
    assert main([*argv, "--force"]) == 0
    assert main([*argv[:4], str(tmp_path / "nowhere"), *argv[5:], "--out", str(tmp_path / "p2")]) == 2


def test_a_file_gets_the_probabilities_of_its_cached_copy(reporter: Reporter, tmp_path: Path) -> None:
    """Models train on the uint8 cache: the Reporter rounds every input to the cache's levels, so a scan read from
    its file is scored exactly as its cached copy (what training and `ctagrg evaluate --cache` see)."""
    import dataclasses

    import nibabel as nib

    from ctagrg.data.cache import as_cached, load_cached, save_cached
    from ctagrg.data.preprocess import preprocess_file

    hu = np.random.default_rng(3).integers(-1000, 400, size=(20, 20, 14)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 5.0, 1.0])), tmp_path / "scan.nii.gz")
    volume = preprocess_file(tmp_path / "scan.nii.gz", config=reporter.preprocess)
    lo, hi = -reporter.preprocess.offset, 1.0 - reporter.preprocess.offset
    save_cached(tmp_path / "scan.safetensors", volume, lo, hi)
    cached = load_cached(tmp_path / "scan.safetensors")
    assert np.array_equal(as_cached(volume, lo, hi), cached) and np.array_equal(as_cached(cached, lo, hi), cached)
    assert not np.array_equal(volume, cached)  # the cache's 255 levels do round the values
    from_file, from_cache = reporter.report(tmp_path / "scan.nii.gz"), reporter.report(cached)
    assert from_file.to_dict() == from_cache.to_dict()
    float_input = dataclasses.replace(reporter.config, quantize_like_cache=False)
    plain = Reporter(reporter.visual, reporter.decoder, reporter.tokenizer, reporter.thresholds, reporter.preprocess,
                     float_input)
    p_plain = [a.probability for a in plain.report(volume).abnormalities.values()]
    p_file = [a.probability for a in from_file.abnormalities.values()]
    assert p_plain != p_file  # without the rounding the file's own floats are scored


def test_reporter_refuses_a_decoder_trained_on_another_embedding_width() -> None:
    from ctagrg.data.preprocess import PreprocessConfig

    visual = tiny_visual()  # 16-d abnormality embeddings
    assert visual.embedding_dim == 16
    cond = ConditioningConfig(input_dim=20, hidden_dims=(32,), output_dim=24)
    decoder = ReportDecoder(DecoderConfig(n_layer=1, n_embd=32, n_head=4, n_positions=64, conditioning=cond))
    with pytest.raises(ConfigError, match=r"the visual model's embeddings are 16-d but the decoder was trained on "
                                          r"20-d ones \(conditioning.input_dim\)"):
        Reporter(visual, decoder, None, [0.5] * 18, PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE))
