"""One rule for ``--device`` everywhere (training, embedding cache, Reporter): ctagrg.utils.device."""

from __future__ import annotations

import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.training.distributed import setup
from ctagrg.utils.device import resolve_device


def test_auto_cpu_and_errors_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device '{spec}': CUDA is not available here"):
            resolve_device(spec)
    with pytest.raises(ConfigError, match="device 'gpu': .*use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu")
    # training reaches the same check (single process: no RANK in the environment)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        setup("cuda")
    assert setup("auto").device == torch.device("cpu")


def test_cuda_means_the_local_rank_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch.device() itself needs no GPU
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda:3")
    assert resolve_device("auto", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:2", local_rank=0) == torch.device("cuda:2")
