"""``ctagrg convert-model OLD NEW``: a model packaged by an older ctagrg, in the current layout."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Copy a packaged model written by an older ctagrg (before the demo's extras became plug-ins) to NEW in the "
    "current layout, and check that it loads. Weights, thresholds, tokenizer and preprocessing are unchanged. "
    "Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="OLD", help="the packaged model folder to convert")
    parser.add_argument("out", metavar="NEW", help="the folder to write (must not exist)")


def run(args: argparse.Namespace) -> int:
    from ctagrg.extras.convert import convert_model

    try:
        path = convert_model(args.model, args.out)
    except (OSError, ValueError) as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    print(f"{path}: converted from {args.model}")
    return 0
