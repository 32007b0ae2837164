"""``ctagrg train <task> --config FILE [--set key=value ...]``: run one training stage."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Train one stage of CT-AGRG: pretrain (encoder + 18-label head), classifier (step 1: encoder + 18 projection "
    "heads and classifiers, then per-label thresholds) or decoder (step 2: GPT-2 with pseudo self-attention). "
    "For several GPUs launch with torchrun, e.g. `torchrun --nproc_per_node 4 -m ctagrg.cli.main train ...`; "
    "train.global_batch_size (one optimizer step's batch) holds on any GPU count, train.batch_size is per GPU. "
    "A run resumes from OUT_DIR/last when it exists."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ctagrg.training.task import TASKS

    parser.add_argument("task", choices=list(TASKS), help="stage to train")
    parser.add_argument("--config", "-c", help="YAML config (a Task.Config); defaults when omitted")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-5 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    import yaml

    from ctagrg.config import ConfigError, load_config, to_dict
    from ctagrg.training.task import get_task

    try:
        task_cls = get_task(args.task)
        cfg = load_config(task_cls.Config, args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    from ctagrg.training.loop import TrainingError, train

    try:
        best = train(task_cls(cfg))
    except (ValueError, KeyError, TrainingError, FileNotFoundError) as exc:  # ConfigError/CheckpointError too
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"best checkpoint: {best}")
    return 0
