"""Stopping a batch job cleanly on a scheduler's signal (preemption, an approaching wall-time limit).

While :func:`handle_stop_signals` is active, the signals of ``CTAGRG_STOP_SIGNALS`` (default ``SIGTERM,SIGUSR1``;
``ctagrg --stop-signals`` sets it; empty: none) raise :class:`StopRequested` instead of killing the process, so
``finally`` blocks run and atomic writes are never left half-done. Inside a :func:`deferred` block (a loop with
safe points) the signal only sets a flag, which the loop reads at its safe points (:func:`raise_if_stop_requested`):
training after the current optimizer step, once ``last/`` is written; ``preprocess``, ``report`` and ``evaluate``
between scans. An :func:`immediate` block inside a deferred one raises again (training's validation, which is
aborted and redone on resume). ``ctagrg`` turns StopRequested into exit status :data:`EXIT_STOPPED` (75,
``EX_TEMPFAIL``: "try again later"), the code a job script requeues on. Further signals while stopping are noted
only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: the work is incomplete but resumable; run the same command again
DEFAULT_SIGNALS = "SIGTERM,SIGUSR1"
ENV = "CTAGRG_STOP_SIGNALS"

_requested: str | None = None
_active = 0
_modes: list[bool] = []  # innermost last: True = deferred (set the flag), False = raise at once


class StopRequested(BaseException):
    """A stop signal arrived and the work stopped at a safe point; rerunning the command resumes it.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` clauses (a bad scan must not stop the
    batch) do not swallow it."""

    def __init__(self, signal_name: str, where: str = ""):
        self.signal_name, self.where = signal_name, where
        super().__init__(f"stopped on {signal_name}{': ' + where if where else ''}; "
                         f"run the same command again to resume")


def parse_signals(spec: str) -> list[signal.Signals]:
    """``"SIGTERM,USR1,10"`` -> signals; an empty spec is no signal. Raises ValueError naming a bad entry."""
    out = []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        name = raw.upper() if raw.upper().startswith("SIG") else f"SIG{raw.upper()}"
        try:
            out.append(signal.Signals(int(raw)) if raw.isdigit() else signal.Signals[name])
        except (KeyError, ValueError):
            raise ValueError(f"{ENV}: {raw!r} is not a signal name (e.g. SIGTERM, SIGUSR1)") from None
        if out[-1] in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"{ENV}: {out[-1].name} cannot be caught")
    return out


def configured_signals() -> list[signal.Signals]:
    """The stop signals of ``CTAGRG_STOP_SIGNALS`` (default SIGTERM and SIGUSR1)."""
    return parse_signals(os.environ.get(ENV, DEFAULT_SIGNALS))


def stop_requested() -> str | None:
    """The name of the stop signal received, or None."""
    return _requested


def raise_if_stop_requested(where: str = "") -> None:
    """Raise :class:`StopRequested` when a stop signal has arrived."""
    if _requested is not None:
        raise StopRequested(_requested, where)


def _on_signal(signum: int, frame: object) -> None:
    global _requested
    import logging

    if _requested is not None:
        logging.getLogger(__name__).warning("received %s again: already stopping", signal.Signals(signum).name)
        return
    _requested = signal.Signals(signum).name
    defer = bool(_modes) and _modes[-1]
    logging.getLogger(__name__).warning("received %s: stopping %s", _requested,
                                        "at the next safe point" if defer else "now")
    if not defer:
        raise StopRequested(_requested)


@contextlib.contextmanager
def _mode(defer: bool) -> Iterator[None]:
    _modes.append(defer)
    try:
        if not defer:
            raise_if_stop_requested()
        yield
    finally:
        _modes.pop()


def deferred() -> contextlib.AbstractContextManager[None]:
    """A block whose code reads the flag at safe points: a stop signal only sets it."""
    return _mode(True)


def immediate() -> contextlib.AbstractContextManager[None]:
    """A block (inside a deferred one) that a stop signal interrupts at once; raises at entry when a stop signal
    has already arrived."""
    return _mode(False)


@contextlib.contextmanager
def handle_stop_signals(signals: list[signal.Signals] | None = None) -> Iterator[None]:
    """Turn the stop signals into the flag for the duration of the block (main thread only; elsewhere, and when
    already active, it does nothing). The previous handlers come back, and the flag is cleared, on exit."""
    global _active, _requested
    if _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = configured_signals() if signals is None else signals
    previous = {s: signal.signal(s, _on_signal) for s in wanted}
    _active += 1
    try:
        yield
    finally:
        _active -= 1
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested = None


def ignore_stop_signals() -> None:
    """In a worker process: leave the stop signals to the parent, which stops the work at a safe point (a signal
    sent to the whole process group must not kill a worker in the middle of a scan)."""
    for s in configured_signals():
        signal.signal(s, signal.SIG_IGN)
