"""ctagrg.training.loaders: the loop's loaders, micro-batches and optimizer steps per epoch on each rank."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.training.config import TrainConfig
from ctagrg.training.distributed import DistInfo
from ctagrg.training.loaders import batch_names, build_loaders
from ctagrg.training.task import Task


@dataclass
class _Config:
    train: TrainConfig = field(default_factory=TrainConfig)


class _Task(Task):
    Config = _Config

    def train_dataset(self) -> list[dict]:
        return [{"x": torch.tensor([float(i)]), "name": f"t_{i}"} for i in range(10)]

    def valid_dataset(self) -> list[dict]:
        return [{"x": torch.tensor([float(i)]), "name": f"v_{i}"} for i in range(3)]


@pytest.mark.parametrize(("rank", "world", "drop_last", "grad_accum", "batches", "steps"), [
    (0, 1, False, 1, 3, 3),  # 10 volumes, batches of 4: 4 + 4 + 2
    (0, 1, True, 2, 2, 1),   # the short batch dropped; 2 micro-batches per step
    (1, 2, False, 2, 2, 1),  # 5 volumes per rank: 4 + 1
    (0, 1, False, 2, 3, 2),  # the epoch's last step has one micro-batch
])
def test_batches_and_steps_per_epoch(rank: int, world: int, drop_last: bool, grad_accum: int, batches: int,
                                     steps: int) -> None:
    tc = TrainConfig(batch_size=4, global_batch_size=4 * grad_accum * world, drop_last=drop_last, val_every_epochs=1)
    loaders = build_loaders(_Task(_Config(tc)), tc, DistInfo(rank=rank, world_size=world), grad_accum)
    assert (loaders.batches_per_epoch, loaders.steps_per_epoch) == (batches, steps)
    assert len(loaders.train_loader) == batches
    # validation runs on the main process only
    assert (loaders.valid_loader is not None) == (rank == 0)
    if rank == 0:
        assert [b["name"] for b in loaders.valid_loader] == [["v_0", "v_1", "v_2"]]


def test_a_rank_share_smaller_than_a_batch_with_drop_last_is_refused() -> None:
    tc = TrainConfig(batch_size=16, global_batch_size=16, drop_last=True)
    with pytest.raises(ConfigError, match="each process gets 10 training volumes, fewer than one batch"):
        build_loaders(_Task(_Config(tc)), tc, DistInfo(), 1)


def test_no_validation_loader_without_a_schedule() -> None:
    tc = TrainConfig(batch_size=4, global_batch_size=4, val_every_epochs=0)
    assert build_loaders(_Task(_Config(tc)), tc, DistInfo(), 1).valid_loader is None


def test_batch_names_for_error_messages() -> None:
    assert batch_names({"name": [f"n{i}" for i in range(3)]}) == "; volumes: n0, n1, n2"
    assert batch_names({"name": [f"n{i}" for i in range(9)]}).endswith("n6, n7, ...")
    assert batch_names({"x": 1}) == "" and batch_names([1, 2]) == ""
