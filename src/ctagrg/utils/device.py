"""Turn a ``--device`` string into a ``torch.device``, refusing what this machine cannot run (one rule for
training, the embedding cache and the Reporter)."""

from __future__ import annotations

import torch

from ctagrg.utils.errors import ConfigError


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    """"auto" -> CUDA when available, else the CPU; "cpu", "cuda", "cuda:N" as given, except that under torchrun
    (``local_rank`` given) plain "cuda" means cuda:LOCAL_RANK.

    A device string torch does not know, or CUDA asked for where this torch build or machine has none, is a
    ``ConfigError`` that says so (torch would raise an ``AssertionError`` deep inside the first ``.to(device)``).
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and local_rank is not None:
        spec = f"cuda:{local_rank}"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device {spec!r}: {exc}; use cpu, cuda, cuda:N or auto") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r}: CUDA is not available here (torch {torch.__version__}, "
                          f"{'a CPU-only build' if torch.version.cuda is None else 'no GPU found'}); use "
                          f"cpu or auto")
    return device
