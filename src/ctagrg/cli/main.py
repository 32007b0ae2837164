"""The ``ctagrg`` command. Subcommands live in ``ctagrg.cli.<name>`` modules, each with
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import torch and friends only inside ``run``,
so ``ctagrg --help`` stays instant.

Options every subcommand takes, before or after its name: ``--log-level``, ``--quiet``, ``--progress-interval``
and ``--stop-signals``. The long commands (preprocess, train, report, evaluate, demo) stop at a safe point on a
stop signal and exit with :data:`ctagrg.utils.signals.EXIT_STOPPED` (75); see docs/training.md, "Batch jobs".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from ctagrg.utils.signals import EXIT_STOPPED, StopRequested

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
    "convert-model": ("ctagrg.cli.convert_cmd", "convert a model packaged by an older ctagrg to the current layout"),
    "demo": ("ctagrg.cli.demo_cmd", "run the whole pipeline on synthetic phantoms"),
}


# commands that turn a stop signal into a clean stop (the others keep the signals' default action)
STOPPABLE = ("preprocess", "train", "report", "evaluate", "demo")
_depth = 0  # main() calls in progress: the demo runs subcommands through main() in its own process


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _signal_list(text: str) -> str:
    from ctagrg.utils.signals import parse_signals

    try:
        parse_signals(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
    return text


def global_options() -> argparse.ArgumentParser:
    """The options of every subcommand (a parent parser; defaults are SUPPRESS so that the value given before the
    subcommand's name is not overwritten by the subcommand's own default)."""
    from ctagrg.utils.logs import LEVELS

    g = argparse.ArgumentParser(add_help=False)
    opts = g.add_argument_group("logging and batch jobs (any command)")
    opts.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS,
                      help="lowest level of the timestamped log lines on stderr (default: info)")
    opts.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                      help="warnings and errors only: no info lines, no progress, no printed reports")
    opts.add_argument("--progress-interval", type=_non_negative_seconds, default=argparse.SUPPRESS, metavar="S",
                      help="seconds between progress lines when stderr is not a terminal (a batch job's log) "
                           "(default 60, or CTAGRG_PROGRESS_INTERVAL)")
    opts.add_argument("--stop-signals", type=_signal_list, default=argparse.SUPPRESS, metavar="LIST",
                      help="signals on which preprocess, train, report, evaluate and demo stop at a safe point and "
                           f"exit with status {EXIT_STOPPED} (default SIGTERM,SIGUSR1, or CTAGRG_STOP_SIGNALS; "
                           "'' for none)")
    return g


def build_parser() -> argparse.ArgumentParser:
    from ctagrg import __version__

    common = global_options()
    parser = argparse.ArgumentParser(
        prog="ctagrg",
        description="CT-AGRG: abnormality-guided report generation for 3D chest CT. "
        "Research software, not for diagnostic use.",
        parents=[common],
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
        p = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", help_text),
                           parents=[common])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def apply_global_options(args: argparse.Namespace, outermost: bool) -> None:
    """Set up logging and the progress/stop environment from the global options. A nested call (the demo's
    subcommands) changes only what it was given, so the outer command's choices hold."""
    from ctagrg.utils.logs import setup_logging

    args.quiet = bool(getattr(args, "quiet", False))
    if outermost or hasattr(args, "log_level") or args.quiet:
        setup_logging(getattr(args, "log_level", "info"), quiet=args.quiet)
    if hasattr(args, "progress_interval"):
        os.environ["CTAGRG_PROGRESS_INTERVAL"] = f"{args.progress_interval:g}"
    if hasattr(args, "stop_signals"):
        os.environ["CTAGRG_STOP_SIGNALS"] = args.stop_signals


def main(argv: list[str] | None = None) -> int:
    global _depth
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from ctagrg.utils.logs import saved_logging
    from ctagrg.utils.signals import handle_stop_signals

    restore = saved_logging()  # main() called from Python (tests, the demo) leaves logging as it found it
    apply_global_options(args, outermost=_depth == 0)

    stoppable = args.command in STOPPABLE and _depth == 0
    _depth += 1
    try:
        with handle_stop_signals() if stoppable else contextlib.nullcontext():
            return int(args._run(args) or 0)
    except StopRequested as exc:
        if _depth > 1:  # a nested command: the outermost one reports the stop
            raise
        print(f"ctagrg {args.command}: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _depth -= 1
        restore()


if __name__ == "__main__":
    sys.exit(main())
