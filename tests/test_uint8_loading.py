"""uint8 training loads: ``load_cached_raw`` + ``dequantize`` and ``CachedVolumeDataset(dtype="uint8")`` give
exactly (bit for bit) the float32 path's volumes, and the visual tasks' steps give exactly the same loss and
probabilities from a uint8 loader as from a float32 one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ctagrg.config import load_config
from ctagrg.data.augment import AugmentConfig
from ctagrg.data.cache import cache_path, dequantize, load_cached, load_cached_raw, save_cached
from ctagrg.data.dataset import CachedVolumeDataset
from ctagrg.labels import LABELS
from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig, PretrainTask, PretrainTaskConfig

SHAPE = (6, 16, 16)
# (lo, hi) per volume: the default window, and ranges whose float32 scale rounds differently from float32(hi) -
# float32(lo) computed in float32, so a dequantize that derived the scale from float32 lo/hi would not be exact.
RANGES = [(-0.449, 0.551), (-0.3, 0.7000001), (0.1, 1.1), (-1.0, 0.123456789)]
MODEL = ["model.ctnet.input_shape=[6,16,16]", "model.ctnet.trunk.width=4", "model.ctnet.trunk.layers=[1,1,1,1]",
         "model.ctnet.reducer_kernels=[[1,1,1],[1,1,1],[2,1,1]]",
         "model.ctnet.reducer_strides=[[2,1,1],[2,1,1],[1,1,1]]", "model.ctnet.embed_dim=32",
         "model.heads.in_dim=32", "model.heads.embed_dim=8", "model.heads.classifier_hidden=4",
         "model.heads.pretrain_hidden=[8,4]"]


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    """Four volumes over all 256 levels (random values in [lo, hi]) with different ranges, plus a labels CSV."""
    rng = np.random.default_rng(0)
    rows = ["VolumeName," + ",".join(LABELS)]
    for i, (lo, hi) in enumerate(RANGES):
        vol = (lo + rng.random(SHAPE) * (hi - lo)).astype(np.float32)
        vol.flat[:2] = lo, hi  # both ends present
        save_cached(cache_path(tmp_path / "cache", f"train_{i}_a_1"), vol, lo, hi)
        rows.append(f"train_{i}_a_1.nii.gz," + ",".join(map(str, rng.integers(0, 2, len(LABELS)))))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "cache"


def test_raw_loader_and_dequantize_match_load_cached_exactly(cache: Path) -> None:
    for i, (lo, hi) in enumerate(RANGES):
        path = cache_path(cache, f"train_{i}_a_1")
        q, qlo, qhi = load_cached_raw(path)
        assert q.dtype == np.uint8 and q.shape == SHAPE and (qlo, qhi) == (lo, hi)
        assert q.min() == 0 and q.max() == 255
        x = dequantize(torch.from_numpy(q)[None, None], torch.tensor([qlo], dtype=torch.float64),
                       torch.tensor([qhi], dtype=torch.float64))
        assert x.dtype == torch.float32 and x.shape == (1, 1, *SHAPE)
        assert torch.equal(x[0, 0], torch.from_numpy(load_cached(path)))


def test_uint8_dataset_batches_dequantise_to_the_float32_batches(cache: Path) -> None:
    labels = cache.parent / "labels.csv"
    f32, u8 = CachedVolumeDataset(cache, labels=labels), CachedVolumeDataset(cache, labels=labels, dtype="uint8")
    item = u8[1]
    assert item["volume"].dtype == torch.uint8 and item["volume"].shape == (1, *SHAPE)
    assert item["lo"].dtype == torch.float64 and item["lo"].item() == -0.3 and item["hi"].item() == 0.7000001
    assert torch.equal(item["labels"], f32[1]["labels"]) and item["name"] == "train_1_a_1"
    batches = zip(DataLoader(f32, batch_size=4), DataLoader(u8, batch_size=4), strict=True)
    for bf, bu in batches:
        assert bu["volume"].dtype == torch.uint8 and bu["lo"].shape == (4,)
        assert torch.equal(dequantize(bu["volume"], bu["lo"], bu["hi"]), bf["volume"])
        assert torch.equal(bu["labels"], bf["labels"]) and bu["name"] == bf["name"]


def test_uint8_errors(cache: Path) -> None:
    with pytest.raises(ValueError, match="expected 'float32' or 'uint8', got 'float16'"):
        CachedVolumeDataset(cache, dtype="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="augment needs dtype='float32'"):
        CachedVolumeDataset(cache, dtype="uint8", augment=AugmentConfig(enabled=True))
    with pytest.raises(TypeError, match="expected a uint8 volume, got torch.float32"):
        dequantize(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match=r"lo and hi must be \(2,\) for a batch of 2"):
        dequantize(torch.zeros(2, 1, 2, 2, 2, dtype=torch.uint8), torch.zeros(1), torch.ones(1))


@pytest.mark.parametrize("task_cls, cfg_cls", [(PretrainTask, PretrainTaskConfig),
                                               (ClassifierTask, ClassifierTaskConfig)])
def test_visual_task_steps_identical_from_uint8_and_float32_loaders(cache: Path, task_cls, cfg_cls) -> None:
    torch.set_num_threads(1)
    labels = str(cache.parent / "labels.csv")
    (cache.parent / "train.txt").write_text("train_0_a_1\ntrain_1_a_1\ntrain_2_a_1\n")  # validation: train_3
    (cache.parent / "valid.txt").write_text("train_3_a_1\n")
    cfg = load_config(cfg_cls, None, [f"data.cache_dir={cache}", f"data.train_labels={labels}",
                                      f"data.valid_labels={labels}", f"split.train=[{cache.parent / 'train.txt'}]",
                                      f"split.valid=[{cache.parent / 'valid.txt'}]", "data.augment.enabled=true",
                                      *MODEL])
    task = task_cls(cfg)
    train = task.train_dataset()
    assert train.dtype == "uint8" and task.valid_dataset().dtype == "uint8"
    f32 = CachedVolumeDataset(cache, labels=labels, names=train.names)
    bu, bf = next(iter(DataLoader(train, batch_size=4))), next(iter(DataLoader(f32, batch_size=4)))
    assert bu["volume"].dtype == torch.uint8 and torch.equal(task._volumes(bu), bf["volume"])

    torch.manual_seed(0)
    model = task.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm running stats move in train mode
    losses = []
    for batch in (bu, bf):
        model.load_state_dict(state)
        model.train()
        torch.manual_seed(1)  # the same augmentation draws for both
        losses.append(task.training_step(model, batch)["loss"])
    assert torch.equal(losses[0], losses[1]) and torch.isfinite(losses[0])

    model.eval()
    with torch.no_grad():
        pu = task.predict(model, DataLoader(train, batch_size=2))
        pf = task.predict(model, DataLoader(f32, batch_size=2))
    assert np.array_equal(pu[0], pf[0]) and np.array_equal(pu[1], pf[1]) and pu[2] == pf[2]
