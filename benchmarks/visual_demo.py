"""The demo's visual half, measured: pretrain -> step 1 -> thresholds -> per-label AUROC/F1 on the test split.

    ctagrg phantom --out /tmp/ph --n 400 --size small
    ctagrg preprocess /tmp/ph --out /tmp/ph_cache --config configs/demo/preprocess.yaml
    .venv/bin/python benchmarks/visual_demo.py --data /tmp/ph --cache /tmp/ph_cache --out /tmp/vis_runs \
        [--pretrain-epochs 8] [--classifier-epochs 3] [--threads 2] [--set pretrain.train.lr=1e-3 ...]

Uses configs/demo/{pretrain,classifier}.yaml through the same API as `ctagrg train`. Prints wall and CPU seconds
per stage (CPU seconds are the comparable figure on a shared machine) and a Markdown per-label table (the tables
of docs/experiments.md); writes ``test_report.json`` into --out.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from ctagrg.data.ctrate import split_csv

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_stage(name: str, overrides: list[str]) -> tuple[Path, dict]:
    from ctagrg.config import load_config
    from ctagrg.training.loop import train
    from ctagrg.training.task import get_task

    task_cls = get_task(name)
    cfg = load_config(task_cls.Config, ROOT / "configs" / "demo" / f"{name}.yaml", overrides)
    start, cpu0 = time.perf_counter(), cpu_seconds()
    best = train(task_cls(cfg))
    return best, {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu_seconds() - cpu0, 1)}


def test_report(best: Path, cache: Path, labels_csv: Path) -> dict:
    from torch.utils.data import DataLoader

    from ctagrg.data.dataset import CachedVolumeDataset
    from ctagrg.evaluation.classification import classification_report
    from ctagrg.models.step1 import Step1Model
    from ctagrg.models.thresholds_file import read_thresholds

    model = Step1Model.from_pretrained(best)
    ds = CachedVolumeDataset(cache, labels=labels_csv)
    labels, probs = [], []
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=8):
            probs.append(torch.sigmoid(model(batch["volume"])["logits"]).numpy())
            labels.append(batch["labels"].numpy())
    import numpy as np

    return classification_report(np.concatenate(labels), np.concatenate(probs), np.array(read_thresholds(best)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="phantom dataset root (CT-RATE layout)")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--classifier-epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = [f"data.cache_dir={args.cache}", f"data.train_labels={split_csv(args.data, 'labels', 'train')}",
              f"data.valid_labels={split_csv(args.data, 'labels', 'valid')}", "train.tensorboard=false"]
    if not any(o.startswith("classifier.attributes.sentences_csv=") for o in args.overrides):
        # step 1's attribute supervision (configs/demo/classifier.yaml) reads sides and sizes from the report
        # sentences of the training and validation splits, as `ctagrg demo` does
        from ctagrg.cli.main import main as cli_main

        sentences = args.out / "sentences"
        for split in ("train", "valid"):
            target = sentences / f"{split}.csv"
            if not target.is_file():
                reports = split_csv(args.data, "reports", split)
                if cli_main(["sentences", str(reports), "--out", str(target), "--text-columns", "Findings_EN"]):
                    raise SystemExit(f"{reports}: `ctagrg sentences` failed")
        args.overrides.append(f"classifier.attributes.sentences_csv={sentences}")
    times = {}
    for stage, epochs in (("pretrain", args.pretrain_epochs), ("classifier", args.classifier_epochs)):
        extra = [o.split(".", 1)[1] for o in args.overrides if o.startswith(stage + ".")]
        over = [*common, f"train.out_dir={args.out / stage}", *(["train.epochs=" + str(epochs)] if epochs else [])]
        if stage == "classifier":
            over.append(f"init.encoder_from={args.out / 'pretrain' / 'best'}")
        best, times[stage] = run_stage(stage, over + extra)
        print(f"{stage}: {times[stage]}", flush=True)
    from ctagrg.evaluation.classification import markdown_table

    rep = test_report(best, args.cache, split_csv(args.data, "labels", "test"))
    (args.out / "test_report.json").write_text(json.dumps({"times": times, **rep}, indent=2))
    print(markdown_table(rep))
    print(json.dumps({"times": times, "macro_auroc": rep["macro"]["auroc"]}))


if __name__ == "__main__":
    main()
