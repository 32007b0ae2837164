"""Pointing game of the per-abnormality saliency maps on phantoms with known lesion positions (BENCHMARKS.md).

For every volume of one split of a phantom dataset, the packaged model's step 1 decides what is detected
(probability >= threshold, as ``ctagrg report``); for each detected finding that the ground truth
(``ROOT/ground_truth/<name>.json``) locates, the saliency map (``ctagrg.generation.saliency``, ``--method``) is
computed and its peak is mapped to patient mm with ``ctagrg.data.preprocess.output_affine``. Scored against the
ground truth's ``center_ras_mm``:

- ``peak_in_lesion``: the peak lies within the lesion's radius of its centre (findings whose ``size_mm`` is the
  lesion's diameter: ``RADIUS_LABELS``);
- ``pointing``: the peak lies within ``--tolerance-mm`` (10 and 25 by default) of the lesion (of its surface where
  the radius is known, of the recorded centre otherwise);
- ``side``: for a unilateral finding (left or right), the peak lies on that side of the body's midline (the centroid
  of the body voxels, above -500 HU, along the left-right axis).

Which findings count (``LOCATED``): those whose recorded centre is the one lesion (nodule, consolidation, hiatal
hernia, lymphadenopathy at a single station) or a point of it (device, atelectasis plate, opacity patch, effusion,
bronchiectasis, fibrotic line); bilateral ones are left out, their centre naming one side only. Diffuse findings
(emphysema, mosaic attenuation, cardiomegaly, ...) have no position to point at.

A map of zeros (nothing in the feature map raises the logit) has no peak and counts as a miss everywhere; the
median distance leaves it out. Baseline: a peak drawn uniformly from the volume's body voxels; its rates are exact
expectations (the fraction of body voxels that would score), not samples.

    PYTHONPATH=src python benchmarks/saliency_pointing.py --model demo_out/model --data demo_out/data \
        --split test --out saliency_pointing.json
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctagrg.labels import LABEL_INDEX

# findings whose ground-truth size_mm is the diameter of the lesion around center_ras_mm
RADIUS_LABELS = ("Lung nodule", "Consolidation", "Hiatal hernia", "Lymphadenopathy")
# findings whose center_ras_mm is a point of the lesion (the first part of a multi-part one)
POINT_LABELS = ("Medical material", "Atelectasis", "Lung opacity", "Pleural effusion", "Bronchiectasis",
                "Pulmonary fibrotic sequela")
LOCATED = RADIUS_LABELS + POINT_LABELS
BODY_HU = -500.0


@dataclass
class Lesion:
    """One located ground-truth finding: ``centre`` RAS mm, ``radius_mm`` (None where not recorded)."""

    label: str
    side: str | None
    centre: np.ndarray
    radius_mm: float | None


def located_lesions(findings: Sequence[dict[str, Any]]) -> list[Lesion]:
    """The ground truth's findings that a saliency peak can be scored against (see the module docstring)."""
    out = []
    for f in findings:
        label, side = f["label"], f.get("side")
        if label not in LOCATED or side == "bilateral" or f.get("center_ras_mm") is None:
            continue
        if label == "Lymphadenopathy" and "," in (f.get("region") or ""):
            continue  # several stations: the centre is the first one's, the size the largest node's
        radius = f["size_mm"] / 2 if label in RADIUS_LABELS and f.get("size_mm") else None
        out.append(Lesion(label, side, np.asarray(f["center_ras_mm"], np.float64), radius))
    return out


def world_grid(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(D, H, W, 3) RAS mm of every voxel centre of a grid with this voxel -> RAS affine."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


@dataclass
class Score:
    """One finding's result: the model's peak and the uniform-in-body baseline's expected rates."""

    name: str
    label: str
    side: str | None
    empty: bool  # a map of zeros (nothing raises the logit): its "peak" is voxel 0 and scores as a miss
    distance_mm: float
    radius_mm: float | None
    peak_in_lesion: bool | None
    pointing: dict[str, bool]  # by tolerance (mm, as text)
    side_correct: bool | None
    random_peak_in_lesion: float | None
    random_pointing: dict[str, float]
    random_side_correct: float | None


def score_lesion(name: str, lesion: Lesion, saliency: np.ndarray, affine: np.ndarray, body: np.ndarray,
                 world: np.ndarray, tolerances_mm: Sequence[float]) -> Score:
    """Score one map (D, H, W) against ``lesion``. ``body``: (D, H, W) bool; ``world``: :func:`world_grid`; axis 1
    of the grid must run toward patient left (SLP), which ``side`` uses."""
    from ctagrg.generation.saliency import peak_index

    peak = peak_index(saliency)
    empty = not saliency.max() > 0
    dist = np.linalg.norm(world - lesion.centre, axis=-1)
    r = lesion.radius_mm or 0.0
    body_dist = dist[body]
    side_ok = random_side = None
    if lesion.side in ("left", "right"):
        midline = float(np.nonzero(body)[1].mean())
        on_left = np.nonzero(body)[1] > midline
        side_ok = bool((peak[1] > midline) == (lesion.side == "left")) and not empty
        random_side = float(on_left.mean() if lesion.side == "left" else 1.0 - on_left.mean())
    return Score(
        name=name, label=lesion.label, side=lesion.side, empty=empty, distance_mm=float(dist[peak]),
        peak_in_lesion=None if lesion.radius_mm is None else bool(dist[peak] <= r) and not empty,
        radius_mm=lesion.radius_mm,
        pointing={f"{t:g}": bool(dist[peak] <= r + t) and not empty for t in tolerances_mm},
        side_correct=side_ok,
        random_peak_in_lesion=None if lesion.radius_mm is None else float((body_dist <= r).mean()),
        random_pointing={f"{t:g}": float((body_dist <= r + t).mean()) for t in tolerances_mm},
        random_side_correct=random_side)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if values else None


def _rate(vals: Sequence[bool], rand: Sequence[float]) -> dict[str, Any]:
    return {"n": len(vals), "model": float(np.mean(vals)) if vals else None,
            "random": float(np.mean(rand)) if rand else None}


def summarise(scores: Sequence[Score]) -> dict[str, dict[str, Any]]:
    """Per label and over all (``"all"``): n, and the model's and the baseline's mean of each rate."""
    groups: dict[str, list[Score]] = defaultdict(list)
    for s in scores:
        groups[s.label].append(s)
        groups["all"].append(s)
    out = {}
    for key, items in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0])):
        row: dict[str, Any] = {"n": len(items), "empty_maps": sum(s.empty for s in items),
                               "median_distance_mm": _median([s.distance_mm for s in items if not s.empty])}
        for metric in ("peak_in_lesion", "side_correct"):
            vals = [getattr(s, metric) for s in items if getattr(s, metric) is not None]
            rand = [getattr(s, "random_" + metric) for s in items if getattr(s, metric) is not None]
            row[metric] = _rate(vals, rand)
        row["pointing"] = {t: _rate([s.pointing[t] for s in items], [s.random_pointing[t] for s in items])
                           for t in items[0].pointing}
        out[key] = row
    return out


def run(model_dir: Path, data: Path, split: str, tolerances_mm: Sequence[float], limit: int | None = None,
        seconds: dict[str, float] | None = None, method: str = "hirescam") -> list[Score]:
    """Score every detected located finding of ``split`` (see the module docstring); ``seconds`` collects the
    time spent in saliency (``saliency``) and the number of maps (``maps``)."""
    from ctagrg.data.cache import as_cached
    from ctagrg.data.ctio import load_ct
    from ctagrg.data.ctrate import CTRateIndex
    from ctagrg.data.preprocess import output_affine, preprocess_volume
    from ctagrg.evaluation.grounding import load_ground_truth
    from ctagrg.generation.reporter import Reporter
    from ctagrg.generation.saliency import abnormality_saliency

    reporter = Reporter.from_pretrained(model_dir)
    pp = reporter.preprocess
    index = CTRateIndex(data)
    names = index.names(split)[:limit]
    if not names:
        raise SystemExit(f"{data}: no volumes in split {split!r}")
    body_value = (BODY_HU - pp.hu_min) / (pp.hu_max - pp.hu_min) - pp.offset
    scores: list[Score] = []
    timing = seconds if seconds is not None else {}
    for name in names:
        lesions = located_lesions(load_ground_truth(data / "ground_truth", name) or [])
        if not lesions:
            continue
        vol = load_ct(index.row(name)["path"])
        x = preprocess_volume(vol, pp)
        if reporter.config.quantize_like_cache:  # what Reporter.report_volumes feeds the model
            x = as_cached(x, -pp.offset, 1.0 - pp.offset)
        probs = reporter.score(x[None])[0][0]
        detected = [les for les in lesions if probs[LABEL_INDEX[les.label]] >= reporter.thresholds[
            LABEL_INDEX[les.label]]]
        if not detected:
            continue
        start = time.perf_counter()
        maps = abnormality_saliency(reporter.visual, x, sorted({LABEL_INDEX[les.label] for les in detected}),
                                    method)
        timing["saliency"] = timing.get("saliency", 0.0) + time.perf_counter() - start
        timing["maps"] = timing.get("maps", 0) + len(maps)
        affine = output_affine(vol, pp)
        world, body = world_grid(affine, x.shape), x > body_value
        scores += [score_lesion(name, les, maps[LABEL_INDEX[les.label]], affine, body, world, tolerances_mm)
                   for les in detected]
    return scores


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown table: per label n, peak-in-lesion, pointing per tolerance and side, model / random."""
    def cell(m: dict[str, Any]) -> str:
        return "—" if m["model"] is None else f"{m['model']:.2f} / {m['random']:.2f} (n={m['n']})"

    tolerances = list(summary["all"]["pointing"])
    lines = [f"| finding | n | peak in lesion | {' | '.join(f'pointing ≤ {t} mm' for t in tolerances)} | side | "
             f"median distance (mm) |", "| --- " * (5 + len(tolerances)) + "|"]
    for key, row in summary.items():
        pointing = " | ".join(cell(row["pointing"][t]) for t in tolerances)
        lines.append(f"| {'**all**' if key == 'all' else key} | {row['n']} | {cell(row['peak_in_lesion'])} | "
                     f"{pointing} | {cell(row['side_correct'])} | {_fmt(row['median_distance_mm'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="packaged model folder")
    parser.add_argument("--data", required=True, type=Path, help="phantom dataset root (with ground_truth/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tolerance-mm", type=float, nargs="+", default=[10.0, 25.0],
                        help="pointing game: peak within this of the lesion (one or more values)")
    parser.add_argument("--method", default="hirescam", help="saliency method: hirescam or gradcam")
    parser.add_argument("--limit", type=int, default=None, help="only the first N volumes of the split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON with every finding's score and the summary")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    scores = run(args.model, args.data, args.split, args.tolerance_mm, args.limit, timing, args.method)
    summary = summarise(scores)
    result = {"model": str(args.model), "data": str(args.data), "split": args.split, "method": args.method,
              "tolerance_mm": args.tolerance_mm, "threads": args.threads,
              "seconds_total": round(time.perf_counter() - start, 1),
              "seconds_per_map": round(timing.get("saliency", 0.0) / max(1, timing.get("maps", 0)), 3),
              "summary": summary, "findings": [asdict(s) for s in scores]}
    if args.out:
        from ctagrg.utils.atomic import write_json_atomic

        write_json_atomic(args.out, result)
    print(table(summary))
    print(f"{timing.get('maps', 0)} maps, {result['seconds_per_map']} s per map (forward + backward, "
          f"{args.threads} threads); {result['seconds_total']} s in all")


if __name__ == "__main__":
    main()
