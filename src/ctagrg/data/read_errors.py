"""What reading a scan raises and warns: :class:`CTReadError` (the scan cannot be used; the message starts with
its path), :class:`CTReadWarning` (handled, but worth a look) and the helpers batch jobs use to report them."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


class CTReadError(ValueError):
    """A scan that cannot be read as a 3D CT in HU; the message starts with the path."""


def error_text(source: str, exc: BaseException) -> str:
    """One line naming the scan and the problem, for batch error lines: a CTReadError's message (it starts with
    the path) as it is, any other exception with its class (an unexpected failure), prefixed with ``source`` where
    the message does not name it."""
    text = str(exc) if isinstance(exc, CTReadError) else f"{type(exc).__name__}: {exc}"
    return text if source in text else f"{source}: {text}"


class CTReadWarning(UserWarning):
    """Something about a scan that was handled but deserves a look (skipped rescale, several series, ...)."""


@contextlib.contextmanager
def collect_read_warnings() -> Iterator[list[str]]:
    """Collect the :class:`CTReadWarning` messages raised inside the block into the yielded list (each once, in
    order) instead of printing them; any other warning is passed on as usual when the block ends.

    ``warnings.catch_warnings`` swaps process-wide state: callers reading in several threads at once should hold
    one lock around this (``ctagrg serve`` reads under its model lock)."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CTReadWarning)
        try:
            yield messages
        finally:
            others = []
            for w in caught:
                if issubclass(w.category, CTReadWarning):
                    if str(w.message) not in messages:
                        messages.append(str(w.message))
                else:
                    others.append(w)
    for w in others:  # outside the block: the caller's filters decide (DeprecationWarning stays hidden, -W works)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
