"""Logging set-up for the ``ctagrg`` command: one handler on the ``ctagrg`` logger, timestamped lines on stderr.

Library modules log through ``logging.getLogger(__name__)`` (all under ``ctagrg``) and never print; a program that
imports ctagrg decides what is shown (without set-up, Python shows warnings and errors only). The CLI calls
:func:`setup_logging` once, from ``--log-level`` and ``--quiet``.

Line format: ``2025-05-01 12:00:00 INFO ctagrg.training.loop: step 50/2000 ...``. On a terminal the lines are
written through tqdm, so they do not break a progress bar.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

LOGGER = "ctagrg"
LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _StderrHandler(logging.Handler):
    """Writes to the ``sys.stderr`` of the moment (not the one at set-up), so redirections and test capture see
    the lines; through ``tqdm.write`` on a terminal, where a bar may be drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stderr
            if stream.isatty():
                from tqdm import tqdm

                tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def setup_logging(level: str = "info", quiet: bool = False) -> logging.Logger:
    """Send the ``ctagrg`` logger's records at ``level`` and above to stderr (``quiet``: warnings and errors only).

    Calling it again replaces the earlier set-up (no duplicate lines). Returns the ``ctagrg`` logger.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"log level: expected one of {', '.join(LEVELS)}, got {level!r}")
    logger = logging.getLogger(LOGGER)
    for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else getattr(logging, level.upper()))
    return logger


def saved_logging() -> Callable[[], None]:
    """A function that puts the ``ctagrg`` logger's level and handlers back as they are now."""
    logger = logging.getLogger(LOGGER)
    level, handlers = logger.level, list(logger.handlers)

    def restore() -> None:
        logger.setLevel(level)
        logger.handlers[:] = handlers

    return restore
