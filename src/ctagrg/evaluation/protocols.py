"""The two conventions in which ``ctagrg evaluate`` scores generated reports (``--protocol``).

- ``ctagrg`` (the convention of CT2Rep, CT-AGRG and most CT-RATE papers): the labeler labels both the generated
  and the reference reports; clinical precision, recall and F1 are given micro and macro (section ``clinical``;
  ``clinical_reference="csv"`` compares with the label CSV instead, for phantoms whose CSV is the truth);
  NLG metrics on our tokenisation (section ``nlg``, :mod:`ctagrg.evaluation.nlg`).
- ``vlm3d`` (the VLM3D challenge's official harness): the labeler labels the generated reports only; the
  reference labels are the label CSV; section ``vlm3d`` as :mod:`ctagrg.evaluation.vlm3d` computes it.

Each scorer returns the sections it adds to metrics.json and the 95% bootstrap intervals of its figures, keyed by
the dotted names of :data:`HEADLINE_KEYS`. Definitions of every figure: docs/evaluation.md and
:mod:`ctagrg.evaluation.definitions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ctagrg.evaluation import bootstrap as bs
from ctagrg.evaluation.clinical import clinical_metrics, confusion_counts, label_texts, prf_from_counts

PROTOCOLS: tuple[str, ...] = ("ctagrg", "vlm3d")

COMMON_KEYS: tuple[str, ...] = ("classification.macro_auroc", "classification.macro_f1")
TRAILING_KEYS: tuple[str, ...] = ("grounding.side_accuracy", "grounding.nodule_size_within_5mm",
                                  "diversity.unique_reports")
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "ctagrg": (*COMMON_KEYS, "clinical.micro_f1", "clinical.macro_f1", "clinical.micro_precision",
               "clinical.micro_recall", "clinical.macro_precision", "clinical.macro_recall",
               "nlg.bleu_1", "nlg.bleu_2", "nlg.bleu_3", "nlg.bleu_4", "nlg.meteor", "nlg.rouge_l", "nlg.cider",
               *TRAILING_KEYS),
    "vlm3d": (*COMMON_KEYS, "vlm3d.classification.macro.f1", "vlm3d.classification.macro.precision",
              "vlm3d.classification.macro.recall", "vlm3d.classification.macro.accuracy", "vlm3d.crg.CRG",
              "vlm3d.generation.BLEU_1", "vlm3d.generation.BLEU_2", "vlm3d.generation.BLEU_3",
              "vlm3d.generation.BLEU_4", "vlm3d.generation.BLEU_mean", "vlm3d.generation.METEOR",
              "vlm3d.generation.ROUGE_L", "vlm3d.generation.CIDEr", *TRAILING_KEYS),
}


@dataclass
class ScoringInput:
    """What a protocol scores: N successfully generated reports of one split.

    ``names``: N VolumeNames without ``.nii.gz``; ``generated`` / ``references``: N raw texts;
    ``generated_labels``: (N, 18) 0/1, the labeler on the generated reports; ``csv_labels``: (N, 18) 0/1 label-CSV
    rows or None; ``labeler``: the labeler spec; ``weights``: (R, N) bootstrap resample counts or None (no CIs).
    """

    names: list[str]
    generated: list[str]
    references: list[str]
    generated_labels: np.ndarray
    csv_labels: np.ndarray | None
    labeler: str
    meteor: bool
    reference_columns: tuple[str, ...]
    weights: np.ndarray | None
    clinical_reference: str = "reports"  # ctagrg: "reports" (labeler on the references) or "csv" (label CSV)


def check_protocol(protocol: str) -> str:
    """Return ``protocol`` if known, else raise a one-line ValueError naming the choices."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def score(protocol: str, inp: ScoringInput) -> tuple[dict[str, Any], dict[str, list[float] | None]]:
    """Sections and bootstrap intervals of ``protocol`` (see the module docstring)."""
    return {"ctagrg": score_ctagrg, "vlm3d": score_vlm3d}[check_protocol(protocol)](inp)


def score_ctagrg(inp: ScoringInput) -> tuple[dict[str, Any], dict[str, list[float] | None]]:
    """Sections ``clinical`` (labeler on both sides, micro + macro) and ``nlg`` (our tokenisation)."""
    from ctagrg.evaluation.nlg import nlg_metrics, tokenize

    if inp.clinical_reference == "csv":
        if inp.csv_labels is None:
            raise ValueError("clinical_reference csv needs the dataset's label CSV, and none was found")
        ref_labels, reference = np.asarray(inp.csv_labels), "label CSV"
    else:
        ref_labels, reference = label_texts(inp.references, inp.labeler), "labeler on reference reports"
    clinical = {**clinical_metrics(inp.generated_labels, ref_labels), "reference": reference,
                "labeler": inp.labeler}
    nlg = nlg_metrics(inp.generated, inp.references, meteor=inp.meteor)
    sections = {"clinical": clinical,
                "nlg": {**nlg.scores, "notes": nlg.notes, "reference_columns": list(inp.reference_columns)}}
    ci: dict[str, list[float] | None] = {}
    if inp.weights is not None:
        w = inp.weights
        clin = bs.clinical_samples(confusion_counts(inp.generated_labels, ref_labels), w)
        for key in ("micro_f1", "macro_f1", "micro_precision", "micro_recall", "macro_precision", "macro_recall"):
            ci[f"clinical.{key}"] = bs.percentile_interval(clin[key])
        stats = bs.bleu_statistics([tokenize(h) for h in inp.generated], [tokenize(r) for r in inp.references])
        bleu = bs.bleu_samples(stats, w)
        for n in range(4):
            ci[f"nlg.bleu_{n + 1}"] = bs.percentile_interval(bleu[:, n])
        ci["nlg.rouge_l"] = bs.percentile_interval(bs.mean_samples(nlg.per_report["rouge_l"], w))
        ci["nlg.cider"] = bs.percentile_interval(bs.mean_samples(nlg.per_report["cider"], w))
    return sections, ci


def score_vlm3d(inp: ScoringInput) -> tuple[dict[str, Any], dict[str, list[float] | None]]:
    """Section ``vlm3d``: the challenge's ``generation``, ``classification`` and ``crg`` figures."""
    from ctagrg.evaluation.vlm3d import crg_score as crg
    from ctagrg.evaluation.vlm3d import generation_scores, label_scores, paired_texts

    if inp.csv_labels is None:
        raise ValueError("protocol vlm3d needs the dataset's label CSV (multi_abnormality_labels/"
                         "<split>_predicted_labels.csv) as reference labels, and none was found")
    order = np.argsort(np.array(inp.names, dtype=object), kind="stable")  # the harness scores in name order
    _, hyps, refs = paired_texts(inp.names, inp.generated, inp.references)
    gen, ref = inp.generated_labels[order], np.asarray(inp.csv_labels)[order]
    generation, per_report, notes = generation_scores(hyps, refs, meteor=inp.meteor)
    section = {"generation": generation, "classification": label_scores(gen, ref), "crg": crg(gen, ref),
               "notes": notes, "labeler": inp.labeler, "reference_labels": "label CSV",
               "reference_columns": list(inp.reference_columns)}
    ci: dict[str, list[float] | None] = {}
    if inp.weights is not None:
        w = inp.weights[:, order]
        ci.update(_vlm3d_label_intervals(gen, ref, w))
        bleu = bs.bleu_samples(bs.bleu_statistics(hyps, refs), w)
        for n in range(4):
            ci[f"vlm3d.generation.BLEU_{n + 1}"] = bs.percentile_interval(bleu[:, n])
        ci["vlm3d.generation.BLEU_mean"] = bs.percentile_interval(bleu.mean(1))
        for key in ("ROUGE_L", "CIDEr"):
            ci[f"vlm3d.generation.{key}"] = bs.percentile_interval(bs.mean_samples(per_report[key], w))
    return {"vlm3d": section}, ci


def _vlm3d_label_intervals(gen: np.ndarray, ref: np.ndarray, w: np.ndarray) -> dict[str, list[float] | None]:
    """Intervals of the macro scores (all 18 labels, 0 where undefined) and of CRG, from resampled counts."""
    counts = confusion_counts(gen, ref)
    tp, fp, fn = (w @ counts[k].astype(np.float64) for k in ("tp", "fp", "fn"))  # (R, 18)
    exams = w.sum(1)
    p, r, f = prf_from_counts(tp, fp, fn)
    acc = (exams[:, None] - fp - fn) / exams[:, None]
    out = {f"vlm3d.classification.macro.{k}": bs.percentile_interval(v.mean(1))
           for k, v in (("precision", p), ("recall", r), ("f1", f), ("accuracy", acc))}
    t, n, e = tp.sum(1), fn.sum(1), fp.sum(1)
    x, a = gen.shape[1] * exams, t + n
    with np.errstate(divide="ignore", invalid="ignore"):
        rr, u = (x - a) / (2 * a), (x - a) / 2
        s = rr * t - rr * n - e
        crg = np.where(a > 0, np.where(2 * u - s != 0, u / (2 * u - s), 0.0), np.nan)
    out["vlm3d.crg.CRG"] = bs.percentile_interval(crg)
    return out
