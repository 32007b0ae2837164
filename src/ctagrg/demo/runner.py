"""The demo's stage runner: presets, the run config, stage markers, resume / --force / --until, and the check
that a folder's finished stages were made with the same settings. The stages themselves are in
:mod:`ctagrg.demo.stages`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctagrg.utils.atomic import write_json_atomic

STAGES: tuple[str, ...] = ("phantoms", "preprocess", "pretrain", "classifier", "embeddings", "decoder", "package",
                           "evaluate")


@dataclass
class DemoPreset:
    """Sizes and epochs of one demo flavour. ``full`` targets <= 15 min on 2 cores, ``quick`` <= 3 min.

    An epoch count of None keeps the one in configs/demo/<stage>.yaml (tuned by the stage's owner).
    """

    n_volumes: int
    pretrain_epochs: int | None
    classifier_epochs: int | None
    decoder_epochs: int | None
    bootstrap: int
    meteor: bool = True
    # Every label present in at least this fraction of phantoms (ctagrg phantom --min-prevalence). CT-RATE's
    # rarest labels (~8%) would leave ~7 positives in a 90-volume test split: per-label F1 would be noise.
    min_prevalence: float = 0.2


PRESETS: dict[str, DemoPreset] = {
    # 600 phantoms (420 / 90 / 90): within the 15-minute target, and better scores than 400 (BENCHMARKS.md, "Demo")
    "full": DemoPreset(n_volumes=600, pretrain_epochs=None, classifier_epochs=None, decoder_epochs=None,
                       bootstrap=1000),
    "quick": DemoPreset(n_volumes=150, pretrain_epochs=12, classifier_epochs=None, decoder_epochs=12, bootstrap=200),
}


@dataclass
class DemoConfig:
    """What ``ctagrg demo`` runs. ``overrides`` are ``stage.key=value`` strings applied to a stage's config,
    e.g. ``pretrain.train.lr=3e-4`` (stages: pretrain, classifier, decoder)."""

    out_dir: str = "demo_out"
    quick: bool = False
    seed: int = 0
    threads: int = 2
    n_volumes: int = 0  # 0: the preset's
    overrides: list[str] = field(default_factory=list)
    force: str | None = None  # rerun this stage and every later one
    until: str | None = None  # stop after this stage
    configs: str | None = None  # folder with preprocess/pretrain/classifier/decoder YAML; None: configs/demo
    phantom_size: str = "small"  # ctagrg phantom --size (tests use "tiny")
    # the cnn3d sphere/node memo the stages share (``main`` makes one: each volume's channels measured once); not a
    # setting, so not part of run_settings
    memo: Any = field(default=None, repr=False, compare=False)

    def inject_memo(self, model: Any) -> None:
        """Give ``model``'s encoder this run's memo, where the encoder takes one (the demo's cnn3d)."""
        set_memo = getattr(getattr(model, "encoder", None), "set_memo", None)
        if self.memo is not None and callable(set_memo):
            set_memo(self.memo)

    @property
    def preset(self) -> DemoPreset:
        preset = PRESETS["quick" if self.quick else "full"]
        if self.n_volumes:
            preset = DemoPreset(**{**preset.__dict__, "n_volumes": self.n_volumes})
        return preset


@dataclass
class Stage:
    name: str
    run: Callable[[Path, DemoConfig], dict[str, Any] | None]
    describe: str


class DemoError(RuntimeError):
    """A stage failed; the message names the stage and what went wrong."""


def paths(out: Path) -> dict[str, Path]:
    """Every stage's output folder under the demo folder ``out``, by key."""
    return {"data": out / "data", "cache": out / "cache", "pretrain": out / "runs" / "pretrain",
            "classifier": out / "runs" / "classifier", "embeddings": out / "embeddings",
            "decoder": out / "runs" / "decoder", "model": out / "model", "eval": out / "eval", "text": out / "text",
            "tokenizer": out / "tokenizer"}


def marker(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def stages_to_run(out: Path, force: str | None) -> list[str]:
    """Stages without a marker, plus ``force`` and every stage after it."""
    if force is not None and force not in STAGES:
        raise DemoError(f"unknown stage {force!r}; stages: {', '.join(STAGES)}")
    forced = set(STAGES[STAGES.index(force):]) if force else set()
    return [s for s in STAGES if s in forced or not marker(out, s).is_file()]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes), all threads, in seconds.

    On a shared machine wall time says little; CPU-seconds / cores is what the same stage needs on idle cores.
    """
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# The phantoms' and models' design: bump it when a change makes earlier folders' stages unusable (the versions:
# docs/experiments.md, "Demo design versions").
DEMO_DESIGN = "2026-12-07a"


def run_settings(cfg: DemoConfig) -> dict[str, Any]:
    """What makes two runs' finished stages interchangeable: the demo's design, the preset's sizes and epochs,
    seed, phantom size."""
    return {"design": DEMO_DESIGN, "preset": "quick" if cfg.quick else "full", **cfg.preset.__dict__,
            "seed": cfg.seed, "phantom_size": cfg.phantom_size}


def check_settings(out: Path, cfg: DemoConfig) -> None:
    """Refuse to resume a folder whose finished stages were made with other settings (e.g. ``--quick`` into the
    folder of a full run), which would skip those stages and report the other run's results as this one's.
    ``--force phantoms`` starts the folder over. Writes ``stages/settings.json`` for the next run."""
    path = out / "stages" / "settings.json"
    settings = run_settings(cfg)
    finished = [s for s in STAGES if marker(out, s).is_file()]
    if path.is_file() and finished and cfg.force != STAGES[0]:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if earlier != settings:
            diff = ", ".join(f"{k} {earlier.get(k)!r} there, {v!r} now" for k, v in settings.items()
                             if earlier.get(k) != v)
            raise DemoError(f"{out} holds a demo run with other settings ({diff}); its finished stages "
                            f"({', '.join(finished)}) would be reused. Use another --out, or --force {STAGES[0]} "
                            f"to start this folder over")
    write_json_atomic(path, settings)


def run_stages(stages: list[Stage], cfg: DemoConfig, log: Callable[[str], None] = print) -> dict[str, float]:
    """Run ``stages`` in order, skipping finished ones; return seconds per stage run (skipped: 0)."""
    out = Path(cfg.out_dir)
    check_settings(out, cfg)
    todo = set(stages_to_run(out, cfg.force))
    if cfg.until is not None and cfg.until not in [s.name for s in stages]:
        raise DemoError(f"unknown stage {cfg.until!r}; stages: {', '.join(s.name for s in stages)}")
    seconds: dict[str, float] = {}
    for k, stage in enumerate(stages, 1):
        head = f"[{k}/{len(stages)}] {stage.name}"
        if stage.name not in todo:
            log(f"{head}: done earlier, skipped ({marker(out, stage.name)})")
            seconds[stage.name] = 0.0
            continue
        log(f"{head}: {stage.describe}")
        if marker(out, stage.name).is_file():  # forced rerun of a finished stage: start it afresh
            _clear_outputs(out, stage.name, log)
        marker(out, stage.name).unlink(missing_ok=True)
        start, cpu_start = time.perf_counter(), cpu_seconds()
        try:
            info = stage.run(out, cfg) or {}
        except Exception as exc:
            raise DemoError(f"stage {stage.name} failed: {type(exc).__name__}: {exc}") from exc
        seconds[stage.name] = round(time.perf_counter() - start, 1)
        cpu = round(cpu_seconds() - cpu_start, 1)
        write_json_atomic(marker(out, stage.name), {"seconds": seconds[stage.name], "cpu_seconds": cpu, **info})
        log(f"{head}: finished in {seconds[stage.name]:.1f} s ({cpu:.0f} CPU-s)")
        if stage.name == cfg.until:
            break
    return seconds


# What each stage writes. A forced rerun of a finished stage removes it first: the training loop resumes from
# runs/<stage>/last, and the cache, the embedding cache and evaluate's predictions skip what they already hold, so
# a finished stage rerun in place would keep its old results.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "phantoms": ("data",), "preprocess": ("cache",), "pretrain": ("text", "pretrain"), "classifier": ("classifier",),
    "embeddings": ("tokenizer", "embeddings"), "decoder": ("decoder",), "package": ("model",),
    "evaluate": ("eval",)}


def _clear_outputs(out: Path, stage: str, log: Callable[[str], None]) -> None:
    """Remove a finished stage's output folders before a forced rerun. An interrupted stage (no marker) keeps
    them and resumes."""
    import shutil

    for key in STAGE_OUTPUTS.get(stage, ()):
        path = paths(out)[key]
        if path.is_dir():
            shutil.rmtree(path)
            log(f"  removed {path} (forced: the stage starts over instead of reusing its earlier results)")


def stage_overrides(cfg: DemoConfig, stage: str) -> list[str]:
    """The ``--set`` overrides addressed to ``stage`` (``stage.key=value`` -> ``key=value``)."""
    return [o.split(".", 1)[1] for o in cfg.overrides if o.split("=", 1)[0].split(".", 1)[0] == stage and "." in o]


def config_dir(cfg: DemoConfig) -> Path:
    """``cfg.configs``, else configs/demo of this checkout (the demo runs from a clone: ``make demo``)."""
    if cfg.configs:
        if not Path(cfg.configs).is_dir():
            raise FileNotFoundError(f"{cfg.configs}: config folder not found")
        return Path(cfg.configs)
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / "configs" / "demo").is_dir():
            return base / "configs" / "demo"
    raise FileNotFoundError("configs/demo not found in the working directory or beside the package source; "
                            "run the demo from the repository root")
