"""A torch Dataset over the preprocessed cache: ``{"volume": (1, D, H, W) float32, "labels": (18,) float32,
"name": str}``, or with ``dtype="uint8"`` the stored uint8 levels plus ``lo``/``hi`` for :func:`dequantize` on the
training device.

>>> ds = CachedVolumeDataset("cache/", labels="multi_abnormality_labels/train_predicted_labels.csv")  # doctest: +SKIP
>>> item = ds[0]; item["volume"].shape, item["labels"].shape                                          # doctest: +SKIP
(torch.Size([1, 240, 480, 480]), torch.Size([18]))
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctagrg.data.augment import AugmentConfig, augment_volume
from ctagrg.data.cache import SUFFIX, cache_path, load_cached, load_cached_raw
from ctagrg.data.names import volume_stem as volume_stem  # imported from here by training (splits, embeddings)
from ctagrg.labels import LABELS

LabelSource = Mapping[str, Sequence[float]] | str | Path | Any | None


def read_labels_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Read a CT-RATE multi-abnormality labels CSV: VolumeName + the 18 LABELS columns (0/1), keyed by stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        missing = [c for c in ("VolumeName", *LABELS) if c not in fields]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected VolumeName + the 18 CT-RATE "
                             f"labels")
        out = {}
        for line, row in enumerate(reader, start=2):
            try:
                out[volume_stem(row["VolumeName"])] = np.array([float(row[c]) for c in LABELS], np.float32)
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: label values must be numbers (0/1)") from None
    return out


def _labels_table(labels: LabelSource) -> dict[str, np.ndarray] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, Path)):
        return read_labels_csv(labels)
    if hasattr(labels, "iterrows"):  # a pandas DataFrame with VolumeName/name + LABELS columns
        key = "VolumeName" if "VolumeName" in labels.columns else "name"
        values = labels[list(LABELS)].to_numpy(np.float32)
        return {volume_stem(n): v for n, v in zip(labels[key], values, strict=True)}
    table = {volume_stem(k): np.asarray(v, np.float32) for k, v in labels.items()}
    bad = [k for k, v in table.items() if v.shape != (len(LABELS),)]
    if bad:
        raise ValueError(f"labels for {bad[:3]}: expected {len(LABELS)} values each")
    return table


def cached_names(cache_dir: str | Path) -> list[str]:
    """Names with a finished cache file: the manifest's ``ok`` rows when it exists, else every cache file."""
    cache_dir = Path(cache_dir)
    manifest = cache_dir / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as fh:
            names = [r["name"] for r in csv.DictReader(fh) if r.get("status") == "ok"]
        return sorted(n for n in names if cache_path(cache_dir, n).is_file())
    return sorted(p.name[: -len(SUFFIX)] for p in cache_dir.glob(f"*{SUFFIX}") if not p.name.startswith("."))


class CachedVolumeDataset:
    """Preprocessed volumes from a cache folder, with their 18 labels.

    Args:
        cache_dir: folder written by ``ctagrg preprocess``.
        labels: CT-RATE labels CSV path, a DataFrame (VolumeName or name + LABELS), a mapping name → 18 values,
            or None (labels are then NaN, so a loss computed on them is loudly NaN rather than quietly wrong).
        names: the volumes to use (stems or VolumeNames). Default: every cached volume that has labels.
        augment: :class:`AugmentConfig`; None or ``enabled=False`` returns volumes as stored.
        dtype: ``"float32"`` (default) dequantises in the loader; ``"uint8"`` returns the stored levels, a quarter
            of the bytes and no float32 copy in the worker or the collate, for :func:`ctagrg.data.cache.dequantize`
            on the training device (bit-identical result). Not combinable with ``augment``, which works on floats.
        volumes: False returns items without ``"volume"`` (nothing is read but the labels): for a caller that holds
            every volume's features already, e.g. step 1 on a frozen encoder's cached outputs. Settable later.

    Items: ``{"volume": (1, D, H, W) float32 tensor, "labels": (18,) float32 tensor, "name": str}``; with
    ``dtype="uint8"`` the volume is the (1, D, H, W) uint8 tensor as stored, plus ``"lo"`` and ``"hi"``: float64
    0-d tensors, the value range (float64 because the file stores them as such; :func:`dequantize` must derive the
    float32 scale from the same numbers as :func:`load_cached` to match it bit for bit).
    """

    def __init__(self, cache_dir: str | Path, labels: LabelSource = None, names: Sequence[str] | None = None,
                 augment: AugmentConfig | None = None, dtype: Literal["float32", "uint8"] = "float32",
                 volumes: bool = True) -> None:
        self.volumes = volumes
        self.cache_dir = Path(cache_dir)
        if not self.cache_dir.is_dir():
            raise FileNotFoundError(f"{self.cache_dir}: cache folder not found (run `ctagrg preprocess` first)")
        if dtype not in ("float32", "uint8"):
            raise ValueError(f"CachedVolumeDataset dtype: expected 'float32' or 'uint8', got {dtype!r}")
        if dtype == "uint8" and augment is not None and augment.enabled:
            raise ValueError("CachedVolumeDataset: augment needs dtype='float32' (augment after dequantize for uint8)")
        self.dtype = dtype
        self.labels = _labels_table(labels)
        self.augment = augment
        if names is None:
            names = cached_names(self.cache_dir)
            if self.labels is not None:
                names = [n for n in names if n in self.labels]
        self.names = [volume_stem(n) for n in names]
        self._check()

    def _check(self) -> None:
        missing = [n for n in self.names if not cache_path(self.cache_dir, n).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.cache_dir}: {len(missing)} volume(s) not cached, e.g. {missing[:3]}")
        if self.labels is not None:
            unlabelled = [n for n in self.names if n not in self.labels]
            if unlabelled:
                raise KeyError(f"{len(unlabelled)} volume(s) have no labels, e.g. {unlabelled[:3]}")

    def __len__(self) -> int:
        return len(self.names)

    def label_matrix(self) -> np.ndarray:
        """(N, 18) float32 labels of every item, in dataset order (for class weights and samplers)."""
        if self.labels is None:
            return np.full((len(self), len(LABELS)), np.nan, np.float32)
        return np.stack([self.labels[n] for n in self.names]) if self.names else np.zeros((0, len(LABELS)), np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        name = self.names[index]
        labels = self.labels[name] if self.labels is not None else np.full(len(LABELS), np.nan, np.float32)
        item: dict[str, Any] = {"labels": torch.from_numpy(labels.copy()), "name": name}
        if not self.volumes:
            return item
        if self.dtype == "uint8":
            q, lo, hi = load_cached_raw(cache_path(self.cache_dir, name))
            item |= {"volume": torch.from_numpy(q).unsqueeze(0), "lo": torch.tensor(lo, dtype=torch.float64),
                     "hi": torch.tensor(hi, dtype=torch.float64)}
            return item
        volume = torch.from_numpy(load_cached(cache_path(self.cache_dir, name))).unsqueeze(0)
        if self.augment is not None and self.augment.enabled:
            volume = augment_volume(volume, self.augment)
        return {"volume": volume, **item}
