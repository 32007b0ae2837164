"""Two CPU processes under ``torchrun`` (gloo) against one process, with the same config file.

- One global batch: the config states ``global_batch_size: 4`` and ``batch_size: 2`` (per process). One process
  accumulates 2 micro-batches per optimizer step, two processes 1 each; both run the same optimizer steps per epoch
  over the same samples (the sampler interleaves the epoch's permutation over ranks, DDP averages the gradients),
  so they end with the same weights up to float summation order. Dropout is off: each rank draws its own masks.
- The embedding cache is built inside the run, where the decoder stage builds it (``build_model``, under the
  process group): each rank computes only its own shards and the cache equals the one-process cache.
- Rank 0 validates alone while the other rank waits: the wait is bounded by ``train.dist_timeout_minutes`` (the
  process group's timeout), and running past it fails with an error that names the setting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from test_embedding_cache import SENTENCES, FakeStep1, make_items  # noqa: E402
from test_training_loop import ToyTask, read_rows, toy_cfg  # noqa: E402

from ctagrg.training.checkpoint import load_train_state  # noqa: E402
from ctagrg.training.embedding_cache import build_embedding_cache, load_embedding_cache  # noqa: E402
from ctagrg.training.loop import train  # noqa: E402

N_VOLUMES, SHARD_SIZE = 5, 2  # 3 shards: rank 0 writes shards 0 and 2, rank 1 shard 1


class RecordingItems(list):
    """The cache's dataset: a list of items that records which ones were read."""

    def __init__(self, items: list[dict]) -> None:
        super().__init__(items)
        self.read: list[int] = []

    def __getitem__(self, i):  # type: ignore[override]
        self.read.append(i)
        return super().__getitem__(i)


class CacheThenToyTask(ToyTask):
    """The toy task, building an embedding cache in ``build_model`` as the decoder stage does (every rank calls it)
    and writing ``rank{r}.json``: the volumes this rank read and the process group's timeout in seconds."""

    def build_model(self) -> nn.Module:
        import torch.distributed as dist

        out = Path(self.cfg.train.out_dir)
        items = RecordingItems(make_items(N_VOLUMES))
        build_embedding_cache(FakeStep1(), items, SENTENCES, out / "emb", batch_size=1, shard_size=SHARD_SIZE)
        rank, timeout = 0, None
        if dist.is_initialized():
            rank = dist.get_rank()
            timeout = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu")).options._timeout
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"read": items.read, "timeout_s": timeout.total_seconds() if timeout else None}))
        return super().build_model()


def _cfg(out: Path, **train_kw):
    kw = dict(global_batch_size=4, batch_size=2, epochs=2, optimizer="sgd", momentum=0.0, lr=0.1,
              dist_timeout_minutes=0.75, device="cpu")  # gloo, also on a machine with GPUs
    cfg = toy_cfg(out, **{**kw, **train_kw})
    cfg.data.dropout = 0.0
    cfg.data.n_train = 10  # 3 optimizer steps per epoch, the last one of 2 samples
    return cfg


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CTAGRG_PROGRESS="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, *args]
    # own session, so a timeout can kill the workers too, not only the launcher
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_two_processes_match_one_process_with_one_global_batch(tmp_path):
    run = _torchrun("train", str(tmp_path / "ddp"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "batch: 4 per optimizer step = 2 per micro-batch × 1 accumulated × 2 processes" in run.stderr
    train(CacheThenToyTask(_cfg(tmp_path / "single")))
    one, two = tmp_path / "single", tmp_path / "ddp"

    # the same optimizer steps, each of 4 samples: one process accumulates 2 micro-batches, two processes 1 each
    s1, s2 = load_train_state(one / "last"), load_train_state(two / "last")
    assert (s1["step"], s1["grad_accum"], s1["batches_per_epoch"]) == (6, 2, 5)
    assert (s2["step"], s2["grad_accum"], s2["batches_per_epoch"]) == (6, 1, 3)
    assert [s for s, _ in read_rows(one / "metrics.csv")] == [s for s, _ in read_rows(two / "metrics.csv")]
    a, b = load_file(one / "last" / "model.safetensors"), load_file(two / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)  # the loop's seed: the initial weights, which training must have moved
    init = ToyTask(_cfg(tmp_path / "init")).build_model().state_dict()
    assert (a["0.weight"] - init["0.weight"]).abs().max() > 1e-2
    # rank 0 validated alone; the selection is the one-process one
    m1, m2 = (json.loads((d / "best" / "metrics.json").read_text()) for d in (one, two))
    assert m1["epoch"] == m2["epoch"] and m2["score"] == pytest.approx(m1["score"], rel=1e-5)

    # the embedding cache: each volume read by exactly one rank (rank r: shards r, r + 2), equal to one process's
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(ranks[0]["read"]) == [0, 1, 4] and sorted(ranks[1]["read"]) == [2, 3]
    t1, t2 = load_embedding_cache(one / "emb"), load_embedding_cache(two / "emb")
    assert t2.names == t1.names and t2.targets == t1.targets and len(t1.names) == N_VOLUMES
    for key in ("embeddings", "probabilities", "labels"):
        assert torch.equal(getattr(t2, key), getattr(t1, key)), key
    assert json.loads((two / "emb" / "index.json").read_text()) == json.loads((one / "emb" / "index.json").read_text())
    # the process group waits train.dist_timeout_minutes (0.75 min), not torch's default
    assert [r["timeout_s"] for r in ranks] == [45.0, 45.0]


@pytest.mark.slow
def test_a_wait_longer_than_dist_timeout_fails_naming_the_setting(tmp_path):
    """Rank 0's validation takes 8 s, the process group's timeout is 3 s: rank 1 gives up while waiting."""
    run = _torchrun("slow-validation", str(tmp_path / "ddp"))
    assert run.returncode != 0
    assert ("DistTimeoutError: rank 1: waited more than train.dist_timeout_minutes (0.05 min) for rank 0 to "
            "validate; raise it, e.g. --set train.dist_timeout_minutes=1") in run.stderr, run.stderr[-3000:]
    assert not (tmp_path / "ddp" / "best").exists()  # the run stopped in the first validation


def _start_together(folder: Path, rank: int, world_size: int = 2) -> None:
    """Wait until every worker got here, so that none waits for another's start-up in the short timeout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ready{rank}").touch()
    deadline = time.monotonic() + 120
    while not all((folder / f"ready{r}").exists() for r in range(world_size)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder}: not every worker started")
        time.sleep(0.02)


if __name__ == "__main__":  # entry point of each torchrun worker
    from ctagrg.utils.logs import setup_logging

    torch.set_num_threads(1)
    setup_logging()  # as the ctagrg command does: info lines on stderr
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        train(CacheThenToyTask(_cfg(out)))
    else:  # slow-validation
        _start_together(out.parent / "start", int(os.environ["RANK"]))
        cfg = _cfg(out, dist_timeout_minutes=0.05)
        cfg.data.valid_seconds = 8.0 if os.environ["RANK"] == "0" else 0.0
        train(ToyTask(cfg))
