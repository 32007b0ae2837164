"""``ctagrg inspect PATH``: a scan's geometry, HU range, and what preprocessing would make of it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ctagrg.cli.arguments import add_max_memory_mb, max_memory_bytes

DESCRIPTION = (
    "Print a scan's shape, voxel spacing, orientation code and HU range, then the preprocessing plan: "
    "reorientation to SLP, the resampled size, the centre crop/pad per axis (in voxels and mm) and the output "
    "shape. --model DIR takes the plan from that packaged model's preprocess.json instead of the paper's defaults. "
    "--run also preprocesses it and prints the output's value range and the time taken."
)
_AXIS_WORDS = {"L": "Left", "R": "Right", "A": "Anterior", "P": "Posterior", "S": "Superior", "I": "Inferior"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="NIfTI, NRRD, MHA/MHD, DICOM folder or .zip")
    parser.add_argument("--metadata", help="CT-RATE metadata CSV; the row named like PATH is used")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="YAML with PreprocessConfig fields (default: the seed's, the paper's)")
    source.add_argument("--model", metavar="DIR",
                        help="a packaged model folder: its preprocess.json, the plan that model's inputs go through")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--run", action="store_true", help="also run the preprocessing and summarise the output")
    add_max_memory_mb(parser)


def describe(vol: Any, config: Any, plan_from: str = "the paper's defaults") -> list[str]:
    """Human-readable lines about ``vol`` (CTVolume) and its preprocessing plan under ``config`` (read from
    ``plan_from``, named in the output)."""
    import numpy as np

    from ctagrg.data.preprocess import plan

    p = plan(vol, config)
    lo, hi = vol.hu_range()
    pct = np.percentile(vol.raw[::2, ::2, ::2], [1, 50, 99]) * vol.slope + vol.intercept
    codes = "".join(vol.axcodes)
    lines = [
        f"source:       {vol.source}",
        f"shape:        {' x '.join(map(str, vol.shape))} (stored voxel order, {vol.raw.dtype})",
        f"spacing:      {' x '.join(f'{s:.4g}' for s in vol.spacing)} mm",
        f"orientation:  {codes} (axis i points toward " + ", ".join(_AXIS_WORDS[c] for c in codes) + ")",
        f"HU:           {lo:g} .. {hi:g} (1/50/99th percentile {pct[0]:.0f} / {pct[1]:.0f} / {pct[2]:.0f}; "
        f"HU = stored x {vol.slope:g} {vol.intercept:+g})",
        f"preprocess:   to {config.axcodes}, {' x '.join(f'{s:g}' for s in config.spacing)} mm, "
        f"{' x '.join(map(str, config.shape))}, HU window [{config.hu_min:g}, {config.hu_max:g}] -> [0, 1] "
        f"- {config.offset:g}",
        f"  plan from:  {plan_from}",
        f"  reoriented: {' x '.join(map(str, p.reoriented_shape))} at "
        f"{' x '.join(f'{s:.4g}' for s in p.reoriented_spacing)} mm",
        f"  resampled:  {' x '.join(map(str, p.resampled_shape))} (int(size x spacing / target); effective "
        f"{' x '.join(f'{s:.4g}' for s in p.effective_spacing)} mm)",
    ]
    for axis, (name, r, t, s) in enumerate(zip("DHW", p.resampled_shape, p.out_shape, p.start, strict=True)):
        sp = config.spacing[axis]
        if r >= t:
            lines.append(f"  {name} ({config.axcodes[axis]}): crop {s} before, {r - t - s} after "
                         f"({s * sp:.0f} / {(r - t - s) * sp:.0f} mm of the scan dropped)")
        else:
            lines.append(f"  {name} ({config.axcodes[axis]}): pad {-s} before, {t - r + s} after with "
                         f"{config.pad_value:g} (air)")
    lines.append(f"output:       {' x '.join(map(str, p.out_shape))} float32")
    return lines


def model_preprocess(model: str) -> Path:
    """The ``preprocess.json`` of the packaged model folder ``model``; FileNotFoundError naming what is missing."""
    from ctagrg.generation.reporter import check_model_dir

    path = check_model_dir(model) / "preprocess.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model}: no preprocess.json (not a packaged ctagrg model folder, written by "
                                f"Reporter.save_pretrained)")
    return path


def run(args: argparse.Namespace) -> int:
    import time
    import warnings

    from ctagrg.config import ConfigError, load_config
    from ctagrg.data.ctio import CTReadError, load_ct
    from ctagrg.data.inputs import input_stem, read_metadata_csv
    from ctagrg.data.preprocess import PreprocessConfig, preprocess_volume

    try:
        config = load_config(PreprocessConfig, model_preprocess(args.model) if args.model else args.config, args.set)
        metadata = read_metadata_csv(args.metadata).get(input_stem(Path(args.path))) if args.metadata else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vol = load_ct(args.path, metadata, max_bytes=max_memory_bytes(args))
    except (ConfigError, CTReadError, FileNotFoundError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.metadata and metadata is None:
        print(f"warning: {args.metadata}: no row for {input_stem(Path(args.path))}; header values used",
              file=sys.stderr)
    plan_from = (str(model_preprocess(args.model)) if args.model else args.config or "the paper's defaults") + (
        f" with {', '.join(args.set)}" if args.set else "")
    print("\n".join(describe(vol, config, plan_from)))
    if args.run:
        t0 = time.perf_counter()
        out = preprocess_volume(vol, config)
        padded = float((out == config.pad_value).mean())
        print(f"ran:          {time.perf_counter() - t0:.2f} s; values {out.min():.3f} .. {out.max():.3f}, "
              f"mean {out.mean():.3f}; {padded:.0%} of voxels at the air/pad value")
    return 0
