"""Progress bars that stay quiet where they would only add noise (non-zero DDP ranks, non-terminal output)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    if os.environ.get("CTAGRG_PROGRESS") == "1":
        return rank == 0
    return rank == 0 and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kwargs: Any) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar on rank 0 when stderr is a terminal (or CTAGRG_PROGRESS=1)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not progress_enabled(), dynamic_ncols=True, **kwargs)
