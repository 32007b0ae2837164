"""Run logs a researcher can plot: ``metrics.csv`` (long format) and TensorBoard event files.

``metrics.csv`` has one row per value: ``step,epoch,phase,name,value`` (phase ``train`` or ``valid``), so any
task can log any keys without changing the header. Load it with ``pandas.read_csv`` and pivot. On resume, rows
written after the checkpoint step by the interrupted run are dropped, so the file reads as one clean run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ctagrg.utils.atomic import write_text_atomic

HEADER = ["step", "epoch", "phase", "name", "value"]


class MetricsLogger:
    """Appends rows to ``out_dir/metrics.csv`` and TensorBoard (``out_dir/tensorboard``). Inactive when disabled."""

    def __init__(self, out_dir: Path, *, enabled: bool = True, tensorboard: bool = True, resume_step: int = -1):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.csv"
        self._writer: Any = None
        if not enabled:
            return
        self._prepare_csv(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops TensorBoard events after the resume point, like the CSV truncation.
            purge = resume_step + 1 if resume_step >= 0 else None
            self._writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"), purge_step=purge)

    def _prepare_csv(self, resume_step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step < 0 or not self.path.is_file():
            write_text_atomic(self.path, ",".join(HEADER) + "\n")
            return
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        lines = [",".join(HEADER)] + [",".join(r[h] for h in HEADER) for r in rows]
        write_text_atomic(self.path, "\n".join(lines) + "\n")

    def log(self, step: int, epoch: int, phase: str, values: dict[str, float]) -> None:
        if not self.enabled or not values:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            for name, value in values.items():
                writer.writerow([step, epoch, phase, name, f"{float(value):.8g}"])
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(f"{phase}/{name}", float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
