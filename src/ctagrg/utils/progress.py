"""Progress of long loops: a tqdm bar on a terminal, timestamped log lines in a batch job's log file.

Where progress goes (``CTAGRG_PROGRESS``):

- unset (default): a bar when stderr is a terminal, otherwise log lines;
- ``bar`` (or ``1``): always a bar; ``lines`` (or ``0``): always log lines; ``off``: nothing.

Nothing either when the ``ctagrg`` logger was set above INFO (``ctagrg --quiet``).

Log lines go to the ``ctagrg.progress`` logger at INFO, at most one per ``CTAGRG_PROGRESS_INTERVAL`` seconds
(default 60; ``ctagrg --progress-interval S`` sets it), plus one when the loop ends if any was written::

    2025-05-01 12:00:00 INFO ctagrg.progress: preprocess: 120/3039 (4%), 0.52 it/s, elapsed 0:03:50, ETA 1:33:27

Only DDP rank 0 shows progress.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MODES = ("bar", "lines", "off")
DEFAULT_INTERVAL_S = 60.0
logger = logging.getLogger("ctagrg.progress")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def progress_mode() -> str:
    """``bar``, ``lines`` or ``off`` for this process (``off`` on DDP ranks other than 0)."""
    level = logging.getLogger("ctagrg").level  # NOTSET unless set up (ctagrg.utils.logs): library use keeps bars
    if _rank() != 0 or level > logging.INFO:
        return "off"
    value = os.environ.get("CTAGRG_PROGRESS", "").strip().lower()
    value = {"1": "bar", "0": "lines"}.get(value, value)
    if value in MODES:
        return value
    return "bar" if sys.stderr.isatty() else "lines"


def progress_enabled() -> bool:
    """Whether a progress bar is drawn (rank 0, on a terminal or ``CTAGRG_PROGRESS=bar``)."""
    return progress_mode() == "bar"


def progress_interval() -> float:
    """Seconds between two progress lines: ``CTAGRG_PROGRESS_INTERVAL``, default 60 (0: a line per item)."""
    raw = os.environ.get("CTAGRG_PROGRESS_INTERVAL", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"CTAGRG_PROGRESS_INTERVAL: expected seconds >= 0, got {raw!r}") from None
    if not value >= 0:
        raise ValueError(f"CTAGRG_PROGRESS_INTERVAL: expected seconds >= 0, got {raw!r}")
    return value


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLines(Generic[T]):
    """Iterate ``iterable`` and log ``desc: done/total (pct), rate, elapsed, ETA`` every ``interval`` seconds.

    Mirrors the part of tqdm's interface the loops use (``set_postfix``, ``len``)."""

    def __init__(self, iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it",
                 interval: float | None = None):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.interval = progress_interval() if interval is None else interval
        self.postfix = ""

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        done, written = 0, False
        for item in self.iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= self.interval or (written and done == self.total):
                logger.info(self.line(done, now - start))
                last, written = now, True

    def line(self, done: int, elapsed: float) -> str:
        """One progress line for ``done`` items after ``elapsed`` seconds."""
        rate = done / elapsed if elapsed > 0 else float("inf")
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            left = (self.total - done) / rate if rate > 0 else float("nan")
            text = (f"{head}{done}/{self.total} ({100 * done / self.total:.0f}%), {rate:.3g} {self.unit}/s, "
                    f"elapsed {format_duration(elapsed)}, ETA {format_duration(left)}")
        else:
            text = f"{head}{done} done, {rate:.3g} {self.unit}/s, elapsed {format_duration(elapsed)}"
        return f"{text}, {self.postfix}" if self.postfix else text


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kwargs: Any) -> Iterable[T]:
    """Wrap ``iterable`` for progress display (see the module doc): a tqdm bar, :class:`ProgressLines`, or the
    iterable itself. ``kwargs`` go to tqdm (``unit`` is used by the lines too)."""
    mode = progress_mode()
    if mode == "lines":
        return ProgressLines(iterable, desc=desc, total=total, unit=kwargs.get("unit", "it"))
    if mode == "off":
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, **kwargs)
