"""Build the preprocessed cache for many volumes: resumable, shardable, one bad file never stops the batch.

Layout of ``out_dir``: ``<name>.safetensors`` per volume, ``preprocess.json`` (the resolved PreprocessConfig),
``manifest.csv`` (one row per volume, columns :data:`MANIFEST_FIELDS`) and, for sharded runs,
``manifest.shard-I-of-N.csv`` (merged into ``manifest.csv`` at the end of every run).

Resuming: a volume whose cache file exists is skipped (writes are atomic, so an existing file is complete);
failed volumes are retried.

Stopping: under :func:`ctagrg.utils.signals.handle_stop_signals` (``ctagrg preprocess``), a stop signal ends the
run between volumes: the volumes being processed finish, the manifest records what was done, and
``StopRequested`` is raised. Workers ignore the signal and leave the decision to the parent.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ctagrg.config import from_dict, to_dict
from ctagrg.data.cache import cache_path
from ctagrg.data.inputs import InputItem
from ctagrg.data.preprocess import PreprocessConfig
from ctagrg.data.read_cost import MIB, default_max_memory_mb
from ctagrg.utils import signals
from ctagrg.utils.atomic import atomic_open, write_json_atomic

MANIFEST_FIELDS = ("name", "source", "status", "error", "shape", "spacing", "axcodes", "hu_min", "hu_max",
                   "out_shape", "seconds", "warnings")
MANIFEST = "manifest.csv"
CONFIG_FILE = "preprocess.json"


class CacheConfigMismatch(ValueError):
    """``out_dir`` already holds a cache made with another PreprocessConfig."""


def _fmt(values: Iterable[float], digits: int = 4) -> str:
    return "x".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def process_item(item: InputItem, out_dir: str | Path, config: PreprocessConfig, max_bytes: int | None = None
                 ) -> dict[str, Any]:
    """Load (within ``max_bytes``, see :func:`~ctagrg.data.ctio.load_ct`), preprocess and cache one volume; never
    raises (errors become a ``failed`` row)."""
    from ctagrg.data.cache import save_cached
    from ctagrg.data.ctio import load_ct
    from ctagrg.data.preprocess import preprocess_volume

    row: dict[str, Any] = {"name": item.name, "source": item.source, "status": "failed", "error": ""}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            vol = load_ct(item.source, item.metadata, max_bytes=max_bytes)
            lo, hi = vol.hu_range()
            row.update(shape=_fmt(vol.shape), spacing=_fmt(vol.spacing), axcodes="".join(vol.axcodes),
                       hu_min=f"{lo:g}", hu_max=f"{hi:g}")
            out = preprocess_volume(vol, config)
            extra = {k: row[k] for k in ("source", "shape", "spacing", "axcodes")}
            save_cached(cache_path(out_dir, item.name), out, -config.offset, 1.0 - config.offset, extra)
            row.update(status="ok", out_shape=_fmt(out.shape))
        except (ValueError, OSError, MemoryError) as exc:
            row["error"] = str(exc) if str(exc).startswith(item.source) else f"{item.source}: {exc}"
        except Exception as exc:  # a bug or an unexpected library error: keep the batch going, keep the trace
            row["error"] = f"{item.source}: unexpected {type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
    row["warnings"] = " | ".join(str(w.message) for w in caught)
    row["seconds"] = f"{time.perf_counter() - t0:.4f}"
    return row


def _worker_init(threads: int, parent: int) -> None:
    exit_with_parent(parent)  # first: importing torch takes seconds
    signals.ignore_stop_signals()  # a signal to the process group: the parent stops the run between volumes
    import torch

    torch.set_num_threads(threads)


def exit_with_parent(parent: int, poll_s: float = 0.25) -> None:
    """End this worker process when ``parent`` (its parent's pid) dies, e.g. killed with SIGKILL, which leaves no
    chance to stop the pool: Linux's parent-death signal where there is one, and a thread that polls the parent's
    pid everywhere (the signal is tied to the parent thread that started the worker)."""
    import ctypes
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _work(args: tuple[InputItem, str, dict[str, Any], int]) -> dict[str, Any]:
    item, out_dir, cfg, max_bytes = args
    return process_item(item, out_dir, from_dict(PreprocessConfig, cfg), max_bytes)


def check_config(out_dir: Path, config: PreprocessConfig) -> None:
    """Write ``preprocess.json``, or check that the existing one matches ``config``."""
    import json

    path = out_dir / CONFIG_FILE
    wanted = to_dict(config)
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != wanted:
            diff = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
            raise CacheConfigMismatch(f"{path}: this cache was made with another preprocessing config "
                                      f"(existing vs requested: {diff}); use another --out folder")
        return
    write_json_atomic(path, wanted)


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def write_manifest(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["name"]):
            writer.writerow({k: row.get(k, "") for k in MANIFEST_FIELDS})


def merge_manifests(out_dir: Path, rows: Sequence[dict[str, Any]] = ()) -> dict[str, dict[str, Any]]:
    """manifest.csv, overlaid by every shard manifest (oldest first), overlaid by ``rows``; written back."""
    merged: dict[str, dict[str, Any]] = dict(read_manifest(out_dir / MANIFEST))
    for part in sorted(out_dir.glob("manifest.shard-*.csv"), key=lambda p: p.stat().st_mtime):
        merged.update(read_manifest(part))
    merged.update({r["name"]: r for r in rows})
    write_manifest(out_dir / MANIFEST, merged.values())
    return merged


def shard_items(items: Sequence[InputItem], shard: tuple[int, int]) -> list[InputItem]:
    """Items of shard ``I`` of ``N`` (0-based): every N-th item by sorted name, so shards are balanced."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard {index}/{count}: expected 0 <= I < N")
    return [it for k, it in enumerate(sorted(items, key=lambda i: i.name)) if k % count == index]


def build_cache(items: Sequence[InputItem], out_dir: str | Path, config: PreprocessConfig, workers: int = 1,
                shard: tuple[int, int] = (0, 1), wrap: Callable[..., Iterable[Any]] | None = None,
                max_bytes: int | None = None) -> list[dict[str, Any]]:
    """Preprocess ``items`` (this shard's part) into ``out_dir``; return this run's manifest rows.

    Args:
        workers: processes (1 = in this process). Each worker uses ``cpu_count // workers`` torch threads.
        max_bytes: the memory budget of the reads running at once (``workers`` of them), split evenly; None:
            half of this machine's memory (:func:`ctagrg.data.read_cost.default_max_memory_mb`).
        wrap: progress wrapper ``wrap(iterable, total=...)`` (e.g. :func:`ctagrg.utils.progress.progress`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_config(out_dir, config)
    mine = shard_items(items, shard)
    previous = merge_manifests(out_dir) if (out_dir / MANIFEST).is_file() else {}
    rows, todo = [], []
    for item in mine:
        if cache_path(out_dir, item.name).is_file():
            old = previous.get(item.name)
            row = dict(old) if old and old.get("status") == "ok" else _row_from_cache_file(item, out_dir)
            rows.append({**row, "skipped": True})  # "skipped" is not a manifest column; callers count it
        else:
            todo.append(item)
    wrap = wrap or (lambda it, **_: it)
    total = int(default_max_memory_mb() * MIB) if max_bytes is None else max_bytes
    per_read = total // max(1, min(workers, len(todo)))
    try:
        with signals.deferred():
            rows.extend(wrap(_run(todo, out_dir, config, workers, per_read), total=len(todo), desc="preprocess",
                             unit="scans"))
    finally:  # an interrupted (or stopped) run still records what it finished
        if shard[1] > 1:
            write_manifest(out_dir / f"manifest.shard-{shard[0]}-of-{shard[1]}.csv", rows)
        merge_manifests(out_dir, rows)
    return rows


def _row_from_cache_file(item: InputItem, out_dir: Path) -> dict[str, Any]:
    """A manifest row for a cached volume the manifest does not know (e.g. a lost manifest), from the file's
    provenance metadata."""
    from ctagrg.data.cache import CacheError, read_cache_metadata

    row: dict[str, Any] = {"name": item.name, "source": item.source, "status": "ok", "error": "", "seconds": "0"}
    try:
        meta = read_cache_metadata(cache_path(out_dir, item.name))
    except CacheError as exc:
        return {**row, "status": "failed", "error": str(exc)}
    extra = meta["extra"]
    row.update({k: extra[k] for k in ("shape", "spacing", "axcodes") if k in extra}, out_shape=_fmt(meta["shape"]))
    return row


def _run(todo: Sequence[InputItem], out_dir: Path, config: PreprocessConfig, workers: int, max_bytes: int
         ) -> Iterable[dict[str, Any]]:
    if workers <= 1 or len(todo) <= 1:
        for item in todo:
            signals.raise_if_stop_requested(f"preprocess stopped before {item.source}")
            yield process_item(item, out_dir, config, max_bytes)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // workers)
    cfg = to_dict(config)
    # spawn, not fork: forking a process whose torch/OpenMP thread pool is running can deadlock
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads, os.getpid())) as pool:
        futures = {pool.submit(_work, (item, str(out_dir), cfg, max_bytes)): item for item in todo}
        pending = set(futures)
        for fut in as_completed(futures):
            pending.discard(fut)
            yield _result(fut, futures[fut])
            if signals.stop_requested():  # the volumes in the workers finish (atomically); the rest never start
                pool.shutdown(wait=True, cancel_futures=True)
                yield from (_result(f, futures[f]) for f in pending if not f.cancelled())
                signals.raise_if_stop_requested("preprocess stopped between volumes")


def _result(fut: Any, item: InputItem) -> dict[str, Any]:
    try:
        return fut.result()
    except Exception as exc:  # the worker process died (e.g. killed for memory)
        return {"name": item.name, "source": item.source, "status": "failed",
                "error": f"{item.source}: worker process failed ({type(exc).__name__}: {exc})"}
