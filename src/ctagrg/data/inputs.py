"""Turn command-line inputs (files, folders, a CT-RATE root) into named work items for the cache.

- A file is one item named after its stem (``scan.nii.gz`` → ``scan``).
- A folder is searched recursively: every volume file (NIfTI, NRRD, MHA/MHD, ``.zip``) and every folder that
  directly holds DICOM files is one item; a DICOM series is named after its folder. Volume files beside a DICOM
  series are items too; a DICOM folder inside another is read with its parent's series (the reader takes the
  largest series and warns, naming every one).
- A CT-RATE root (a folder with ``radiology_text_reports/``, ``multi_abnormality_labels/`` or ``metadata/``)
  gives its volumes named by VolumeName stem, each with its row of its split's metadata CSV
  (``metadata/train_metadata.csv``, ``metadata/validation_metadata.csv``; ``ctagrg.data.ctrate.split_csv``).
  A split whose metadata CSV is missing or lacks some of its volumes is an error, unless ``metadata_csv`` is
  given.
- A folder with nothing readable (or a missing path) becomes one item that fails with a clear error, so the
  problem shows up in the manifest instead of silently disappearing.

Names are unique: a clash gets ``-<8 hex of sha1(source)>`` appended, which is stable across runs.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctagrg.data.ctrate import (
    LABELS_DIR,
    METADATA_DIR,
    REPORTS_DIR,
    canonical_split,
    check_covers,
    find_volumes,
    parse_name,
    require_split_csv,
    split_csv,
)
from ctagrg.data.names import SCAN_SUFFIXES, volume_stem

logger = logging.getLogger(__name__)
VOLUME_SUFFIXES = SCAN_SUFFIXES
DICOM_SUFFIXES = (".dcm", ".ima")


@dataclass
class InputItem:
    """One volume to preprocess: cache ``name``, ``source`` path, optional CT-RATE ``metadata`` row."""

    name: str
    source: str
    metadata: dict[str, Any] | None = field(default=None)


def is_ctrate_root(path: Path) -> bool:
    return path.is_dir() and any((path / d).is_dir() for d in (REPORTS_DIR, LABELS_DIR, METADATA_DIR))


def input_stem(path: Path) -> str:
    """Item name of a path: the file name without its volume suffix (``scan.nii.gz`` → ``scan``)."""
    return volume_stem(path)


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _scan_folder(folder: Path) -> list[Path]:
    """Volume files and DICOM series folders under ``folder`` (recursive, sorted).

    A folder that directly holds DICOM files is one item (the series reader searches its sub-folders as well);
    the volume files beside those DICOM files, and in its sub-folders, are items of their own. Other files are
    not scans: they are named in one log line per folder, never dropped in silence.
    """
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        d = Path(dirpath)
        dicom = [f for f in filenames if _is_dicom_file(d / f)]
        volumes = [d / f for f in sorted(filenames) if f.lower().endswith(VOLUME_SUFFIXES)]
        if dicom and not any(p == d or d.is_relative_to(p) for p in found if p.is_dir()):
            found.append(d)
        found.extend(volumes)
        others = sorted(set(filenames) - set(dicom) - {p.name for p in volumes})
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            logger.warning("%s: %d file(s) that are not scans skipped: %s", d, len(others), shown)
    return found


def read_metadata_csv(path: str | Path) -> dict[str, dict[str, Any]]:
    """CT-RATE metadata CSV → {VolumeName stem: row}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "VolumeName" not in fields:
            shown = ", ".join(fields[:8]) + (", ..." if len(fields) > 8 else "")
            raise ValueError(f"{path}: missing column(s) VolumeName; found {shown or 'none'}")
        return {volume_stem(r["VolumeName"]): r for r in reader}


def _ctrate_items(root: Path, require_metadata: bool = True) -> list[InputItem]:
    """The root's volumes, each with its row of its split's metadata CSV (``metadata/validation_metadata.csv``
    for ``valid/``). With ``require_metadata``, a split without its metadata CSV, or a volume without a row in
    it, is an error: without them CT-RATE volumes would be read with their headers' spacing."""
    volumes = find_volumes(root)
    by_split: dict[str, list[str]] = {}
    for name in volumes:
        by_split.setdefault(canonical_split(parse_name(name)["split"]), []).append(name)
    meta: dict[str, dict[str, Any]] = {}
    for split, names in sorted(by_split.items()):
        path = require_split_csv(root, "metadata", split) if require_metadata else split_csv(root, "metadata", split)
        if not path.is_file():
            continue
        rows = read_metadata_csv(path)
        if require_metadata:
            check_covers(path, rows, sorted(names), split)
        meta.update(rows)
    return [InputItem(name, str(p), meta.get(name)) for name, p in sorted(volumes.items())]


def discover_inputs(inputs: Sequence[str | Path], metadata_csv: str | Path | None = None) -> list[InputItem]:
    """Expand ``inputs`` into unique, named items (see the module docstring)."""
    items: list[InputItem] = []
    for raw in inputs:
        path = Path(raw)
        if is_ctrate_root(path):
            items.extend(_ctrate_items(path, require_metadata=metadata_csv is None))
        elif path.is_dir():
            found = _scan_folder(path) or [path]  # nothing readable: the folder itself fails with a clear error
            items.extend(InputItem(input_stem(p), str(p)) for p in found)
        else:
            items.append(InputItem(input_stem(path), str(path)))
    if metadata_csv is not None:
        rows = read_metadata_csv(metadata_csv)
        for item in items:
            item.metadata = rows.get(item.name, item.metadata)
    return _unique(items)


def source_key(source: str) -> str:
    """The key two spellings of one input share (a relative and an absolute path, ``a/../b``): its resolved
    path."""
    return str(Path(source).resolve())


def _unique(items: list[InputItem]) -> list[InputItem]:
    sources: dict[str, set[str]] = {}
    for item in items:
        sources.setdefault(item.name, set()).add(source_key(item.source))
    out, seen = [], set()
    for item in items:
        key = source_key(item.source)
        if key in seen:
            continue  # the same source given twice (also as a relative and an absolute path)
        seen.add(key)
        if len(sources[item.name]) > 1:
            item.name = f"{item.name}-{hashlib.sha1(item.source.encode()).hexdigest()[:8]}"
        out.append(item)
    return out
