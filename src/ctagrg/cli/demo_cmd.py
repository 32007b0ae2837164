"""``ctagrg demo [--out DIR] [--quick]``: the whole pipeline on synthetic phantoms, on a CPU."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Run CT-AGRG end to end on synthetic CT-RATE-style phantoms: generate phantoms, preprocess, pretrain, step 1 "
    "with thresholds, embedding cache, step 2 (GPT-2 decoder), package the model into DIR/model and evaluate on "
    "the phantom test split. Finished stages are skipped on a rerun. Full: <= 15 min on 2 CPU cores; --quick: "
    "<= 3 min. Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ctagrg.demo import STAGES

    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer phantoms (150 instead of 600) and fewer epochs (<= 3 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--n", type=int, default=0, help="number of phantom volumes (default: the preset's)")
    parser.add_argument("--force", choices=STAGES, default=None,
                        help="rerun this stage and every later one from scratch")
    parser.add_argument("--configs", default=None,
                        help="folder with preprocess/pretrain/classifier/decoder.yaml (default: configs/demo)")
    parser.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="override a stage config value, e.g. --set pretrain.train.lr=3e-4 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from ctagrg.demo import DemoConfig, main

    cfg = DemoConfig(out_dir=args.out, quick=args.quick, seed=args.seed, threads=args.threads, n_volumes=args.n,
                     overrides=list(args.overrides), force=args.force, until=args.until,
                     configs=args.configs)
    return main(cfg)
