"""The VLM3D challenge's report-generation scores, computed the way its official harness computes them.

The harness is forithmus/VLM3D-Dockers, ``reportgen_evaluation/`` (its ``calc_scores.py``, ``crg_score.py`` and
``nlg_metrics.py``). This module re-implements its definitions, not its code; tests/test_vlm3d.py compares every
figure with numbers that the harness itself produced (tests/data/vlm3d_reference.json, see docs/evaluation.md).

- **Labels.** Only the generated reports are labelled (by our ``--labeler``; the challenge uses CT-CLIP's RadBERT
  at threshold 0.5); the reference labels are the release's label CSV.
- **Per-label scores.** sklearn precision, recall, F1 and accuracy of each of the 18 labels, with
  ``zero_division=0`` (the harness leaves sklearn's default ``"warn"``, which also yields 0). A label with no
  reference positive and no predicted positive therefore scores precision = recall = F1 = 0.
- **Macro.** The plain mean over all 18 labels, those without reference positives included.
- **CRG.** With X = 18 × exams, A = reference positives, r = (X − A) / 2A, U = (X − A) / 2 and
  s = r·TP − r·FN − FP: CRG = U / (2U − s), and 0 when 2U − s = 0. Undefined (an error) when A = 0.
- **NLG.** pycocoevalcap Bleu(4), Rouge, Cider and Meteor on the raw strings after the harness's clean-up
  (:data:`REFERENCE_CLEANUP`, :data:`GENERATED_CLEANUP`); no PTB tokenizer, so case and punctuation count.
  Reports are paired by name and scored in sorted name order. BLEU_mean is the mean of BLEU-1..4.
  METEOR needs Java: without it the harness stops with an error; here METEOR is None with the reason.

Example:
    >>> clean_generated('Left "pleural" effusion . No_nodule .\\n')
    'Left pleural effusion.Nonodule.'
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import Any

import numpy as np

from ctagrg.evaluation.clinical import confusion_counts
from ctagrg.labels import LABELS, NUM_LABELS

# (old, new) pairs applied in this order with str.replace, as the harness prepares each side.
REFERENCE_CLEANUP: tuple[tuple[str, str], ...] = (("\n", ""), (" . ", "."), (" .", "."))
GENERATED_CLEANUP: tuple[tuple[str, str], ...] = (
    ("\n", ""), ("<|eot_id|>", ""), ('"', ""), ("_", ""), (" . ", "."), (" .", "."),
)
GENERATION_KEYS: tuple[str, ...] = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "BLEU_mean", "ROUGE_L", "CIDEr",
                                    "METEOR")
SUBMISSION_NAME = "Generated reports"  # the wrapper fields of the challenge's algorithm output


def _replace_all(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def clean_reference(text: str) -> str:
    """A reference report as the harness scores it (newlines removed, spaces before full stops dropped)."""
    return _replace_all(text, REFERENCE_CLEANUP)


def clean_generated(text: str) -> str:
    """A generated report as the harness scores it (also drops double quotes, underscores and ``<|eot_id|>``)."""
    return _replace_all(text, GENERATED_CLEANUP)


def label_scores(generated: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Per-label and macro precision, recall, F1 and accuracy, as the harness's ``calc_scores.py``.

    Args: generated (N, 18) 0/1 labels of the generated reports; reference (N, 18) 0/1 reference labels.
    Returns: ``per_label`` (label -> precision, recall, f1, accuracy, support, predicted) and ``macro``
    (precision, recall, f1, accuracy: plain means over the 18 labels).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    gen, ref = np.asarray(generated).astype(int), np.asarray(reference).astype(int)
    confusion_counts(gen, ref)  # validates shapes and 0/1 values
    p, r, f, support = precision_recall_fscore_support(ref, gen, average=None, labels=list(range(NUM_LABELS)),
                                                       zero_division=0)
    acc = np.array([accuracy_score(ref[:, j], gen[:, j]) for j in range(NUM_LABELS)])
    per_label = {name: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]),
                        "accuracy": float(acc[j]), "support": int(support[j]), "predicted": int(gen[:, j].sum())}
                 for j, name in enumerate(LABELS)}
    macro = {"precision": float(np.mean(p)), "recall": float(np.mean(r)), "f1": float(np.mean(f)),
             "accuracy": float(np.mean(acc))}
    return {"per_label": per_label, "macro": macro}


def crg_from_counts(tp: float, fn: float, fp: float, exams: float) -> dict[str, float]:
    """CRG and its parts from totals over exams and the 18 labels (see the module docstring)."""
    x = NUM_LABELS * exams
    a = tp + fn
    if a == 0:
        raise ValueError("CRG is undefined: the reference labels hold no positive")
    r = (x - a) / (2 * a)
    u = (x - a) / 2
    s = r * tp - r * fn - fp
    crg = u / (2 * u - s) if (2 * u - s) != 0 else 0.0
    return {"X": x, "A": a, "r": r, "U": u, "score_s": s, "CRG": crg}


def crg_score(generated: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The harness's ``crg_score.py`` output: TP, FN, FP, X, A, r, U, score_s and CRG. Inputs (N, 18) 0/1."""
    counts = confusion_counts(generated, reference)
    tp, fp, fn = (int(counts[k].sum()) for k in ("tp", "fp", "fn"))
    parts = crg_from_counts(tp, fn, fp, counts["tp"].shape[0])
    return {"TP": tp, "FN": fn, "FP": fp, "X": int(parts["X"]), "A": int(parts["A"]),
            **{k: float(parts[k]) for k in ("r", "U", "score_s", "CRG")}}


def paired_texts(names: Sequence[str], generated: Sequence[str],
                 references: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Names, cleaned generated and cleaned reference texts in sorted name order (the harness's pairing)."""
    if not len(names) == len(generated) == len(references):
        raise ValueError(f"VLM3D NLG: {len(names)} names, {len(generated)} generated and {len(references)} "
                         "reference reports")
    if len(set(names)) != len(names):
        raise ValueError("VLM3D NLG: volume names repeat; each report needs a unique name")
    order = sorted(range(len(names)), key=lambda i: names[i])
    return ([names[i] for i in order], [clean_generated(str(generated[i])) for i in order],
            [clean_reference(str(references[i])) for i in order])


def generation_scores(generated: Sequence[str], references: Sequence[str],
                      meteor: bool = True) -> tuple[dict[str, float | None], dict[str, list[float]], dict[str, str]]:
    """pycocoevalcap scores of already cleaned, already paired texts (see :func:`paired_texts`).

    Returns (scores keyed by :data:`GENERATION_KEYS`, per-report scores, notes saying why a score is None).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from ctagrg.evaluation.nlg import meteor_score

    if not generated:
        raise ValueError("VLM3D NLG: no reports to score")
    gts = {i: [r] for i, r in enumerate(references)}
    res = {i: [g] for i, g in enumerate(generated)}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    scores: dict[str, float | None] = {f"BLEU_{n + 1}": float(bleu[n]) for n in range(4)}
    scores["BLEU_mean"] = float(sum(bleu) / len(bleu))
    scores.update(ROUGE_L=float(rouge), CIDEr=float(cider))
    per_report = {"ROUGE_L": [float(v) for v in rouge_each], "CIDEr": [float(v) for v in cider_each]}
    m, _, why = meteor_score(gts, res) if meteor else (None, [], "METEOR disabled")
    scores["METEOR"] = m
    return scores, per_report, ({} if m is not None else {"METEOR": why})


def vlm3d_metrics(names: Sequence[str], generated: Sequence[str], references: Sequence[str],
                  generated_labels: np.ndarray, reference_labels: np.ndarray, meteor: bool = True) -> dict[str, Any]:
    """All VLM3D figures for N reports: sections ``generation``, ``classification``, ``crg`` and ``notes``.

    Args:
        names: N unique volume names (pairing key); generated / references: N raw report texts;
        generated_labels: (N, 18) 0/1 labels of the generated reports; reference_labels: (N, 18) 0/1 label CSV rows.
    """
    _, hyps, refs = paired_texts(names, generated, references)
    scores, _, notes = generation_scores(hyps, refs, meteor=meteor)
    return {"generation": scores, "classification": label_scores(generated_labels, reference_labels),
            "crg": crg_score(generated_labels, reference_labels), "notes": notes}


def submission(names: Sequence[str], reports: Sequence[str]) -> dict[str, Any]:
    """The challenge's algorithm output: ``generated_reports`` of ``input_image_name`` (no extension) + ``report``."""
    return {"name": SUBMISSION_NAME, "type": "Report generation",
            "generated_reports": [{"input_image_name": n, "report": r} for n, r in zip(names, reports, strict=True)],
            "version": {"major": 1, "minor": 0}}


def write_generated_labels(path: Any, volume_names: Sequence[str], labels: np.ndarray) -> None:
    """Write ``VolumeName`` + the 18 label columns (the release's label-CSV layout), atomically."""
    from ctagrg.utils.atomic import atomic_open

    labels = np.asarray(labels).astype(int).reshape(-1, NUM_LABELS)
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("VolumeName", *LABELS))
        writer.writerows([name, *row] for name, row in zip(volume_names, labels.tolist(), strict=True))
