"""The evaluation's inputs and predictions: one split's volumes, references and labels, and resumable
report generation into ``predictions.jsonl`` through the packaged model (``Reporter``).

Each line of ``predictions.jsonl`` is the ``ctagrg report`` line format (docs/architecture.md) plus ``name``
(the VolumeName without ``.nii.gz``) so that lines can be joined back to references when ``input`` is a cache
path. A rerun skips names already present, so an interrupted evaluation resumes; a stop signal
(:mod:`ctagrg.utils.signals`) ends it between batches. Reports come from the inference front door
(:mod:`ctagrg.generation.inference`); with ``workers`` > 0, volumes are read (and preprocessed) ahead of the model
in worker processes, with the same lines as ``workers`` = 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.data.ctio import error_text
from ctagrg.data.ctrate import check_covers, read_csv_checked, require_split_csv, split_csv
from ctagrg.labels import LABELS
from ctagrg.utils import signals
from ctagrg.utils.progress import progress

VOLUME_SUFFIX = ".nii.gz"


@dataclass
class Split:
    """One split of a CT-RATE-layout dataset: N volumes with reference text and (optionally) labels.

    ``names``: VolumeName without ``.nii.gz``; ``paths``: the NIfTI file or None when absent;
    ``references``: reference report text; ``labels``: (N, 18) int 0/1 from the label CSV, or None.
    """

    names: list[str]
    paths: list[Path | None]
    references: list[str]
    labels: np.ndarray | None


def volume_path(root: Path, name: str) -> Path | None:
    """``ROOT/<split>[_fixed]/<split>_<pid>/<split>_<pid>_<scan>/<name>.nii.gz`` if it exists, else None."""
    parts = name.rsplit("_", 3)
    if len(parts) != 4:
        return None
    split, pid, scan, _ = parts
    for folder in (split, f"{split}_fixed"):
        path = root / folder / f"{split}_{pid}" / f"{split}_{pid}_{scan}" / f"{name}{VOLUME_SUFFIX}"
        if path.is_file():
            return path
    return None


def _strip(name: str) -> str:
    return name[: -len(VOLUME_SUFFIX)] if name.endswith(VOLUME_SUFFIX) else name


def load_split(root: str | Path, split: str, reference_columns: Sequence[str] = ("Findings_EN",),
               limit: int | None = None) -> Split:
    """Read the split's reports CSV (``radiology_text_reports/validation_reports.csv`` for ``valid`` or
    ``validation``, ``<split>_reports.csv`` otherwise) and, when present, its label CSV, which must then hold every
    volume of the reports CSV (file names: ``ctagrg.data.ctrate.split_csv``)."""
    root = Path(root)
    reports = read_csv_checked(require_split_csv(root, "reports", split), reference_columns)
    if limit is not None:
        reports = reports.head(limit)
    names = [_strip(str(v)) for v in reports["VolumeName"]]
    texts = reports[list(reference_columns)].fillna("").astype(str).agg(" ".join, axis=1).str.strip().tolist()
    label_csv = split_csv(root, "labels", split)
    labels = None
    if label_csv.is_file():
        table = read_csv_checked(label_csv, LABELS)
        table.index = [_strip(str(v)) for v in table["VolumeName"]]
        check_covers(label_csv, table.index, names, split)
        labels = table.loc[names, list(LABELS)].to_numpy().astype(np.int64)
    return Split(names, [volume_path(root, n) for n in names], texts, labels)


def find_cache(data_dir: Path, cache_dir: str | Path | None) -> Path | None:
    """The preprocessed cache to read: ``cache_dir`` if given (must hold manifest.csv), else ``<data>/cache``."""
    if cache_dir is not None:
        path = Path(cache_dir)
        if not (path / "manifest.csv").is_file():
            raise FileNotFoundError(f"{path}: not a preprocessed cache (no manifest.csv)")
        return path
    auto = data_dir / "cache"
    return auto if (auto / "manifest.csv").is_file() else None


def check_cache_matches_model(cache: Path, model_dir: Path) -> None:
    """Refuse a cache preprocessed differently from what the model expects (both preprocess.json)."""
    a, b = cache / "preprocess.json", model_dir / "preprocess.json"
    if a.is_file() and b.is_file():
        if json.loads(a.read_text()) != json.loads(b.read_text()):
            raise ValueError(f"{a}: preprocessing differs from the model's {b}; re-preprocess or drop --cache")


def read_predictions(path: Path, split: Split | None = None) -> list[dict[str, Any]]:
    """Lines of ``predictions.jsonl`` (restricted to ``split``'s names when given), in split order."""
    if not path.is_file():
        return []
    lines = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a predictions file (not UTF-8 text: {exc}); use another --out") from None
    for i, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON: {exc}") from None
    if split is None:
        return lines
    by_name = {line.get("name"): line for line in lines}
    return [by_name[n] for n in split.names if n in by_name]


def report_line(report: Any, name: str, input_ref: str, seconds: float) -> dict[str, Any]:
    """Prediction line from a ``Report`` (``to_dict()``, a dict, or ``text``/``abnormalities`` attributes)."""
    data = report.to_dict() if hasattr(report, "to_dict") else report if isinstance(report, dict) else None
    if data is None:
        data = {"report": getattr(report, "text", getattr(report, "report", None)),
                "abnormalities": getattr(report, "abnormalities", None)}
    abn = data.get("abnormalities") or {}
    abn = {k: (v if isinstance(v, dict) else dict(vars(v))) for k, v in abn.items()}
    if set(abn) != set(LABELS):
        raise ValueError(f"{name}: the model's report lists {len(abn)} abnormalities, expected the 18 LABELS")
    text = data.get("report", data.get("text"))
    return {"name": name, "input": input_ref, "report": str(text), "abnormalities": abn, "seconds": seconds}


def _sources(names: list[str], paths: list[Path | None], cache: Path | None) -> list[str | None]:
    """What the front door reads for each volume: its cache file, else its NIfTI file; None when neither."""
    if cache is not None:
        from ctagrg.data.cache import cache_path

        return [str(cache_path(cache, n)) for n in names]
    return [str(p) if p is not None else None for p in paths]


def _line(result: Any, name: str, ref: str) -> dict[str, Any]:
    """The prediction line of one :class:`ctagrg.generation.inference.ItemResult`."""
    if result.error is None:
        try:
            line = report_line(result.to_dict(), name, ref, round(result.seconds, 4))
        except ValueError as exc:
            return {"name": name, "input": ref, "error": error_text(ref, exc)}
        warnings = result.all_warnings()
        return {**line, "warnings": warnings} if warnings else line
    return {"name": name, "input": ref, "error": result.error}


def prediction_batches(reporter: Any, names: list[str], refs: list[str], sources: list[str | None],
                       batch_size: int, workers: int, desc: str) -> Iterator[list[dict[str, Any]]]:
    """Prediction lines batch by batch, in the order of ``names``, through the inference front door; a volume
    without a source (no file and no cache) gets its error line in its place."""
    from ctagrg.generation.inference import InferenceItem, run_inference

    present = [k for k, s in enumerate(sources) if s is not None]

    def missing(k: int) -> dict[str, Any]:
        return {"name": names[k], "input": refs[k],
                "error": f"FileNotFoundError: {names[k]}: no volume file found and no preprocessed cache"}

    items = [InferenceItem(names[k], sources[k]) for k in present]  # type: ignore[arg-type]
    batches = run_inference(reporter, items, batch_size=batch_size, workers=workers)
    written = 0
    for batch in progress(batches, desc=desc, total=-(-len(items) // batch_size), unit="batches"):
        lines = []
        for result in batch:
            k = present[result.index]
            lines += [missing(j) for j in range(written, k)]
            lines.append(_line(result, names[k], refs[k]))
            written = k + 1
        yield lines
    if written < len(names):
        yield [missing(j) for j in range(written, len(names))]


def predict_split(model_dir: Path, split: Split, out_path: Path, cache_dir: str | Path | None, data_dir: Path,
                  batch_size: int = 4, device: str = "cpu", reporter: Any | None = None, workers: int = 0) -> None:
    """Append a prediction line per volume of ``split`` not yet in ``out_path``; a failing volume gets an
    ``{"name", "input", "error"}`` line and the others go on; a rerun retries the failed ones (the last line of a
    name is the one that counts, :func:`read_predictions`).

    Every line records the model that made it (``"model"``: ``Reporter.model_fingerprint`` of ``model_dir``);
    lines from another model, or from an unrecorded one, are refused: a rerun into the same folder must not mix
    two models' predictions under one name.

    Volumes go through the inference front door (:func:`ctagrg.generation.inference.run_inference`): the cache
    file of each volume when there is a cache, else its NIfTI file, read and preprocessed with the reporter's
    ``preprocess`` config. ``reporter``: a Reporter (``preprocess`` and ``report_volumes``); by default
    ``Reporter.from_pretrained(model_dir)``. ``workers`` > 0: processes that read the volumes ahead of the model.
    A line gets ``warnings`` when reading the volume or the model raised any.
    """
    from ctagrg.generation.reporter import check_model_dir, model_fingerprint

    model_dir = Path(model_dir) if reporter is not None else check_model_dir(model_dir)
    model = model_fingerprint(model_dir) if model_dir.is_dir() else None
    cache = find_cache(data_dir, cache_dir)
    if cache is not None:
        check_cache_matches_model(cache, model_dir)
    existing = read_predictions(out_path)
    others = sorted({str(line.get("model", "none recorded: an older ctagrg")) for line in existing
                     if line.get("model") != model})
    if others:
        raise ValueError(f"{out_path}: holds predictions of another model (fingerprint {', '.join(others)}; "
                         f"{model_dir} is {model}); use another --out, or delete {out_path} to start over")
    done = {line.get("name") for line in existing if "error" not in line}
    todo = [i for i, n in enumerate(split.names) if n not in done]
    if not todo:
        return
    if reporter is None:
        from ctagrg.generation.reporter import Reporter

        reporter = Reporter.from_pretrained(model_dir, device=device)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names, paths = [split.names[i] for i in todo], [split.paths[i] for i in todo]
    refs = [str(p) if p is not None else n for n, p in zip(names, paths, strict=True)]
    batches = prediction_batches(reporter, names, refs, _sources(names, paths, cache), batch_size, workers,
                                 f"reports ({split_name(split)})")
    with open(out_path, "a", encoding="utf-8") as fh, signals.deferred():  # append-only: lines flushed whole
        for lines in batches:
            for line in lines:
                fh.write(json.dumps({**line, "model": model}) + "\n")
            fh.flush()
            signals.raise_if_stop_requested(f"evaluate stopped between batches; {out_path} holds every finished "
                                            "volume")


def split_name(split: Split) -> str:
    return split.names[0].split("_", 1)[0] if split.names else "empty"
