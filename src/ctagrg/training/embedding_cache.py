"""Step-2 embedding cache: run the frozen step-1 model once over every volume and keep what step 2 needs.

The visual model is frozen in step 2, so re-running it every epoch (CT-AGRG does) only costs time. Per volume
we store the 18 abnormality embeddings hᵢ, the 18 probabilities, the 18 reference labels and the target sentence of
every label present in the report. Decoder training then reads this cache (ctagrg.training.decoder_task).

Layout (``out_dir``)::

    index.json                  written last: its presence means the cache is complete; "parts": how many equal
                                blocks each embedding holds side by side (the heads' ``parts``: 2 for the demo's
                                [right half, left half], whose swap mirrors the finding), else 1
    shard_00000.safetensors     embeddings (n, 18, D) float16, probabilities (n, 18) float32, labels (n, 18) int8
                                (1 present, 0 absent, -1 unknown)
    shard_00000.json            {"names": [...], "targets": [{label: sentence, ...}, ...]}

Building is resumable: shards already on disk are kept. Sentences per label come either from a sentences CSV
(``ctagrg sentences``: VolumeName, AbnormalityName, Sentence) or from a reports CSV through the report labeler.

Under DDP (``torchrun``; the process group exists when the decoder stage builds its cache) every rank calls the
build: rank r computes and writes shards r, r + world_size, ... on its own GPU, so no file has two writers and the
work is shared; after a barrier rank 0 writes index.json, and after a second one every rank reads the whole cache.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctagrg.config import ConfigError, to_dict
from ctagrg.labels import LABEL_INDEX, LABELS, NUM_LABELS
from ctagrg.models.preprocess_match import check_cache_preprocess, encoder_config_of
from ctagrg.models.thresholds_file import find_thresholds, read_thresholds
from ctagrg.training import distributed as D
from ctagrg.utils.atomic import atomic_path, write_json_atomic
from ctagrg.utils.device import resolve_device
from ctagrg.utils.progress import progress

FORMAT = "ctagrg-embedding-cache-v1"


@dataclass
class EmbeddingCacheConfig:
    """Where the cache lives and, to build it, where its inputs are."""

    out_dir: str = ""  # the cache folder
    step1_dir: str = ""  # step-1 checkpoint folder (config.json + model.safetensors; thresholds.json beside it)
    volume_cache: str = ""  # preprocessed volumes (``ctagrg preprocess`` output)
    # A CSV path, or a folder whose *.csv files are all read (e.g. CT-RATE's radiology_text_reports/):
    labels_csv: str = ""  # CT-RATE labels (VolumeName + 18); empty: a label is present when a sentence asserts it
    sentences_csv: str = ""  # ``ctagrg sentences`` output; or:
    reports_csv: str = ""  # CT-RATE reports, labelled sentence by sentence with ``labeler``
    labeler: str = "rules"
    # with reports_csv: the report columns read, and which of an abnormality's sentences make its target
    # (ctagrg.text.extract: first | joined). CT-AGRG: [Findings_EN], first (configs/ctrate; docs/decoder.md, "Targets")
    text_columns: tuple[str, ...] = ("Findings_EN", "Impressions_EN")
    sentence: str = "joined"
    thresholds: str = ""  # thresholds.json; empty: step1_dir/thresholds.json if it exists
    batch_size: int = 2
    shard_size: int = 256
    device: str = "auto"


# -- sentences ------------------------------------------------------------------------------------------------
def csv_files(path: str | Path) -> list[Path]:
    """``path`` itself, or the sorted *.csv files of a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"{path}: no .csv files in this folder")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CSV not found")
    return [path]


def _merged(reader: Callable[[Path], dict[str, Any]], path: str | Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for file in csv_files(path):
        merged.update(reader(file))
    return merged


def read_sentences_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """``ctagrg sentences`` output → {volume stem: {label: sentence}} (several rows for one pair are joined)."""
    from ctagrg.data.dataset import volume_stem

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sentences CSV not found")
    table: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        need = {"VolumeName", "AbnormalityName", "Sentence"}
        if not need <= set(reader.fieldnames or ()):
            raise ConfigError(f"{path}: expected columns {sorted(need)}, found {reader.fieldnames}")
        for line, row in enumerate(reader, 2):
            label = row["AbnormalityName"]
            if label not in LABEL_INDEX:
                raise ConfigError(f"{path}:{line}: unknown abnormality {label!r}")
            pair = table.setdefault(volume_stem(row["VolumeName"]), {})
            pair[label] = f"{pair[label]} {row['Sentence']}".strip() if label in pair else row["Sentence"].strip()
    return table


def sentences_from_reports(path: str | Path, labeler: str = "rules",
                           text_columns: Sequence[str] = ("Findings_EN", "Impressions_EN"),
                           rule: str = "joined") -> dict[str, dict[str, str]]:
    """Reports CSV → {volume stem: {label: its sentence(s) in ``text_columns``}} via the report labeler; ``rule``
    (``first`` | ``joined``, :func:`ctagrg.text.extract.extract_sentences`) picks an abnormality's sentences."""
    from ctagrg.data.dataset import volume_stem
    from ctagrg.text.extract import extract_sentences
    from ctagrg.text.labeler import get_labeler
    from ctagrg.text.reports_io import read_reports

    model = get_labeler(labeler)
    reports = read_reports(path, tuple(text_columns), separator=model.column_separator)
    table: dict[str, dict[str, str]] = {}
    for name, label, sentence in extract_sentences(model, reports.ids, reports.texts, rule):
        table.setdefault(volume_stem(name), {})[label] = sentence
    return table


# -- building -------------------------------------------------------------------------------------------------
def _shard_paths(out_dir: Path, k: int) -> tuple[Path, Path]:
    return out_dir / f"shard_{k:05d}.safetensors", out_dir / f"shard_{k:05d}.json"


def _label_row(labels: torch.Tensor) -> np.ndarray:
    row = labels.numpy()
    return np.where(np.isnan(row), -1, row > 0.5).astype(np.int8)


@torch.no_grad()
def _run_shard(step1: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], dataset: Any, indices: Sequence[int],
               batch_size: int, device: torch.device) -> dict[str, Any]:
    embeddings, probs, labels, names = [], [], [], []
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        out = step1(torch.stack([it["volume"] for it in items]).to(device))
        if out["embeddings"].ndim != 3 or out["embeddings"].shape[1] != NUM_LABELS:
            raise ValueError(f"step-1 model: expected embeddings (B, 18, D), got {tuple(out['embeddings'].shape)}")
        embeddings.append(out["embeddings"].float().cpu().half())
        probs.append(torch.sigmoid(out["logits"].float()).cpu())
        labels.extend(_label_row(it["labels"]) for it in items)
        names.extend(it["name"] for it in items)
    return {"embeddings": torch.cat(embeddings), "probabilities": torch.cat(probs),
            "labels": torch.from_numpy(np.stack(labels)), "names": names}


def build_embedding_cache(step1: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], dataset: Any,
                          sentences: Mapping[str, Mapping[str, str]], out_dir: str | Path, *, batch_size: int = 2,
                          shard_size: int = 256, device: str | torch.device = "cpu",
                          thresholds: Sequence[float] | None = None, source: dict[str, Any] | None = None,
                          parts: int = 1) -> Path:
    """Write the cache for every item of ``dataset``; keep shards already written (resume). Returns ``out_dir``.

    Inside a torch.distributed process group every rank must call this with the same arguments: rank r writes
    shards r, r + world_size, ... and rank 0 the index, after all shards are on disk (module docstring).

    Args:
        step1: the frozen step-1 model, (B, 1, D, H, W) → {"logits": (B, 18), "embeddings": (B, 18, D)}.
        dataset: items {"volume": (1, D, H, W), "labels": (18,) float (NaN unknown), "name": str}.
        sentences: {name: {label: target sentence}} (labels absent from a report have no entry).
        thresholds: 18 probability thresholds recorded in index.json (decoder training reads "detected" from it).
        parts: how many equal blocks each embedding holds side by side (recorded in index.json).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    rank, world_size = D.current()
    n_shards = (len(dataset) + shard_size - 1) // shard_size
    mine = range(rank, n_shards, world_size)
    for k in progress(mine, desc="embedding cache", total=len(mine)):
        tensor_path, json_path = _shard_paths(out_dir, k)
        if tensor_path.is_file() and json_path.is_file():
            continue
        shard = _run_shard(step1, dataset, range(k * shard_size, min(len(dataset), (k + 1) * shard_size)),
                           batch_size, device)
        _write_shard(shard, sentences, tensor_path, json_path)
    _barrier(world_size)  # every shard is on disk
    if rank == 0:
        dim = _shard_dim(out_dir, 0) if n_shards else None
        write_json_atomic(out_dir / "index.json", {
            "format": FORMAT, "num_volumes": len(dataset), "num_shards": n_shards, "embedding_dim": dim,
            "labels": list(LABELS), "thresholds": list(thresholds) if thresholds is not None else None,
            "parts": parts, "source": source or {}})
    _barrier(world_size)  # the index is written: the cache is complete for every rank
    return out_dir


def _barrier(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()


def _shard_dim(out_dir: Path, k: int) -> int:
    """The embedding width D of shard ``k``, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(_shard_paths(out_dir, k)[0]), framework="pt") as fh:
        return int(fh.get_slice("embeddings").get_shape()[-1])


def _write_shard(shard: dict[str, Any], sentences: Mapping[str, Mapping[str, str]], tensor_path: Path,
                 json_path: Path) -> None:
    from safetensors.torch import save_file

    targets = [{k: v for k, v in sentences.get(name, {}).items() if k in LABEL_INDEX} for name in shard["names"]]
    write_json_atomic(json_path, {"names": shard["names"], "targets": targets})
    with atomic_path(tensor_path) as tmp:  # the tensor file last: both exist only when the shard is complete
        save_file({k: shard[k].contiguous() for k in ("embeddings", "probabilities", "labels")}, str(tmp))


# -- reading --------------------------------------------------------------------------------------------------
def load_shard(out_dir: str | Path, k: int) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensor_path, json_path = _shard_paths(Path(out_dir), k)
    data: dict[str, Any] = dict(load_file(str(tensor_path)))
    data.update(json.loads(json_path.read_text(encoding="utf-8")))
    return data


@dataclass
class EmbeddingTable:
    """A whole cache in memory. embeddings: (N, 18, D) float16; probabilities: (N, 18) float32;
    labels: (N, 18) int8 (1 / 0 / -1 unknown); targets: per volume {label: sentence}."""

    names: list[str]
    embeddings: torch.Tensor
    probabilities: torch.Tensor
    labels: torch.Tensor
    targets: list[dict[str, str]]
    thresholds: list[float] | None
    parts: int = 1  # how many equal blocks each embedding holds side by side

    def pairs(self, rule: str, thresholds: Sequence[float] | None = None,
              names: set[str] | None = None) -> list[tuple[int, int, str]]:
        """(volume index, label index, sentence) training pairs.

        rule: ``detected_and_present`` (paper: probability ≥ threshold and label present) or ``present``. A present
        label without a target sentence (the labeler found none) cannot be a pair and is left out.
        """
        if rule not in ("detected_and_present", "present"):
            raise ConfigError(f"pairs: expected 'detected_and_present' or 'present', got {rule!r}")
        thr = thresholds if thresholds is not None else self.thresholds
        if rule == "detected_and_present" and thr is None:
            raise ConfigError("pairs 'detected_and_present' needs thresholds (none in the cache or the config)")
        detected = self.probabilities >= torch.tensor(thr) if thr is not None else None
        out = []
        for v, name in enumerate(self.names):
            if names is not None and name not in names:
                continue
            for label, sentence in sorted(self.targets[v].items(), key=lambda kv: LABEL_INDEX[kv[0]]):
                i = LABEL_INDEX[label]
                present = self.labels[v, i] == 1 or (self.labels[v, i] == -1)  # unknown label: the report says so
                if present and (rule == "present" or bool(detected[v, i])):
                    out.append((v, i, sentence))
        return out


def load_embedding_cache(out_dir: str | Path) -> EmbeddingTable:
    """Read a complete cache (index.json present) into memory."""
    out_dir = Path(out_dir)
    index_path = out_dir / "index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{out_dir}: no complete embedding cache (index.json missing; build it first)")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise ConfigError(f"{index_path}: not a {FORMAT} index (format {index.get('format')!r})")
    shards = [load_shard(out_dir, k) for k in range(index["num_shards"])]
    cat = lambda key, empty: torch.cat([s[key] for s in shards]) if shards else empty  # noqa: E731
    return EmbeddingTable(
        names=[n for s in shards for n in s["names"]],
        embeddings=cat("embeddings", torch.zeros(0, NUM_LABELS, index.get("embedding_dim") or 0)),
        probabilities=cat("probabilities", torch.zeros(0, NUM_LABELS)),
        labels=cat("labels", torch.zeros(0, NUM_LABELS, dtype=torch.int8)),
        targets=[t for s in shards for t in s["targets"]],
        thresholds=index.get("thresholds"), parts=int(index.get("parts", index.get("halves", 1))))


# -- from a config ----------------------------------------------------------------------------------------------
def build_from_config(cfg: EmbeddingCacheConfig, step1: Any | None = None) -> Path:
    """Build (or finish) the cache described by ``cfg``. ``step1`` defaults to loading ``cfg.step1_dir``."""
    from ctagrg.data.dataset import CachedVolumeDataset, cached_names, read_labels_csv

    for key in ("out_dir", "volume_cache"):
        if not getattr(cfg, key):
            raise ConfigError(f"embeddings.{key}: required to build the embedding cache")
    if bool(cfg.sentences_csv) == bool(cfg.reports_csv):
        raise ConfigError("embeddings: set exactly one of sentences_csv and reports_csv (the target sentences)")
    if cfg.sentences_csv:
        sentences = _merged(read_sentences_csv, cfg.sentences_csv)
    else:
        sentences = _merged(lambda f: sentences_from_reports(f, cfg.labeler, cfg.text_columns, cfg.sentence),
                            cfg.reports_csv)
    labels: Any = _merged(read_labels_csv, cfg.labels_csv) if cfg.labels_csv else None
    if labels is None:  # no labels file: a label is present when a sentence asserts it (no sentences: normal)
        labels = {n: [1.0 if label in sentences.get(n, {}) else 0.0 for label in LABELS]
                  for n in cached_names(cfg.volume_cache)}
    dataset = CachedVolumeDataset(cfg.volume_cache, labels=labels)
    # under torchrun each rank runs its shards on its own GPU ("auto"/"cuda" -> cuda:LOCAL_RANK)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)) if D.current()[1] > 1 else None)
    if step1 is None:
        if not cfg.step1_dir:
            raise ConfigError("embeddings.step1_dir: required to build the embedding cache")
        step1 = load_step1_model(cfg.step1_dir).to(device).eval()
    encoder_cfg = encoder_config_of(step1)
    if encoder_cfg is not None:  # the step-1 encoder must fit the volumes' preprocessing
        check_cache_preprocess(encoder_cfg, cfg.volume_cache)
    thr_path = Path(cfg.thresholds) if cfg.thresholds else find_thresholds(cfg.step1_dir) if cfg.step1_dir else None
    thresholds = read_thresholds(thr_path) if thr_path else None
    heads = getattr(step1, "heads", None)  # a Step1Model's heads: how many parts each embedding holds
    return build_embedding_cache(step1, dataset, sentences, cfg.out_dir, batch_size=cfg.batch_size,
                                 shard_size=cfg.shard_size, device=device, thresholds=thresholds,
                                 source={**to_dict(cfg), "thresholds_file": str(thr_path) if thr_path else None},
                                 parts=getattr(heads, "parts", 1))


def load_step1_model(directory: str | Path) -> torch.nn.Module:
    """The step-1 model saved by the visual side (``from_pretrained(directory)``); forward (B, 1, D, H, W) →
    {"logits": (B, 18), "embeddings": (B, 18, 1024)}."""
    from ctagrg.models.step1 import Step1Model  # the visual side's class (docs/architecture.md, model contracts)

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: not a step-1 checkpoint (config.json missing)")
    return Step1Model.from_pretrained(directory)
