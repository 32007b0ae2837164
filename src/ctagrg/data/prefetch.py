"""Reading and preprocessing scans ahead of the model: the inference front door (:mod:`ctagrg.generation.inference`)
with ``workers`` > 0.

:func:`prepared_batches` runs a ``load(index) -> (D, H, W) array`` function over the inputs in a torch DataLoader:
with ``workers`` = 0 in this process, one scan after another; with N > 0 in N worker processes that read and
preprocess the next batches while the model works on the current one. Batches come back in input order, so the
output does not depend on N. ``load`` may return an array or a :class:`ctagrg.data.preprocessed.PreprocessedVolume`
(its array crosses from a worker in shared memory). A scan that fails to load becomes a :class:`Prepared` with
``error`` set (one line naming the scan), never an exception: the batch goes on. Each worker holds up to two
batches of preprocessed volumes (240 x 480 x 480 float32: 221 MB each); workers leave stop signals to the main
process, which stops between batches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Prepared:
    """One input, read and preprocessed (``volume``: (D, H, W) float32, or whatever ``load`` returns), or the
    reason it could not be (``error``: one line that names the scan). ``seconds``: time spent reading and
    preprocessing it; ``warnings``: what the reader noted (:class:`ctagrg.data.ctio.CTReadWarning` messages).
    ``exception``: the exception behind ``error`` when it was raised in this process (``workers`` = 0), else None
    (an exception need not survive the trip from a worker)."""

    index: int
    volume: Any
    error: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    exception: BaseException | None = field(default=None, repr=False, compare=False)


class _Inputs:
    """Map-style dataset over input positions; ``load`` must be picklable for a spawn start method (a module-level
    function or a ``functools.partial`` of one)."""

    def __init__(self, load: Callable[[int], np.ndarray], sources: Sequence[str]):
        self.load, self.sources = load, list(sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Prepared:
        import torch

        from ctagrg.data.ctio import collect_read_warnings, error_text

        start = time.perf_counter()
        in_worker = torch.utils.data.get_worker_info() is not None
        try:
            with collect_read_warnings() as read:
                volume = self.load(index)
        except Exception as exc:  # noqa: BLE001 - a bad scan must not stop the batch
            return Prepared(index, None, error_text(self.sources[index], exc), time.perf_counter() - start,
                            exception=None if in_worker else exc)
        if in_worker:  # a tensor crosses to the main process in shared memory
            volume = _map_array(volume, lambda a: torch.from_numpy(np.ascontiguousarray(a)))
        return Prepared(index, volume, None, time.perf_counter() - start, read)


def _map_array(volume: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to ``volume``, or to its ``array`` when it is a PreprocessedVolume."""
    from ctagrg.data.preprocessed import PreprocessedVolume

    if isinstance(volume, PreprocessedVolume):
        return dataclasses.replace(volume, array=fn(volume.array))
    return fn(volume)


def _collate(items: list[Prepared]) -> list[Prepared]:
    return items


def _worker_init(worker_id: int) -> None:
    from ctagrg.utils.signals import ignore_stop_signals

    ignore_stop_signals()


def prepared_batches(load: Callable[[int], np.ndarray], sources: Sequence[str], batch_size: int,
                     workers: int = 0) -> Iterator[list[Prepared]]:
    """Batches of up to ``batch_size`` :class:`Prepared` inputs, in the order of ``sources``.

    Args:
        load: index -> preprocessed (D, H, W) float32 volume, or a PreprocessedVolume; exceptions become
            ``Prepared.error``.
        sources: one string per input naming it in error lines (a path).
        workers: 0 = read in this process; N = N worker processes reading ahead (up to 2 batches each).
    """
    import torch
    from torch.utils.data import DataLoader

    loader: Any = DataLoader(_Inputs(load, sources), batch_size=batch_size, shuffle=False, num_workers=workers,
                             collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
                             prefetch_factor=2 if workers else None)
    for batch in loader:
        for item in batch:
            if item.volume is not None:
                item.volume = _map_array(item.volume, lambda a: a.numpy() if isinstance(a, torch.Tensor) else a)
        yield batch
