"""Can the side of a lateralised finding be read off the image? The half-logit side probe of a trained model.

Issue 3's grounding check. For each one-sided lung nodule, pleural effusion or consolidation of the phantom ground
truth, the probe says "right" when the label's logit on the right half is higher than on the mirrored left half
(``PretrainModel``'s ``half_logits``), "left" otherwise (``ctagrg.evaluation.grounding.half_side_probe``). Every
present finding counts, detected or not; a volume with findings of one label on both sides counts each of them, so
one is always wrong. Accuracy per label and overall, with Wilson 95% intervals, and for nodules by size.

The model is a pretraining checkpoint (``DIR/runs/pretrain/best`` of ``ctagrg demo``, or the learnability
benchmark's ``run/best``). The volumes are either a split of an existing phantom dataset and its cache, or new
phantoms generated and preprocessed here (other patients than any training set when the seed differs):

    .venv/bin/python benchmarks/phantom_side_probe.py --model demo_out/runs/pretrain/best \\
        --data demo_out/data --cache demo_out/cache --split test --out /tmp/probe_test.json
    .venv/bin/python benchmarks/phantom_side_probe.py --model demo_out/runs/pretrain/best \\
        --fresh 200 --seed 11 --work /tmp/fresh11 --out /tmp/probe_fresh11.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDE_LABELS = ("Lung nodule", "Pleural effusion", "Consolidation")
SIZE_BINS_MM = ((0.0, 8.0), (8.0, 12.0), (12.0, 20.0), (20.0, 1000.0))


def fresh_phantoms(work: Path, n: int, seed: int, min_prevalence: float, workers: int) -> tuple[Path, Path]:
    """Generate ``n`` small phantoms (all in a test split) and preprocess them with the demo's config; reused when
    ``work`` already holds them. Returns (data root, cache folder)."""
    from ctagrg.cli.main import main as cli_main
    from ctagrg.phantom.generate import generate_dataset

    data, cache = work / "data", work / "cache"
    if (data / "phantom.json").is_file():  # reuse, but only phantoms made with these settings
        made = json.loads((data / "phantom.json").read_text(encoding="utf-8"))
        want = {"n": n, "seed": seed, "size": "small", "min_prevalence": min_prevalence}
        if any(made.get(k) != v for k, v in want.items()):
            raise SystemExit(f"{data / 'phantom.json'}: made with {({k: made.get(k) for k in want})}, not "
                             f"{want}; use another --work")
    else:
        generate_dataset(data, n=n, seed=seed, size="small", split={"test": 1.0}, workers=workers,
                         min_prevalence=min_prevalence)
    if not (cache / "manifest.csv").is_file():
        argv = ["preprocess", str(data), "--out", str(cache), "--config",
                str(ROOT / "configs" / "demo" / "preprocess.yaml"), "--workers", str(workers)]
        if cli_main(argv) != 0:
            raise SystemExit(f"`ctagrg {' '.join(argv)}` failed")
    return data, cache


def probe(model_dir: Path, data: Path, cache: Path, split: str, batch_size: int) -> list[dict]:
    """The probe's entries (``half_side_probe``) for every cached volume of ``split`` with ground truth."""
    import torch
    from torch.utils.data import DataLoader

    from ctagrg.data.dataset import CachedVolumeDataset, cached_names
    from ctagrg.evaluation.grounding import load_ground_truth
    from ctagrg.extras.halves.side_probe import half_side_probe
    from ctagrg.models.preprocess_match import check_cache_preprocess, encoder_config_of
    from ctagrg.models.step1 import PretrainModel

    model = PretrainModel.from_pretrained(model_dir).eval()
    check_cache_preprocess(encoder_config_of(model), cache)  # the encoder must fit the cache's preprocessing
    names = [n for n in cached_names(cache) if n.split("_", 1)[0] == split]
    if not names:
        raise SystemExit(f"{cache}: no cached volumes of split {split!r}")
    entries: list[dict] = []
    with torch.no_grad():
        for batch in DataLoader(CachedVolumeDataset(cache, names=names), batch_size=batch_size):
            res = model(batch["volume"])
            if "half_logits" not in res:
                raise SystemExit(f"{model_dir}: the model has no lateral halves (half_logits); nothing to probe")
            for name, half in zip(batch["name"], res["half_logits"], strict=True):
                stem = name.replace(".nii.gz", "")
                truth = load_ground_truth(data / "ground_truth", stem)
                if truth is None:
                    raise SystemExit(f"{data / 'ground_truth'}: no ground truth for {stem}")
                entries += [{"volume": stem, **e} for e in half_side_probe(half.numpy(), truth, SIDE_LABELS)]
    return entries


def by_size(entries: list[dict]) -> dict[str, dict]:
    from ctagrg.extras.halves.side_probe import side_probe_summary

    out = {}
    for lo, hi in SIZE_BINS_MM:
        chosen = [e for e in entries if e["label"] == "Lung nodule" and e["size_mm"] and lo <= e["size_mm"] < hi]
        out[f"{lo:g}-{hi:g} mm" if hi < 1000 else f">= {lo:g} mm"] = side_probe_summary(chosen)["all"]
    return out


def main() -> None:
    import torch

    from ctagrg.extras.halves.side_probe import side_probe_summary
    from ctagrg.utils.atomic import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a pretraining checkpoint folder")
    parser.add_argument("--data", type=Path, help="phantom dataset root (with ground_truth/)")
    parser.add_argument("--cache", type=Path, help="its preprocessed volume cache")
    parser.add_argument("--split", default="test")
    parser.add_argument("--fresh", type=int, default=0, metavar="N", help="generate N new phantoms instead")
    parser.add_argument("--seed", type=int, default=11, help="phantom seed with --fresh")
    parser.add_argument("--min-prevalence", type=float, default=0.2, help="with --fresh, as the demo's")
    parser.add_argument("--work", type=Path, help="with --fresh: where the phantoms and their cache go")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.fresh:
        if args.work is None:
            parser.error("--fresh needs --work")
        data, cache = fresh_phantoms(args.work, args.fresh, args.seed, args.min_prevalence, args.threads)
    elif args.data is None or args.cache is None:
        parser.error("give --data and --cache, or --fresh N --work DIR")
    else:
        data, cache = args.data, args.cache
    entries = probe(args.model, data, cache, args.split, args.batch)
    summary = side_probe_summary(entries)
    results = {"model": str(args.model), "data": str(data), "split": args.split, "fresh_seed":
               args.seed if args.fresh else None, "summary": summary, "nodules_by_size": by_size(entries),
               "misses": [e for e in entries if not e["correct"]], "seconds": time.perf_counter() - start}
    write_json_atomic(args.out, results)
    for name in (*SIDE_LABELS, "all"):
        s = summary.get(name)
        if s:
            print(f"side probe {name}: {s['correct']} / {s['n']} = {s['accuracy']:.3f} "
                  f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")
    for span, s in results["nodules_by_size"].items():
        if s["n"]:
            print(f"  nodules {span}: {s['correct']} / {s['n']} = {s['accuracy']:.3f}")
    print(f"{len(results['misses'])} misses; {results['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
