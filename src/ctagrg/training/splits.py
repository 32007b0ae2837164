"""Which volumes a training stage trains on and which it selects on, and the record of both next to the run.

Every stage (``pretrain``, ``classifier``, ``decoder``) has a ``split`` section (:class:`SplitConfig`)::

    split:
      train: [carve:train]          # each entry: a split name, carve:<part>, or a file of VolumeNames
      valid: [carve:valid]          # what the best checkpoint and every threshold are chosen on
      carve: {source: train, fractions: {train: 0.9, valid: 0.1}, seed: 0}

An entry is

- a split name (``train``, ``valid`` or ``validation``, ``test``): the volumes whose name starts with ``<split>_``;
- ``carve:<part>``: the volumes of ``carve.source`` whose patient the seeded carve puts in ``part``
  (:func:`ctagrg.data.ctrate.carve_patients`: all volumes of a patient in one part, and the same part in every
  stage whatever other volumes it sees);
- anything else: a file of VolumeNames, one per line (``#`` comments and blank lines skipped; a ``.csv`` file is
  read by its ``VolumeName`` column), e.g. the ``splits/valid.txt`` an earlier run wrote.

Several entries are joined. They select among the volumes the stage has data for (the visual stages: the labels
CSV's volumes in the cache; step 2: the embedding cache's). Training and validation volumes, and their patients,
must not overlap.

Written next to the run, ``out_dir/splits/``: ``train.txt`` and ``valid.txt`` (the volume names, sorted, one per
line: a name list that another stage reads as it is) and ``splits.json`` (the entries, the carve, the counts of
volumes and patients, and a SHA-256 of each list, so that two runs can be compared at a glance).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctagrg.config import ConfigError, to_dict
from ctagrg.data.ctrate import NAME_RE, canonical_split, carve_patients
from ctagrg.data.dataset import volume_stem
from ctagrg.utils.atomic import write_json_atomic, write_text_atomic

logger = logging.getLogger("ctagrg")

CARVE_PREFIX = "carve:"
RECORD_DIR = "splits"


@dataclass
class CarveConfig:
    """A patient-level split carved out of ``source`` (e.g. CT-RATE's train, which is all there is to train and
    select on once its ``valid`` is kept for ``ctagrg evaluate``)."""

    source: str = "train"  # the split whose patients are carved (a volume-name prefix)
    fractions: dict[str, float] = field(default_factory=dict)  # part -> fraction; empty: nothing to carve
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.fractions, Mapping):
            raise ConfigError(f"split.carve.fractions: expected a mapping part -> fraction, got {self.fractions!r}")
        if any(not isinstance(v, (int, float)) or v < 0 for v in self.fractions.values()):
            raise ConfigError(f"split.carve.fractions: expected non-negative numbers, got {dict(self.fractions)}")
        self.fractions = {str(k): float(v) for k, v in self.fractions.items()}


@dataclass
class SplitConfig:
    """The volumes a stage trains on (``train``) and selects on (``valid``): see the module docstring. An empty
    list means the stage's default (each stage's config says which)."""

    train: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()
    carve: CarveConfig = field(default_factory=CarveConfig)


@dataclass
class Selection:
    """The resolved volume names (sorted stems) of one stage."""

    train: list[str]
    valid: list[str]


def read_name_list(path: str | Path) -> list[str]:
    """The volume stems listed in ``path``: one VolumeName per line, or a CSV's ``VolumeName`` column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: name list not found (split entries are a split name, carve:<part>, or a file "
                          "of VolumeNames)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = csv.DictReader(text.splitlines())
        if "VolumeName" not in (rows.fieldnames or ()):
            raise ConfigError(f"{path}: expected a VolumeName column, found {rows.fieldnames}")
        names = [r["VolumeName"] for r in rows]
    else:
        names = [line.split("#", 1)[0] for line in text.splitlines()]
    stems = [volume_stem(n) for n in names if n.strip()]
    if not stems:
        raise ConfigError(f"{path}: the name list holds no volume names")
    return stems


def _split_of(stem: str) -> str | None:
    m = NAME_RE.match(stem)
    return canonical_split(m["split"]) if m else None


def select(entries: Iterable[str], names: Sequence[str], carve: CarveConfig) -> list[str]:
    """The sorted stems of ``names`` that ``entries`` select (see the module docstring)."""
    names = [volume_stem(n) for n in names]
    chosen: set[str] = set()
    carved: dict[str, list[str]] | None = None
    for entry in entries:
        entry = str(entry).strip()
        if entry.startswith(CARVE_PREFIX):
            part = entry[len(CARVE_PREFIX):]
            if part not in carve.fractions:
                raise ConfigError(f"split: {entry!r} names no part of split.carve.fractions "
                                  f"({', '.join(carve.fractions) or 'none set'})")
            if carved is None:
                source = canonical_split(carve.source)
                carved = carve_patients([n for n in names if _split_of(n) == source], carve.fractions, carve.seed)
            chosen.update(carved[part])
        elif re.fullmatch(r"[A-Za-z]+", entry) and not Path(entry).is_file():
            chosen.update(n for n in names if _split_of(n) == canonical_split(entry))
        else:
            listed = set(read_name_list(entry))
            chosen.update(n for n in names if n in listed)
    return sorted(chosen)


def resolve(cfg: SplitConfig, train_pool: Sequence[str], valid_pool: Sequence[str], where: str) -> Selection:
    """Apply ``cfg`` to the volumes a stage has data for: ``cfg.train`` to ``train_pool``, ``cfg.valid`` to
    ``valid_pool``; an empty list takes its whole pool. ``where`` names the data in errors. Refuses an empty
    training set, a ``valid`` that selects nothing, and overlap (:func:`check_disjoint`)."""
    train = select(cfg.train, train_pool, cfg.carve) if cfg.train else sorted({volume_stem(n) for n in train_pool})
    valid = select(cfg.valid, valid_pool, cfg.carve) if cfg.valid else sorted({volume_stem(n) for n in valid_pool})
    if not train:
        raise ConfigError(f"split.train {list(cfg.train)}: selects none of the {len(train_pool)} volumes of {where}")
    if cfg.valid and not valid:
        raise ConfigError(f"split.valid {list(cfg.valid)}: selects none of the {len(valid_pool)} volumes of {where}")
    selection = Selection(train, valid)
    check_disjoint(selection)
    return selection


def _patient(stem: str) -> str:
    m = NAME_RE.match(stem)
    return f"{m['split']}_{m['pid']}" if m else stem


def check_disjoint(selection: Selection) -> None:
    """Refuse training and validation volumes (or patients) in common: selection would then see training data."""
    both = sorted(set(selection.train) & set(selection.valid))
    if both:
        raise ConfigError(f"split: {len(both)} volume(s) are in both train and valid, e.g. {', '.join(both[:3])}; "
                          "choose on volumes the stage does not train on")
    shared = sorted({_patient(n) for n in selection.train} & {_patient(n) for n in selection.valid})
    if shared:
        raise ConfigError(f"split: {len(shared)} patient(s) have volumes in both train and valid, e.g. "
                          f"{', '.join(shared[:3])}; split by patient (carve:<part> does)")


def _summary(names: Sequence[str], entries: Sequence[str]) -> dict[str, Any]:
    listing = "".join(f"{n}\n" for n in names)
    return {"entries": list(entries), "volumes": len(names), "patients": len({_patient(n) for n in names}),
            "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def is_main_process() -> bool:
    """False on the non-zero ranks of a ``torchrun`` job (RANK set): only rank 0 writes the record."""
    return os.environ.get("RANK", "0") == "0"


def write_record(out_dir: str | Path, selection: Selection, cfg: SplitConfig,
                 source: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/splits/{train.txt, valid.txt, splits.json}`` (rank 0 only; an empty entry list in the record
    means the stage's default). ``source`` says where the names were chosen from (files, cache), for the reader.
    Warns when a record already there (a resumed run) lists other volumes. Returns the folder."""
    folder = Path(out_dir) / RECORD_DIR
    if not is_main_process():
        return folder
    record = {"train": _summary(selection.train, cfg.train), "valid": _summary(selection.valid, cfg.valid),
              "carve": to_dict(cfg.carve), "chosen_from": dict(source or {})}
    earlier = folder / "splits.json"
    if earlier.is_file():
        old = json.loads(earlier.read_text(encoding="utf-8"))
        changed = [p for p in ("train", "valid") if old.get(p, {}).get("sha256") != record[p]["sha256"]]
        if changed:
            logger.warning("%s: this run's %s volumes differ from those recorded there (a resumed run with another "
                           "split?); the record now lists this run's", earlier, " and ".join(changed))
    folder.mkdir(parents=True, exist_ok=True)
    for part, names in (("train", selection.train), ("valid", selection.valid)):
        write_text_atomic(folder / f"{part}.txt", "".join(f"{n}\n" for n in names))
    write_json_atomic(earlier, record)
    return folder
