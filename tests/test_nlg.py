"""NLG metric wrappers: same values as pycocoevalcap's scorers, documented tokenisation, METEOR without Java."""

from __future__ import annotations

import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from ctagrg.evaluation import nlg
from ctagrg.evaluation.nlg import NLG_KEYS, nlg_metrics, tokenize

HYPS = [
    "A 12 mm nodule is seen in the upper lobe of the right lung.",
    "Mild cardiomegaly. No pericardial effusion.",
    "Bilateral pleural effusion is present, more on the left.",
    "Calcified atheromatous plaques in the aorta.",
]
REFS = [
    "A 10 mm solid nodule is observed in the right upper lobe.",
    "The heart is enlarged. There is no pericardial effusion.",
    "There is bilateral pleural effusion.",
    "Atheromatous plaques with calcification are seen in the aortic wall.",
]


def test_tokenize_lowercases_drops_punctuation_keeps_numbers() -> None:
    assert tokenize("A 3.5 mm nodule, RIGHT upper lobe.") == "a 3.5 mm nodule right upper lobe"
    assert tokenize("12x9.3 mm ground-glass; 0,8 cm") == "12 x 9.3 mm ground-glass 0,8 cm"
    assert tokenize("") == ""


def _direct(scorer, hyps, refs):  # noqa: ANN001, ANN202
    gts = {i: [tokenize(r)] for i, r in enumerate(refs)}
    res = {i: [tokenize(h)] for i, h in enumerate(hyps)}
    if isinstance(scorer, Bleu):
        return scorer.compute_score(gts, res, verbose=0)
    return scorer.compute_score(gts, res)


@pytest.fixture(scope="module")
def scored() -> nlg.NLGResult:
    return nlg_metrics(HYPS, REFS)


def test_wrappers_equal_pycocoevalcap_scorers(scored: nlg.NLGResult) -> None:
    bleu, _ = _direct(Bleu(4), HYPS, REFS)
    rouge, _ = _direct(Rouge(), HYPS, REFS)
    cider, _ = _direct(Cider(), HYPS, REFS)
    for n in range(4):
        assert scored.scores[f"bleu_{n + 1}"] == pytest.approx(bleu[n], abs=1e-12)
    assert scored.scores["rouge_l"] == pytest.approx(rouge, abs=1e-12)
    assert scored.scores["cider"] == pytest.approx(cider, abs=1e-12)
    assert set(scored.scores) == set(NLG_KEYS)
    assert 0.0 < scored.scores["bleu_4"] < scored.scores["bleu_1"] < 1.0


@pytest.mark.skipif(shutil.which("java") is None, reason="java not installed; METEOR cannot run")
def test_meteor_equals_pycocoevalcap(scored: nlg.NLGResult) -> None:
    scorer = Meteor()
    try:
        meteor, _ = _direct(scorer, HYPS, REFS)
    finally:
        scorer.meteor_p.kill()
    assert scored.scores["meteor"] == pytest.approx(meteor, abs=1e-9)
    assert len(scored.per_report["meteor"]) == len(HYPS)


def test_identical_corpus_scores_perfectly() -> None:
    result = nlg_metrics(REFS, REFS, meteor=False)
    for n in range(1, 5):
        assert result.scores[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)
    assert result.scores["rouge_l"] == pytest.approx(1.0)
    # CIDEr-D of a perfect match is 10 (its x10 scale) for every report
    assert result.scores["cider"] == pytest.approx(10.0, rel=1e-6)


def test_hand_checkable_bleu1_and_rouge() -> None:
    # hyp "the heart is normal" vs ref "the heart is enlarged": 3 of 4 unigrams match, equal lengths -> BLEU-1 0.75
    result = nlg_metrics(["The heart is normal."], ["The heart is enlarged."], meteor=False)
    assert result.scores["bleu_1"] == pytest.approx(0.75, abs=1e-6)
    # LCS 3, P = R = 0.75 -> F_beta = 0.75 for any beta
    assert result.scores["rouge_l"] == pytest.approx(0.75)


def test_meteor_is_null_with_reason_without_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nlg.shutil, "which", lambda name: None)
    monkeypatch.setenv("PATH", "")
    result = nlg_metrics(HYPS, REFS)
    assert result.scores["meteor"] is None
    assert "java" in result.notes["meteor"]
    assert result.scores["bleu_1"] > 0


# pycocoevalcap's Meteor.__del__ fails on a half-built object; that is its quirk, not ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_meteor_start_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import pycocoevalcap.meteor.meteor as meteor_mod

    def broken(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", "java")

    monkeypatch.setattr(meteor_mod.subprocess, "Popen", broken)
    result = nlg_metrics(HYPS, REFS)
    assert result.scores["meteor"] is None
    assert "could not start METEOR" in result.notes["meteor"]


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 generated reports but 1 references"):
        nlg_metrics(["a", "b"], ["a"], meteor=False)
