"""The end-to-end demo: phantom dataset -> preprocess -> pretrain -> step 1 (+ thresholds) -> embedding cache ->
step 2 -> package -> evaluate, on synthetic CT-RATE-style phantoms, on a CPU.

The phantoms come in three patient-disjoint splits: every training stage trains on ``train`` and chooses its best
checkpoint (and step 1 its thresholds) on ``valid`` (configs/demo, ``split``; the names each stage used are in
``runs/<stage>/splits/``); ``test`` is read only by the evaluate stage.

Each stage calls the other parts' public Python APIs (or their CLI entry points where that is the contract),
writes into its own folder under ``out_dir`` and, when it succeeds, a marker ``out_dir/stages/<stage>.json``
(with its seconds). A rerun skips every stage whose marker exists, so an interrupted demo resumes cheaply;
``--force STAGE`` reruns one stage and everything after it. The result, ``out_dir/model``, is a packaged model
that ``ctagrg report`` loads. Research software, not for diagnostic use.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctagrg.data.ctrate import CsvKind, require_split_csv, split_csv
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


def _paths(out: Path) -> dict[str, Path]:
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
        path = _paths(out)[key]
        if path.is_dir():
            shutil.rmtree(path)
            log(f"  removed {path} (forced: the stage starts over instead of reusing its earlier results)")


def _cli(argv: list[str]) -> None:
    """Run a ``ctagrg`` subcommand in this process; a non-zero exit code is an error."""
    from ctagrg.cli.main import main as cli_main

    code = cli_main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"`ctagrg {' '.join(map(str, argv))}` exited with code {code}")


def stage_overrides(cfg: DemoConfig, stage: str) -> list[str]:
    """The ``--set`` overrides addressed to ``stage`` (``stage.key=value`` -> ``key=value``)."""
    return [o.split(".", 1)[1] for o in cfg.overrides if o.split("=", 1)[0].split(".", 1)[0] == stage and "." in o]


def config_dir(cfg: DemoConfig) -> Path:
    """``cfg.configs``, else configs/demo of this checkout (the demo runs from a clone: ``make demo``)."""
    if cfg.configs:
        if not Path(cfg.configs).is_dir():
            raise FileNotFoundError(f"{cfg.configs}: config folder not found")
        return Path(cfg.configs)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / "configs" / "demo").is_dir():
            return base / "configs" / "demo"
    raise FileNotFoundError("configs/demo not found in the working directory or beside the package source; "
                            "run the demo from the repository root")


def _phantoms(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    n = cfg.preset.n_volumes
    _cli(["phantom", "--out", _paths(out)["data"], "--n", n, "--seed", cfg.seed, "--size", cfg.phantom_size,
          "--workers", cfg.threads, "--min-prevalence", cfg.preset.min_prevalence])
    return {"volumes": n}


def _preprocess(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    p = _paths(out)
    _cli(["preprocess", p["data"], "--out", p["cache"], "--config", config_dir(cfg) / "preprocess.yaml",
          "--workers", cfg.threads])
    return {}


def _merge_csvs(data: Path, kind: CsvKind, splits: tuple[str, ...], target: Path) -> Path:
    """Concatenate the ``kind`` CSVs (reports | labels) of ``splits`` into ``target``."""
    import pandas as pd

    from ctagrg.utils.atomic import atomic_path

    frames = [pd.read_csv(require_split_csv(data, kind, s)) for s in splits]

    with atomic_path(target, suffix=".csv") as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    return target


def _train(task: str, out: Path, cfg: DemoConfig, overrides: list[str]) -> Path:
    """Train one stage through the shared loop: configs/demo/<task>.yaml + the demo's overrides + the user's."""
    from ctagrg.config import load_config
    from ctagrg.training.loop import train
    from ctagrg.training.task import get_task

    task_cls = get_task(task)
    task_cfg = load_config(task_cls.Config, config_dir(cfg) / f"{task}.yaml", overrides + stage_overrides(cfg, task))
    return Path(train(task_cls(task_cfg)))


def _epochs(epochs: int | None) -> list[str]:
    return [] if epochs is None else [f"train.epochs={epochs}"]


def _visual_overrides(out: Path, cfg: DemoConfig, epochs: int | None) -> list[str]:
    p = _paths(out)
    # augmentation is the config's: pretraining mirrors left-right (labels have no side), step 1 does not
    return [*_epochs(epochs), f"train.seed={cfg.seed}", f"data.cache_dir={p['cache']}",
            f"data.train_labels={split_csv(p['data'], 'labels', 'train')}",
            f"data.valid_labels={split_csv(p['data'], 'labels', 'valid')}"]


def _pretrain(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    p = _paths(out)
    best = _train("pretrain", out, cfg, _visual_overrides(out, cfg, cfg.preset.pretrain_epochs)
                  + [f"train.out_dir={p['pretrain']}", f"extras.attributes.sentences_csv={_sentences(out)}"])
    return {"best": str(best)}


def _sentences(out: Path) -> Path:
    """Each training and validation report's sentence per present finding (``ctagrg sentences``), written once
    (by the pretraining stage): pretraining and step 1 read sides and sizes from them (``attributes``), step 2
    learns to write them."""
    p = _paths(out)
    sentences = p["text"] / "sentences_train_valid.csv"
    if not sentences.is_file():
        reports = _merge_csvs(p["data"], "reports", ("train", "valid"), p["text"] / "reports_train_valid.csv")
        _cli(["sentences", reports, "--out", sentences, "--text-columns", "Findings_EN"])
    return sentences


def _classifier(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    p = _paths(out)
    best = _train("classifier", out, cfg, _visual_overrides(out, cfg, cfg.preset.classifier_epochs)
                  + [f"train.out_dir={p['classifier']}", f"init.encoder_from={p['pretrain'] / 'best'}",
                     f"extras.attributes.sentences_csv={_sentences(out)}"])
    return {"best": str(best)}


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 2000) -> int:
    """A byte-level BPE tokenizer in GPT-2's file format (vocab.json + merges.txt, ``<|endoftext|>`` = id 0),
    trained on ``texts``. Returns its size.

    Why not GPT-2's own: a fresh clone has no GPT-2 files and the demo never downloads; the demo's GPT-2 is
    random and small anyway, and a 2k vocabulary instead of 50k makes its output layer 25x cheaper.
    """
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_model(str(out_dir))
    return tok.get_vocab_size()


def _embeddings(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    import pandas as pd

    from ctagrg.training.embedding_cache import EmbeddingCacheConfig, build_from_config

    p = _paths(out)
    # train and valid only: the test phantoms are read by the evaluate stage alone
    labels = _merge_csvs(p["data"], "labels", ("train", "valid"), p["text"] / "labels_train_valid.csv")
    sentences = _sentences(out)
    vocab = train_tokenizer(pd.read_csv(sentences)["Sentence"].astype(str).tolist(), p["tokenizer"])
    build_from_config(EmbeddingCacheConfig(out_dir=str(p["embeddings"]), step1_dir=str(p["classifier"] / "best"),
                                           volume_cache=str(p["cache"]), labels_csv=str(labels),
                                           sentences_csv=str(sentences), device="cpu"))
    return {"vocab_size": vocab}


def _decoder(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    p = _paths(out)
    vocab = json.loads(marker(out, "embeddings").read_text())["vocab_size"]
    best = _train("decoder", out, cfg, [
        f"train.out_dir={p['decoder']}", *_epochs(cfg.preset.decoder_epochs), f"train.seed={cfg.seed}",
        f"embeddings.out_dir={p['embeddings']}", f"embeddings.step1_dir={p['classifier'] / 'best'}",
        f"embeddings.volume_cache={p['cache']}", f"model.tokenizer_path={p['tokenizer']}",
        f"model.vocab_size={vocab}", "model.bos_token_id=0", "model.eos_token_id=0", "model.pad_token_id=0"])
    return {"best": str(best)}


def _package(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from ctagrg.generation.reporter import Reporter

    p = _paths(out)
    card = {"training_data": f"synthetic phantoms (ctagrg phantom --n {cfg.preset.n_volumes} --seed {cfg.seed} "
                             f"--size {cfg.phantom_size}), train split; demo model, not for any clinical use"}
    reporter = Reporter.from_training_outputs(p["classifier"] / "best", p["decoder"] / "best",
                                              preprocess=config_dir(cfg) / "preprocess.yaml", card=card)
    reporter.save_pretrained(p["model"])
    return {"model": str(p["model"])}


def _evaluate(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from ctagrg.evaluation.evaluate import EvaluateConfig, evaluate

    p = _paths(out)
    # the phantoms' label CSV is the truth their reports were written from: the demo's clinical figures use it
    ecfg = EvaluateConfig(split="test", cache_dir=str(p["cache"]), clinical_reference="csv", meteor=cfg.preset.meteor,
                          bootstrap=cfg.preset.bootstrap, seed=cfg.seed, batch_size=8)
    metrics = evaluate(p["model"], p["data"], p["eval"], ecfg)
    return {"headline": metrics["headline"]}


def build_stages() -> list[Stage]:
    """The demo's stages in order (names as in :data:`STAGES`)."""
    return [
        Stage("phantoms", _phantoms, "synthetic CT-RATE-style phantoms (ctagrg phantom)"),
        Stage("preprocess", _preprocess, "preprocess into the volume cache (ctagrg preprocess)"),
        Stage("pretrain", _pretrain, "pretrain the encoder with an 18-label head"),
        Stage("classifier", _classifier, "step 1: 18 projection heads and classifiers, then thresholds"),
        Stage("embeddings", _embeddings, "target sentences (ctagrg sentences), tokenizer, step-2 embedding cache"),
        Stage("decoder", _decoder, "step 2: GPT-2 decoder with pseudo self-attention"),
        Stage("package", _package, "package the model into DIR/model (Reporter.save_pretrained)"),
        Stage("evaluate", _evaluate, "evaluate on the phantom test split (ctagrg evaluate)"),
    ]


def examples_text(eval_dir: Path, n: int = 3) -> str:
    """``n`` generated reports beside their references, from the evaluation's predictions and references."""
    metrics_path = eval_dir / "examples.json"
    if not metrics_path.is_file():
        return ""
    examples = json.loads(metrics_path.read_text(encoding="utf-8"))[:n]
    blocks = [f"--- {e['name']}\n  generated: {e['generated']}\n  reference: {e['reference']}" for e in examples]
    return "\n".join(blocks)


def main(cfg: DemoConfig, log: Callable[[str], None] = print) -> int:
    """Run the demo; print examples and headline metrics. Returns a process exit code."""
    import torch

    from ctagrg.evaluation.evaluate import headline_table, load_metrics

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        seconds = run_stages(build_stages(), cfg, log)
    except DemoError as exc:
        print(f"ctagrg demo: {exc}", file=sys.stderr)
        return 1
    if cfg.until is not None and cfg.until != STAGES[-1]:
        log(f"stopped after stage {cfg.until} (--until); stage seconds: {json.dumps(seconds)}")
        return 0
    metrics = load_metrics(_paths(out)["eval"] / "metrics.json")
    log("\nExample reports (phantom test split):\n" + examples_text(_paths(out)["eval"]))
    log("\nHeadline metrics (95% bootstrap CI):\n" + headline_table(metrics))
    cpu = sum(json.loads(marker(out, s).read_text()).get("cpu_seconds", 0.0) for s in STAGES)
    log(f"\nstage seconds (this run; 0 = skipped): {json.dumps(seconds)}; total {sum(seconds.values()):.0f} s; "
        f"all stages used {cpu:.0f} CPU-s")
    log(f"next: ctagrg report {_paths(out)['data']}/test --model {_paths(out)['model']} --out reports.jsonl")
    return 0
