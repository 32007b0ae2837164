"""``TrainConfig``: the loop settings every stage shares (pretrain, classifier, decoder).

A task's own config (``Task.Config``) holds one of these under the key ``train``, next to its data and model
sections, so one YAML file describes one run::

    train:
      out_dir: runs/demo/pretrain
      epochs: 8
      global_batch_size: 4
      batch_size: 2
      lr: 1.0e-3
    data: {...}
    model: {...}

The batch of one optimizer step is stated once, ``global_batch_size``, and holds on any number of processes: each
of the ``world_size`` processes (one per GPU under ``torchrun``) runs micro-batches of ``batch_size`` and
accumulates ``global_batch_size / (batch_size × world_size)`` of them per step (:meth:`TrainConfig.grad_accum`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ctagrg.config import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Settings of :func:`ctagrg.training.loop.train`.

    ``global_batch_size`` examples make one optimizer step, whatever the number of processes; ``batch_size`` is the
    micro-batch of one process (one GPU), and the micro-batches per step are derived (:meth:`grad_accum`). Steps
    are optimizer steps.
    """

    # keys of older configs, and how to say the same thing now (ctagrg.config.from_dict reports them)
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "grad_accum": "removed: state the batch of one optimizer step as train.global_batch_size (the old "
                      "batch_size × grad_accum × number of GPUs, e.g. 8 × 8 × 1 = 64); accumulation is derived "
                      "from it",
    }

    out_dir: str = "runs/train"
    seed: int = 0
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0: no limit); the schedule still spans ``epochs``
    # examples per optimizer step, summed over processes and accumulated micro-batches (CT-AGRG: 4 for pretraining
    # and step 1, 64 for step 2); 0: batch_size × number of processes, no accumulation (grows with the GPU count)
    global_batch_size: int = 0
    batch_size: int = 4  # micro-batch of one process (one GPU): what fits in its memory
    eval_batch_size: int = 0  # 0: same as batch_size
    # drop each epoch's last, partial training batch: a batch of one gives BatchNorm no batch statistics, and a
    # small one a noisy step; validation always sees every volume
    drop_last: bool = False
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    scheduler: str = "none"  # none | step | cosine
    step_size_epochs: float = 40.0  # "step": multiply lr by gamma every this many epochs (CT-AGRG: StepLR(40, 0.5))
    gamma: float = 0.5
    warmup_steps: int = 0  # linear warm-up, applied before any scheduler
    min_lr_ratio: float = 0.0  # "cosine": final lr = lr * min_lr_ratio
    grad_clip: float = 0.0  # clip the global grad norm to this (0: off)
    grad_clip_value: float = 0.0  # clip each grad value to [-v, v] (RGRG/CT-AGRG step 2 use 0.1; 0: off)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    activation_checkpointing: bool = False  # needs model.gradient_checkpointing_enable()
    num_workers: int = 0
    pin_memory: bool = True  # only used on CUDA
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    log_every: int = 10  # optimizer steps between metrics.csv train rows and log lines (step, loss, lr, rate, ETA)
    val_every_epochs: int = 1  # 0: never validate (then "best" is the last epoch)
    save_every_steps: int = 0  # also write last/ every N optimizer steps, for resuming long epochs (0: per epoch)
    resume: bool = True  # continue from out_dir/last/train_state.pt when it exists
    tensorboard: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; for exact reproduction on GPU)
    find_unused_parameters: bool = False  # DDP: needed when some parameters get no gradient in a step
    # DDP: how long a process waits in a collective before failing. Rank 0 alone validates and writes the end-of-
    # training artefacts while the others wait; 120 min covers three passes over CT-RATE's 3,039 validation volumes
    # (168 GB in the uint8 cache) at 70 MB/s (docs/training.md, "Multi-GPU")
    dist_timeout_minutes: float = 120.0
    # > 0: validate and save best/ from an exponential moving average of the weights (ctagrg.training.ema), updated
    # after every optimizer step with this decay (e.g. 0.99: an average over the last ~100 steps); 0: off
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field when a value is out of range."""
        checks = [
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}"),
            (self.scheduler in SCHEDULERS, "scheduler", f"one of {', '.join(SCHEDULERS)}"),
            (self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}"),
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.batch_size >= 1, "batch_size", ">= 1"),
            (self.global_batch_size >= 0, "global_batch_size", ">= 0 (0: batch_size × number of processes)"),
            (self.dist_timeout_minutes > 0, "dist_timeout_minutes", "> 0"),
            (self.lr > 0, "lr", "> 0"),
            (self.max_steps >= 0, "max_steps", ">= 0"),
            (self.num_workers >= 0, "num_workers", ">= 0"),
            (self.log_every >= 1, "log_every", ">= 1"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay", "0 (off) or a decay in (0, 1)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"train.{name}: expected {expected}, got {getattr(self, name)!r}")

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches each process accumulates per optimizer step: ``global_batch_size / (batch_size ×
        world_size)`` (1 when ``global_batch_size`` is 0). Raises ConfigError when that is not a whole number."""
        if not self.global_batch_size:
            return 1
        per_round = self.batch_size * world_size
        if self.global_batch_size % per_round == 0:
            return self.global_batch_size // per_round
        if self.global_batch_size % world_size:
            hint = f"use a number of processes that divides {self.global_batch_size}"
        else:
            share = self.global_batch_size // world_size
            options = [d for d in range(1, share + 1) if share % d == 0]
            hint = f"set train.batch_size to a divisor of {share} ({', '.join(map(str, options[-6:]))})"
        raise ConfigError(f"train.global_batch_size {self.global_batch_size} is not a multiple of train.batch_size "
                          f"× processes = {self.batch_size} × {world_size} = {per_round}: {hint}")
