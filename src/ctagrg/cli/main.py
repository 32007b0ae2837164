"""The ``ctagrg`` command. Subcommands live in ``ctagrg.cli.<name>`` modules, each with
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import torch and friends only inside ``run``,
so ``ctagrg --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("ctagrg.cli.inspect_cmd", "show a scan's geometry, HU range and what preprocessing makes of it"),
    "preprocess": ("ctagrg.cli.preprocess_cmd", "preprocess scans into the training cache (resumable, shardable)"),
    "phantom": ("ctagrg.cli.phantom_cmd", "generate a synthetic CT-RATE-style dataset, or preview one"),
    "label": ("ctagrg.cli.label_cmd", "label report text with the 18 CT-RATE abnormalities"),
    "sentences": ("ctagrg.cli.sentences_cmd", "extract each abnormality's sentences from reports"),
    "train": ("ctagrg.cli.train_cmd", "train a stage: pretrain | classifier | decoder"),
    "package": ("ctagrg.cli.package_cmd", "assemble a packaged model from the classifier and decoder runs"),
    "report": ("ctagrg.cli.report_cmd", "generate reports for scans with a trained model"),
    "evaluate": ("ctagrg.cli.evaluate_cmd", "evaluate a model on a dataset split"),
    "serve": ("ctagrg.cli.serve_cmd", "serve a model over HTTP with a slice viewer (localhost by default)"),
    "push": ("ctagrg.cli.push_cmd", "upload a packaged model to the Hugging Face Hub"),
    "demo": ("ctagrg.cli.demo_cmd", "run the whole pipeline on synthetic phantoms"),
}


def build_parser() -> argparse.ArgumentParser:
    from ctagrg import __version__

    parser = argparse.ArgumentParser(
        prog="ctagrg",
        description="CT-AGRG: abnormality-guided report generation for 3D chest CT. "
        "Research software, not for diagnostic use.",
    )
    parser.add_argument("--version", action="version", version=f"ctagrg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # subcommand not built yet
        p = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
