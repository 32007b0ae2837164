"""Side and nodule-size grounding of generated sentences on phantoms (issue 6 "Done when"; BENCHMARKS.md).

Runs a packaged model on one split of a phantom dataset (volumes from the preprocessed cache) and scores the
sentences with ``ctagrg.evaluation.grounding.grounding_metrics`` against ``ROOT/ground_truth``:

- ``model``: the normal pipeline (detected = probability ≥ threshold), as ``ctagrg report`` does;
- ``oracle detection``: sentences generated for the labels truly present (from the ground truth), which isolates the
  decoder's share: does the sentence state the right side / size once the abnormality is known?

    .venv/bin/python benchmarks/phantom_grounding.py --model demo_out/model --data demo_out/data \
        --cache demo_out/cache --split test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ctagrg.data.cache import cache_path, load_cached
from ctagrg.data.dataset import cached_names
from ctagrg.evaluation.grounding import grounding_metrics, load_ground_truth
from ctagrg.generation.reporter import Reporter
from ctagrg.labels import LABEL_INDEX, NUM_LABELS


def run(reporter: Reporter, data: Path, cache: Path, split: str, batch: int) -> dict[str, dict]:
    names = [n for n in cached_names(cache) if n.split("_", 1)[0] == split]
    if not names:
        raise SystemExit(f"{cache}: no cached volumes of split {split!r}")
    lines: dict[str, list[dict]] = {"model": [], "oracle detection": []}
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        vols = torch.stack([torch.from_numpy(load_cached(cache_path(cache, n))) for n in chunk]).numpy()
        lines["model"] += [{"input": n, **r.to_dict()} for n, r in zip(chunk, reporter.report_volumes(vols),
                                                                          strict=True)]
        saved = reporter.thresholds
        try:  # oracle: thresholds 0 for present labels, above 1 for absent ones
            for k, n in enumerate(chunk):
                present = {f["label"] for f in load_ground_truth(data / "ground_truth", n) or []}
                reporter.thresholds = [0.0 if i in {LABEL_INDEX[p] for p in present} else 1.01
                                       for i in range(NUM_LABELS)]
                lines["oracle detection"].append({"input": n, **reporter.report_volumes(vols[k : k + 1])[0].to_dict()})
        finally:
            reporter.thresholds = saved
    return {mode: grounding_metrics(preds, data / "ground_truth") for mode, preds in lines.items()} | {
        "_examples": {"model": [p["report"] for p in lines["model"][:5]]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="phantom dataset root (with ground_truth/)")
    parser.add_argument("--cache", required=True, help="its preprocessed volume cache")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the metrics as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run(Reporter.from_pretrained(args.model), Path(args.data), Path(args.cache), args.split, args.batch)
    print("| detection | side accuracy (n) | nodule size within 5 mm (n) | side unstated | size unstated |")
    print("| --- | --- | --- | --- | --- |")
    for mode in ("model", "oracle detection"):
        m = results[mode]
        side = "n/a" if m["side_accuracy"] is None else f"{m['side_accuracy']:.3f}"
        size = "n/a" if m["nodule_size_within_5mm"] is None else f"{m['nodule_size_within_5mm']:.3f}"
        print(f"| {mode} | {side} ({m['side_n']}) | {size} ({m['size_n']}) | {m['side_unstated']} | "
              f"{m['size_unstated']} |")
    print(f"{results['model']['volumes']} volumes of split {args.split!r}, {time.perf_counter() - start:.1f} s")
    for text in results["_examples"]["model"]:
        print("  e.g.", text)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
