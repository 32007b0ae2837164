"""The shared training loop on a toy task: outputs, exact resume, NaN handling, checkpoint mismatch, CLI errors."""

from __future__ import annotations

import csv
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from ctagrg.config import ConfigError, apply_overrides
from ctagrg.training.checkpoint import CheckpointError, load_train_state
from ctagrg.training.config import TrainConfig
from ctagrg.training.loop import TrainingError, lr_factor, train
from ctagrg.training.task import TASKS, Task, get_task


@dataclass
class ToyData:
    n_train: int = 24
    n_valid: int = 16
    dropout: float = 0.2
    fail_at_call: int = -1  # raise (simulated kill) on this training_step call
    nan_at_call: int = -1
    valid_seconds: float = 0.0  # validation sleeps this long first (a slow validation set)


@dataclass
class ToyConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    data: ToyData = field(default_factory=ToyData)


class ToyDataset(Dataset):
    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, :1] + self.x[:, 1:2] > 0).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i], "name": f"toy_{i}"}


class Killed(Exception):
    pass


class ToyTask(Task):
    Config = ToyConfig

    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg)
        self.calls = 0

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(self.cfg.data.dropout), nn.Linear(16, 1))

    def train_dataset(self) -> Dataset:
        return ToyDataset(self.cfg.data.n_train, seed=1)

    def valid_dataset(self) -> Dataset:
        return ToyDataset(self.cfg.data.n_valid, seed=2)

    def training_step(self, model: nn.Module, batch: dict) -> dict:
        self.calls += 1
        if self.calls == self.cfg.data.fail_at_call:
            raise Killed(f"killed at call {self.calls}")
        logits = model(batch["x"].to(self.device))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"].to(self.device))
        if self.calls == self.cfg.data.nan_at_call:
            loss = loss * float("nan")
        return {"loss": loss, "batch_size": float(len(logits))}

    def validate(self, model: nn.Module, loader) -> dict[str, float]:
        time.sleep(self.cfg.data.valid_seconds)
        losses = [nn.functional.binary_cross_entropy_with_logits(model(b["x"]), b["labels"]) for b in loader]
        loss = float(torch.stack(losses).mean())
        return {"loss": loss, "score": -loss}


def toy_cfg(out: Path, **train_kw) -> ToyConfig:
    base = dict(out_dir=str(out), epochs=3, global_batch_size=8, batch_size=4, lr=0.05, log_every=1,
                tensorboard=False)
    base.update(train_kw)
    return ToyConfig(train=TrainConfig(**base))


def read_rows(path: Path, phase: str = "train", name: str = "loss") -> list[tuple[int, float]]:
    with open(path, newline="") as fh:
        return [(int(r["step"]), float(r["value"])) for r in csv.DictReader(fh) if r["phase"] == phase
                and r["name"] == name]


def test_train_writes_checkpoints_logs_and_config(tmp_path):
    best = train(ToyTask(toy_cfg(tmp_path)))
    assert best == tmp_path / "best"
    for f in ("config.json", "model.safetensors", "metrics.json"):
        assert (best / f).is_file()
    assert (tmp_path / "last" / "train_state.pt").is_file() and (tmp_path / "config.yaml").is_file()
    state = load_train_state(tmp_path / "last")
    # 24 samples / micro-batch 4 = 6 micro-batches = 3 optimizer steps of 8 per epoch, 3 epochs
    assert (state["step"], state["epoch"], state["micro"]) == (9, 3, 0)
    losses = read_rows(tmp_path / "metrics.csv")
    assert [s for s, _ in losses] == list(range(1, 10))
    assert losses[-1][1] < losses[0][1]  # it learns
    assert len(read_rows(tmp_path / "metrics.csv", "valid", "score")) == 3


def test_without_a_progress_bar_each_epoch_and_every_log_every_steps_log_a_line(tmp_path, caplog, monkeypatch):
    import ctagrg.training.loop as loop

    monkeypatch.setattr(loop, "progress_enabled", lambda: False)  # as in a log file or a pipe
    caplog.set_level(logging.INFO, logger="ctagrg")
    train(ToyTask(toy_cfg(tmp_path, epochs=2)))
    messages = [r.getMessage() for r in caplog.records if r.name == "ctagrg.training.loop"]
    lines = [x for x in messages if x.startswith("epoch ")]
    scores = read_rows(tmp_path / "metrics.csv", "valid", "score")
    losses = read_rows(tmp_path / "metrics.csv")  # per optimizer step (log_every 1), the mean of its 2 micro-batches
    assert [x.split(",")[0] for x in lines] == ["epoch 1/2: step 3", "epoch 2/2: step 6"]
    for epoch, (line, (_, score)) in enumerate(zip(lines, scores, strict=True)):
        mean = sum(v for _, v in losses[3 * epoch: 3 * epoch + 3]) / 3  # the epoch's mean training loss
        assert f", train loss {mean:.4f}, valid score {score:.4f}" in line and line.endswith(" s")
    # the log_every line: step of the run, epoch, the step's loss (as in metrics.csv), lr, rate, ETA
    steps = [x for x in messages if x.startswith("step ")]
    pattern = re.compile(r"step (\d+)/6 \(epoch (\d)/2\): loss ([\d.]+), lr 0\.05, [\d.e+-]+ steps/s "
                         r"\([\d.e+-]+ examples/s\), ETA \d+:\d\d:\d\d$")
    parsed = [pattern.match(x) for x in steps]
    assert all(parsed), steps
    assert [(int(m[1]), int(m[2])) for m in parsed] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert [float(m[3]) for m in parsed] == pytest.approx([v for _, v in losses], abs=6e-5)
    # with a bar (a terminal), no epoch lines, and the step lines only at DEBUG
    caplog.clear()
    monkeypatch.setattr(loop, "progress_enabled", lambda: True)
    train(ToyTask(toy_cfg(tmp_path / "bar", epochs=1)))
    shown = [r.getMessage() for r in caplog.records if r.name == "ctagrg.training.loop" and r.levelno >= logging.INFO]
    assert not [x for x in shown if x.startswith(("epoch ", "step "))]


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(ToyTask(toy_cfg(full, save_every_steps=2)))
    killed = toy_cfg(cut, save_every_steps=2)
    killed.data.fail_at_call = 11  # step 5 is mid-epoch 2; last checkpoint is step 4 (epoch 1, batch 2)
    with pytest.raises(Killed):
        train(ToyTask(killed))
    assert load_train_state(cut / "last")["step"] == 4
    train(ToyTask(toy_cfg(cut, save_every_steps=2)))
    a, b = load_file(full / "last" / "model.safetensors"), load_file(cut / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_rows(full / "metrics.csv") == read_rows(cut / "metrics.csv")  # no duplicated or missing rows


def test_resume_refuses_changed_layout(tmp_path):
    train(ToyTask(toy_cfg(tmp_path, epochs=1)))
    with pytest.raises(CheckpointError, match="run layout changed.*batches_per_epoch"):
        train(ToyTask(toy_cfg(tmp_path, epochs=2, batch_size=8)))


def test_nan_loss_names_step_and_batch(tmp_path):
    cfg = toy_cfg(tmp_path)
    cfg.data.nan_at_call = 8  # 8th micro-batch: epoch 1, batch 1, after 3 + 0 steps
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 3 \(epoch 1, batch 1; volumes: toy_"):
        train(ToyTask(cfg))


def test_checkpoint_mismatch_names_tensors(tmp_path):
    train(ToyTask(toy_cfg(tmp_path, epochs=1)))

    class Wider(ToyTask):
        def build_model(self) -> nn.Module:
            return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 1), nn.Linear(1, 1))

    task = Wider(toy_cfg(tmp_path))
    with pytest.raises(CheckpointError, match=r"shape mismatch \[3\]: 0.bias .*model \(32,\), checkpoint \(16,\)"):
        task.load_model(task.build_model(), tmp_path / "best")
    with pytest.raises(CheckpointError, match=r"missing \[2\]: 4.bias, 4.weight"):
        task.load_model(task.build_model(), tmp_path / "best")


def test_max_steps_and_lr_schedule(tmp_path):
    train(ToyTask(toy_cfg(tmp_path, max_steps=4, scheduler="step", step_size_epochs=1, gamma=0.5)))
    state = load_train_state(tmp_path / "last")
    assert (state["step"], state["epoch"], state["micro"]) == (4, 1, 2)
    lrs = read_rows(tmp_path / "metrics.csv", name="lr")
    assert [v for _, v in lrs] == pytest.approx([0.05, 0.05, 0.025, 0.025])  # lr after steps 1..4 (3 per epoch)
    tc = TrainConfig(scheduler="cosine", warmup_steps=2, lr=1.0, min_lr_ratio=0.1)
    assert [lr_factor(s, tc, 5, 12) for s in (0, 1, 2, 12)] == pytest.approx([0.5, 1.0, 1.0, 0.1])


def test_config_errors_and_registry():
    assert TASKS["decoder"] == "ctagrg.training.decoder_task:DecoderTask"
    with pytest.raises(ConfigError, match="valid tasks: pretrain, classifier, decoder"):
        get_task("segment")
    with pytest.raises(ConfigError, match=r"train.precision: expected one of fp32, bf16, fp16, got 'fp8'"):
        apply_overrides(ToyConfig(), ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="unknown key 'lrr' for TrainConfig; valid keys: out_dir, seed"):
        apply_overrides(ToyConfig(), ["train.lrr=1"])


def test_grad_accum_is_derived_from_the_global_batch():
    tc = TrainConfig(global_batch_size=64, batch_size=8)
    assert [tc.grad_accum(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert TrainConfig(batch_size=8).grad_accum(4) == 1  # no global batch stated: batch_size × processes
    with pytest.raises(ConfigError, match=r"global_batch_size 64 is not a multiple of train.batch_size × processes = "
                                          r"8 × 16 = 128: set train.batch_size to a divisor of 4 \(1, 2, 4\)"):
        tc.grad_accum(16)
    with pytest.raises(ConfigError, match=r"= 4 × 3 = 12: use a number of processes that divides 4$"):
        TrainConfig(global_batch_size=4, batch_size=4).grad_accum(3)
    with pytest.raises(ConfigError, match=r"train.global_batch_size: expected >= 0"):
        TrainConfig(global_batch_size=-1)


def test_grad_accum_of_an_older_config_says_how_to_convert(tmp_path):
    from ctagrg.config import load_config

    path = tmp_path / "old.yaml"
    path.write_text("train: {batch_size: 8, grad_accum: 8}\n")
    hint = r"grad_accum: removed: state the batch of one optimizer step as train.global_batch_size \(the old " \
           r"batch_size × grad_accum × number of GPUs, e.g. 8 × 8 × 1 = 64\)"
    with pytest.raises(ConfigError, match=rf"^{path}.train.{hint}"):
        load_config(ToyConfig, path)
    with pytest.raises(ConfigError, match=rf"^override TrainConfig.{hint}"):
        apply_overrides(ToyConfig(), ["train.grad_accum=8"])


@pytest.mark.parametrize(("folder", "stage", "global_batch", "accum_on_1"), [
    ("ctrate", "pretrain", 4, 1), ("ctrate", "classifier", 4, 1), ("ctrate", "decoder", 64, 8),
    ("demo", "pretrain", 8, 1), ("demo", "classifier", 8, 1), ("demo", "decoder", 16, 1)])
def test_shipped_configs_state_the_global_batch(folder, stage, global_batch, accum_on_1):
    from ctagrg.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / folder / f"{stage}.yaml"
    tc = load_config(get_task(stage).Config, path).train
    assert (tc.global_batch_size, tc.grad_accum(1)) == (global_batch, accum_on_1)
    if folder == "ctrate":  # the paper's batches: also the stages' defaults, and on 4 GPUs as README runs them
        assert get_task(stage).Config().train.global_batch_size == global_batch
        per_gpu = 1 if global_batch == 4 else tc.batch_size  # README: --set train.batch_size=1 for the batch of 4
        assert replace(tc, batch_size=per_gpu).grad_accum(4) == global_batch // (4 * per_gpu)


def test_a_global_batch_that_does_not_divide_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"global_batch_size 6 is not a multiple .* = 4 × 1 = 4"):
        train(ToyTask(toy_cfg(tmp_path, global_batch_size=6)))
    assert not (tmp_path / "config.yaml").exists()


def test_bf16_autocast_clipping_and_checkpointing_flag(tmp_path):
    best = train(ToyTask(toy_cfg(tmp_path / "bf16", epochs=1, precision="bf16", grad_clip=0.5, grad_clip_value=0.1)))
    metrics = (best / "metrics.json").read_text()
    assert '"score"' in metrics
    losses = read_rows(tmp_path / "bf16" / "metrics.csv")
    assert len(losses) == 3 and all(0 < v < 2 for _, v in losses)
    with pytest.raises(ConfigError, match="activation_checkpointing: Sequential does not support it"):
        train(ToyTask(toy_cfg(tmp_path / "ckpt", activation_checkpointing=True)))


def test_drop_last_skips_the_partial_batch(tmp_path):
    """26 samples in batches of 4: 7 batches (the last of 2) without drop_last, 6 full ones with it."""
    sizes: dict[bool, list[float]] = {}
    for drop in (False, True):
        cfg = toy_cfg(tmp_path / str(drop), epochs=2, global_batch_size=4, drop_last=drop)
        cfg.data.n_train = 26
        train(ToyTask(cfg))
        sizes[drop] = [v for _, v in read_rows(tmp_path / str(drop) / "metrics.csv", name="batch_size")]
        state = load_train_state(tmp_path / str(drop) / "last")
        assert state["batches_per_epoch"] == (6 if drop else 7) and state["step"] == 2 * state["batches_per_epoch"]
    assert sizes[False].count(2.0) == 2 and sizes[True] == [4.0] * 12


def test_drop_last_refuses_a_dataset_smaller_than_a_batch(tmp_path):
    cfg = toy_cfg(tmp_path, global_batch_size=32, batch_size=32, drop_last=True)
    with pytest.raises(ConfigError, match="train.drop_last: each process gets 24 training volumes.*32"):
        train(ToyTask(cfg))


def test_model_ema_update_rule():
    from ctagrg.training.ema import ModelEMA

    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    w0 = model[0].weight.detach().clone()
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 5
    ema.update(model)  # first update: decay min(0.9, 1/10) = 0.1, so the average moves 90% of the way
    torch.testing.assert_close(ema.shadow[0].weight, w0 + 0.9)
    assert int(ema.shadow[1].num_batches_tracked) == 5  # integer buffers are copied, not averaged
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9
    torch.testing.assert_close(ema.shadow[0].weight, w0 + 1.0)
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    with pytest.raises(ValueError, match="expected 0 < decay < 1, got 1.0"):
        ModelEMA(model, 1.0)


def test_ema_best_checkpoint_and_exact_resume(tmp_path):
    """With train.ema_decay, best/ holds the averaged weights (not the trained ones), and a run killed and resumed
    ends with the uninterrupted run's best/ and last/ exactly; a checkpoint without EMA state is not resumed with
    it."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(ToyTask(toy_cfg(full, save_every_steps=2, ema_decay=0.8)))
    killed = toy_cfg(cut, save_every_steps=2, ema_decay=0.8)
    killed.data.fail_at_call = 11
    with pytest.raises(Killed):
        train(ToyTask(killed))
    train(ToyTask(toy_cfg(cut, save_every_steps=2, ema_decay=0.8)))
    for folder in ("best", "last"):
        a, b = load_file(full / folder / "model.safetensors"), load_file(cut / folder / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    state = load_train_state(full / "last")
    assert state["ema"]["updates"] == state["step"] == 9
    best, last = load_file(full / "best" / "model.safetensors"), load_file(full / "last" / "model.safetensors")
    best_epoch = load_train_state(full / "last")["best_epoch"]
    assert best_epoch == 3  # the toy keeps improving, so best/ is the final average
    assert all(torch.equal(best[k], state["ema"]["shadow"][k]) for k in best)
    assert not torch.equal(best["0.weight"], last["0.weight"])
    with pytest.raises(ConfigError, match=r"train.ema_decay: expected 0 \(off\) or a decay in \(0, 1\), got 1.5"):
        toy_cfg(tmp_path / "bad", ema_decay=1.5)
    plain = tmp_path / "plain"
    train(ToyTask(toy_cfg(plain, epochs=1)))
    with pytest.raises(CheckpointError, match="saved without train.ema_decay, cannot resume with it"):
        train(ToyTask(toy_cfg(plain, epochs=2, ema_decay=0.8)))
    with pytest.raises(CheckpointError, match="saved with train.ema_decay, cannot resume without it"):
        train(ToyTask(toy_cfg(full, epochs=4)))
    with pytest.raises(CheckpointError, match="train.ema_decay saved with decay 0.8, now 0.9; cannot resume exactly"):
        train(ToyTask(toy_cfg(full, epochs=4, ema_decay=0.9)))


def test_ema_averages_tied_weights_once():
    from ctagrg.training.ema import ModelEMA

    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight  # tied, as GPT-2's wte and lm_head
    w0 = model[0].weight.detach().clone()
    ema = ModelEMA(model, decay=0.5)
    ema.updates = 100  # past the warm-up: decay 0.5
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow[0].weight, w0 + 0.5)  # moved halfway, not 0.75 (averaged twice)
    assert ema.shadow[0].weight is ema.shadow[1].weight
