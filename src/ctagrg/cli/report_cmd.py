"""``ctagrg report SCAN... --model DIR [--out OUT.jsonl|-] [--device cpu|cuda] [--batch-size N] [--workers N]
[--shard I/N]``."""

from __future__ import annotations

import argparse
import csv
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctagrg.cli.arguments import add_max_memory_mb, max_memory_bytes, non_negative_int, shard_spec

DESCRIPTION = (
    "Generate a report for each scan with a packaged model (Reporter.save_pretrained folder). SCAN may be a file "
    "(NIfTI, NRRD, MHA/MHD, .zip), a DICOM folder, a folder of scans (searched recursively), a CT-RATE root, or a "
    "CSV list (a 'path' column, or one path per row without a header; relative paths are relative to the CSV). "
    "Each report is printed with its warnings (e.g. out of distribution) above it; with --out, one JSON line per "
    "scan is appended (input, input_resolved, name, report, abnormalities, seconds, model: the model folder's "
    "fingerprint, warnings when any; size_mm rounded to 0.1 mm) and scans already reported there by the same model "
    "are skipped, so an interrupted run resumes (reports of another model in OUT are refused). --out - writes the "
    "JSON lines to stdout instead, and then the reports are not printed as text (warnings and errors go to "
    "stderr); so does an --out that is stdout (/dev/stdout). A device or pipe as --out (/dev/stdout, a FIFO) is "
    "written, never read back: no resume there. A scan that fails gets an {input, input_resolved, name, error, "
    "model} line and the others go on. "
    "--workers N reads and preprocesses the next scans in N processes while the model runs (same output as 0); "
    "--shard I/N reports only the I-th of N contiguous blocks of the inputs, so that the shards' --out files, "
    "concatenated in shard order, are the unsharded output. A stop signal (SIGTERM, SIGUSR1) ends the run between "
    "batches with exit status 75; rerun to resume. Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scans", nargs="+", metavar="SCAN", help="scan file, DICOM folder, folder of scans or CSV")
    parser.add_argument("--model", required=True,
                        help="packaged model folder, or a Hugging Face Hub id org/name[@revision] (docs/inference.md)")
    parser.add_argument("--out", help="JSON-lines output (appended; resumable when a regular file); '-': stdout")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    parser.add_argument("--batch-size", type=int, default=1, help="scans per model batch (default 1)")
    parser.add_argument("--metadata", help="CT-RATE metadata CSV (rescale slope/intercept, spacing) for the scans")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="processes that read and preprocess scans ahead of the model (default 0: in this one)")
    parser.add_argument("--shard", type=shard_spec, default=(0, 1), metavar="I/N",
                        help="report only block I of N (0-based) of the inputs, e.g. "
                             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    parser.add_argument("--saliency", metavar="DIR",
                        help="also write, per detected abnormality, a saliency map (where its logit comes from) as "
                             "DIR/<scan name>/<abnormality>.nii.gz, aligned with the original scan (docs/saliency.md)")
    add_max_memory_mb(parser, "a scan (the budget of all --workers together)")


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


def shard_block(items: Sequence[Any], shard: tuple[int, int]) -> list[Any]:
    """Block ``I`` of ``N`` (0-based) of ``items``, contiguous and in order (sizes differ by at most one), so that
    the blocks concatenated in order are ``items``."""
    index, count = shard
    return list(items[len(items) * index // count: len(items) * (index + 1) // count])


def result_line(result: Any, model: str) -> dict[str, Any]:
    """The JSON line of one :class:`ctagrg.generation.inference.ItemResult`: ``input``, ``input_resolved``,
    ``name``, then its report (with ``warnings`` when any, and ``seconds``) or its ``error``, and ``model`` (the
    model folder's fingerprint)."""
    from ctagrg.data.inputs import source_key

    item = result.item
    line = {"input": item.source, "input_resolved": source_key(item.source), "name": item.name, **result.to_dict()}
    if result.error is None:
        line["seconds"] = round(result.seconds, 3)
    line["model"] = model
    return line


def is_regular_output(out: Path) -> bool:
    """Whether ``--out`` names a regular file (or one yet to be created) that can be read back, resumed and
    compacted. Not so: a device, pipe or socket, and any path under /dev or /proc: ``/dev/stdout`` redirected to
    a file is still the shell's stream, and rewriting the file under it would lose lines."""
    if out.absolute().parts[1:2] in (("dev",), ("proc",)):
        return False
    try:
        return stat.S_ISREG(out.stat().st_mode)
    except OSError:  # not there yet (or not reachable: opening it says why)
        return True


def is_stdout(out: Path) -> bool:
    """Whether ``out`` is this process's standard output (``/dev/stdout``, ``/dev/fd/1``, or the file stdout is
    redirected to)."""
    try:
        a, b = out.stat(), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):  # no such file; a stdout without a file descriptor (captured)
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def run(args: argparse.Namespace) -> int:

    from ctagrg.data.inputs import discover_inputs, source_key
    from ctagrg.generation.hub import resolve_model_dir
    from ctagrg.generation.reporter import Reporter, model_fingerprint

    if args.batch_size < 1:
        print(f"--batch-size: expected >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    to_stdout = args.out == "-"
    out = Path(args.out) if args.out and not to_stdout else None
    json_on_stdout = to_stdout or (out is not None and is_stdout(out))  # then no report text on stdout
    resumable = out is not None and is_regular_output(out)
    try:
        items = shard_block(discover_inputs(expand_csv_lists(args.scans), args.metadata), args.shard)
        model_dir = resolve_model_dir(args.model)  # a folder, or a Hub id's snapshot
        reporter = Reporter.from_pretrained(model_dir, device=args.device)
        model = model_fingerprint(model_dir)
        if out is not None and out.is_dir():
            raise IsADirectoryError(f"--out {out}: is a folder; give a .jsonl file path")
        done, models = read_done(out) if out is not None and resumable else (set(), set())
        others = sorted({str(m) if m else "none recorded: an older ctagrg" for m in models if m != model})
        if others:
            raise ValueError(f"{out}: holds reports of another model (fingerprint {', '.join(others)}; {args.model} "
                             f"is {model}); use another --out, or delete it to start over")
        todo = [it for it in items if source_key(it.source) not in done]
        if out is not None and resumable:
            compact_out(out, {source_key(it.source) for it in todo})
        fh = sys.stdout if to_stdout else _open_out(out, resumable) if out is not None else None
    except (OSError, ValueError, RuntimeError) as exc:  # ValueError: a bad model folder or --device
        print(f"{exc}", file=sys.stderr)
        return 2
    if done and len(todo) < len(items):
        print(f"{out}: {len(items) - len(todo)} scan(s) already reported, skipped", file=sys.stderr)
    where = "stdout" if to_stdout else str(out) if out is not None else "the output"
    failures = 0
    try:
        failures = _report_all(reporter, todo, model, args, fh, where, text=not (args.quiet or json_on_stdout))
    except BrokenPipeError:  # whoever read stdout stopped (`--out - | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the interpreter's final flush is silent
        print("report: stdout closed by its reader; stopped", file=sys.stderr)
        return 1
    finally:
        if fh is not None and fh is not sys.stdout:
            fh.close()
    return 1 if failures else 0


def _report_all(reporter: Any, todo: list[Any], model: str, args: argparse.Namespace, fh: Any, where: str,
                text: bool) -> int:
    """Report ``todo`` through the inference front door, batch by batch (read ahead by ``--workers``), stopping
    between batches on a stop signal; returns the number of failed scans. ``where``: the output, named in the stop
    message."""
    from ctagrg.generation.inference import run_inference
    from ctagrg.utils import signals
    from ctagrg.utils.progress import progress

    batches = run_inference(reporter, todo, batch_size=args.batch_size, workers=args.workers,
                            max_bytes=max_memory_bytes(args), saliency=bool(args.saliency))
    failures = 0
    with signals.deferred():
        for batch in progress(batches, desc="reports", total=-(-len(todo) // args.batch_size), unit="batches"):
            for result in batch:
                if args.saliency and result.report is not None:
                    try:
                        write_saliency(result, Path(args.saliency))
                    except OSError as exc:  # the report stands; its line says why its maps are missing
                        result.warnings.append(f"saliency: not written ({exc})")
                line = result_line(result, model)
                failures += "error" in line
                _emit(line, fh, text)
            signals.raise_if_stop_requested(f"report stopped between batches; {where} holds every finished scan")
    return failures


def write_saliency(result: Any, folder: Path) -> list[Path]:
    """The saliency maps of one reported scan as ``folder/<scan name>/<abnormality>.nii.gz`` (float32 in [0, 1]),
    on the preprocessed grid with its affine in the original scan's world, so that viewers overlay them on the
    scan. A scan without that affine (an array or cache input) gets a warning on its line instead."""
    from ctagrg.generation.saliency import save_saliency_nifti

    affine = getattr(result.volume, "affine", None)
    if affine is None:
        result.warnings.append("saliency: not written (no original scan to align the maps with)")
        return []
    written = []
    for label, saliency in result.report.saliency.items():
        slug = "_".join(label.lower().split())
        written.append(save_saliency_nifti(saliency, affine, folder / result.name / f"{slug}.nii.gz"))
    return written


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


def _open_out(out: Path, resumable: bool) -> Any:
    """``out`` opened for appending JSON lines; a regular file's cut last line (an earlier interruption) is ended
    first. OSError naming ``out`` when it cannot be opened."""
    try:
        if not resumable:  # a device or pipe (/dev/stdout): nothing to read back or repair
            return open(out, "a", encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out, "a+", encoding="utf-8")  # append-only log: each line is written whole, then flushed
    except OSError as exc:
        raise OSError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    fh.seek(0, 2)
    if fh.tell():
        fh.seek(fh.tell() - 1)
        if fh.read(1) != "\n":  # a line cut by an earlier interruption: start ours on a fresh line
            fh.write("\n")
    return fh


def _emit(line: dict[str, Any], fh: Any, text: bool) -> None:
    """Errors go to stderr; with ``text`` the report goes to stdout with its warnings above it, else the warnings
    go to stderr; the JSON line goes to ``fh``."""
    warnings = line.get("warnings", ())
    if "error" in line:
        print(line["error"], file=sys.stderr)  # error_text names the scan
    elif text:
        shown = "".join(f"warning: {w}\n" for w in warnings)
        print(f"== {line['input']}\n{shown}{line['report']}\n")
        warnings = ()
    for warning in warnings:
        print(f"{line['input']}: warning: {warning}", file=sys.stderr)
    if fh is not None:
        fh.write(json.dumps(line) + "\n")
        fh.flush()
