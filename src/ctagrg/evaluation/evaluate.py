"""``ctagrg evaluate``: generate reports for one split of a CT-RATE-layout dataset and score them.

Outputs in ``out_dir``: ``predictions.jsonl`` (the ``ctagrg report`` line format; resumable), ``metrics.json``
(classification, the protocol's clinical and NLG sections, grounding on phantoms, bootstrap 95% CIs, a definition
of each headline figure), ``generated_labels.csv`` (the labeler on the generated reports), ``vlm3d_submission.json``
(the VLM3D challenge's submission format), ``examples.json`` (every generated report beside its reference) and
``report.md`` / ``report.html`` with figures (see :mod:`ctagrg.evaluation.report_render`). The two scoring
conventions (``protocol``) are in :mod:`ctagrg.evaluation.protocols`; what every number means is in
docs/evaluation.md.

Volumes are read from the preprocessed cache when one exists (``--cache`` or ``<data>/cache`` with a
``manifest.csv``), so evaluation never repeats preprocessing; otherwise from the NIfTI files.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.data.ctrate import canonical_split
from ctagrg.evaluation import bootstrap as bs
from ctagrg.evaluation.clinical import clinical_metrics, confusion_counts, label_texts
from ctagrg.evaluation.definitions import DEFINITIONS
from ctagrg.evaluation.diversity import diversity_metrics
from ctagrg.evaluation.predict import VOLUME_SUFFIX, load_split, predict_split, read_predictions
from ctagrg.evaluation.protocols import HEADLINE_KEYS, ScoringInput, check_protocol, score
from ctagrg.labels import LABELS


@dataclass
class EvaluateConfig:
    """Settings of one evaluation run (saved into metrics.json under ``config``)."""

    split: str = "test"  # CT-RATE: valid (or validation, the same split)
    protocol: str = "ctagrg"  # ctagrg: labeler on both sides, micro + macro; vlm3d: the VLM3D challenge's harness
    cache_dir: str | None = None  # preprocessed cache; None: <data>/cache when it has a manifest.csv
    labeler: str = "rules"  # ctagrg.text.labeler.get_labeler spec, e.g. "rules" or "radbert:DIR"
    # protocol ctagrg's reference labels: the labeler on the reference reports (the convention), or the label CSV
    # (phantoms, whose CSV is the truth the reports were written from)
    clinical_reference: str = "reports"
    reference_columns: tuple[str, ...] = ("Findings_EN",)  # reference text for NLG (joined with a space)
    meteor: bool = True
    bootstrap: int = 1000  # resamples for the 95% CIs (0: no CIs)
    seed: int = 0
    batch_size: int = 4
    workers: int = 0  # processes reading volumes ahead of the model (0: in this one); the results do not depend on it
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N
    examples: int = 5  # generated reports shown beside their references in report.md
    limit: int | None = None  # evaluate only the first N volumes of the split (smoke tests)

    def __post_init__(self) -> None:
        self.split = canonical_split(self.split)
        check_protocol(self.protocol)
        if self.clinical_reference not in ("reports", "csv"):
            raise ValueError(f"clinical_reference: expected 'reports' or 'csv', got {self.clinical_reference!r}")
        if self.bootstrap < 0 or self.batch_size < 1 or self.workers < 0:
            raise ValueError("bootstrap must be >= 0, batch_size >= 1 and workers >= 0")


def classification_metrics(probs: np.ndarray, detected: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Per-label AUROC (probabilities) and F1 (thresholded detections) against the label CSV.

    Macro AUROC averages the labels with both classes in the split; macro F1 the labels with a positive.
    Args: probs (N, 18) float in [0, 1]; detected (N, 18) 0/1; labels (N, 18) 0/1.
    """
    from ctagrg.evaluation.classification import auroc_per_label  # the visual side's per-label AUROC

    clin = clinical_metrics(detected, labels)  # same P/R/F1 counting, applied to the classifier's decisions
    auroc = auroc_per_label(labels, probs)  # NaN where a label has one class
    per_label = {name: {"auroc": None if np.isnan(auroc[j]) else float(auroc[j]), **clin["per_label"][name]}
                 for j, name in enumerate(LABELS)}
    aurocs = auroc[~np.isnan(auroc)]
    return {"macro_auroc": float(aurocs.mean()) if aurocs.size else None, "macro_f1": clin["macro_f1"],
            "micro_f1": clin["micro_f1"], "auroc_labels": len(aurocs), "per_label": per_label}


def _arrays(preds: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([[p["abnormalities"][n]["probability"] for n in LABELS] for p in preds], dtype=np.float64)
    det = np.array([[int(bool(p["abnormalities"][n]["detected"])) for n in LABELS] for p in preds], dtype=np.int64)
    return probs.reshape(-1, len(LABELS)), det.reshape(-1, len(LABELS))


def _classification_intervals(probs: np.ndarray, det: np.ndarray, labels: np.ndarray,
                              w: np.ndarray) -> dict[str, list[float] | None]:
    cls = bs.clinical_samples(confusion_counts(det, labels), w)
    return {"classification.macro_auroc": bs.percentile_interval(bs.macro_auroc_samples(probs, labels, w)),
            "classification.macro_f1": bs.percentile_interval(cls["macro_f1"])}


def compute_metrics(preds: list[dict[str, Any]], split: Any, cfg: EvaluateConfig,
                    ground_truth_dir: Path | None) -> dict[str, Any]:
    """All metrics for the successful predictions of ``split`` (a :class:`~ctagrg.evaluation.predict.Split`)."""
    from ctagrg.evaluation.grounding import grounding_metrics

    by_name = {p["name"]: p for p in preds if "error" not in p}
    keep = [i for i, n in enumerate(split.names) if n in by_name]
    if not keep:
        raise RuntimeError(f"no successful predictions for split {cfg.split!r}; see predictions.jsonl errors")
    ok = [by_name[split.names[i]] for i in keep]
    hyps, refs = [p["report"] for p in ok], [split.references[i] for i in keep]
    probs, det = _arrays(ok)
    out: dict[str, Any] = {}
    labels = split.labels[keep] if split.labels is not None else None
    if labels is not None:
        out["classification"] = classification_metrics(probs, det, labels)
    weights = bs.resample_weights(len(hyps), cfg.bootstrap, cfg.seed) if cfg.bootstrap else None
    gen_lab = label_texts(hyps, cfg.labeler)
    inp = ScoringInput(names=[p["name"] for p in ok], generated=hyps, references=refs, generated_labels=gen_lab,
                       csv_labels=labels, labeler=cfg.labeler, meteor=cfg.meteor,
                       clinical_reference=cfg.clinical_reference,
                       reference_columns=tuple(cfg.reference_columns), weights=weights)
    sections, ci = score(cfg.protocol, inp)
    out.update(sections)
    if ground_truth_dir is not None:
        out["grounding"] = grounding_metrics(ok, ground_truth_dir)
    out["diversity"] = diversity_metrics(hyps, refs)
    keys = HEADLINE_KEYS[cfg.protocol]
    out["headline"] = {k: _lookup(out, k) for k in keys if _lookup(out, k, missing=True) is not _MISSING}
    out["definitions"] = {k: DEFINITIONS[k] for k in out["headline"]}
    if weights is not None:
        if labels is not None:
            ci.update(_classification_intervals(probs, det, labels, weights))
        out["ci95"] = {k: ci[k] for k in out["headline"] if k in ci}
    out["examples"] = [{"name": p["name"], "generated": p["report"], "reference": r}
                       for p, r in zip(ok, refs, strict=True)]
    out["_arrays"] = {"probs": probs, "detected": det, "labels": labels, "generated_labels": gen_lab}
    return out


_MISSING = object()


def _lookup(tree: dict[str, Any], dotted: str, missing: bool = False) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING if missing else None
        node = node[part]
    return node


def evaluate(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
             cfg: EvaluateConfig | None = None, reporter: Any | None = None) -> dict[str, Any]:
    """Predict, score and render one split. Returns the metrics dict that is written to metrics.json.

    ``reporter`` replaces ``Reporter.from_pretrained(model_dir)`` (tests use a stand-in).
    """
    from ctagrg.config import to_dict
    from ctagrg.evaluation.report_render import render_report
    from ctagrg.text.labeler import check_labeler_spec
    from ctagrg.utils.atomic import write_json_atomic

    cfg = cfg or EvaluateConfig()
    check_labeler_spec(cfg.labeler)  # before the reports, which can take hours
    model_dir, data_dir, out_dir = Path(model_dir), Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    split = load_split(data_dir, cfg.split, cfg.reference_columns, limit=cfg.limit)
    predict_split(model_dir, split, out_dir / "predictions.jsonl", cache_dir=cfg.cache_dir, data_dir=data_dir,
                  batch_size=cfg.batch_size, device=cfg.device, reporter=reporter, workers=cfg.workers)
    preds = read_predictions(out_dir / "predictions.jsonl", split)
    gt_dir = data_dir / "ground_truth"
    metrics = compute_metrics(preds, split, cfg, gt_dir if gt_dir.is_dir() else None)
    arrays, examples = metrics.pop("_arrays"), metrics.pop("examples")
    failed = [p for p in preds if "error" in p]
    metrics["meta"] = {"model": str(model_dir), "data": str(data_dir), "split": cfg.split, "protocol": cfg.protocol,
                       "volumes": len(split.names), "evaluated": len(preds) - len(failed), "failed": len(failed),
                       "seconds": round(time.perf_counter() - start, 2), "config": to_dict(cfg)}
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_json_atomic(out_dir / "examples.json", examples)
    write_submission_files(out_dir, [e["name"] for e in examples], [e["generated"] for e in examples],
                           arrays["generated_labels"])
    render_report(out_dir, metrics, arrays, examples[: cfg.examples], failed)
    return metrics


def write_submission_files(out_dir: Path, names: list[str], reports: list[str], generated_labels: np.ndarray) -> None:
    """``generated_labels.csv`` (VolumeName + 18 labels) and ``vlm3d_submission.json`` (the challenge's format)."""
    from ctagrg.evaluation.vlm3d import submission, write_generated_labels
    from ctagrg.utils.atomic import write_json_atomic

    write_generated_labels(out_dir / "generated_labels.csv", [n + VOLUME_SUFFIX for n in names], generated_labels)
    write_json_atomic(out_dir / "vlm3d_submission.json", submission(names, reports))


def headline_table(metrics: dict[str, Any]) -> str:
    """Plain-text table of the headline numbers with their 95% CIs (what the CLI and the demo print)."""
    ci = metrics.get("ci95", {})
    lines = []
    width = max((len(k) for k in metrics.get("headline", {})), default=0)
    for key, value in metrics.get("headline", {}).items():
        shown = "null" if value is None else f"{value:.3f}"
        interval = ci.get(key)
        extra = f"  [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        note = _meteor_note(metrics) if key.lower().endswith("meteor") else ""
        lines.append(f"  {key:<{width}} {shown}{extra}{'  (' + note + ')' if note else ''}")
    return "\n".join(lines)


def _meteor_note(metrics: dict[str, Any]) -> str:
    return (metrics.get("nlg", {}).get("notes", {}).get("meteor")
            or metrics.get("vlm3d", {}).get("notes", {}).get("METEOR", ""))


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a metrics.json written by :func:`evaluate`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
