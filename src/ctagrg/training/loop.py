"""The one training loop every stage runs: ``train(task) -> best checkpoint folder``.

Reads top to bottom like nanoGPT's ``train.py``: set up (DDP from ``RANK``, seed, model, optimizer, schedule,
data), resume if ``out_dir/last`` exists, then epochs of micro-batches with gradient accumulation and autocast,
validation each epoch with best-checkpoint selection, and the task's end-of-training artefacts.

One optimizer step sees ``train.global_batch_size`` examples on any number of processes: each process accumulates
``global_batch_size / (batch_size × world_size)`` micro-batches, and DDP averages the gradients over processes.

Output folder::

    out_dir/config.yaml        resolved task config
    out_dir/last/              config.json, model.safetensors, train_state.pt (optimizer, schedule, step, RNG, EMA)
    out_dir/best/              config.json, model.safetensors (the EMA weights with train.ema_decay), metrics.json
                               (+ stage artefacts, e.g. thresholds)
    out_dir/metrics.csv        step,epoch,phase,name,value
    out_dir/tensorboard/

Exact resume: the data order of an epoch depends only on (seed, epoch), the sampler can start mid-epoch, data
loaders have their own generators (so creating one does not consume the global RNG), and the RNG states of every
rank are saved. A run killed after a checkpoint and resumed reproduces the uninterrupted run's weights. Random
augmentation must therefore use the torch RNG in the main process (``training_step``), not in loader workers.

Preemption: on a stop signal (:mod:`ctagrg.utils.signals`; SIGTERM or SIGUSR1 by default) the loop finishes the
current optimizer step, replaces ``last/`` as a whole and raises ``StopRequested`` (``ctagrg train`` exits with
status 75); the next start resumes exactly. A signal during validation aborts it, and the resumed run validates
that epoch again.

Progress: every ``train.log_every`` optimizer steps, rank 0 logs step, loss, lr, rate and ETA (``ctagrg.training
.loop`` logger; INFO without a progress bar, DEBUG beside one) and appends the same values to ``metrics.csv``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctagrg.config import ConfigError, save_config
from ctagrg.training import distributed as D
from ctagrg.training.checkpoint import (
    atomic_dir,
    load_train_state,
    recover_dir,
    rng_state,
    save_train_state,
    set_rng_state,
    unwrap,
)
from ctagrg.training.config import TrainConfig
from ctagrg.training.ema import ModelEMA
from ctagrg.training.loaders import batch_names, build_loaders
from ctagrg.training.logging import MetricsLogger
from ctagrg.training.optim import autocast_context, build_optimizer, lr_factor  # also imported from here
from ctagrg.training.resume import check_layout, run_ema
from ctagrg.training.task import Task
from ctagrg.utils import signals
from ctagrg.utils.atomic import write_json_atomic
from ctagrg.utils.progress import format_duration, progress, progress_enabled

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss); the message names the step and batch."""


class Trainer:
    """State of one run; :func:`train` is the entry point. Split into methods only to keep each one short."""

    def __init__(self, task: Task, tc: TrainConfig, info: D.DistInfo):
        self.task, self.tc, self.info = task, tc, info
        self.out = Path(tc.out_dir)
        self.step, self.epoch, self.micro = 0, 0, 0  # optimizer steps; epochs done; micro-batches done in epoch
        # for the line printed per epoch without a progress bar: start time, summed loss and micro-batches of the
        # epoch (this process's), and the last validation's metrics and whether it improved
        self._epoch_start, self._loss_sum, self._loss_n = time.perf_counter(), 0.0, 0
        self._last_valid: tuple[dict[str, float], bool] = ({}, False)
        self._resumed_ema: dict[str, Any] | None = None  # the EMA state of a resumed last/, until setup uses it
        self.best_score, self.best_epoch = -math.inf, -1
        self._validation_stopped = False  # a stop signal aborted the last validation (on every rank)

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        tc, info = self.tc, self.info
        self.grad_accum = tc.grad_accum(info.world_size)  # before any work: a batch that does not divide fails here
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.task.cfg, self.out / "config.yaml")
            logger.info(f"batch: {tc.batch_size * self.grad_accum * info.world_size} per optimizer step = "
                        f"{tc.batch_size} per micro-batch × {self.grad_accum} accumulated × {info.world_size} "
                        f"process{'es' if info.world_size > 1 else ''}")
        torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True)
        self.task.device = info.device
        self.model = self.task.build_model().to(info.device)
        if tc.activation_checkpointing:
            if not hasattr(self.model, "gradient_checkpointing_enable"):
                raise ConfigError(f"train.activation_checkpointing: {type(self.model).__name__} does not support it")
            self.model.gradient_checkpointing_enable()
        self.optimizer = build_optimizer(self.task.param_groups(self.model), tc)
        loaders = build_loaders(self.task, tc, info, self.grad_accum)
        self.sampler, self.loader_gen = loaders.sampler, loaders.loader_gen
        self.train_loader, self.valid_loader = loaders.train_loader, loaders.valid_loader
        self.batches_per_epoch, self.steps_per_epoch = loaders.batches_per_epoch, loaders.steps_per_epoch
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc, self.steps_per_epoch, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=tc.precision == "fp16")
        torch.manual_seed(tc.seed + 1_000 * info.rank)  # per-rank dropout/augmentation streams
        self.ema: ModelEMA | None = None
        resumed = self._maybe_resume()
        saved_ema, self._resumed_ema = self._resumed_ema, None
        # only the main process validates, so only it keeps the average; every rank checks the saved one
        self.ema = run_ema(self.model if info.is_main else None, tc.ema_decay, self.out / "last", resumed, saved_ema)
        self.task.on_train_start(self.model)
        if info.enabled:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=tc.find_unused_parameters
            )
        self.logger = MetricsLogger(self.out, enabled=info.is_main, tensorboard=self.tc.tensorboard,
                                    resume_step=self.step if resumed else -1)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _maybe_resume(self) -> bool:
        last = self.out / "last"
        if self.info.is_main:
            recover_dir(last)
        D.barrier(self.info)
        if not (self.tc.resume and (last / "train_state.pt").is_file()):
            return False
        state = load_train_state(last)
        self._resumed_ema = state.get("ema")
        check_layout(last, state, {"batches_per_epoch": self.batches_per_epoch, "grad_accum": self.grad_accum,
                                   "world_size": self.info.world_size})
        self.task.load_model(self.model, last)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.micro = state["step"], state["epoch"], state["micro"]
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        set_rng_state(state["rng"][self.info.rank])
        if self.info.is_main:
            logger.info(f"resumed from {last}: step {self.step}, epoch {self.epoch}, batch {self.micro}")
        return True

    def save_last(self) -> None:
        rngs = D.all_gather_object(self.info, rng_state())
        if self.info.is_main:
            with atomic_dir(self.out / "last") as last:  # weights and state replaced together
                self._write_last(last, rngs)
        D.barrier(self.info)

    def _write_last(self, last: Path, rngs: list[Any]) -> None:
        self.task.save_model(unwrap(self.model), last)
        save_train_state(last, {
            "step": self.step, "epoch": self.epoch, "micro": self.micro,
            "best_score": self.best_score, "best_epoch": self.best_epoch,
            "batches_per_epoch": self.batches_per_epoch, "grad_accum": self.grad_accum,
            "world_size": self.info.world_size,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rngs,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        })

    def stop_if_requested(self, where: str) -> None:
        """After a safe point: when a stop signal reached any rank, write ``last/`` and raise StopRequested."""
        name = signals.stop_requested()
        if D.any_rank(self.info, name is not None):
            self.save_last()
            raise signals.StopRequested(name or "a stop signal on another rank", f"{where}; {self.out / 'last'} "
                                        f"holds step {self.step}")

    # -- training ---------------------------------------------------------------------------------------------
    def _optimizer_step(self) -> None:
        tc = self.tc
        if tc.grad_clip or tc.grad_clip_value:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            if tc.grad_clip_value:
                nn.utils.clip_grad_value_(params, tc.grad_clip_value)
            if tc.grad_clip:
                nn.utils.clip_grad_norm_(params, tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(unwrap(self.model))

    def _micro_step(self, batch: Any, i: int) -> dict[str, float]:
        """Forward + backward of micro-batch ``i`` of the epoch; returns the floats to log."""
        ga, n = self.grad_accum, self.batches_per_epoch
        group_start = (i // ga) * ga
        group_size = min(ga, n - group_start)  # the epoch's last group may be short: average over what it has
        sync = i + 1 == group_start + group_size
        no_sync = getattr(self.model, "no_sync", None)
        with (contextlib.nullcontext() if sync or no_sync is None else no_sync()):
            with autocast_context(self.tc, self.info.device):
                out = self.task.training_step(self.model, batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at step {self.step} (epoch {self.epoch}, batch {i}"
                    f"{batch_names(batch)}); last checkpoint: {self.out / 'last'}"
                )
            self.scaler.scale(loss / group_size).backward()
        # extras may be numbers or one-element tensors (read here, after backward, next to the loss)
        logged = {k: float(v) for k, v in out.items()
                  if k != "loss" and (isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1))}
        logged["loss"] = float(loss.detach())
        if sync:
            self._optimizer_step()
        return logged

    def train_epoch(self) -> bool:
        """Run the rest of epoch ``self.epoch``; return False when ``max_steps`` stopped it early."""
        tc = self.tc
        if tc.max_steps and self.step >= tc.max_steps:  # resumed from a run stopped during its final validation
            return False
        self.model.train()
        self.sampler.set_epoch(self.epoch, start=self.micro * tc.batch_size)
        self.loader_gen.manual_seed(tc.seed * 100_003 + self.epoch)  # worker seeds independent of global RNG
        window: dict[str, list[float]] = {}
        t0 = self._epoch_start = time.perf_counter()
        step0 = self.step
        self._loss_sum, self._loss_n = 0.0, 0
        bar = progress(self.train_loader, desc=f"epoch {self.epoch + 1}/{tc.epochs}", total=len(self.train_loader))
        for i, batch in enumerate(bar, start=self.micro):
            step_before = self.step
            values = self._micro_step(batch, i)
            for k, v in values.items():
                window.setdefault(k, []).append(v)
            if "loss" in values:
                self._loss_sum, self._loss_n = self._loss_sum + values["loss"], self._loss_n + 1
            self.micro = i + 1
            if self.step == step_before:
                continue
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{window['loss'][-1]:.4f}", refresh=False)
            if self.step % tc.log_every == 0:
                logged = {k: sum(v) / len(v) for k, v in window.items()}
                logged["lr"] = self.scheduler.get_last_lr()[0]
                logged["seconds_per_step"] = (time.perf_counter() - t0) / max(1, self.step - step0)
                self.logger.log(self.step, self.epoch, "train", logged)
                self._log_step(logged)
                window, t0, step0 = {}, time.perf_counter(), self.step
            if tc.save_every_steps and self.step % tc.save_every_steps == 0:
                self.save_last()
            self.stop_if_requested(f"after step {self.step}")
            if tc.max_steps and self.step >= tc.max_steps:
                return False
        return True

    def _log_step(self, logged: dict[str, float]) -> None:
        """The ``log_every`` line: step of the run, epoch, mean loss since the last line, lr, rate and ETA."""
        if not self.info.is_main:
            return
        total = min(self.total_steps, self.tc.max_steps) if self.tc.max_steps else self.total_steps
        per_step = max(logged["seconds_per_step"], 1e-9)
        examples = self.tc.batch_size * self.grad_accum * self.info.world_size / per_step
        eta = format_duration((total - self.step) * per_step)
        level = logging.DEBUG if progress_enabled() else logging.INFO  # beside a bar, which shows the loss
        logger.log(level, f"step {self.step}/{total} (epoch {self.epoch + 1}/{self.tc.epochs}): "
                          f"loss {logged['loss']:.4f}, lr {logged['lr']:.3g}, {1 / per_step:.3g} steps/s "
                          f"({examples:.3g} examples/s), ETA {eta}")

    # -- validation -------------------------------------------------------------------------------------------
    def validate_and_select(self, epoch_label: int, force: bool = False) -> None:
        """Validate on rank 0 and write ``best/`` when the score improves.

        Without a validation set, ``best/`` is simply the latest weights. ``force`` validates off-schedule (a run
        stopped by ``max_steps``, or one whose schedule never validated).
        """
        if self.info.is_main:
            # with train.ema_decay, the averaged weights are what is validated and kept
            model = self.ema.shadow if self.ema is not None else unwrap(self.model)
            due = self.valid_loader is not None and (force or epoch_label % self.tc.val_every_epochs == 0)
            metrics: dict[str, float] = {}
            improved = self.valid_loader is None
            self._validation_stopped = False
            if due:
                try:
                    with signals.immediate():  # a validation pass can take longer than a scheduler's notice
                        metrics = self._validate(model)
                except signals.StopRequested:
                    self._validation_stopped = True
            if metrics:
                self.logger.log(self.step, epoch_label, "valid", metrics)
                improved = metrics["score"] > self.best_score
                self.best_score = max(self.best_score, metrics["score"])
            if improved and not self._validation_stopped:
                self.best_epoch = epoch_label
                self.task.save_model(model, self.out / "best")
                write_json_atomic(self.out / "best" / "metrics.json",
                                  {"epoch": epoch_label, "step": self.step, **metrics})
            self._last_valid = (metrics, improved)
        with D.waiting_for_main(self.info, "validate", self.tc.dist_timeout_minutes):
            self.best_score, self.best_epoch, self._validation_stopped = D.broadcast_object(
                self.info, (self.best_score, self.best_epoch, self._validation_stopped))

    def _stop_after_validation(self, trained: tuple[int, int]) -> None:
        """When a stop signal aborted the validation: write ``last/`` as it was before it (``trained``: epoch and
        micro-batch counters right after training), so that the resumed run validates again, then raise."""
        if not self._validation_stopped:
            return
        self.epoch, self.micro = trained
        self.save_last()
        raise signals.StopRequested(signals.stop_requested() or "a stop signal on rank 0",
                                    f"during validation; {self.out / 'last'} holds step {self.step}")

    def _print_epoch(self, epoch_label: int) -> None:
        """Without a progress bar (a log file, a pipe), one line per epoch instead of silence: step, the epoch's
        mean training loss (this process's micro-batches), the validation score when validated, seconds."""
        if not self.info.is_main or progress_enabled():
            return
        line = f"epoch {epoch_label}/{self.tc.epochs}: step {self.step}"
        if self._loss_n:
            line += f", train loss {self._loss_sum / self._loss_n:.4f}"
        metrics, improved = self._last_valid
        if metrics:
            line += f", valid score {metrics['score']:.4f}" + (" (best so far)" if improved else "")
        logger.info(f"{line}, {time.perf_counter() - self._epoch_start:.0f} s")
        self._last_valid = ({}, False)

    def _validate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        with torch.no_grad(), autocast_context(self.tc, self.info.device):
            metrics = self.task.validate(model, self.valid_loader)
        if model is not getattr(self.ema, "shadow", None):
            model.train()
        if "score" not in metrics:
            raise TrainingError(f"{type(self.task).__name__}.validate must return a 'score', got {sorted(metrics)}")
        return {k: float(v) for k, v in metrics.items()}

    def finish(self) -> Path:
        best = self.out / "best"
        if self.info.is_main:
            model = unwrap(self.model)
            self.task.load_model(model, best)
            model.eval()
            self.task.on_train_end(model, self.out)
        with D.waiting_for_main(self.info, "write the end-of-training artefacts", self.tc.dist_timeout_minutes):
            D.barrier(self.info)
        return best

    def run(self) -> Path:
        """Set up, train (stop signals are read after each optimizer step and each epoch), finish."""
        self.setup()
        try:
            with signals.deferred():
                while self.epoch < self.tc.epochs:
                    completed = self.train_epoch()
                    trained = (self.epoch, self.micro)
                    if completed:
                        self.epoch, self.micro = self.epoch + 1, 0
                        self.validate_and_select(self.epoch)
                    else:  # stopped by max_steps mid-epoch: validate what we have
                        self.validate_and_select(self.epoch + 1, force=True)
                    self._stop_after_validation(trained)
                    self._print_epoch(self.epoch if completed else self.epoch + 1)
                    self.save_last()
                    self.stop_if_requested(f"after epoch {self.epoch}")
                    if not completed:
                        break
                if self.best_epoch < 0:  # the validation schedule never ran (e.g. val_every_epochs > epochs)
                    self.validate_and_select(self.epoch, force=True)
                    self._stop_after_validation((self.epoch, self.micro))
            return self.finish()
        finally:
            self.logger.close()


def train(task: Task, cfg: TrainConfig | None = None) -> Path:
    """Train ``task`` with ``cfg`` (default ``task.cfg.train``); return the best checkpoint folder ``out_dir/best``.

    Launch under ``torchrun`` for DDP (one process per GPU); the process group is created here from RANK/WORLD_SIZE.
    Raises :class:`ctagrg.utils.signals.StopRequested` after a stop signal (module doc, "Preemption").
    """
    tc = cfg if cfg is not None else task.cfg.train
    info = D.setup(tc.device, tc.dist_timeout_minutes)
    try:
        with signals.handle_stop_signals():
            best = Trainer(task, tc, info).run()
        # every rank done before any tears its group down: a rank that destroys first can abort another's gloo
        # threads at exit ("terminate called without an active exception", seen rarely in the two-process test)
        D.barrier(info)
        return best
    finally:
        D.cleanup(info)
