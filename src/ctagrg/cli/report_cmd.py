"""``ctagrg report SCAN... --model DIR [--out OUT.jsonl] [--device cpu|cuda] [--batch-size N]``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from ctagrg.cli.arguments import add_max_memory_mb, max_memory_bytes

DESCRIPTION = (
    "Generate a report for each scan with a packaged model (Reporter.save_pretrained folder). SCAN may be a file "
    "(NIfTI, NRRD, MHA/MHD, .zip), a DICOM folder, a folder of scans (searched recursively), a CT-RATE root, or a "
    "CSV list (a 'path' column, or one path per row without a header; relative paths are relative to the CSV). "
    "Each report is printed; with --out, one JSON line per scan is appended (input, input_resolved, name, report, "
    "abnormalities, seconds, model: the model folder's fingerprint, warnings when any) and scans already reported "
    "there by the same model are skipped, so an interrupted run resumes (reports of another model in OUT are "
    "refused). A scan that fails gets an {input, input_resolved, name, error, model} line and the others go on. "
    "Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scans", nargs="+", metavar="SCAN", help="scan file, DICOM folder, folder of scans or CSV")
    parser.add_argument("--model", required=True, help="packaged model folder")
    parser.add_argument("--out", help="JSON-lines output (appended; resumable)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    parser.add_argument("--batch-size", type=int, default=1, help="scans per model batch (default 1)")
    parser.add_argument("--metadata", help="CT-RATE metadata CSV (rescale slope/intercept, spacing) for the scans")
    add_max_memory_mb(parser)


def expand_csv_lists(scans: list[str]) -> list[str]:
    """Replace each CSV argument by the paths it lists (a 'path' column, or no header and one path per row)."""
    out: list[str] = []
    for raw in scans:
        path = Path(raw)
        if path.suffix.lower() != ".csv":
            out.append(raw)
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path}: CSV list not found")
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.reader(fh))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc}); re-save the CSV list as UTF-8") from None
        if not rows:
            raise ValueError(f"{path}: empty CSV list")
        header = [c.strip().lower() for c in rows[0]]
        col = header.index("path") if "path" in header else 0
        body = rows[1:] if "path" in header else rows  # no 'path' header: one path per row
        for row in body:
            if row and row[col].strip():
                entry = Path(row[col].strip())
                out.append(str(entry if entry.is_absolute() else path.parent / entry))
    return out


def read_done(out: Path) -> tuple[set[str], set[str | None]]:
    """Inputs (``input_resolved``, else :func:`same_input` of ``input``) that already have a report line in
    ``out``, and the models (``"model"`` fingerprints; None when not recorded) of all its lines, error lines
    included. Error lines are retried."""
    from ctagrg.data.inputs import source_key

    done: set[str] = set()
    models: set[str | None] = set()
    if not out.is_file():
        return done, models
    try:
        text = out.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{out}: not a reports file (not UTF-8 text: {exc}); use another --out") from None
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            print(f"{out}:{i}: unreadable line removed (an interrupted write?)", file=sys.stderr)
            continue
        if "input" in line:
            models.add(line.get("model"))
        if "report" in line and "input" in line:
            done.add(line.get("input_resolved") or source_key(line["input"]))
    return done, models


def _report_batch(reporter: Any, items: list[Any], model: str, max_bytes: int | None = None) -> list[dict[str, Any]]:
    """Preprocess each item (failures become error lines), then report the good ones in one model batch. Warnings
    raised while reading a scan (missing slices, several series, ...) join its line's ``warnings``; ``model``
    (the model folder's fingerprint) is recorded in every line."""
    lines: list[dict[str, Any] | None] = [None] * len(items)
    from ctagrg.data.ctio import collect_read_warnings, error_text, load_ct
    from ctagrg.data.inputs import source_key
    from ctagrg.data.preprocess import preprocess_volume

    arrays, where, seconds, read_warnings = [], [], [], []
    for k, item in enumerate(items):
        start = time.perf_counter()
        try:
            with collect_read_warnings() as read:
                arrays.append(preprocess_volume(load_ct(item.source, item.metadata, max_bytes=max_bytes),
                                                    reporter.preprocess))
            where.append(k)
            seconds.append(time.perf_counter() - start)
            read_warnings.append(read)
        except Exception as exc:  # noqa: BLE001 - a bad scan must not stop the batch
            lines[k] = {"input": item.source, "input_resolved": source_key(item.source), "name": item.name,
                        "error": error_text(item.source, exc), "model": model}
    if arrays:
        import numpy as np

        start = time.perf_counter()
        reports = reporter.report_volumes(np.stack(arrays))
        share = (time.perf_counter() - start) / len(arrays)
        for k, report, sec, read in zip(where, reports, seconds, read_warnings, strict=True):
            line = {"input": items[k].source, "input_resolved": source_key(items[k].source), "name": items[k].name,
                    **report.to_dict(), "seconds": round(sec + share, 3), "model": model}
            if read:
                line["warnings"] = read + line.get("warnings", [])
            lines[k] = line
    return [line for line in lines if line is not None]


def run(args: argparse.Namespace) -> int:

    from ctagrg.data.inputs import discover_inputs, source_key
    from ctagrg.generation.reporter import Reporter, model_fingerprint
    from ctagrg.utils.progress import progress

    if args.batch_size < 1:
        print(f"--batch-size: expected >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    try:
        items = discover_inputs(expand_csv_lists(args.scans), args.metadata)
        reporter = Reporter.from_pretrained(args.model, device=args.device)
        model = model_fingerprint(args.model)
        if out is not None and out.is_dir():
            raise IsADirectoryError(f"--out {out}: is a folder; give a .jsonl file path")
        done, models = read_done(out) if out else (set(), set())
        others = sorted({str(m) if m else "none recorded: an older ctagrg" for m in models if m != model})
        if others:
            raise ValueError(f"{out}: holds reports of another model (fingerprint {', '.join(others)}; {args.model} "
                             f"is {model}); use another --out, or delete it to start over")
        todo = [it for it in items if source_key(it.source) not in done]
        if out is not None:
            compact_out(out, {source_key(it.source) for it in todo})
        fh = _open_append(out) if out else None
    except (OSError, ValueError, RuntimeError) as exc:  # ValueError: a bad model folder or --device
        print(f"{exc}", file=sys.stderr)
        return 2
    if done and len(todo) < len(items):
        print(f"{out}: {len(items) - len(todo)} scan(s) already reported, skipped", file=sys.stderr)
    failures = 0
    try:
        batches = [todo[i : i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
        for batch in progress(batches, desc="reports", total=len(batches)):
            for line in _report_batch(reporter, batch, model, max_memory_bytes(args)):
                failures += "error" in line
                _emit(line, fh, args.quiet)
    finally:
        if fh is not None:
            fh.close()
    return 1 if failures else 0


def compact_out(out: Path, retried: set[str]) -> None:
    """Rewrite ``out`` atomically without the error lines of the inputs this run retries and without unreadable
    lines (a line cut by an interruption), so that reruns do not pile up old errors. Other lines stay as they are,
    in their order; nothing is written when nothing would change."""
    from ctagrg.data.inputs import source_key
    from ctagrg.utils.atomic import atomic_open

    if not out.is_file():
        return
    kept, dropped = [], 0
    for raw in out.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            line = None
        if not isinstance(line, dict):
            dropped += bool(raw.strip())
            continue
        key = line.get("input_resolved") or (source_key(line["input"]) if "input" in line else None)
        if "error" in line and key in retried:
            dropped += bool(raw.strip())
            continue
        kept.append(raw)
    if dropped:
        with atomic_open(out, "w", encoding="utf-8") as fh:
            fh.writelines(f"{raw}\n" for raw in kept)


def _open_append(out: Path) -> Any:
    out.parent.mkdir(parents=True, exist_ok=True)
    fh = open(out, "a+", encoding="utf-8")  # append-only log: each line is written whole, then flushed
    fh.seek(0, 2)
    if fh.tell():
        fh.seek(fh.tell() - 1)
        if fh.read(1) != "\n":  # a line cut by an earlier interruption: start ours on a fresh line
            fh.write("\n")
    return fh


def _emit(line: dict[str, Any], fh: Any, quiet: bool) -> None:
    if "error" in line:
        print(line["error"], file=sys.stderr)  # error_text names the scan
    elif not quiet:
        print(f"== {line['input']}\n{line['report']}\n")
    for warning in line.get("warnings", ()):
        print(f"{line['input']}: warning: {warning}", file=sys.stderr)
    if fh is not None:
        fh.write(json.dumps(line) + "\n")
        fh.flush()
