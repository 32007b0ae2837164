"""Half thresholds (``model.extras.halves.condition_on_halves``): per label, the half probability at which a half
counts as "on", chosen on the validation volumes' stated sides, and the training extension that sets them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ctagrg.config import ConfigError
from ctagrg.extras.attributes.targets import AttributeTargets
from ctagrg.extras.halves.heads import SIDE_HALVES, halves_on
from ctagrg.labels import LABELS
from ctagrg.models.thresholds_file import read_threshold_file, save_thresholds
from ctagrg.training.extensions import Extension


def select_half_thresholds(half_probs: np.ndarray, sides: np.ndarray, fallback: np.ndarray,
                           min_findings: int = 5) -> tuple[np.ndarray, list[tuple[float | None, int]]]:
    """Per-label half thresholds for ``model.extras.halves.condition_on_halves``, chosen on validation findings.

    A half is "on" when its probability reaches the threshold, and where neither does the higher one is
    (:func:`halves_on`, the rule the model applies); the halves that are on must equal the stated
    side's halves (right -> {right}, bilateral -> {right, left}). Per label, the threshold with the highest such
    accuracy over the findings whose side is known. Candidates are float32 values (the model compares in float32)
    between the sorted probabilities; of equally good ones, the middle of the widest run of them, in probability,
    so that it lies midway between the groups the validation findings separate (the middle by count would sit among
    the many probabilities near 1), and of equally wide runs the one whose middle is nearest 0.5. ``fallback[j]``
    (e.g. the label's detection threshold) when fewer than ``min_findings`` (at least 1) findings state a side.

    Args:
        half_probs: (N, 2, L) probabilities of each half, [right, left]; sides: (N, L) index into
            ``SIDE_CLASSES`` ("left", "right", "bilateral"), -1 unknown; fallback: (L,).
    Returns (L,) thresholds and, per label, (validation side accuracy at it or None, findings with a side).
    """

    probs = torch.as_tensor(np.asarray(half_probs), dtype=torch.float32)
    sides = torch.as_tensor(np.asarray(sides), dtype=torch.long)
    out, report = np.asarray(fallback, np.float64).copy(), []
    for j in range(sides.shape[1]):
        known = sides[:, j] >= 0
        n = int(known.sum())
        if n < max(min_findings, 1):
            report.append((None, n))
            continue
        p, truth = probs[known, :, j], SIDE_HALVES[sides[known, j]]  # (n, 2) each
        values = torch.unique(p).double()
        mids = torch.cat([values[:1] / 2, (values[:-1] + values[1:]) / 2, (values[-1:] + 1) / 2]).float()
        candidates = torch.unique(mids)  # float32, sorted; a midpoint that rounds onto a value is still scored
        scores = torch.stack([(halves_on(p, t) == truth).all(-1).float().mean() for t in candidates])
        # rounded to float32, the model's threshold dtype: it stays between the run's ends, which are float32
        out[j] = float(np.float32(_middle_of_widest_run(candidates.double().numpy(), (scores == scores.max()).numpy())))
        report.append((float(scores.max()), n))
    return out, report


def _middle_of_widest_run(candidates: np.ndarray, best: np.ndarray) -> float:
    """The midpoint of the widest run of consecutive ``best`` candidates (sorted; of equally wide runs, the one whose
    midpoint is nearest 0.5), measured in candidate value. Every value between a run's ends scores as they do."""
    runs, start = [], None
    for k, flag in enumerate([*best.tolist(), False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            runs.append((start, k - 1))
            start = None
    lo, hi = max(runs, key=lambda r: (candidates[r[1]] - candidates[r[0]],
                                      -abs((candidates[r[0]] + candidates[r[1]]) / 2 - 0.5)))
    return float((candidates[lo] + candidates[hi]) / 2)


@dataclass
class HalfThresholdsConfig:
    """``extras.half_thresholds`` (step 1): where the validation volumes' stated sides are read."""

    sentences_csv: str = ""  # `ctagrg sentences` CSV; empty: extras.attributes.sentences_csv


def sides_source(task: Any, path: str, who: str) -> AttributeTargets:
    """The stated sides and sizes for extension ``who``: from ``path``, else the stage's attributes extension."""
    from ctagrg.extras.attributes.extension import AttributesExtension

    attributes = task.extension(AttributesExtension)
    if not path and attributes is not None:
        return attributes.targets
    if not path:
        raise ConfigError(f"extras.{who}.sentences_csv: not set, and the stage has no extras.attributes to take it "
                          f"from (the `ctagrg sentences` CSV of the validation reports)")
    return AttributeTargets.from_sentences_csv(path)


class HalfThresholdsExtension(Extension):
    """After step 1: choose the half thresholds on the validation volumes (the sides their sentences state; the
    detection thresholds for labels with fewer than 5 such findings), store them in the model and in
    thresholds.json, and save ``best/`` again. Until then the model's half thresholds are 0.5."""

    config_class = HalfThresholdsConfig
    stages = ("classifier",)

    def __init__(self, task: Any, config: HalfThresholdsConfig) -> None:
        super().__init__(task, config)
        heads = task.cfg.model.heads
        halves = task.cfg.model.extras.get("halves", {})
        if heads.variant != "halves" or not halves.get("condition_on_halves"):
            raise ConfigError("extras.half_thresholds: needs heads.variant: halves with "
                              "model.extras.halves.condition_on_halves: true")
        if not task.cfg.data.valid_labels:
            raise ConfigError("extras.half_thresholds: needs data.valid_labels (the thresholds are chosen on the "
                              "sides that the validation volumes' sentences state)")
        self.targets = sides_source(task, config.sentences_csv, "half_thresholds")

    def on_train_end(self, model: nn.Module, best: Path) -> None:
        task, tc = self.task, self.task.cfg.train
        loader = DataLoader(task.valid_dataset(), batch_size=tc.eval_batch_size or tc.batch_size,
                            num_workers=tc.num_workers)
        halves, sides = [], []

        def collect(out: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
            halves.append(torch.sigmoid(out["half_logits"].float()).cpu())
            sides.append(self.targets.gather(batch["name"], batch["labels"], "cpu")[0])

        with torch.no_grad():
            task._predict_with(model, loader, lambda batch: task._inputs(batch, train=False), collect)
        content = read_threshold_file(best)
        detection = np.array([content["thresholds"][n] for n in LABELS])
        chosen, report = select_half_thresholds(torch.cat(halves).numpy(), torch.cat(sides).numpy(), detection)
        model.heads.half_threshold.copy_(torch.from_numpy(chosen).float())
        task.save_model(model, best)
        content["half_rule"] = ("max side accuracy on the validation findings whose sentence states a side "
                                "(fewer than 5: the detection threshold)")
        content["half_sides_from"] = self.targets.source
        content["half_thresholds"] = {n: float(t) for n, t in zip(LABELS, chosen, strict=True)}
        content["half_validation"] = {n: {"side_accuracy": acc, "findings": k}
                                      for n, (acc, k) in zip(LABELS, report, strict=True)}
        save_thresholds(best, content)
