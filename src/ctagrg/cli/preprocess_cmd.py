"""``ctagrg preprocess INPUT... --out DIR``: preprocess scans into the training cache (resumable, shardable)."""

from __future__ import annotations

import argparse
import sys

from ctagrg.cli.arguments import add_max_memory_mb, max_memory_bytes, shard_spec

DESCRIPTION = (
    "Preprocess CT scans (NIfTI, NRRD, MHA/MHD, DICOM folders or .zip, or a whole CT-RATE root) into DIR: one "
    "<name>.safetensors per volume, manifest.csv (name, source, status, error, shape, spacing, seconds, ...) and "
    "preprocess.json. Finished volumes are skipped, so the command can be rerun after an interruption. A file that "
    "fails is recorded as failed and the others still complete; the exit code is 1 if anything failed. A stop "
    "signal (SIGTERM, SIGUSR1) ends the run between volumes, with the manifest written, and exit status 75. "
    "See docs/preprocessing.md. Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="scan files, folders (searched recursively) or a CT-RATE root")
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument("--metadata", help="CT-RATE metadata CSV (found automatically for a CT-RATE root)")
    parser.add_argument("--config", help="YAML with PreprocessConfig fields (default: the seed's 240x480x480)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set shape=[64,128,128] (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard", type=shard_spec, default=(0, 1), metavar="I/N",
                        help="process only shard I of N (0-based), e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    add_max_memory_mb(parser, "a scan (the budget of all --workers together)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctagrg.config import ConfigError, load_config
    from ctagrg.data.cachebuild import CacheConfigMismatch, build_cache
    from ctagrg.data.inputs import discover_inputs
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.utils.progress import progress

    try:
        config = load_config(PreprocessConfig, args.config, args.set)
        items = discover_inputs(args.inputs, args.metadata)
        rows = build_cache(items, args.out, config, workers=args.workers, shard=args.shard, wrap=progress,
                           max_bytes=max_memory_bytes(args))
    except (ConfigError, CacheConfigMismatch, FileNotFoundError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    failed = [r for r in rows if r.get("status") != "ok"]
    skipped = sum(1 for r in rows if r.get("skipped"))
    for r in failed:
        print(r.get("error") or f"{r['source']}: failed", file=sys.stderr)
    for r in rows:
        if r.get("warnings") and not r.get("skipped"):
            print(f"warning: {r['warnings']}", file=sys.stderr)
    shard = f" (shard {args.shard[0]}/{args.shard[1]})" if args.shard[1] > 1 else ""
    done = len(rows) - len(failed) - skipped
    print(f"preprocess{shard}: {done} done, {skipped} already cached, {len(failed)} failed; "
          f"manifest: {Path(args.out) / 'manifest.csv'}")
    return 1 if failed else 0
