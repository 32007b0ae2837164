"""Pretraining with cnn3d's stem measured once per volume (``extras.stem_cache``): the augmented measurements give the
stem of the augmented volume exactly, and a cached run trains the weights an uncached run trains, reading each file
once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctagrg.cli.main import main as cli_main
from ctagrg.config import ConfigError
from ctagrg.data.augment import AugmentConfig, AugmentDraw, apply_augmentation, draw_augmentation
from ctagrg.extras.cnn3d.channels.context import ContextConfig
from ctagrg.extras.cnn3d.config import CNN3DConfig
from ctagrg.extras.cnn3d.stem import HUBinStem
from ctagrg.models.checkpoint import load_state_file
from ctagrg.training.visual_tasks import PretrainTask, PretrainTaskConfig
from tests.test_training_visual import write_cache

CNN = ["model.encoder=cnn3d", "model.extras.cnn3d.input_shape=[8,16,16]", "model.extras.cnn3d.width=2",
       "model.extras.cnn3d.region_grid=2", "model.extras.cnn3d.context.enabled=true",
       "model.extras.cnn3d.context.patches=1",
       "model.extras.cnn3d.embed_dim=0", "model.extras.cnn3d.input_hu=[-1000.0,1500.0,0.449]"]


def _stem() -> HUBinStem:
    return HUBinStem(CNN3DConfig(input_shape=(8, 16, 16), input_hu=(-1000.0, 1500.0, 0.449),
                                 context=ContextConfig(enabled=True, patches=1)))


def _volume(seed: int) -> torch.Tensor:
    """(1, 1, 8, 16, 16) preprocessed values spread over every HU bin, with a bright corner so flips show."""
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(1, 1, 8, 16, 16, generator=g) - 0.449
    v[..., :2, :4, :4] = 0.5
    return v


@pytest.mark.parametrize("draw", [AugmentDraw((2, -4, 8)), AugmentDraw((0, 4, 0), flip_axis=1),
                                  AugmentDraw((-2, 0, -4), flip_axis=0, rot90=3), AugmentDraw(rot90=1)])
def test_augmented_measurements_give_the_stem_of_the_augmented_volume(draw):
    stem, pad = _stem(), -0.449
    v = _volume(0)
    expected = stem(apply_augmentation(v[0], draw, pad)[None])
    measured = apply_augmentation(stem.measure(v)[0], draw, stem.measure_padding(pad), scale=(2, 4, 4))
    got = stem.assemble(measured[None])
    assert got.shape == expected.shape == (1, 16, 4, 4, 4)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, stem(v), atol=1e-3)  # the draw changed something


def test_stem_measure_then_assemble_is_the_stem():
    stem, v = _stem(), _volume(1)
    assert stem.measure(v).shape == (1, stem.measure_channels, 4, 4, 4)
    # a patch of the pad value (-1000 HU): all its voxels in bin 0 (air, below -950 HU), mean = max = -1000 HU
    pad = stem.measure_padding(-0.449)
    assert pad.shape == (14, 1, 1, 1) and pad[0].item() == 1.0 and pad[1:12].sum() == 0.0
    torch.testing.assert_close(pad[12:, 0, 0, 0], torch.tensor([-1.0, -1.0]), rtol=0, atol=1e-3)


def test_shift_must_be_whole_patches():
    with pytest.raises(ValueError, match=r"shift \(0, 2, 0\) voxels is not a whole number of \(2, 4, 4\)-voxel "
                                         r"patches; set data.augment.shift_step"):
        apply_augmentation(torch.zeros(14, 4, 4, 4), AugmentDraw((0, 2, 0)), 0.0, scale=(2, 4, 4))


def test_shift_step_draws_multiples():
    cfg = AugmentConfig(enabled=True, max_shift=(2, 8, 5), shift_step=(2, 4, 4), flip_p=0.0, rot90_p=0.0)
    g = torch.Generator().manual_seed(0)
    shifts = np.array([draw_augmentation(cfg, g).shift for _ in range(300)])
    assert set(shifts[:, 0]) == {-2, 0, 2} and set(shifts[:, 1]) == {-8, -4, 0, 4, 8} and set(shifts[:, 2]) == {
        -4, 0, 4}


def test_cache_stem_config_errors():
    from ctagrg.config import load_config

    def task(*over: str) -> PretrainTask:
        return PretrainTask(load_config(PretrainTaskConfig, None, ["extras.stem_cache={}", *over]))

    with pytest.raises(ConfigError, match="extras.stem_cache: only for the cnn3d encoder .* not 'ctnet'"):
        task()
    with pytest.raises(ConfigError, match=r"extras.stem_cache: data.augment.shift_step \[1, 1, 1\] must be a "
                                          r"multiple of the cnn3d patch \[2, 4, 4\]"):
        task(*CNN, "data.augment.enabled=true", "data.augment.max_shift=[0,4,4]")
    with pytest.raises(ConfigError, match=r"extras.stem_cache: data.augment.rot90_p > 0 needs square patches in-plane"):
        task(*CNN, "model.extras.cnn3d.patch=[2,4,2]", "data.augment.enabled=true", "data.augment.max_shift=[0,0,0]")
    task(*CNN, "data.augment.enabled=true", "data.augment.max_shift=[2,4,4]", "data.augment.shift_step=[2,4,4]")


@pytest.mark.slow
def test_cached_stem_pretraining_trains_the_same_weights(tmp_path, monkeypatch):
    """Same augmentation draws, same batches: the cached run's losses and weights are exactly the uncached run's,
    while it reads each volume file once instead of every epoch."""
    import ctagrg.data.dataset as dataset_module

    rng = np.random.default_rng(3)
    train_csv = write_cache(tmp_path, 12, "train", rng, shape=(8, 16, 16))
    valid_csv = write_cache(tmp_path, 8, "valid", rng, shape=(8, 16, 16))
    common = ["train.batch_size=4", "train.tensorboard=false", "train.lr=0.01", "train.epochs=3", "train.log_every=1",
              f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={train_csv}",
              f"data.valid_labels={valid_csv}", "data.augment.enabled=true", "data.augment.max_shift=[2,4,4]",
              "data.augment.shift_step=[2,4,4]", "data.augment.flip_axes=[1]", "data.augment.rot90_p=0.5",
              "model.heads.in_dim=544", "model.heads.pretrain_hidden=[]", *CNN]
    reads, read = [], dataset_module.load_cached_raw
    monkeypatch.setattr(dataset_module, "load_cached_raw", lambda path: reads.append(path) or read(path))
    runs, volumes_read = {}, {}
    for cached in (True, False):
        reads.clear()
        out = tmp_path / f"pre_{cached}"
        args = ["train", "pretrain", "--set", f"train.out_dir={out}",
                *(["--set", "extras.stem_cache={}"] if cached else []), *sum((["--set", s] for s in common), [])]
        assert cli_main(args) == 0
        runs[cached] = (load_state_file(out / "last" / "model.safetensors"), (out / "metrics.csv").read_text())
        volumes_read[cached] = len(reads)
    # cached: the 12 + 8 volumes once; uncached: 3 epochs of train + valid, then valid once more at the end
    assert volumes_read == {True: 20, False: 3 * 20 + 8}
    (w_c, log_c), (w_u, log_u) = runs[True], runs[False]
    assert set(w_c) == set(w_u)
    for key in w_c:
        assert torch.equal(w_c[key], w_u[key]), key

    def losses(log: str) -> list[float]:
        return [float(r.split(",")[4]) for r in log.splitlines()[1:] if r.split(",")[3] == "loss"]

    assert len(losses(log_c)) >= 9
    assert losses(log_c) == losses(log_u)


def test_cache_stem_checks_the_volume_shape(tmp_path, capsys):
    """A cache of another shape is refused as on the uncached path, not measured into a wrong-sized grid."""
    train_csv = write_cache(tmp_path, 4, "train", np.random.default_rng(5), shape=(8, 32, 32))
    args = ["train", "pretrain", "--set", f"train.out_dir={tmp_path / 'pre'}", "--set", "extras.stem_cache={}",
            *sum((["--set", s] for s in ["train.batch_size=4", "train.tensorboard=false",
                                         f"data.cache_dir={tmp_path / 'cache'}", f"data.train_labels={train_csv}",
                                         "model.heads.in_dim=544", "model.heads.pretrain_hidden=[]", *CNN]), [])]
    assert cli_main(args) == 1
    assert "CNN3DEncoder: expected (B, 1, 8, 16, 16) (input_shape), got (4, 1, 8, 32, 32)" in capsys.readouterr().err
