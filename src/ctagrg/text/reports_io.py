"""Reading CT-RATE report CSVs and writing label / sentence CSVs, with errors a person can act on.

Reports schema: ``VolumeName, ClinicalInformation_EN, Technique_EN, Findings_EN, Impressions_EN`` (any subset that
holds the id column and the chosen text columns). Labels schema: ``VolumeName`` + the 18 columns of
``ctagrg.labels.LABELS`` as 0/1. VolumeName values are copied through unchanged (with or without ``.nii.gz``).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctagrg.labels import LABELS
from ctagrg.utils.atomic import atomic_open

DEFAULT_TEXT_COLUMNS: tuple[str, ...] = ("Findings_EN", "Impressions_EN")
DEFAULT_ID_COLUMN = "VolumeName"


class ReportsError(ValueError):
    """A reports CSV that cannot be used; the message names the file and the problem."""


@dataclass
class Reports:
    ids: list[str]
    texts: list[str]  # the chosen columns joined by ``separator``; "" where all were empty or NaN
    n_empty: int  # reports whose text columns were all empty / NaN


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ReportsError(
            f"{path}: line {line}: bytes are not valid UTF-8 ({exc.reason} at byte {exc.start}); "
            "re-save the file as UTF-8"
        ) from None


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def read_reports(
    path: str | Path,
    text_columns: Sequence[str] = DEFAULT_TEXT_COLUMNS,
    id_column: str = DEFAULT_ID_COLUMN,
    separator: str = "\n",
) -> Reports:
    """Read a reports CSV; each report's text is its non-empty ``text_columns`` joined by ``separator`` (a labeler's
    ``column_separator``).

    Raises:
        ReportsError: file missing, not UTF-8 (with the line number), not a CSV, or a column missing (the message
            lists the columns found).
    Warns:
        UserWarning with the count of reports whose text is empty or NaN (they get all-zero labels).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ReportsError(f"{path}: file not found")
    try:
        frame = pd.read_csv(io.StringIO(_decode(path)), dtype=str, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReportsError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in (id_column, *text_columns) if c not in frame.columns]
    if missing:
        raise ReportsError(f"{path}: missing column(s) {missing}; columns found: {list(frame.columns)}")
    rows = frame[list(text_columns)].itertuples(False)
    texts = [separator.join(t for t in (_cell(v) for v in row) if t) for row in rows]
    n_empty = sum(1 for t in texts if not t)
    if n_empty:
        warnings.warn(f"{path}: {n_empty} report(s) have empty or NaN text; they get all-zero labels", stacklevel=2)
    return Reports(ids=[_cell(v) for v in frame[id_column]], texts=texts, n_empty=n_empty)


def write_labels(path: str | Path, ids: Sequence[str], labels: np.ndarray, id_column: str = DEFAULT_ID_COLUMN) -> None:
    """Write the CT-RATE labels schema atomically: ``id_column`` + the 18 ``LABELS`` columns as 0/1.

    Args:
        labels: (N, 18) int array, columns in ``LABELS`` order.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(ids), len(LABELS)):
        raise ValueError(f"expected labels of shape ({len(ids)}, {len(LABELS)}), got {labels.shape}")
    import csv

    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([id_column, *LABELS])
        for name, row in zip(ids, labels, strict=True):
            writer.writerow([name, *(int(v) for v in row)])


def write_sentences(path: str | Path, rows: Sequence[tuple[str, str, str]], id_column: str = DEFAULT_ID_COLUMN) -> None:
    """Write ``id_column, AbnormalityName, Sentence`` rows atomically (one per present abnormality)."""
    import csv

    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([id_column, "AbnormalityName", "Sentence"])
        writer.writerows(rows)
