"""``ctagrg phantom``: generate a synthetic CT-RATE-style dataset, or draw a preview montage of one."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Generate synthetic chest CT phantoms in CT-RATE's layout (volumes, reports, 18-label, metadata CSVs and a "
    "ground-truth JSON per volume), deterministic for a seed:  ctagrg phantom --out DIR --n N. "
    "Or draw one row of slices per abnormality:  ctagrg phantom --preview DIR --out PNG. "
    "See docs/phantom.md. Synthetic data for testing; research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to write, or the PNG path with --preview")
    parser.add_argument("--n", type=int, help="number of volumes (over all splits)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--size", default="small", choices=("tiny", "small", "paper"),
                        help="grid: tiny (64², tests), small (~64×128×128 at 4×2.5×2.5 mm, default), "
                             "paper (512², CT-RATE-like; slow)")
    parser.add_argument("--split", default="train=0.7,valid=0.15,test=0.15",
                        help="fraction of volumes per split, by patient (default train=0.7,valid=0.15,test=0.15)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")
    parser.add_argument("--min-prevalence", type=float, default=0.0,
                        help="raise every label's probability to at least this (default 0: CT-RATE-like)")
    parser.add_argument("--preview", metavar="DIR", help="draw a montage of the phantom dataset DIR into --out")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    if args.preview:
        from ctagrg.phantom.preview import render_preview

        if Path(args.out).suffix.lower() != ".png":
            print(f"{args.out}: the preview is a PNG image; give a .png path", file=sys.stderr)
            return 2
        try:
            out = render_preview(args.preview, args.out)
        except FileNotFoundError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"wrote {out}")
        return 0
    if args.n is None:
        print("ctagrg phantom: --n is required to generate a dataset (or use --preview DIR)", file=sys.stderr)
        return 2
    from ctagrg.phantom.generate import generate_dataset

    start = time.perf_counter()
    try:
        root = generate_dataset(Path(args.out), n=args.n, seed=args.seed, size=args.size, split=args.split,
                                workers=args.workers, min_prevalence=args.min_prevalence)
    except ValueError as exc:  # the out-folder checks name the folder; the others name the option
        print(f"ctagrg phantom: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} phantom volumes to {root} in {time.perf_counter() - start:.1f} s")
    return 0
