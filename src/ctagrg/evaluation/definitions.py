"""One-line definitions of the headline figures, written into metrics.json beside the numbers (``definitions``).

The full text of each definition, with the conventions of other papers, is in docs/evaluation.md; a test checks
that every headline key of both protocols has an entry here.
"""

from __future__ import annotations

_NLG = ("pycocoevalcap {}, on our tokenisation (lowercase, punctuation removed), one reference per report "
        "(the --reference-columns text)")
_VLM3D_NLG = ("pycocoevalcap {}, on the raw strings after the VLM3D harness's clean-up (no PTB tokenizer; case "
              "and punctuation count), reports paired by name")

DEFINITIONS: dict[str, str] = {
    "classification.macro_auroc": "step-1 classifiers: mean over labels with both classes of sklearn AUROC of the "
                                  "probabilities against the label CSV",
    "classification.macro_f1": "step-1 classifiers: mean over labels with a positive of F1 of the thresholded "
                               "detections against the label CSV",
    "clinical.micro_f1": "labeler on generated vs labeler on reference reports: F1 of TP, FP, FN pooled over reports "
                         "and the 18 labels",
    "clinical.micro_precision": "the same pooled counts: TP / (TP + FP)",
    "clinical.micro_recall": "the same pooled counts: TP / (TP + FN)",
    "clinical.macro_f1": "labeler on both sides: mean of per-label F1 over labels with a reference positive "
                         "(0 where a ratio is 0/0)",
    "clinical.macro_precision": "labeler on both sides: mean of per-label precision over labels with a reference "
                                "positive",
    "clinical.macro_recall": "labeler on both sides: mean of per-label recall over labels with a reference positive",
    "nlg.bleu_1": _NLG.format("corpus BLEU-1"),
    "nlg.bleu_2": _NLG.format("corpus BLEU-2"),
    "nlg.bleu_3": _NLG.format("corpus BLEU-3"),
    "nlg.bleu_4": _NLG.format("corpus BLEU-4"),
    "nlg.meteor": _NLG.format("METEOR 1.5 (meteor-1.5.jar, corpus score)"),
    "nlg.rouge_l": _NLG.format("ROUGE-L (beta 1.2), mean over reports"),
    "nlg.cider": _NLG.format("CIDEr-D, mean over reports, document frequencies from the evaluated references"),
    "vlm3d.classification.macro.f1": "labeler on generated reports vs the label CSV: mean over all 18 labels of "
                                     "sklearn per-label F1 (zero_division=0)",
    "vlm3d.classification.macro.precision": "the same: mean over all 18 labels of sklearn per-label precision",
    "vlm3d.classification.macro.recall": "the same: mean over all 18 labels of sklearn per-label recall",
    "vlm3d.classification.macro.accuracy": "the same: mean over all 18 labels of per-label accuracy",
    "vlm3d.crg.CRG": "CRG = U / (2U - s), X = 18 x exams, A = reference positives, r = (X - A) / 2A, U = (X - A) / 2, "
                     "s = r TP - r FN - FP (0 when 2U - s = 0)",
    "vlm3d.generation.BLEU_1": _VLM3D_NLG.format("corpus BLEU-1"),
    "vlm3d.generation.BLEU_2": _VLM3D_NLG.format("corpus BLEU-2"),
    "vlm3d.generation.BLEU_3": _VLM3D_NLG.format("corpus BLEU-3"),
    "vlm3d.generation.BLEU_4": _VLM3D_NLG.format("corpus BLEU-4"),
    "vlm3d.generation.BLEU_mean": "mean of vlm3d.generation.BLEU_1..BLEU_4",
    "vlm3d.generation.METEOR": _VLM3D_NLG.format("METEOR 1.5 (meteor-1.5.jar, corpus score)"),
    "vlm3d.generation.ROUGE_L": _VLM3D_NLG.format("ROUGE-L (beta 1.2), mean over reports"),
    "vlm3d.generation.CIDEr": _VLM3D_NLG.format("CIDEr-D, mean over reports"),
    "grounding.side_accuracy": "phantoms: fraction of detected lateralised findings whose sentence states the "
                               "true side",
    "grounding.nodule_size_within_5mm": "phantoms: fraction of detected nodules whose stated size is within 5 mm "
                                        "of a true nodule",
    "diversity.unique_reports": "distinct generated report texts / generated reports",
}
