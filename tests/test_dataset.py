"""ctagrg.data.dataset and augment: items from the cache, labels, augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctagrg.data.augment import AugmentConfig, augment_volume, shift
from ctagrg.data.cache import cache_path, save_cached
from ctagrg.data.cachebuild import write_manifest
from ctagrg.data.dataset import CachedVolumeDataset, read_labels_csv
from ctagrg.labels import LABELS

SHAPE = (4, 6, 6)


def _volume(seed: int) -> np.ndarray:
    x = np.full(SHAPE, -0.449, np.float32)
    x[1, 2 + seed % 2, 3] = 0.551  # a marker whose position differs per volume
    return x


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    out = tmp_path / "cache"
    for i, name in enumerate(["train_1_a_1", "train_2_a_1", "train_3_a_1"]):
        save_cached(cache_path(out, name), _volume(i), -0.449, 0.551)
    write_manifest(out / "manifest.csv", [{"name": n, "source": "x", "status": "ok"}
                                          for n in ("train_1_a_1", "train_2_a_1", "train_3_a_1")]
                   + [{"name": "train_4_a_1", "source": "y", "status": "failed"}])
    labels = tmp_path / "labels.csv"
    rows = ["VolumeName," + ",".join(LABELS)]
    for i, n in enumerate(["train_1_a_1", "train_2_a_1"]):
        rows.append(f"{n}.nii.gz," + ",".join("1" if j == i else "0" for j in range(18)))
    labels.write_text("\n".join(rows) + "\n")
    return out


def test_items_shapes_and_labels(cache: Path) -> None:
    ds = CachedVolumeDataset(cache, labels=cache.parent / "labels.csv")
    assert ds.names == ["train_1_a_1", "train_2_a_1"]  # cached ∩ labelled
    item = ds[1]
    assert item["volume"].shape == (1, *SHAPE) and item["volume"].dtype == torch.float32
    assert item["labels"].dtype == torch.float32 and item["labels"].tolist() == [0, 1] + [0] * 16
    assert item["name"] == "train_2_a_1"
    assert float(item["volume"][0, 1, 3, 3]) == pytest.approx(0.551, abs=1e-6)
    assert ds.label_matrix().shape == (2, 18) and ds.label_matrix()[0, 0] == 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["volume"].shape == (2, 1, *SHAPE) and batch["labels"].shape == (2, 18)


def test_unlabelled_dataset_has_nan_labels_and_skips_failed_rows(cache: Path) -> None:
    ds = CachedVolumeDataset(cache)
    assert ds.names == ["train_1_a_1", "train_2_a_1", "train_3_a_1"]
    assert torch.isnan(ds[2]["labels"]).all()


def test_explicit_names_must_be_cached_and_labelled(cache: Path) -> None:
    labels = {"train_1_a_1.nii.gz": np.ones(18)}
    assert CachedVolumeDataset(cache, labels=labels, names=["train_1_a_1.nii.gz"]).names == ["train_1_a_1"]
    with pytest.raises(KeyError, match="1 volume\\(s\\) have no labels"):
        CachedVolumeDataset(cache, labels=labels, names=["train_3_a_1"])
    with pytest.raises(FileNotFoundError, match="not cached"):
        CachedVolumeDataset(cache, names=["train_9_a_1"])
    with pytest.raises(FileNotFoundError, match="run `ctagrg preprocess` first"):
        CachedVolumeDataset(cache / "missing")


def test_labels_csv_errors(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("VolumeName,Emphysema\na.nii.gz,1\n")
    with pytest.raises(ValueError, match="l.csv: missing column"):
        read_labels_csv(p)


def test_shift_fills_with_pad_value() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    y = shift(x, (0, 1, -2), -9.0)
    assert y[0, 0, 1, 0] == x[0, 0, 0, 2] and y[0, 1, 2, 1] == x[0, 1, 1, 3]
    assert (y[0, :, 0, :] == -9).all() and (y[0, :, :, 2:] == -9).all()


def test_augmentation_off_by_default_and_seeded(cache: Path) -> None:
    x = torch.from_numpy(_volume(0)).unsqueeze(0)
    assert augment_volume(x, AugmentConfig()) is x
    cfg = AugmentConfig(enabled=True, max_shift=(1, 1, 1), flip_p=1.0, rot90_p=1.0)
    a = augment_volume(x, cfg, torch.Generator().manual_seed(0))
    b = augment_volume(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.shape == x.shape and (a > 0).sum() <= 1  # one marker voxel (or shifted out), rest air
    ds = CachedVolumeDataset(cache, augment=cfg)
    assert ds[0]["volume"].shape == (1, *SHAPE)


def test_rot90_and_flip_are_exact() -> None:
    x = torch.from_numpy(_volume(0)).unsqueeze(0)
    flip_w = augment_volume(x, AugmentConfig(enabled=True, max_shift=(0, 0, 0), flip_p=1.0, flip_axes=(2,),
                                             rot90_p=0.0))
    assert torch.equal(flip_w, torch.flip(x, dims=(3,)))
    rot = augment_volume(x, AugmentConfig(enabled=True, max_shift=(0, 0, 0), flip_p=0.0, rot90_p=1.0),
                         torch.Generator().manual_seed(1))
    assert any(torch.equal(rot, torch.rot90(x, k, dims=(2, 3))) for k in (1, 2, 3))


def test_augment_config_validation() -> None:
    with pytest.raises(ValueError, match="flip_axes"):
        AugmentConfig(flip_axes=(3,))
    with pytest.raises(ValueError, match="rot90_p"):
        AugmentConfig(rot90_p=2.0)
    with pytest.raises(ValueError, match="square axial plane"):
        augment_volume(torch.zeros(1, 2, 3, 4), AugmentConfig(enabled=True, max_shift=(0, 0, 0), flip_p=0,
                                                              rot90_p=1.0))


def test_labels_from_a_dataframe(cache: Path) -> None:
    import pandas as pd

    table = pd.DataFrame([{"name": "train_3_a_1", **{label: float(i % 2) for i, label in enumerate(LABELS)}}])
    ds = CachedVolumeDataset(cache, labels=table)
    assert ds.names == ["train_3_a_1"] and ds[0]["labels"].tolist() == [float(i % 2) for i in range(18)]
