"""Checks that a run saved in ``out_dir/last`` can be resumed exactly, and the EMA it resumes with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ctagrg.training.checkpoint import CheckpointError
from ctagrg.training.ema import ModelEMA

_NEW_RUN = "use a new train.out_dir or --set train.resume=false"


def check_layout(last: Path, state: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse to resume when the run's layout (``expected``: batches per epoch, accumulation, processes) differs
    from the one saved in ``state``: the data order and the schedule would not continue where they stopped."""
    changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if changed:
        raise CheckpointError(f"{last}: cannot resume exactly, the run layout changed (saved, now): {changed}; "
                              f"{_NEW_RUN}")


def run_ema(model: nn.Module | None, decay: float, last: Path, resumed: bool,
            saved: dict[str, Any] | None) -> ModelEMA | None:
    """The weight average of ``model`` with ``decay`` (0: none), restored from ``saved`` (the EMA state of a resumed
    ``last``). ``model`` None: only check that a resumed run and its saved state agree on having an EMA.

    Raises:
        CheckpointError: the run was saved with an EMA and resumes without one, or the other way round, or the
            saved average does not fit ``decay``.
    """
    if resumed and (saved is None) != (not decay):
        raise CheckpointError(f"{last}: saved {'without' if saved is None else 'with'} train.ema_decay, cannot "
                              f"resume {'with' if saved is None else 'without'} it; {_NEW_RUN}")
    if not decay or model is None:
        return None
    ema = ModelEMA(model, decay)
    if saved is not None:
        try:
            ema.load_state_dict(saved)
        except ValueError as exc:
            raise CheckpointError(f"{last}: train.ema_decay {exc}; cannot resume exactly") from None
    return ema
