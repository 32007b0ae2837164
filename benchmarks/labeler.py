"""Labeler throughput (reports/s on one core) and its scores on the 800 dev reports, by develop / holdout part.

Usage: taskset -c 0 python benchmarks/labeler.py [--reports DIR] [--repeat N]
DIR defaults to ../shared/data/reports (dev_reports.csv + dev_labels.csv).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctagrg.labels import LABELS
from ctagrg.text.labeler import RuleLabeler
from ctagrg.text.scoring import format_scores, score_labels, split_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/reports"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    reports = pd.read_csv(Path(args.reports) / "dev_reports.csv")
    labels = pd.read_csv(Path(args.reports) / "dev_labels.csv")
    assert reports.VolumeName.tolist() == labels.VolumeName.tolist(), "reports and labels rows differ"
    texts = (reports.Findings_EN.fillna("") + "\n" + reports.Impressions_EN.fillna("")).tolist()
    best = float("inf")
    for _ in range(args.repeat):
        labeler = RuleLabeler()  # a fresh (cold) sentence cache each time: no credit for repeats across runs
        start = time.perf_counter()
        pred = labeler.label_reports(texts)
        best = min(best, time.perf_counter() - start)
    print(f"rule labeler: {len(texts)} reports in {best:.2f} s = {len(texts) / best:.0f} reports/s (one thread)")
    truth = labels[list(LABELS)].to_numpy()
    part = np.array([split_of(n) for n in reports.VolumeName])
    for name in ("develop", "holdout", "all"):
        mask = part == name if name != "all" else np.ones(len(part), bool)
        print(f"\n### {name} ({mask.sum()} reports)\n")
        print(format_scores(score_labels(truth[mask], pred[mask])))


if __name__ == "__main__":
    main()
