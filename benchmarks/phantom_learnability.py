"""Are the phantom findings learnable and groundable? The demo's encoder, CPU, time-boxed.

1. Generate 300 train and 100 test ``small`` phantoms (different seeds, so different patients) and time it.
2. Preprocess them as the demo does (``ctagrg preprocess`` with ``configs/demo/preprocess.yaml``) and split the
   training reports into per-finding sentences (``ctagrg sentences``), where the half supervision reads the sides.
3. Train the demo's pretraining model (``configs/demo/pretrain.yaml``: the cnn3d encoder with its fixed stem
   channels and lateral halves, a linear head with an L1 penalty, mirroring and shifts, half supervision) through
   ``ctagrg train pretrain``'s code for the config's epochs, with no validation split (the last epoch is kept).
   The training time is reported against ``--minutes``.
4. Report per-label AUROC on the test set and, as the side probe, how often the higher of a one-sided finding's two
   half logits (right half, mirrored left half) is on its true side (phantom ground truth), for nodules, pleural
   effusions and consolidations.

    .venv/bin/python benchmarks/phantom_learnability.py --out /tmp/phantom_bench [--minutes 10] [--threads 2]

Writes ``results.json`` in --out and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from ctagrg.data.ctrate import split_csv

ROOT = Path(__file__).resolve().parents[1]
SIDE_LABELS = ("Lung nodule", "Pleural effusion", "Consolidation")


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _cli(*argv: object) -> None:
    from ctagrg.cli.main import main as cli_main

    if cli_main([str(a) for a in argv]) != 0:
        raise SystemExit(f"`ctagrg {' '.join(map(str, argv))}` failed")


def generate(out: Path, workers: int, n_train: int, n_test: int, min_prevalence: float) -> dict[str, float]:
    from ctagrg.phantom.generate import generate_dataset

    times = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        generate_dataset(out / name, n=n, seed=seed, size="small", split={name: 1.0}, workers=workers,
                         min_prevalence=min_prevalence)
        times[f"generate_{name}_s"] = time.perf_counter() - start
        # CPU seconds (this process + its workers) are far less sensitive to other jobs on a shared machine
        times[f"generate_{name}_cpu_s"] = _cpu_seconds() - cpu0
        print(f"generated {n} {name} volumes in {times[f'generate_{name}_s']:.1f} s wall, "
              f"{times[f'generate_{name}_cpu_s']:.1f} s CPU ({workers} workers)", flush=True)
    return times


def prepare(out: Path, workers: int) -> dict[str, float]:
    """Preprocess both splits into their caches and write the training sentences (skipped when present)."""
    start = time.perf_counter()
    for split in ("train", "test"):
        if not (out / f"cache_{split}" / "manifest.csv").is_file():
            _cli("preprocess", out / split, "--out", out / f"cache_{split}", "--config",
                 ROOT / "configs" / "demo" / "preprocess.yaml", "--workers", workers)
    if not (out / "sentences_train.csv").is_file():
        _cli("sentences", split_csv(out / "train", "reports", "train"), "--out",
             out / "sentences_train.csv", "--text-columns", "Findings_EN")
    return {"preprocess_s": time.perf_counter() - start}


def train(out: Path, minutes: float, overrides: list[str]) -> tuple[Path, dict[str, float]]:
    """The demo's pretraining on the training split for the config's epochs; ``minutes`` is the budget reported
    against."""
    from ctagrg.config import load_config
    from ctagrg.training.loop import train as run
    from ctagrg.training.visual_tasks import PretrainTask, PretrainTaskConfig

    over = [f"data.cache_dir={out / 'cache_train'}",
            f"data.train_labels={split_csv(out / 'train', 'labels', 'train')}",
            "data.valid_labels=", f"train.out_dir={out / 'run'}", "train.tensorboard=false",
            f"attributes.sentences_csv={out / 'sentences_train.csv'}", *overrides]
    cfg = load_config(PretrainTaskConfig, ROOT / "configs" / "demo" / "pretrain.yaml", over)
    start, cpu0 = time.perf_counter(), _cpu_seconds()
    best = Path(run(PretrainTask(cfg)))
    wall = time.perf_counter() - start
    if wall > minutes * 60:
        print(f"warning: training took {wall / 60:.1f} min, over the {minutes:g}-minute budget", flush=True)
    return best, {"train_s": wall, "train_cpu_s": _cpu_seconds() - cpu0, "epochs": cfg.train.epochs,
                  "within_budget": wall <= minutes * 60}


def evaluate(best: Path, out: Path) -> dict:
    """Per-label test AUROC, and the side probe from the two half logits against the phantom ground truth."""
    import torch
    from torch.utils.data import DataLoader

    from ctagrg.data.dataset import CachedVolumeDataset
    from ctagrg.evaluation.classification import classification_report
    from ctagrg.evaluation.grounding import load_ground_truth
    from ctagrg.extras.halves.side_probe import half_side_probe, side_probe_summary
    from ctagrg.labels import LABEL_INDEX, LABELS
    from ctagrg.models.step1 import PretrainModel

    model = PretrainModel.from_pretrained(best)
    ds = CachedVolumeDataset(out / "cache_test",
                             labels=split_csv(out / "test", "labels", "test"))
    labels, probs, entries = [], [], []
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=8):
            res = model(batch["volume"])
            probs.append(torch.sigmoid(res["logits"]).numpy())
            labels.append(batch["labels"].numpy())
            for name, half in zip(batch["name"], res["half_logits"], strict=True):
                truth = load_ground_truth(out / "test" / "ground_truth", name.replace(".nii.gz", ""))
                if truth is None:
                    raise SystemExit(f"{out / 'test' / 'ground_truth'}: no ground truth for {name}")
                entries += half_side_probe(half.numpy(), truth, SIDE_LABELS)
    y, p = np.concatenate(labels), np.concatenate(probs)
    rep = classification_report(y, p, 0.5)
    summary = side_probe_summary(entries)
    side = {name: {"accuracy": summary[name]["accuracy"] if name in summary else float("nan"),
                   "n": summary[name]["n"] if name in summary else 0} for name in SIDE_LABELS}
    return {"auroc": {n: rep["per_label"][n]["auroc"] for n in LABELS}, "macro_auroc": rep["macro"]["auroc"],
            "test_positives": {n: int(y[:, LABEL_INDEX[n]].sum()) for n in LABELS}, "side": side,
            "side_accuracy": summary["all"]["accuracy"], "side_n": summary["all"]["n"],
            "side_ci95": summary["all"]["ci95"]}


def main() -> None:
    import torch

    from ctagrg.labels import LABELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget; exceeding it is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--min-prevalence", type=float, default=0.15,
                        help="label probability floor (0.15: every label has test positives; 0: CT-RATE-like)")
    parser.add_argument("--skip-generate", action="store_true", help="reuse the phantoms already in --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override configs/demo/pretrain.yaml, e.g. --set attributes.half_weight=0")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    results: dict = {"min_prevalence": args.min_prevalence, "overrides": args.overrides}
    if not args.skip_generate:
        results.update(generate(args.out, args.workers, args.n_train, args.n_test, args.min_prevalence))
    results.update(prepare(args.out, args.workers))
    best, times = train(args.out, args.minutes, args.overrides)
    results.update(times)
    results.update(evaluate(best, args.out))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\ntraining: {results['train_s']:.0f} s wall, {results['train_cpu_s']:.0f} s CPU, "
          f"{results['epochs']} epochs")
    print("\n| label | test positives | AUROC |\n| --- | ---: | ---: |")
    for name in LABELS:
        print(f"| {name} | {results['test_positives'][name]} | {results['auroc'][name]:.3f} |")
    print(f"| **macro** | | **{results['macro_auroc']:.3f}** |")
    for name, v in results["side"].items():
        print(f"side probe {name}: {v['accuracy']:.3f} (n={v['n']})")
    print(f"side probe, all one-sided findings: {results['side_accuracy']:.3f} (n={results['side_n']})")


if __name__ == "__main__":
    main()
