"""argparse types and options that several subcommands share."""

from __future__ import annotations

import argparse
import math


def add_max_memory_mb(parser: argparse.ArgumentParser, what: str = "a scan") -> None:
    """``--max-memory-mb MB``: the memory budget of reading one scan (:mod:`ctagrg.data.read_cost`)."""
    parser.add_argument("--max-memory-mb", type=positive_float, default=None, metavar="MB",
                        help=f"refuse {what} whose decoding would need more memory than this, estimated from its "
                             f"headers before anything is read (default: half of this machine's memory)")


def max_memory_bytes(args: argparse.Namespace) -> int | None:
    """``--max-memory-mb`` in bytes, or None for the default budget."""
    return None if args.max_memory_mb is None else int(args.max_memory_mb * (1 << 20))


def shard_spec(text: str) -> tuple[int, int]:
    """argparse type: ``I/N``, shard I (0-based) of N, e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N, got {text!r}")
    return index, count


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _parse(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535."""
    value = _parse(int, text, "a port number 0..65535")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _parse(int, text, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (not nan or inf)."""
    value = _parse(float, text, "a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _parse(kind: type, text: str, expected: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
