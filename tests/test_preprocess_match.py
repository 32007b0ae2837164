"""An encoder whose input_shape, input_hu or voxel_mm contradict the preprocessing is refused, in training (the
cache's preprocess.json) and by the Reporter (its preprocess.json), with a message naming the file and the fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctagrg.config import ConfigError, load_config, to_dict
from ctagrg.data.preprocess import PreprocessConfig
from ctagrg.extras.cnn3d.channels.blob import BlobConfig
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.models.ctnet import CTNetConfig
from ctagrg.models.preprocess_match import check_encoder_preprocess, encoder_preprocess_mismatches
from tests.extras.test_attributes import CNN3D, side_blob_dataset

DEMO = PreprocessConfig(spacing=(4.0, 2.0, 2.0), shape=(64, 128, 128), hu_min=-1000.0, hu_max=1500.0)


def _cnn(**kw) -> CNN3DConfig:
    return CNN3DConfig(input_shape=(64, 128, 128), input_hu=(-1000.0, 1500.0, 0.449), **kw)


def test_mismatches_name_each_contradicted_field():
    blob = BlobConfig(enabled=True)
    assert encoder_preprocess_mismatches(_cnn(blob=blob, voxel_mm=(4.0, 2.0, 2.0)), DEMO) == []
    # the same as preprocess.json's dict
    assert encoder_preprocess_mismatches(_cnn(blob=blob), json.loads(json.dumps(DEMO.__dict__))) == []
    found = encoder_preprocess_mismatches(
        CNN3DConfig(input_shape=(32, 64, 64), input_hu=(-1000.0, 200.0, 0.449), blob=BlobConfig(enabled=True),
                    voxel_mm=(1.5, 0.75, 0.75)), DEMO)
    assert len(found) == 3
    assert "input_shape [32, 64, 64] is not the preprocessing's shape [64, 128, 128]" in found[0]
    assert "input_hu [-1000.0, 200.0, 0.449]" in found[1] and "[-1000.0, 1500.0, 0.449]" in found[1]
    assert "voxel_mm [1.5, 0.75, 0.75]" in found[2] and "spacing [4.0, 2.0, 2.0]" in found[2]
    # voxel_mm only matters with the blob channel
    assert encoder_preprocess_mismatches(_cnn(voxel_mm=(1.5, 0.75, 0.75)), DEMO) == []


def test_ctnet_window_is_checked_only_when_it_reads_hu():
    paper = PreprocessConfig(shape=(240, 480, 480))
    plain = CTNetConfig(input_shape=(240, 480, 480), input_hu=(-1000.0, 1500.0, 0.0))
    assert encoder_preprocess_mismatches(plain, paper) == []  # input_windows empty: the input is used as is
    windowed = CTNetConfig(input_shape=(240, 480, 480), input_hu=(-1000.0, 1500.0, 0.0),
                           input_windows=((-1000.0, -500.0),))
    (problem,) = encoder_preprocess_mismatches(windowed, paper)
    assert "input_hu [-1000.0, 1500.0, 0.0]" in problem and "[-1000.0, 200.0, 0.449]" in problem
    with pytest.raises(ConfigError, match=r"^somewhere/preprocess.json: the encoder does not fit"):
        check_encoder_preprocess(windowed, paper, "somewhere/preprocess.json")


def test_training_reads_the_window_from_the_cache_and_refuses_another_shape(tmp_path):
    """The encoder's HU window and voxel size come from the cache's preprocess.json (not restated in the config);
    what the config does state (the input shape) is checked against it."""
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig

    csvs, _ = side_blob_dataset(tmp_path, seed=1, n_train=2, n_valid=1)
    cache = tmp_path / "cache"
    over = [*CNN3D, f"data.cache_dir={cache}", f"data.train_labels={csvs['train']}"]
    good = {"spacing": [8.0, 4.0, 4.0], "shape": [8, 32, 16], "axcodes": "SLP", "hu_min": -1000.0, "hu_max": 1500.0,
            "offset": 0.0, "align_corners": False}
    (cache / "preprocess.json").write_text(json.dumps(good))
    task = ClassifierTask(load_config(ClassifierTaskConfig, None, over))
    assert len(task.train_dataset()) == 2
    encoder = task.cfg.model.encoder_config()
    assert tuple(encoder.input_hu) == (-1000.0, 1500.0, 0.0) and tuple(encoder.voxel_mm) == (8.0, 4.0, 4.0)
    (cache / "preprocess.json").write_text(json.dumps({**good, "hu_max": 200.0, "offset": 0.449,
                                                       "spacing": [4.0, 2.0, 2.0]}))
    task = ClassifierTask(load_config(ClassifierTaskConfig, None, over))
    assert len(task.train_dataset()) == 2
    encoder = task.cfg.model.encoder_config()
    assert tuple(encoder.input_hu) == (-1000.0, 200.0, 0.449) and tuple(encoder.voxel_mm) == (4.0, 2.0, 2.0)
    assert tuple(task.build_model().encoder.config.input_hu) == (-1000.0, 200.0, 0.449)
    (cache / "preprocess.json").write_text(json.dumps({**good, "shape": [8, 32, 32]}))
    task = ClassifierTask(load_config(ClassifierTaskConfig, None, over))
    with pytest.raises(ConfigError, match=rf"^{cache / 'preprocess.json'}: the encoder does not fit this "
                                          r"preprocessing: the encoder's input_shape \[8, 32, 16\] is not the "
                                          r"preprocessing's shape \[8, 32, 32\]"):
        task.train_dataset()
    for broken, message in (("{\"spacing\": [8", "cannot read"), ("[1, 2]", "expected a JSON object")):
        (cache / "preprocess.json").write_text(broken)
        with pytest.raises(ConfigError, match=rf"^{cache / 'preprocess.json'}: {message}"):
            ClassifierTask(load_config(ClassifierTaskConfig, None, over)).train_dataset()


def test_reporter_refuses_a_preprocessing_its_encoder_does_not_fit(gpt2_tokenizer_dir):
    from ctagrg.generation.reporter import Reporter
    from ctagrg.models.decoder import load_tokenizer
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig
    from tests.test_reporter import tiny_decoder

    cnn = CNN3DConfig(input_shape=(8, 32, 16), width=2, region_grid=2, embed_dim=0, blob=BlobConfig(enabled=True),
                      voxel_mm=(8.0, 4.0, 4.0))
    visual = Step1Model(VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(cnn)}, heads=HeadsConfig(
        in_dim=cnn.out_dim, embed_dim=16, classifier_hidden=4)))  # tiny_decoder reads 16-d
    tok = load_tokenizer(gpt2_tokenizer_dir)
    fits = PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=(8, 32, 16), hu_max=1500.0, offset=0.0)
    Reporter(visual, tiny_decoder(), tok, [0.5] * 18, fits)
    with pytest.raises(ConfigError, match=r"voxel_mm \[8.0, 4.0, 4.0\] \(the voxel size it measures in\) is not the "
                                          r"preprocessing's spacing \[4.0, 2.0, 2.0\] mm"):
        Reporter(visual, tiny_decoder(), tok, [0.5] * 18,
                 PreprocessConfig(spacing=(4.0, 2.0, 2.0), shape=(8, 32, 16), hu_max=1500.0, offset=0.0))


def test_embedding_cache_refuses_volumes_preprocessed_for_another_encoder(tmp_path):
    """Step 2's embedding cache runs the step-1 model over the volume cache: the same check, before any volume."""
    from ctagrg.data.cache import cache_path, save_cached
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig
    from ctagrg.training.embedding_cache import EmbeddingCacheConfig, build_from_config

    save_cached(cache_path(tmp_path / "vols", "train_0_a_1"), np.zeros((8, 32, 16), np.float32), -0.5, 1)
    (tmp_path / "vols" / "preprocess.json").write_text(json.dumps(
        {"spacing": [8.0, 4.0, 4.0], "shape": [8, 32, 32], "hu_min": -1000.0, "hu_max": 1500.0, "offset": 0.0}))
    (tmp_path / "s.csv").write_text("VolumeName,AbnormalityName,Sentence\n")
    cnn = CNN3DConfig(input_shape=(8, 32, 16), width=2, region_grid=2, embed_dim=0)
    step1 = Step1Model(VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(cnn)}, heads=HeadsConfig(
        in_dim=cnn.out_dim, embed_dim=8, classifier_hidden=4))).eval()
    cfg = EmbeddingCacheConfig(out_dir=str(tmp_path / "emb"), volume_cache=str(tmp_path / "vols"),
                               sentences_csv=str(tmp_path / "s.csv"), thresholds="", device="cpu")
    with pytest.raises(ConfigError, match=r"preprocess.json: the encoder does not fit this preprocessing: the "
                                          r"encoder's input_shape \[8, 32, 16\] is not the preprocessing's shape "
                                          r"\[8, 32, 32\]"):
        build_from_config(cfg, step1=step1)
    assert not (tmp_path / "emb").exists()
