"""The pretrain and classifier stages end to end on a tiny synthetic cache: files, thresholds, encoder hand-over."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctagrg.cli.main import main as cli_main
from ctagrg.data.cache import cache_path, save_cached
from ctagrg.labels import LABELS
from ctagrg.models.checkpoint import load_state_file
from ctagrg.models.step1 import Step1Model
from ctagrg.models.thresholds_file import read_thresholds

MODEL = ["model.ctnet.input_shape=[6,16,16]", "model.ctnet.trunk.width=4", "model.ctnet.trunk.layers=[1,1,1,1]",
         "model.ctnet.reducer_kernels=[[1,1,1],[1,1,1],[2,1,1]]",
         "model.ctnet.reducer_strides=[[2,1,1],[2,1,1],[1,1,1]]", "model.ctnet.embed_dim=32",
         "model.heads.in_dim=32", "model.heads.embed_dim=8", "model.heads.classifier_hidden=4",
         "model.heads.pretrain_hidden=[8,4]"]


def write_cache(root, n: int, split: str, rng: np.random.Generator, shape: tuple[int, int, int] = (6, 16, 16)) -> str:
    """Volumes whose label 0 is a bright blob; other labels random. Returns the labels CSV path."""
    rows = []
    for i in range(n):
        y = rng.integers(0, 2, len(LABELS))
        vol = rng.normal(0, 0.05, shape).astype(np.float32)
        if y[0]:
            vol[2:4, 4:10, 4:10] += 0.5
        save_cached(cache_path(root / "cache", f"{split}_{i}_a_1"), vol, -0.449, 0.551)
        rows.append(f"{split}_{i}_a_1.nii.gz," + ",".join(map(str, y)))
    csv = root / f"{split}_labels.csv"
    csv.write_text("VolumeName," + ",".join(LABELS) + "\n" + "\n".join(rows) + "\n")
    return str(csv)


@pytest.mark.slow
def test_pretrain_then_classifier_via_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    train_csv, valid_csv = write_cache(tmp_path, 16, "train", rng), write_cache(tmp_path, 12, "valid", rng)
    data = [f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={train_csv}",
            f"data.valid_labels={valid_csv}", "data.pos_weight=auto"]
    common = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.003", *data, *MODEL]
    assert cli_main(["train", "pretrain", "--set", f"train.out_dir={tmp_path / 'pre'}", "--set", "train.epochs=2",
                     *sum((["--set", s] for s in common), [])]) == 0
    pre = tmp_path / "pre" / "best"
    assert json.loads((pre / "config.json").read_text())["model_type"] == "ctagrg-pretrain"
    assert "Lung nodule" in (pre / "validation.md").read_text()
    assert not (pre / "thresholds.json").exists()

    assert cli_main(["train", "classifier", "--set", f"train.out_dir={tmp_path / 'cls'}", "--set", "train.epochs=1",
                     "--set", f"init.encoder_from={pre}", "--set", "model.per_head_backward=true",
                     "--set", "data.augment.enabled=true", "--set", "data.augment.rot90_p=0.5",
                     *sum((["--set", s] for s in common), [])]) == 0
    best = tmp_path / "cls" / "best"
    assert "best checkpoint:" in capsys.readouterr().out
    thr = np.array(read_thresholds(best))
    assert thr.shape == (18,) and ((thr > 0) & (thr < 1)).all()
    val = json.loads((best / "validation.json").read_text())
    assert val["n"] == 12 and set(val["per_label"]) == set(LABELS)
    model = Step1Model.from_pretrained(best)
    out = model(torch.zeros(2, 1, 6, 16, 16))
    assert out["logits"].shape == (2, 18) and out["embeddings"].shape == (2, 18, 8)
    # the classifier started from the pretrained encoder: the first trunk conv was copied, then trained one epoch
    w_pre = load_state_file(pre / "model.safetensors")["encoder.trunk.conv1.weight"]
    w_init = torch.manual_seed(0) and Step1Model(model.config).encoder.trunk.conv1.weight
    assert (model.encoder.trunk.conv1.weight - w_pre).abs().max() < (w_init - w_pre).abs().max()


def test_cli_errors(tmp_path, capsys):
    assert cli_main(["train", "pretrain", "--set", "data.cachedir=x"]) == 2
    assert "unknown key 'cachedir' for VisualDataConfig; valid keys: cache_dir, train_labels" in capsys.readouterr().err
    assert cli_main(["train", "pretrain", "--set", f"train.out_dir={tmp_path}", *sum((["--set", s] for s in MODEL), [])
                     ]) == 1
    assert "data.train_labels: not set" in capsys.readouterr().err
    assert cli_main(["train", "pretrain", "--set", f"train.out_dir={tmp_path}", "--set", MODEL[0]]) == 1
    assert "reducer conv 1 (kernel (3, 3, 3), stride (3, 1, 1)) leaves no output" in capsys.readouterr().err
    assert cli_main(["train", "classifier", "--print-config", "--set", "train.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out

@pytest.mark.slow
def test_frozen_encoder_cache_trains_the_same_heads(tmp_path, monkeypatch):
    """With a frozen encoder the classifier computes h once per volume; the heads it trains are those the
    uncached path trains (same loss sequence, same weights), and the encoder is untouched."""
    rng = np.random.default_rng(1)
    train_csv, valid_csv = write_cache(tmp_path, 12, "train", rng), write_cache(tmp_path, 8, "valid", rng)
    common = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.01", "train.epochs=3", "train.log_every=1",
              f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={train_csv}",
              f"data.valid_labels={valid_csv}", "freeze_encoder=true", *MODEL]
    import ctagrg.data.dataset as dataset_module
    from ctagrg.models.ctnet import CTNetEncoder

    encoded, forward = [], CTNetEncoder.forward
    monkeypatch.setattr(CTNetEncoder, "forward", lambda self, x: encoded.append(len(x)) or forward(self, x))
    reads, read = [], dataset_module.load_cached_raw
    monkeypatch.setattr(dataset_module, "load_cached_raw", lambda path: reads.append(path) or read(path))
    runs, volumes_encoded, volumes_read = {}, {}, {}
    for cached in (True, False):
        encoded.clear()
        reads.clear()
        out = tmp_path / f"cls_{cached}"
        assert cli_main(["train", "classifier", "--set", f"train.out_dir={out}",
                         "--set", f"cache_frozen_encoder={str(cached).lower()}",
                         *sum((["--set", s] for s in common), [])]) == 0
        runs[cached] = (load_state_file(out / "last" / "model.safetensors"),
                        (out / "metrics.csv").read_text())
        volumes_encoded[cached] = sum(encoded)
        volumes_read[cached] = len(reads)
    # cached: each of the 12 + 8 volumes once; uncached: 3 epochs of train + valid, then valid for thresholds
    assert volumes_encoded == {True: 20, False: 3 * 20 + 8}
    assert volumes_read == volumes_encoded  # the cached run's epochs read no volume files either
    (w_c, log_c), (w_u, log_u) = runs[True], runs[False]
    assert set(w_c) == set(w_u)
    for key in w_c:
        torch.testing.assert_close(w_c[key], w_u[key], rtol=1e-5, atol=1e-6, msg=key)

    def losses(log: str) -> list[float]:
        return [float(r.split(",")[4]) for r in log.splitlines()[1:] if r.split(",")[3] == "loss"]

    assert len(losses(log_c)) >= 6
    np.testing.assert_allclose(losses(log_c), losses(log_u), rtol=1e-5)


@pytest.mark.slow
def test_frozen_encoder_cache_after_resume_uses_the_checkpoint_encoder(tmp_path):
    """A cached classifier run stopped after 3 steps and resumed ends with the weights of an uninterrupted run, even
    when init.encoder_from points elsewhere at resume time: h is computed from the resumed (checkpoint) encoder."""
    rng = np.random.default_rng(2)
    train_csv, valid_csv = write_cache(tmp_path, 12, "train", rng), write_cache(tmp_path, 8, "valid", rng)
    common = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.01", "train.epochs=3",
              f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={train_csv}",
              f"data.valid_labels={valid_csv}", "freeze_encoder=true", *MODEL]

    def run(out, *extra: str) -> int:
        return cli_main(["train", "classifier", "--set", f"train.out_dir={out}",
                         *sum((["--set", s] for s in [*common, *extra]), [])])

    # another encoder: one pretraining epoch from a different seed
    assert cli_main(["train", "pretrain", "--set", f"train.out_dir={tmp_path / 'other'}", "--set", "train.epochs=1",
                     "--set", "train.seed=7", *sum((["--set", s] for s in common if "epochs" not in s and
                                                    "freeze" not in s), [])]) == 0
    assert run(tmp_path / "full") == 0
    assert run(tmp_path / "cut", "train.max_steps=3") == 0
    assert run(tmp_path / "cut", f"init.encoder_from={tmp_path / 'other' / 'best'}") == 0
    full = load_state_file(tmp_path / "full" / "last" / "model.safetensors")
    cut = load_state_file(tmp_path / "cut" / "last" / "model.safetensors")
    other = load_state_file(tmp_path / "other" / "best" / "model.safetensors")
    key = "encoder.trunk.conv1.weight"
    assert not torch.equal(other[key], full[key])  # the other encoder really differs
    assert full.keys() == cut.keys()
    for k in full:
        torch.testing.assert_close(cut[k], full[k], rtol=1e-5, atol=1e-6, msg=k)




@pytest.mark.parametrize(("stage", "yaml_text", "key", "moved_to"), [
    ("classifier", "model:\n  heads:\n    lateral_halves: true\n", "model.heads.lateral_halves",
     "moved out of the published heads: set heads.variant: halves and model.extras.halves"),
    ("classifier", "model:\n  heads:\n    attribute_heads: true\n", "model.heads.attribute_heads",
     "moved out of the published heads: set heads.variant: halves and model.extras.halves"),
    ("pretrain", "model:\n  encoder: cnn3d\n  cnn3d:\n    width: 2\n", "model.cnn3d",
     "moved to model.extras.cnn3d (a plug-in encoder's section"),
    ("pretrain", "attributes:\n  half_weight: 1.0\n", "attributes", "moved to extras.attributes"),
    ("classifier", "attributes:\n  side_weight: 1.0\n", "attributes", "moved to extras.attributes"),
    ("pretrain", "cache_stem: true\n", "cache_stem", "moved to extras: {stem_cache: {}}"),
    ("pretrain", "head_l1: 0.001\n", "head_l1", "moved to extras: {head_l1: {weight: W}}"),
    ("classifier", "nodule_size:\n  enabled: true\n", "nodule_size", "moved to extras.nodule_size"),
    ("classifier", "init:\n  heads_from_pretrain: true\n", "init.heads_from_pretrain",
     "moved to the stage's extras: extras: {heads_warm_start: {}}"),
])
def test_a_stage_config_with_a_moved_key_says_where_it_went(tmp_path, stage, yaml_text, key, moved_to):
    """An older config file's demo keys are refused with the key, the file and their new place named, and so is
    the same key given as an override."""
    import re

    from ctagrg.config import ConfigError, load_config
    from ctagrg.training.visual_tasks import ClassifierTaskConfig, PretrainTaskConfig

    cls = {"pretrain": PretrainTaskConfig, "classifier": ClassifierTaskConfig}[stage]
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}.{key}: {moved_to}")):
        load_config(cls, path)
    leaf = key.rsplit(".", 1)[-1]
    with pytest.raises(ConfigError, match=rf"^override \w+Config.{leaf}: " + re.escape(moved_to)):
        load_config(cls, None, [f"{key}.x=1" if leaf in ("cnn3d", "attributes", "nodule_size") else f"{key}=1"])


def test_the_decoder_stage_refuses_its_old_mirror_section(tmp_path):
    from ctagrg.config import ConfigError, load_config
    from ctagrg.training.decoder_task import DecoderTaskConfig

    path = tmp_path / "decoder.yaml"
    path.write_text("mirror:\n  p: 0.5\n")
    with pytest.raises(ConfigError, match=rf"^{path}.mirror: moved to extras.mirror"):
        load_config(DecoderTaskConfig, path)


def test_a_stage_hands_every_model_it_builds_to_its_model_hook(tmp_path):
    from ctagrg.config import load_config
    from ctagrg.training.visual_tasks import PretrainTask, PretrainTaskConfig

    task = PretrainTask(load_config(PretrainTaskConfig, None, [*MODEL, "train.tensorboard=false"]))
    seen = []
    task.model_hook = seen.append
    model = task.build_model()
    assert seen == [model]
