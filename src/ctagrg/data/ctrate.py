"""The CT-RATE folder layout (also written by ``ctagrg phantom``): find volumes, name, read and join the CSVs.

::

    ROOT/<split>/<split>_<pid>/<split>_<pid>_<scan>/<split>_<pid>_<scan>_<recon>.nii.gz   (also <split>_fixed/)
    ROOT/radiology_text_reports/train_reports.csv, validation_reports.csv
        VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN
    ROOT/multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv
        VolumeName + the 18 LABELS columns (0/1)
    ROOT/metadata/train_metadata.csv, validation_metadata.csv
        VolumeName, Manufacturer, SeriesDescription, ..., XYSpacing, RescaleIntercept, RescaleSlope, ..., ZSpacing

CT-RATE spells its validation split ``valid`` in volume names, folders and the label CSV, and ``validation`` in
the reports and metadata CSVs. Here both name the same split (:func:`canonical_split`), and :func:`split_csv` is
the one place that spells a split's CSV name. Any other split (the phantoms' ``test``) follows the same pattern:
``test_reports.csv``, ``test_predicted_labels.csv``, ``test_metadata.csv``. When both ``train/`` and
``train_fixed/`` hold a volume, the corrected release (``_fixed``) wins.

>>> split_csv("CT-RATE/dataset", "reports", "valid").as_posix()
'CT-RATE/dataset/radiology_text_reports/validation_reports.csv'
>>> index = CTRateIndex("CT-RATE/")                      # doctest: +SKIP
>>> index.table[["name", "split", "patient", "path"]]    # doctest: +SKIP
>>> splits = patient_splits(index.names(), {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctagrg.data.names import volume_stem
from ctagrg.labels import LABELS

REPORTS_DIR = "radiology_text_reports"
LABELS_DIR = "multi_abnormality_labels"
METADATA_DIR = "metadata"
NOT_SPLITS = {REPORTS_DIR, LABELS_DIR, METADATA_DIR, "ground_truth", "anatomy_segmentation_labels"}
NAME_RE = re.compile(r"^(?P<split>[A-Za-z]+)_(?P<pid>\d+)_(?P<scan>[A-Za-z0-9]+)_(?P<recon>\d+)$")
REPORT_SECTIONS = ("ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
KEY_COLUMN = "VolumeName"
# The header of the release's metadata/train_metadata.csv and validation_metadata.csv (44 columns, in order).
METADATA_COLUMNS = (
    "VolumeName", "Manufacturer", "SeriesDescription", "ManufacturerModelName", "PatientSex", "PatientAge",
    "ReconstructionDiameter", "DistanceSourceToDetector", "DistanceSourceToPatient", "GantryDetectorTilt",
    "TableHeight", "RotationDirection", "ExposureTime", "XRayTubeCurrent", "Exposure", "FilterType",
    "GeneratorPower", "FocalSpots", "ConvolutionKernel", "PatientPosition", "RevolutionTime", "SingleCollimationWidth",
    "TotalCollimationWidth", "TableSpeed", "TableFeedPerRotation", "SpiralPitchFactor", "DataCollectionCenterPatient",
    "ReconstructionTargetCenterPatient", "ExposureModulationType", "CTDIvol", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceLocation", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
    "XYSpacing", "RescaleIntercept", "RescaleSlope", "RescaleType", "NumberofSlices", "ZSpacing", "StudyDate",
)

CsvKind = Literal["reports", "labels", "metadata"]
CSV_KINDS: tuple[CsvKind, ...] = ("reports", "labels", "metadata")
_CSV_FOLDER = {"reports": REPORTS_DIR, "labels": LABELS_DIR, "metadata": METADATA_DIR}
_CSV_SUFFIX = {"reports": "_reports.csv", "labels": "_predicted_labels.csv", "metadata": "_metadata.csv"}
_CSV_CONTENT = {"reports": "report texts", "labels": "18 abnormality labels", "metadata": "spacing and rescale"}
SPLIT_ALIASES = {"validation": "valid"}
# How the release spells the validation split in each file name (the label CSV keeps "valid").
_FILE_SPLIT = {"reports": {"valid": "validation"}, "labels": {}, "metadata": {"valid": "validation"}}


def canonical_split(split: str) -> str:
    """The split's name in volume names and folders: ``validation`` → ``valid``; any other name unchanged.

    >>> canonical_split("validation"), canonical_split("valid"), canonical_split("test")
    ('valid', 'valid', 'test')
    """
    return SPLIT_ALIASES.get(split, split)


def split_csv(root: str | Path, kind: CsvKind, split: str) -> Path:
    """``ROOT/<folder>/<file>`` of one split's ``kind`` CSV (reports | labels | metadata), spelled as CT-RATE does.

    >>> split_csv("R", "labels", "validation").as_posix(), split_csv("R", "metadata", "test").as_posix()
    ('R/multi_abnormality_labels/valid_predicted_labels.csv', 'R/metadata/test_metadata.csv')
    """
    if kind not in _CSV_FOLDER:
        raise ValueError(f"split_csv: kind must be one of {', '.join(CSV_KINDS)}, got {kind!r}")
    split = canonical_split(split)
    return Path(root) / _CSV_FOLDER[kind] / f"{_FILE_SPLIT[kind].get(split, split)}{_CSV_SUFFIX[kind]}"


def require_split_csv(root: str | Path, kind: CsvKind, split: str) -> Path:
    """:func:`split_csv` when the file exists; else FileNotFoundError naming it (and an old phantom's spelling)."""
    path = split_csv(root, kind, split)
    if path.is_file():
        return path
    split = canonical_split(split)
    old = path.with_name(f"{split}{_CSV_SUFFIX[kind]}")
    hint = (f"; {old.name} is there, the name older `ctagrg phantom` versions wrote: regenerate the phantoms or "
            f"rename it" if old != path and old.is_file() else "")
    raise FileNotFoundError(f"{path}: file not found (the {_CSV_CONTENT[kind]} of the {split} split){hint}")


def read_csv_checked(path: str | Path, required: Sequence[str] = ()) -> Any:
    """A CT-RATE CSV as a pandas DataFrame (``VolumeName`` as str); errors name the file and what is missing."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype={KEY_COLUMN: str}, keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in (KEY_COLUMN, *required) if c not in df.columns]
    if missing:
        shown = ", ".join(map(str, df.columns[:8])) + (", ..." if len(df.columns) > 8 else "")
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {shown or 'none'}")
    return df


def check_covers(path: str | Path, have: Any, names: Sequence[str], split: str) -> None:
    """Raise ValueError naming ``path`` when its rows (stems ``have``) lack some of the split's volume ``names``."""
    have = set(have)
    absent = [n for n in names if n not in have]
    if absent:
        raise ValueError(f"{path}: no row for {len(absent)} of the {len(names)} volume(s) of split "
                         f"{canonical_split(split)}, e.g. {', '.join(absent[:3])}")


def parse_name(name: str) -> dict[str, str]:
    """Split a CT-RATE volume name into split, patient (``<split>_<pid>``), scan and reconstruction.

    >>> parse_name("valid_53_a_1.nii.gz")["patient"]
    'valid_53'
    """
    stem = volume_stem(name)
    m = NAME_RE.match(stem)
    if not m:
        raise ValueError(f"{name!r} is not a CT-RATE volume name (expected split_patient_scan_recon, e.g. "
                         f"'valid_53_a_1')")
    return {"split": m["split"], "patient": f"{m['split']}_{m['pid']}", "scan": m["scan"], "recon": m["recon"]}


def find_split_dirs(root: str | Path) -> list[Path]:
    """The split folders under ``root``: sub-folders (train, valid, test, *_fixed, ...) that are not CSV folders."""
    root = Path(root)
    return sorted(d for d in root.iterdir() if d.is_dir() and d.name not in NOT_SPLITS and not d.name.startswith("."))


def find_volumes(root: str | Path) -> dict[str, Path]:
    """Map volume stem → path of every ``<split>/<split>_<pid>/<split>_<pid>_<scan>/<name>.nii.gz``;
    ``*_fixed`` folders take precedence over their uncorrected twins."""
    found: dict[str, Path] = {}
    dirs = sorted(find_split_dirs(root), key=lambda d: d.name.endswith("_fixed"))  # _fixed last → overrides
    for split_dir in dirs:
        for path in sorted(split_dir.glob("*/*/*.nii.gz")):
            found[volume_stem(path.name)] = path
    return found


def _read_split_csvs(root: Path, kind: CsvKind, splits: Sequence[str], volumes: Mapping[str, Path],
                     required: Sequence[str] = ()) -> Any:
    """Concatenate the ``kind`` CSVs of ``splits`` into one DataFrame keyed by ``name`` (VolumeName stem).

    Every split with volumes on disk must have its CSV, with a row for each of those volumes."""
    import pandas as pd

    frames = []
    for split in splits:
        on_disk = sorted(n for n in volumes if _split_of(n) == split)
        path = require_split_csv(root, kind, split) if on_disk else split_csv(root, kind, split)
        if not path.is_file():
            continue
        df = read_csv_checked(path, required)
        df["name"] = df[KEY_COLUMN].map(volume_stem)
        check_covers(path, df["name"], on_disk, split)
        frames.append(df)
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).drop_duplicates("name", keep="first").set_index("name")


def _split_of(name: str) -> str:
    return canonical_split(parse_name(name)["split"])


def _csv_splits(root: Path) -> set[str]:
    """Splits named by the CSV files present (``validation_reports.csv`` → ``valid``)."""
    found = set()
    for kind in CSV_KINDS:
        for path in (root / _CSV_FOLDER[kind]).glob(f"*{_CSV_SUFFIX[kind]}"):
            found.add(canonical_split(path.name[: -len(_CSV_SUFFIX[kind])]))
    return found


class CTRateIndex:
    """One row per volume (found on disk or named in a CSV), joining volumes, reports, labels and metadata.

    Each split's CSVs are read by their release names (:func:`split_csv`). A split with volumes on disk must have
    all three CSVs, each with a row for every one of those volumes; otherwise the error names the file and what
    is missing. Rows without a volume on disk (a partial download) are kept.

    Attributes:
        root: the dataset root.
        table: pandas DataFrame indexed by position with columns ``name`` (stem), ``volume_name`` (with
            ``.nii.gz``), ``split``, ``patient``, ``scan``, ``recon``, ``path`` (str, or None when the volume is
            absent), the report columns, the 18 LABELS (float, NaN when unlabelled) and the metadata columns
            (prefixed ``meta_`` only where a name clashes).
    """

    def __init__(self, root: str | Path) -> None:
        import pandas as pd

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: CT-RATE root folder not found")
        volumes = find_volumes(self.root)
        splits = sorted({_split_of(n) for n in volumes} | _csv_splits(self.root))
        reports = _read_split_csvs(self.root, "reports", splits, volumes)
        labels = _read_split_csvs(self.root, "labels", splits, volumes, required=LABELS)
        self._metadata = _read_split_csvs(self.root, "metadata", splits, volumes)
        names = set(volumes)
        for df in (reports, labels):
            if df is not None:
                names |= set(df.index)
        if not names:
            raise FileNotFoundError(f"{self.root}: no volumes (<split>/<split>_<pid>/<...>/*.nii.gz) and no "
                                    f"{REPORTS_DIR}/ or {LABELS_DIR}/ CSVs found")
        rows = [{"name": n, "volume_name": f"{n}.nii.gz", **parse_name(n), "split": _split_of(n),
                 "path": str(volumes[n]) if n in volumes else None} for n in sorted(names)]
        table = pd.DataFrame(rows).set_index("name", drop=False)
        if reports is not None:
            table = table.join(reports[[c for c in reports.columns if c not in ("VolumeName",)]])
        for label in LABELS:
            table[label] = labels[label].reindex(table.index).astype(float) if labels is not None else np.nan
        if self._metadata is not None:
            meta = self._metadata.drop(columns=["VolumeName"])
            meta = meta.rename(columns={c: f"meta_{c}" for c in meta.columns if c in table.columns})
            table = table.join(meta)
        self.table = table.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def splits(self) -> list[str]:
        """Canonical split names (``valid``, never ``validation``)."""
        return sorted(self.table["split"].unique())

    def names(self, split: str | None = None, with_volume: bool = True, labelled: bool = False) -> list[str]:
        """Volume stems, optionally of one ``split`` (``valid`` or ``validation``), only those present on disk /
        with all 18 labels."""
        t = self.table
        mask = np.ones(len(t), bool)
        if split is not None:
            mask &= (t["split"] == canonical_split(split)).to_numpy()
        if with_volume:
            mask &= t["path"].notna().to_numpy()
        if labelled:
            mask &= t[list(LABELS)].notna().all(axis=1).to_numpy()
        return t.loc[mask, "name"].tolist()

    def row(self, name: str) -> dict[str, Any]:
        hits = self.table.index[self.table["name"] == volume_stem(name)]
        if len(hits) == 0:
            raise KeyError(f"{self.root}: no volume named {name!r}")
        return self.table.loc[hits[0]].to_dict()

    def labels(self, names: Sequence[str]) -> np.ndarray:
        """(N, 18) float32 labels in LABELS order (NaN where unlabelled)."""
        t = self.table.set_index("name")
        return t.loc[[volume_stem(n) for n in names], list(LABELS)].to_numpy(np.float32)

    def metadata(self, name: str) -> dict[str, Any] | None:
        """The raw metadata CSV row of ``name`` (for ``load_ct(path, metadata=...)``), or None."""
        stem = volume_stem(name)
        if self._metadata is None or stem not in self._metadata.index:
            return None
        return self._metadata.loc[stem].to_dict()

    def report(self, name: str, sections: Sequence[str] = ("Findings_EN", "Impressions_EN")) -> str:
        """The report text: the given sections joined by a blank line (missing/NaN sections skipped)."""
        row = self.row(name)
        parts = [str(row[s]).strip() for s in sections if isinstance(row.get(s), str) and row[s].strip()]
        return "\n\n".join(parts)


def patient_splits(names: Sequence[str], fractions: Mapping[str, float], seed: int = 0) -> dict[str, list[str]]:
    """Seeded patient-level split: all volumes of one patient land in the same split.

    Patients (``<split>_<pid>`` from the names) are sorted, shuffled with ``numpy.random.default_rng(seed)`` and
    cut in order of ``fractions`` (normalised to sum 1); each split gets ``round(fraction × n_patients)``
    patients and the last split the remainder. Returns split → sorted volume names.
    """
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"patient_splits: expected non-negative fractions with a positive sum, got {dict(fractions)}")
    by_patient: dict[str, list[str]] = {}
    for n in names:
        by_patient.setdefault(parse_name(n)["patient"], []).append(volume_stem(n))
    patients = sorted(by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    total = sum(fractions.values())
    out, pos = {}, 0
    keys = list(fractions)
    for i, key in enumerate(keys):
        count = len(patients) - pos if i == len(keys) - 1 else round(fractions[key] / total * len(patients))
        count = max(0, min(count, len(patients) - pos))
        chosen = [patients[j] for j in order[pos: pos + count]]
        out[key] = sorted(v for p in chosen for v in by_patient[p])
        pos += count
    return out


def carve_patients(names: Sequence[str], fractions: Mapping[str, float], seed: int = 0) -> dict[str, list[str]]:
    """Seeded patient-level carve whose assignment does not depend on which other volumes are present.

    Each patient (``<split>_<pid>``) draws u = BLAKE2b(seed, patient) / 2⁶⁴ in [0, 1) and joins the part whose
    interval of cumulative ``fractions`` (normalised to sum 1, in their order) holds u. So every volume of a patient
    lands in one part, and a patient lands in the same part whether a stage sees all of CT-RATE's train split or only
    the volumes it has preprocessed: the pretraining, step-1 and step-2 runs carve the same validation patients. The
    parts' sizes are the fractions up to sampling noise (±0.2 % of 20,000 patients for a 10 % part); use
    :func:`patient_splits` for exact counts over a fixed set. Returns part → sorted volume stems (every part listed).

    >>> carve_patients(["train_1_a_1", "train_1_a_2", "train_2_a_1"], {"train": 0.5, "valid": 0.5}, seed=2)
    {'train': ['train_1_a_1', 'train_1_a_2'], 'valid': ['train_2_a_1']}
    """
    import hashlib

    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"carve_patients: expected non-negative fractions with a positive sum, got {dict(fractions)}")
    total = sum(fractions.values())
    bounds = np.cumsum([f / total for f in fractions.values()])
    bounds[-1] = 1.0  # rounding must not leave a patient outside every part
    out: dict[str, list[str]] = {key: [] for key in fractions}
    keys = list(fractions)
    for n in names:
        patient = parse_name(n)["patient"]
        digest = hashlib.blake2b(f"{seed}\0{patient}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        out[keys[int(np.searchsorted(bounds, u, side="right"))]].append(volume_stem(n))
    return {key: sorted(v) for key, v in out.items()}
