"""Two CPU processes under ``torchrun`` (gloo) train the toy task to the same weights as one process.

With batch 2 per rank on 2 ranks, each optimizer step sees the same 4 samples as batch 4 on one rank (the
sampler interleaves the epoch's permutation over ranks) and DDP averages the gradients, so the runs agree up to
float summation order. Dropout is off because each rank draws its own dropout masks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_training_loop import ToyTask, toy_cfg  # noqa: E402

from ctagrg.training.loop import train  # noqa: E402


def _cfg(out: Path, batch_size: int):
    cfg = toy_cfg(out, batch_size=batch_size, grad_accum=1, epochs=2, optimizer="sgd", momentum=0.0, lr=0.1)
    cfg.data.dropout = 0.0
    return cfg


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CTAGRG_PROGRESS="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(tmp_path / "ddp")]
    # own session, so a timeout can kill the workers too, not only the launcher
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-3000:]
    train(ToyTask(_cfg(tmp_path / "single", batch_size=4)))
    a = load_file(tmp_path / "single" / "last" / "model.safetensors")
    b = load_file(tmp_path / "ddp" / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)  # the loop's seed: the initial weights, which training must have moved
    init = ToyTask(_cfg(tmp_path, 4)).build_model().state_dict()
    assert (a["0.weight"] - init["0.weight"]).abs().max() > 1e-2


if __name__ == "__main__":  # entry point of each torchrun worker
    torch.set_num_threads(1)
    train(ToyTask(_cfg(Path(sys.argv[1]), batch_size=2)))
