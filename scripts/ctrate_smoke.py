"""The whole CT-RATE recipe, end to end, at the paper's shapes, in a few minutes on a CPU.

    python scripts/ctrate_smoke.py --data CT-RATE/dataset [--work runs/ctrate-smoke] [--steps 1]
    make ctrate-smoke DATA=CT-RATE/dataset

It runs what a user with the CT-RATE release runs, in order, through the ``ctagrg`` command:

    preprocess -> train pretrain -> train classifier -> train decoder -> package -> report -> evaluate

with ``configs/ctrate`` unchanged except for data paths, step counts, batch size 1, fp32 and worker counts (the
overrides are printed with each command). The weights it needs are stand-ins in the real formats, written here
unless given: a torchvision ResNet-18 ``.pth`` (random), a GPT-2-medium-shaped folder with ``pytorch_model.bin``
(random, with GPT-2's BPE files) and a RadBERT classifier folder (random RoBERTa-base + Linear(768, 18)). With
the real files (``--resnet18``, ``--gpt2``, ``--radbert``) the same run uses them.

A step-1 model trained for a step detects nothing, and step 2's paper rule (pairs both detected and present)
then has no training pair: the smoke trains step 2 on every present abnormality (``pairs=present``), as the
error message of ``ctagrg train decoder`` advises.

Writes WORK/smoke.json: each stage's command, seconds and peak RSS of its process tree (children), and the
report and metrics it produced. Research software, not for diagnostic use.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "ctrate"
SHARED_TOKENIZER = ROOT.parent / "shared" / "data" / "gpt2-tokenizer"
TRAIN_OVERRIDES = ["train.epochs=1", "train.global_batch_size=1", "train.batch_size=1", "train.precision=fp32",
                   "train.num_workers=0", "train.tensorboard=false"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data, work = Path(args.data).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    weights = work / "weights"
    resnet18 = Path(args.resnet18) if args.resnet18 else write_resnet18(weights / "resnet18-stand-in.pth")
    gpt2 = Path(args.gpt2) if args.gpt2 else write_gpt2_medium(weights / "gpt2-medium-stand-in", args.tokenizer)
    radbert = Path(args.radbert) if args.radbert else write_radbert(weights / "radbert-stand-in", args.tokenizer)
    labels, reports = data / "multi_abnormality_labels", data / "radiology_text_reports"
    cache, runs = work / "cache", work / "runs"
    steps = [f"train.max_steps={args.steps}", *TRAIN_OVERRIDES]
    train_labels = labels / "train_predicted_labels.csv"
    # configs/ctrate carve 5% of train's patients for validation; a handful of volumes may leave that empty, so the
    # smoke names its own: one train patient held out, as name lists (what `split` reads besides carve:<part>)
    splits = holdout_lists(train_labels, work / "splits")
    data_paths = [f"data.cache_dir={cache}", f"data.train_labels={train_labels}",
                  f"data.valid_labels={train_labels}", *splits]
    scan = first_valid_scan(data)
    stages = {
        "preprocess": ["preprocess", str(data), "--out", str(cache), "--workers", "1"],
        "pretrain": train("pretrain", [f"train.out_dir={runs / 'pretrain'}", *steps, *data_paths,
                                       f"init.resnet18={resnet18}"]),
        "classifier": train("classifier", [f"train.out_dir={runs / 'classifier'}", *steps, *data_paths,
                                           f"init.encoder_from={runs / 'pretrain' / 'best'}"]),
        "decoder": train("decoder", [
            f"train.out_dir={runs / 'decoder'}", *steps, f"model.gpt2_path={gpt2}",
            f"embeddings.out_dir={runs / 'embeddings'}", f"embeddings.step1_dir={runs / 'classifier' / 'best'}",
            f"embeddings.volume_cache={cache}", f"embeddings.labels_csv={train_labels}",
            f"embeddings.reports_csv={reports / 'train_reports.csv'}", "embeddings.batch_size=1", *splits,
            "pairs=present"]),
        "package": ["package", "--classifier", str(runs / "classifier" / "best"), "--decoder",
                    str(runs / "decoder" / "best"), "--preprocess", str(cache / "preprocess.json"), "--out",
                    str(work / "model"), "--force", "--training-data", f"ctrate-smoke on {data}"],
        "report": ["report", str(scan), "--model", str(work / "model"), "--out", str(work / "reports.jsonl"),
                   "--quiet"],
        "evaluate": ["evaluate", "--model", str(work / "model"), "--data", str(data), "--split", "valid", "--out",
                     str(work / "eval"), "--cache", str(cache), "--labeler", f"radbert:{radbert}", "--no-meteor",
                     "--bootstrap", "20", "--batch-size", "1", "--limit", str(args.eval_limit)],
    }
    (work / "reports.jsonl").unlink(missing_ok=True)  # a fresh report each run
    summary: dict = {"data": str(data), "work": str(work), "stages": {}}
    for name, command in stages.items():
        summary["stages"][name] = run_stage(name, command, work)
        write_summary(work, summary)
    report = json.loads((work / "reports.jsonl").read_text(encoding="utf-8").splitlines()[0])
    metrics = json.loads((work / "eval" / "metrics.json").read_text(encoding="utf-8"))
    summary.update(report=report.get("report"), headline=metrics.get("headline"),
                   total_seconds=round(sum(s["seconds"] for s in summary["stages"].values()), 1))
    write_summary(work, summary)
    print(f"ctrate-smoke: every stage passed in {summary['total_seconds']} s; {work / 'smoke.json'}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a CT-RATE root in the release layout (or phantoms in it)")
    parser.add_argument("--work", default="runs/ctrate-smoke", help="working folder (default runs/ctrate-smoke)")
    parser.add_argument("--steps", type=int, default=1, help="optimiser steps per training stage (default 1)")
    parser.add_argument("--eval-limit", type=int, default=3, help="valid volumes to evaluate (default 3)")
    parser.add_argument("--resnet18", help="torchvision's resnet18-f37072fd.pth (default: a random stand-in)")
    parser.add_argument("--gpt2", help="healx/gpt-2-pubmed-medium folder (default: a random stand-in)")
    parser.add_argument("--radbert", help="CT-CLIP's RadBERT classifier folder (default: a random stand-in)")
    parser.add_argument("--tokenizer", default=str(SHARED_TOKENIZER),
                        help="GPT-2 BPE files (vocab.json, merges.txt) for the stand-ins (default ../shared's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_limit < 1:
        parser.error("--steps and --eval-limit: expected >= 1")
    if not (args.gpt2 and args.radbert) and not (Path(args.tokenizer) / "vocab.json").is_file():
        parser.error(f"--tokenizer {args.tokenizer}: no vocab.json; the GPT-2 and RadBERT stand-ins need GPT-2's "
                     f"BPE files (or give --gpt2 and --radbert)")
    return args


def train(task: str, overrides: list[str]) -> list[str]:
    command = ["train", task, "--config", str(CONFIGS / f"{task}.yaml")]
    for item in overrides:
        command += ["--set", item]
    return command


# Runs one command and prints the peak RSS of its process tree (this small process's only child), in KiB.
_MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def run_stage(name: str, command: list[str], work: Path) -> dict:
    """Run ``ctagrg COMMAND`` in ``work``, its output into WORK/logs/NAME.log; stop the smoke if it fails."""
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{name}.log"
    print(f"[{name}] ctagrg {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "ctagrg.cli.main", *command],
                              cwd=work, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    if done.returncode != 0:
        print("\n".join(lines[-15:]), file=sys.stderr)
        raise SystemExit(f"ctrate-smoke: stage {name} failed (exit {done.returncode}); log: {log_path}")
    rss = round(int(lines[-1]) / 1024) if lines and lines[-1].isdigit() else None
    print(f"[{name}] done in {seconds:.1f} s, peak RSS {rss} MiB", flush=True)
    return {"command": ["ctagrg", *command], "seconds": round(seconds, 1), "peak_rss_mib": rss}


def write_summary(work: Path, summary: dict) -> None:
    from ctagrg.utils.atomic import write_json_atomic

    write_json_atomic(work / "smoke.json", summary)


def holdout_lists(labels_csv: Path, folder: Path) -> list[str]:
    """Name lists train.txt / valid.txt in ``folder``: the last patient of ``labels_csv`` (sorted) is valid, the
    others train. Returns the ``split`` overrides that read them."""
    import csv

    from ctagrg.data.ctrate import parse_name
    from ctagrg.utils.atomic import write_text_atomic

    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        names = sorted(row["VolumeName"] for row in csv.DictReader(fh))
    patients = sorted({parse_name(n)["patient"] for n in names})
    if len(patients) < 2:
        raise SystemExit(f"{labels_csv}: the smoke needs volumes of at least 2 train patients, found {len(patients)}")
    parts = {"valid": [n for n in names if parse_name(n)["patient"] == patients[-1]]}
    parts["train"] = [n for n in names if n not in parts["valid"]]
    for part, chosen in parts.items():
        write_text_atomic(folder / f"{part}.txt", "".join(f"{n}\n" for n in chosen))
    return [f"split.train=[{folder / 'train.txt'}]", f"split.valid=[{folder / 'valid.txt'}]"]


def first_valid_scan(data: Path) -> Path:
    for folder in ("valid_fixed", "valid"):
        scans = sorted((data / folder).rglob("*.nii.gz")) if (data / folder).is_dir() else []
        if scans:
            return scans[0]
    raise SystemExit(f"{data}: no valid/ or valid_fixed/ volumes (.nii.gz); is this a CT-RATE root?")


# -- stand-in weights in the real formats ------------------------------------------------------------------------
def write_resnet18(path: Path) -> Path:
    """A random ResNet-18 state dict under torchvision's keys (our trunk uses them) + fc, saved as a .pth."""
    import torch

    from ctagrg.models.resnet import ResNetConfig, ResNetTrunk

    if path.is_file():
        return path
    torch.manual_seed(0)
    state = ResNetTrunk(ResNetConfig()).state_dict()
    state.update({"fc.weight": torch.randn(1000, 512) * 0.01, "fc.bias": torch.zeros(1000)})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def write_gpt2_medium(folder: Path, tokenizer: str) -> Path:
    """A random GPT-2 medium (24 layers, hidden 1024, 16 heads) laid out as healx/gpt-2-pubmed-medium ships it:
    config.json, pytorch_model.bin, vocab.json, merges.txt (no safetensors)."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if (folder / "pytorch_model.bin").is_file():
        return folder
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257))
    model.save_pretrained(folder, safe_serialization=False)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(Path(tokenizer) / name, folder / name)
    return folder


def write_radbert(folder: Path, tokenizer: str) -> Path:
    """A random RadBERT classifier folder as CT-CLIP's text_classifier saves it: a RoBERTa-base config.json, the
    tokenizer (RoBERTa's specials over GPT-2's BPE) and ``torch.save(state_dict)`` of model.* + classifier.*."""
    import shutil

    import torch
    from transformers import RobertaConfig

    from ctagrg.text.radbert import RadBertClassifier

    if (folder / "classifier.pth").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    gpt2 = json.loads((Path(tokenizer) / "vocab.json").read_text(encoding="utf-8"))
    vocab = {s: i for i, s in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
    vocab.update({tok: i + 4 for tok, i in gpt2.items()})
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    shutil.copy(Path(tokenizer) / "merges.txt", folder / "merges.txt")
    config = RobertaConfig(vocab_size=len(vocab), max_position_embeddings=514, type_vocab_size=1,
                           bos_token_id=0, pad_token_id=1, eos_token_id=2)
    config.to_json_file(folder / "config.json")
    torch.manual_seed(0)
    torch.save(RadBertClassifier(config).state_dict(), folder / "classifier.pth")
    return folder


if __name__ == "__main__":
    sys.exit(main())
