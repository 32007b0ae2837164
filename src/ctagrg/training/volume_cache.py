"""Per-volume tensors computed once before training, after which the datasets yield labels and names only.

Users: step 1 on a frozen encoder keeps each volume's encoder output ``h`` (``cache_frozen_encoder``); training
extensions may keep other per-volume inputs (the demo's stem cache). Either way no epoch reads a volume file again.

The training loop builds its datasets before it resumes from ``last/``, so a dataset is only registered until
:meth:`PerVolumeCache.start` (called from ``Task.on_train_start``, with the model the run actually trains) gives
the function that computes the tensors; registered datasets are computed then, later ones at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from ctagrg.utils.progress import progress

logger = logging.getLogger(__name__)

# batch (as a loader yields it: uint8 volumes, labels, names) -> (B, ...) tensor, one row per volume, on the CPU
ComputeFn = Callable[[dict[str, Any]], torch.Tensor]


class PerVolumeCache:
    """Volume name -> a tensor computed once by ``compute`` (see the module docstring).

    Args:
        what: how the log line names the tensors, e.g. ``"frozen encoder: {n} volumes encoded once"``: a format
            string with ``{n}`` (volumes) and ``{s}`` (seconds).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.values: dict[str, torch.Tensor] = {}
        self._pending: list[Any] = []
        self._compute: ComputeFn | None = None
        self._loader_args: dict[str, Any] = {}

    @property
    def started(self) -> bool:
        return self._compute is not None

    def register(self, ds: Any) -> Any:
        """Before :meth:`start`: remember ``ds``. After: compute its volumes not yet cached, then make ``ds`` yield
        labels and names only (``ds.volumes = False``)."""
        if self._compute is None:
            self._pending.append(ds)
            return ds
        missing = [i for i, n in enumerate(ds.names) if n not in self.values]
        if missing:
            self._fill(Subset(ds, missing))
        ds.volumes = False
        return ds

    def start(self, compute: ComputeFn, batch_size: int, num_workers: int = 0) -> None:
        """Compute every registered dataset's volumes with ``compute`` (the caller sets eval mode, precision etc.)."""
        self._compute = compute
        self._loader_args = {"batch_size": batch_size, "num_workers": num_workers}
        pending, self._pending = self._pending, []
        for ds in pending:
            self.register(ds)

    @torch.no_grad()
    def _fill(self, ds: Any) -> None:
        assert self._compute is not None
        start = time.perf_counter()
        # its own generator: iterating a loader draws a seed from the global RNG, which the training run's dropout
        # and augmentation streams (seeded just before this) must not see
        loader = DataLoader(ds, **self._loader_args, generator=torch.Generator().manual_seed(0))
        for batch in progress(loader, desc=self.what.split(":")[0] + " (once)", total=len(loader)):
            self.values.update(zip(batch["name"], self._compute(batch), strict=True))
        logger.info(self.what.format(n=len(ds), s=time.perf_counter() - start))

    def gather(self, names: Sequence[str], device: torch.device | str) -> torch.Tensor:
        """(B, ...) the cached tensors of ``names``, stacked, on ``device``."""
        return torch.stack([self.values[n] for n in names]).to(device, non_blocking=True)
