"""``TrainConfig``: the loop settings every stage shares (pretrain, classifier, decoder).

A task's own config (``Task.Config``) holds one of these under the key ``train``, next to its data and model
sections, so one YAML file describes one run::

    train:
      out_dir: runs/demo/pretrain
      epochs: 8
      lr: 1.0e-3
    data: {...}
    model: {...}
"""

from __future__ import annotations

from dataclasses import dataclass

from ctagrg.config import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Settings of :func:`ctagrg.training.loop.train`.

    ``batch_size`` is per process; the effective batch is ``batch_size * grad_accum * world_size``. Steps are
    optimizer steps (one per ``grad_accum`` micro-batches).
    """

    out_dir: str = "runs/train"
    seed: int = 0
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0: no limit); the schedule still spans ``epochs``
    batch_size: int = 4
    eval_batch_size: int = 0  # 0: same as batch_size
    # drop each epoch's last, partial training batch: a batch of one gives BatchNorm no batch statistics, and a
    # small one a noisy step; validation always sees every volume
    drop_last: bool = False
    grad_accum: int = 1
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
    log_every: int = 10  # optimizer steps between train-loss log rows
    val_every_epochs: int = 1  # 0: never validate (then "best" is the last epoch)
    save_every_steps: int = 0  # also write last/ every N optimizer steps, for resuming long epochs (0: per epoch)
    resume: bool = True  # continue from out_dir/last/train_state.pt when it exists
    tensorboard: bool = True
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower; for exact reproduction on GPU)
    find_unused_parameters: bool = False  # DDP: needed when some parameters get no gradient in a step
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
            (self.grad_accum >= 1, "grad_accum", ">= 1"),
            (self.lr > 0, "lr", "> 0"),
            (self.max_steps >= 0, "max_steps", ">= 0"),
            (self.num_workers >= 0, "num_workers", ">= 0"),
            (self.log_every >= 1, "log_every", ">= 1"),
            (0.0 <= self.ema_decay < 1.0, "ema_decay", "0 (off) or a decay in (0, 1)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"train.{name}: expected {expected}, got {getattr(self, name)!r}")
