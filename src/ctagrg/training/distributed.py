"""Plain ``torchrun`` DDP, nanoGPT style: one branch keyed on the ``RANK`` environment variable.

``torchrun --nproc_per_node N -m ctagrg.cli.main train ...`` (or ``--nnodes``/``--rdzv-*`` for several nodes)
sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything runs in one process. NCCL on CUDA, gloo on CPU.
Also holds the resumable, rank-sharded sampler the loop uses.

Rank 0 alone validates and writes the end-of-training artefacts while the other ranks wait in a collective; how
long they wait before failing is the process group's timeout (``train.dist_timeout_minutes``), not torch's default
(10 minutes under NCCL), which reading a large validation set exceeds.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ctagrg.utils.device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _use_device(spec: str, local_rank: int) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK if CUDA is available, else cpu; ``cuda`` -> cuda:LOCAL_RANK, made current."""
    device = resolve_device(spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup(device_spec: str = "auto", timeout_minutes: float = 120.0) -> DistInfo:
    """Join the process group when launched by torchrun (RANK set); otherwise return a single-process DistInfo.

    ``timeout_minutes``: how long a collective (a barrier, a broadcast) waits for the other ranks before failing.
    A process group that already exists (created by the caller) is joined as it is.
    """
    if "RANK" not in os.environ:
        return DistInfo(device=_use_device(device_spec, 0))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ["WORLD_SIZE"])
    device = _use_device(device_spec, local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def current() -> tuple[int, int]:
    """(rank, world_size) of the process group this process is in, or (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class DistTimeoutError(RuntimeError):
    """A rank waited longer than ``train.dist_timeout_minutes`` for rank 0."""


@contextlib.contextmanager
def waiting_for_main(info: DistInfo, what: str, timeout_minutes: float) -> Iterator[None]:
    """Around a collective in which the other ranks wait for rank 0 to ``what``: a timeout there (gloo raises it;
    NCCL's watchdog ends the process with its own message) becomes an error that names the setting to raise."""
    try:
        yield
    except RuntimeError as exc:
        if info.is_main or "timed out" not in str(exc).lower():
            raise
        raise DistTimeoutError(
            f"rank {info.rank}: waited more than train.dist_timeout_minutes ({timeout_minutes:g} min) for rank 0 to "
            f"{what}; raise it, e.g. --set train.dist_timeout_minutes={max(2 * timeout_minutes, 1):g}") from exc


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop signal that reached only some)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded indices that can start mid-epoch (exact resume without replaying the data).

    The order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)`` only, so it does
    not depend on how many batches were consumed before; padded (by wrapping) to a multiple of ``world_size``
    like DistributedSampler, then rank ``r`` takes every ``world_size``-th index from ``r``. ``start`` skips
    that many of this rank's indices (set by the loop on resume).
    """

    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size < 1:
            raise ValueError("ResumableSampler: the dataset is empty")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(size / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        padded = order + order[: self.per_rank * self.world_size - self.size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)
