"""Phantom report text: vocabulary, self-contained sentences with side and size, negations, labeler agreement."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ctagrg.labels import LABELS, LATERALISED
from ctagrg.phantom.findings import SAMPLERS
from ctagrg.phantom.reports import NEGATIVE, POSITIVE, _fields, finding_sentence, write_report
from ctagrg.phantom.volume import make_case

# The words that name each abnormality in a sentence (lowercase regex).
KEYWORDS = {
    "Lung nodule": r"nodul", "Pleural effusion": r"pleural effusion", "Consolidation": r"consolidation",
    "Atelectasis": r"atelecta", "Lung opacity": r"ground-glass", "Emphysema": r"emphysema",
    "Pulmonary fibrotic sequela": r"fibrotic", "Mosaic attenuation pattern": r"mosaic",
    "Peribronchial thickening": r"peribronchial", "Bronchiectasis": r"bronchiecta",
    "Interlobular septal thickening": r"septal",
    "Cardiomegaly": r"cardiomegaly|heart is enlarged|heart size is increased",
    "Pericardial effusion": r"pericardial effusion", "Arterial wall calcification": r"aort|atheroscl|atheroma",
    "Coronary artery wall calcification": r"coronary", "Hiatal hernia": r"hiatal hernia", "Lymphadenopathy": r"lymph",
    "Medical material": r"catheter|pacemaker|sternotomy",
}


def _samples(label: str, n: int = 12):
    """``n`` sampled findings of ``label`` on varied anatomies."""
    out = []
    for seed in range(n):
        anat = make_case(100 + seed, 0).anatomy
        out.append(SAMPLERS[label](np.random.default_rng(seed), anat))
    return out


@pytest.mark.parametrize("label", LABELS)
def test_every_phrasing_names_exactly_its_abnormality_with_side_and_size(label):
    assert len(set(POSITIVE[label])) >= 5
    for f in _samples(label, 4):
        for template in POSITIVE[label]:
            text = template.format(**_fields(f)).lower()
            assert re.search(KEYWORDS[label], text), text
            others = [other for other, key in KEYWORDS.items() if other != label and re.search(key, text)]
            assert not others, f"{text!r} also names {others}"
            assert "{" not in text and "  " not in text
            if label in LATERALISED:
                assert re.search(rf"\b{f.side}\b", text), text
                wrong = {"right", "left", "bilateral"} - {f.side}
                assert not any(re.search(rf"\b{w}\b", text) for w in wrong), text
            if label == "Lung nodule":
                assert f"{f.size_mm:.0f} mm" in text


def test_normal_sentences_are_negated():
    negation = re.compile(r"\b(no|not|normal|without|clear|neither)\b", re.I)
    for label, options in NEGATIVE.items():
        assert label in LABELS
        for sentence in filter(None, options):
            assert negation.search(sentence), sentence


def test_report_has_each_finding_sentence_and_an_impression():
    rng = np.random.default_rng(0)
    for patient in range(20):
        case = make_case(9, patient, min_prevalence=0.3)
        findings, impression, sentences = write_report(case, rng)
        assert set(sentences) == {f.label for f in case.findings}
        for sentence in sentences.values():
            assert sentence in findings
        if case.findings:
            assert all(re.search(KEYWORDS[f.label], impression.lower()) for f in case.findings), impression
        else:
            assert "normal" in impression.lower() or "no significant" in impression.lower()


def test_phrasing_varies_but_is_deterministic():
    f = _samples("Pleural effusion", 1)[0]
    seen = {finding_sentence(f, np.random.default_rng(s)) for s in range(40)}
    assert len(seen) == 5
    assert finding_sentence(f, np.random.default_rng(3)) == finding_sentence(f, np.random.default_rng(3))


def test_project_labeler_recovers_the_labels():
    import ctagrg.text.labeler as labeler_mod
    labeler = labeler_mod.get_labeler("rules")
    texts, truth = [], []
    rng = np.random.default_rng(1)
    for patient in range(120):
        case = make_case(21, patient, min_prevalence=0.25 if patient % 2 else 0.0)
        findings, impression, _ = write_report(case, rng)
        texts.append(findings + " " + impression)
        truth.append(case.labels())
    pred, truth = labeler.label_reports(texts), np.array(truth)
    tp = int((pred * truth).sum())
    micro_f1 = 2 * tp / (2 * tp + int((pred * (1 - truth)).sum()) + int(((1 - pred) * truth).sum()))
    assert truth.sum() > 300
    assert micro_f1 >= 0.99
