"""``ctagrg package --classifier RUN/best --decoder RUN/best --out DIR``: assemble a packaged model.

The packaged folder (``Reporter.save_pretrained``) is what ``ctagrg report``, ``serve`` and ``evaluate`` take:
the step-1 model and its thresholds, the decoder and its tokenizer, the preprocessing the model was trained with
and a model card.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Assemble a packaged model from a classifier (step 1) run's best/ folder and a decoder (step 2) run's best/ "
    "folder: the folder that ctagrg report, serve and evaluate take. Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classifier", required=True, metavar="DIR",
                        help="the classifier run's best/ folder (holds thresholds.json, or its parent does)")
    parser.add_argument("--decoder", required=True, metavar="DIR", help="the decoder run's best/ folder")
    parser.add_argument("--out", required=True, metavar="DIR", help="the packaged model folder to write")
    parser.add_argument("--preprocess", metavar="FILE",
                        help="preprocess.json of the training cache, or a YAML of PreprocessConfig fields "
                             "(default: the paper's preprocessing)")
    parser.add_argument("--thresholds", metavar="FILE", help="thresholds.json (default: the classifier run's)")
    parser.add_argument("--training-data", metavar="TEXT", help="what the model was trained on, for the model card")
    parser.add_argument("--license", metavar="ID", help="the model's licence for the model card's Hub metadata "
                        "(default apache-2.0, ctagrg's; a model trained on CT-RATE: state the data's terms)")
    parser.add_argument("--dataset", action="append", default=[], metavar="HUB_ID",
                        help="a Hub dataset the model was trained on, for the model card (repeatable), e.g. "
                             "ibrahimhamamci/CT-RATE")
    parser.add_argument("--base-model", metavar="HUB_ID",
                        help="the Hub model the decoder's GPT-2 started from (default: read from a Hub cache path)")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds a model")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctagrg.config import ConfigError
    from ctagrg.generation.reporter import Reporter

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"--out {out}: not empty; give a new folder, or --force to overwrite the model in it", file=sys.stderr)
        return 2
    fields = {"training_data": args.training_data, "license": args.license, "datasets": args.dataset,
              "base_model": args.base_model}
    card = {k: v for k, v in fields.items() if v} or None
    try:
        reporter = Reporter.from_training_outputs(args.classifier, args.decoder, thresholds=args.thresholds,
                                                  preprocess=args.preprocess, card=card)
        reporter.save_pretrained(out)
    except (OSError, ValueError, ConfigError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"packaged model: {out}")
    return 0
