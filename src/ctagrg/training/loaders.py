"""The training loop's data loaders: a resumable sampler over the training set (each rank its part, restartable
mid-epoch), loader generators of their own (creating a loader does not consume the global RNG), and the validation
loader on the main process."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from ctagrg.config import ConfigError
from ctagrg.training import distributed as D
from ctagrg.training.config import TrainConfig
from ctagrg.training.task import Task
from ctagrg.utils import signals


@dataclass
class Loaders:
    """``batches_per_epoch``: micro-batches of one epoch on this rank; ``steps_per_epoch``: optimizer steps."""

    sampler: D.ResumableSampler
    loader_gen: torch.Generator
    train_loader: DataLoader
    valid_loader: DataLoader | None
    batches_per_epoch: int
    steps_per_epoch: int


def build_loaders(task: Task, tc: TrainConfig, info: D.DistInfo, grad_accum: int) -> Loaders:
    """The training loader of this rank and, on the main process when ``tc.val_every_epochs``, the validation one.

    Raises:
        ConfigError: with ``train.drop_last``, a rank's share of the training set is smaller than one batch.
    """
    train_ds = task.train_dataset()
    sampler = D.ResumableSampler(len(train_ds), seed=tc.seed, rank=info.rank, world_size=info.world_size)
    loader_gen = torch.Generator()
    train_loader = DataLoader(
        train_ds, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
        collate_fn=task.collate, pin_memory=tc.pin_memory and info.device.type == "cuda",
        generator=loader_gen, persistent_workers=False, drop_last=tc.drop_last,
        worker_init_fn=_worker_init if tc.num_workers else None,
    )
    if tc.drop_last and sampler.per_rank < tc.batch_size:
        raise ConfigError(f"train.drop_last: each process gets {sampler.per_rank} training volumes, fewer "
                          f"than one batch (train.batch_size={tc.batch_size}): every batch would be dropped")
    rounding = math.floor if tc.drop_last else math.ceil
    batches_per_epoch = rounding(sampler.per_rank / tc.batch_size)
    valid_ds = task.valid_dataset() if tc.val_every_epochs else None
    valid_loader = None
    if valid_ds is not None and info.is_main:
        valid_loader = DataLoader(
            valid_ds, batch_size=tc.eval_batch_size or tc.batch_size, shuffle=False,
            num_workers=tc.num_workers, collate_fn=task.collate, generator=torch.Generator().manual_seed(0),
            worker_init_fn=_worker_init if tc.num_workers else None,
        )
    return Loaders(sampler, loader_gen, train_loader, valid_loader, batches_per_epoch,
                   math.ceil(batches_per_epoch / grad_accum))


def _worker_init(worker_id: int) -> None:
    # a scheduler signals every process of the job: a loader worker must not die of it (the main process would
    # fail on the lost worker instead of stopping cleanly after its optimizer step)
    signals.ignore_stop_signals()


def batch_names(batch: Any) -> str:
    """``"; volumes: a, b, ..."`` (at most 8) for an error message about ``batch``, or "" when it has no names."""
    names = batch.get("name") if isinstance(batch, dict) else None
    if isinstance(names, (list, tuple)) and names:
        shown = ", ".join(map(str, names[:8])) + (", ..." if len(names) > 8 else "")
        return f"; volumes: {shown}"
    return ""
