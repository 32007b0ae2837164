"""The inference front door: per item a report or an error, its read warnings and its timing, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctagrg.generation.inference import InferenceItem, ItemResult, run_inference
from ctagrg.generation.reporter import Abnormality, Report, Reporter
from ctagrg.labels import LABELS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reporter(gpt2_tokenizer_dir: Path) -> Reporter:
    from test_reporter import SHAPE, tiny_decoder, tiny_visual

    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import ReporterConfig
    from ctagrg.models.decoder import load_tokenizer

    torch.manual_seed(0)
    return Reporter(tiny_visual(), tiny_decoder(), load_tokenizer(gpt2_tokenizer_dir), [0.0] * 9 + [1.01] * 9,
                    PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE),
                    ReporterConfig(generation=GenerationSettings(max_new_tokens=6)))


def write_scan(path: Path, seed: int) -> Path:
    import nibabel as nib

    hu = np.random.default_rng(seed).integers(-1000, 400, size=(20, 20, 14)).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 5.0, 1.0])), path)
    return path


def preprocessed(reporter: Reporter, seed: int) -> np.ndarray:
    shape = reporter.preprocess.shape
    return np.random.default_rng(seed).uniform(-0.449, 0.551, size=shape).astype(np.float32)


def run_all(reporter: Any, items: list[Any], **kwargs: Any) -> list[ItemResult]:
    return [r for batch in run_inference(reporter, items, **kwargs) for r in batch]


def probabilities(result: ItemResult) -> list[float]:
    assert result.report is not None, result.error
    return [a.probability for a in result.report.abnormalities.values()]


def test_a_mixed_batch_keeps_its_order_and_each_items_error_warnings_and_timing(
        reporter: Reporter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import ctagrg.data.ctio as ctio

    a, b = write_scan(tmp_path / "a.nii.gz", 1), write_scan(tmp_path / "b.nii.gz", 2)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    real = ctio.load_ct

    def load(source: Any, metadata: Any = None, **kwargs: Any) -> Any:
        if Path(source) == b:
            warnings.warn(f"{source}: irregular slice spacing; missing slices?", ctio.CTReadWarning, stacklevel=2)
        return real(source, metadata, **kwargs)

    monkeypatch.setattr(ctio, "load_ct", load)
    array = preprocessed(reporter, 3)
    items = [InferenceItem("a", str(a)), InferenceItem("bad", bad), InferenceItem("b", str(b)),
             InferenceItem("array", array), InferenceItem("gone", str(tmp_path / "gone.nii.gz"))]
    batches = list(run_inference(reporter, items, batch_size=5))
    assert len(batches) == 1 and [r.index for r in batches[0]] == [0, 1, 2, 3, 4]
    results = batches[0]
    assert [r.name for r in results] == ["a", "bad", "b", "array", "gone"]
    assert [r.error is None for r in results] == [True, False, True, True, False]
    assert results[1].error.startswith(f"{bad}: ") and results[1].report is None and results[1].volume is None
    assert results[4].error.startswith(f"{tmp_path / 'gone.nii.gz'}: ")
    assert isinstance(results[1].exception, ValueError)  # raised in this process: kept for the caller
    # the read warning belongs to b alone
    assert results[2].warnings == [f"{b}: irregular slice spacing; missing slices?"]
    assert results[0].warnings == [] and results[3].warnings == []
    for r in (results[0], results[2], results[3]):
        assert r.seconds > 0 and list(r.report.abnormalities) == list(LABELS)
        assert r.report.detected == list(LABELS[:9])  # thresholds 0 for the first 9 labels, above 1 for the rest
        assert r.volume is not None and r.volume.shape == tuple(reporter.preprocess.shape)
    # each item's report is the one it gets alone, read the same way
    alone = {r.name: r for r in run_all(reporter, [items[0], items[3]])}
    assert probabilities(results[0]) == pytest.approx(probabilities(alone["a"]), abs=1e-5)
    assert probabilities(results[3]) == pytest.approx(probabilities(alone["array"]), abs=1e-5)
    assert not np.array_equal(results[0].volume.array, results[2].volume.array)  # each its own scan


def test_workers_give_the_results_of_workers_0_in_order(reporter: Reporter, tmp_path: Path) -> None:
    from ctagrg.data.inputs import InputItem

    paths = [write_scan(tmp_path / f"s{k}.nii.gz", 10 + k) for k in range(4)]
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    items = [InputItem(f"s{k}", str(p)) for k, p in enumerate(paths)]  # the items `ctagrg report` discovers
    items.insert(2, InputItem("bad", str(tmp_path / "bad.nii.gz")))
    runs = {w: run_all(reporter, items, batch_size=2, workers=w) for w in (0, 2)}
    assert [r.name for r in runs[2]] == ["s0", "s1", "bad", "s2", "s3"]
    assert [r.error for r in runs[2]] == [r.error for r in runs[0]]
    assert runs[2][2].error.startswith(f"{tmp_path / 'bad.nii.gz'}: ")
    assert runs[2][2].exception is None  # raised in a worker: only its text crosses
    for r0, r2 in zip(runs[0], runs[2], strict=True):
        if r0.error is None:
            assert r2.report.text == r0.report.text and probabilities(r2) == probabilities(r0)
            np.testing.assert_array_equal(r2.volume.array, r0.volume.array)
            assert r2.seconds > 0


def test_a_failing_model_batch_costs_only_the_bad_item(reporter: Reporter, monkeypatch: pytest.MonkeyPatch) -> None:
    poison = np.full(reporter.preprocess.shape, 0.25, np.float32)
    real, calls = reporter.report_volumes, []

    def report_volumes(volumes: np.ndarray) -> list[Report]:
        calls.append(len(volumes))
        if any(np.array_equal(v, poison) for v in volumes):
            raise RuntimeError("poisoned volume")
        return real(volumes)

    monkeypatch.setattr(reporter, "report_volumes", report_volumes)
    items = [InferenceItem("x", preprocessed(reporter, 1)), InferenceItem("p", poison),
             InferenceItem("y", preprocessed(reporter, 2))]
    results = run_all(reporter, items, batch_size=3)
    assert calls == [3, 1, 1, 1]  # the batch, then each alone
    assert [r.error for r in results] == [None, "p: RuntimeError: poisoned volume", None]
    assert isinstance(results[1].exception, RuntimeError) and results[1].volume is not None
    assert results[0].report is not None and results[2].report is not None


def test_cache_files_are_items_and_one_of_another_offset_is_refused(reporter: Reporter, tmp_path: Path) -> None:
    from ctagrg.data.cache import as_cached, save_cached

    pp = reporter.preprocess
    array = preprocessed(reporter, 5)
    save_cached(tmp_path / "v.safetensors", array, -pp.offset, 1.0 - pp.offset)
    save_cached(tmp_path / "w.safetensors", array, 0.0, 1.0)
    results = run_all(reporter, [InferenceItem("v", tmp_path / "v.safetensors"), InferenceItem("a", array),
                                 InferenceItem("w", tmp_path / "w.safetensors")], batch_size=3)
    np.testing.assert_array_equal(results[0].volume.array, as_cached(array, -pp.offset, 1.0 - pp.offset))
    assert probabilities(results[0]) == pytest.approx(probabilities(results[1]), abs=1e-6)
    assert results[2].error == (f"CacheError: {tmp_path / 'w.safetensors'}: cached values span [0, 1], the model's "
                                f"preprocessing gives [-0.449, 0.551] (another offset): re-preprocess with the "
                                f"model's preprocess.json")


def test_an_array_of_another_shape_and_a_bad_batch_size_are_clear_errors(reporter: Reporter) -> None:
    [result] = run_all(reporter, [InferenceItem("small", np.zeros((2, 3, 4), np.float32))])
    assert result.error == ("small: ValueError: array input: expected a preprocessed volume of shape (12, 32, 32) "
                            "(D, H, W), got (2, 3, 4); pass a file path to have it preprocessed")
    with pytest.raises(ValueError, match="batch_size: expected >= 1, got 0"):
        next(run_inference(reporter, [], batch_size=0))


def test_saliency_is_asked_for_only_when_wanted() -> None:
    from ctagrg.data.preprocess import PreprocessConfig

    class StandIn:
        preprocess = PreprocessConfig(spacing=(1.0, 1.0, 1.0), shape=(2, 2, 2))
        calls: list[dict[str, Any]] = []

        def report_volumes(self, volumes: np.ndarray, **kwargs: Any) -> list[Report]:
            self.calls.append(kwargs)
            return [Report("ok", {}) for _ in volumes]

    stand_in = StandIn()
    items = [InferenceItem("v", np.zeros((2, 2, 2), np.float32))]
    assert run_all(stand_in, items)[0].report.text == "ok"
    assert run_all(stand_in, items, saliency=True)[0].report.text == "ok"
    assert stand_in.calls == [{}, {"saliency": True}]


def test_to_dict_rounds_size_mm_and_puts_read_warnings_before_the_models() -> None:
    abn = {label: Abnormality(0.1, False, 0.5, None) for label in LABELS}
    abn["Lung nodule"] = Abnormality(0.9, True, 0.5, "A 10.5 mm nodule.", size_mm=10.507577497529358)
    report = Report("A 10.5 mm nodule.", abn, warnings=["out of distribution: 2.1% of the encoder's features"])
    result = ItemResult(0, InferenceItem("s", "s.nii.gz"), report, None, ["s.nii.gz: missing slices?"], 1.5)
    out = result.to_dict()
    assert out["abnormalities"]["Lung nodule"]["size_mm"] == 10.5
    assert out["abnormalities"]["Cardiomegaly"]["size_mm"] is None
    assert out["warnings"] == ["s.nii.gz: missing slices?", "out of distribution: 2.1% of the encoder's features"]
    assert report.abnormalities["Lung nodule"].size_mm == 10.507577497529358  # the Report itself is untouched
    failed = ItemResult(1, InferenceItem("t", "t.nii.gz"), None, "t.nii.gz: not a NIfTI", [], 0.1)
    assert failed.to_dict() == {"error": "t.nii.gz: not a NIfTI"} and failed.all_warnings() == []
