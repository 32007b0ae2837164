"""The demo's stages, in order: each calls the other parts' public Python APIs, writes into its own folder under
the demo folder and returns what its marker records (see :mod:`ctagrg.demo.runner`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ctagrg.data.ctrate import CsvKind, require_split_csv, split_csv
from ctagrg.demo.runner import DemoConfig, Stage, config_dir, marker, paths, stage_overrides

logger = logging.getLogger(__name__)


def _phantoms(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from ctagrg.phantom.generate import generate_dataset

    n = cfg.preset.n_volumes
    root = generate_dataset(paths(out)["data"], n=n, seed=cfg.seed, size=cfg.phantom_size, workers=cfg.threads,
                            min_prevalence=cfg.preset.min_prevalence)
    logger.info("wrote %d phantom volumes to %s", n, root)
    return {"volumes": n}


def _preprocess(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """The phantoms into the volume cache (what ``ctagrg preprocess`` does); any failed volume fails the stage."""
    from ctagrg.config import load_config
    from ctagrg.data.cachebuild import build_cache
    from ctagrg.data.inputs import discover_inputs
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.utils.progress import progress

    p = paths(out)
    config = load_config(PreprocessConfig, config_dir(cfg) / "preprocess.yaml")
    rows = build_cache(discover_inputs([p["data"]]), p["cache"], config, workers=cfg.threads, wrap=progress)
    for r in rows:
        if r.get("warnings") and not r.get("skipped"):
            logger.warning("%s", r["warnings"])
    failed = [r.get("error") or f"{r['source']}: failed" for r in rows if r.get("status") != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} volumes failed to preprocess; first: {failed[0]}")
    logger.info("preprocess: %d volumes; manifest: %s", len(rows), p["cache"] / "manifest.csv")
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
    stage = task_cls(task_cfg)
    stage.model_hook = cfg.inject_memo
    return Path(train(stage))


def _epochs(epochs: int | None) -> list[str]:
    return [] if epochs is None else [f"train.epochs={epochs}"]


def _visual_overrides(out: Path, cfg: DemoConfig, epochs: int | None) -> list[str]:
    p = paths(out)
    # augmentation is the config's: pretraining mirrors left-right (labels have no side), step 1 does not
    return [*_epochs(epochs), f"train.seed={cfg.seed}", f"data.cache_dir={p['cache']}",
            f"data.train_labels={split_csv(p['data'], 'labels', 'train')}",
            f"data.valid_labels={split_csv(p['data'], 'labels', 'valid')}"]


def _pretrain(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    p = paths(out)
    best = _train("pretrain", out, cfg, _visual_overrides(out, cfg, cfg.preset.pretrain_epochs)
                  + [f"train.out_dir={p['pretrain']}", f"extras.attributes.sentences_csv={_sentences(out)}"])
    return {"best": str(best)}


def _sentences(out: Path) -> Path:
    """Each training and validation report's sentence per present finding (``ctagrg sentences``), written once
    (by the pretraining stage): pretraining and step 1 read sides and sizes from them (``attributes``), step 2
    learns to write them."""
    p = paths(out)
    sentences = p["text"] / "sentences_train_valid.csv"
    if not sentences.is_file():
        reports = _merge_csvs(p["data"], "reports", ("train", "valid"), p["text"] / "reports_train_valid.csv")
        _write_sentences(reports, sentences)
    return sentences


def _write_sentences(reports: Path, target: Path) -> None:
    """What ``ctagrg sentences REPORTS --out TARGET --text-columns Findings_EN`` writes: the rule labeler's
    present findings, each with its sentences of the findings text joined."""
    from ctagrg.text.extract import extract_sentences
    from ctagrg.text.labeler import get_labeler
    from ctagrg.text.reports_io import read_reports, write_sentences

    labeler = get_labeler("rules")
    read = read_reports(reports, ["Findings_EN"], "VolumeName", labeler.column_separator)
    write_sentences(target, extract_sentences(labeler, read.ids, read.texts, "joined"), "VolumeName")


def _classifier(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    p = paths(out)
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

    from ctagrg.training.embedding_cache import EmbeddingCacheConfig, build_from_config, load_step1_model

    p = paths(out)
    # train and valid only: the test phantoms are read by the evaluate stage alone
    labels = _merge_csvs(p["data"], "labels", ("train", "valid"), p["text"] / "labels_train_valid.csv")
    sentences = _sentences(out)
    vocab = train_tokenizer(pd.read_csv(sentences)["Sentence"].astype(str).tolist(), p["tokenizer"])
    step1 = load_step1_model(p["classifier"] / "best").eval()
    cfg.inject_memo(step1)
    build_from_config(EmbeddingCacheConfig(out_dir=str(p["embeddings"]), step1_dir=str(p["classifier"] / "best"),
                                           volume_cache=str(p["cache"]), labels_csv=str(labels),
                                           sentences_csv=str(sentences), device="cpu"), step1=step1)
    return {"vocab_size": vocab}


def _decoder(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    p = paths(out)
    vocab = json.loads(marker(out, "embeddings").read_text())["vocab_size"]
    best = _train("decoder", out, cfg, [
        f"train.out_dir={p['decoder']}", *_epochs(cfg.preset.decoder_epochs), f"train.seed={cfg.seed}",
        f"embeddings.out_dir={p['embeddings']}", f"embeddings.step1_dir={p['classifier'] / 'best'}",
        f"embeddings.volume_cache={p['cache']}", f"model.tokenizer_path={p['tokenizer']}",
        f"model.vocab_size={vocab}", "model.bos_token_id=0", "model.eos_token_id=0", "model.pad_token_id=0"])
    return {"best": str(best)}


def _package(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from ctagrg.generation.reporter import Reporter

    p = paths(out)
    card = {"training_data": f"synthetic phantoms (ctagrg phantom --n {cfg.preset.n_volumes} --seed {cfg.seed} "
                             f"--size {cfg.phantom_size}), train split; demo model, not for any clinical use"}
    reporter = Reporter.from_training_outputs(p["classifier"] / "best", p["decoder"] / "best",
                                              preprocess=config_dir(cfg) / "preprocess.yaml", card=card)
    reporter.save_pretrained(p["model"])
    return {"model": str(p["model"])}


def _evaluate(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from ctagrg.evaluation.evaluate import EvaluateConfig, evaluate

    p = paths(out)
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
