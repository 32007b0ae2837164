"""Per-abnormality sentence extraction: the step-2 decoder's training targets.

For every report and every abnormality the labeler finds present, the sentence(s) asserting it, in report order,
exact duplicates (ignoring case and final punctuation) removed, joined with a space.
"""

from __future__ import annotations

from collections.abc import Sequence

from ctagrg.text.labeler import Labeler


def _key(sentence: str) -> str:
    return sentence.lower().rstrip(" .!?")


def join_sentences(sentences: Sequence[str]) -> str:
    """Join sentences with spaces, dropping repeats such as an impression restating a finding verbatim."""
    seen: set[str] = set()
    kept = []
    for sentence in sentences:
        if _key(sentence) not in seen:
            seen.add(_key(sentence))
            kept.append(sentence)
    return " ".join(kept)


def extract_sentences(labeler: Labeler, ids: Sequence[str], texts: Sequence[str]) -> list[tuple[str, str, str]]:
    """(id, AbnormalityName, sentence text) for every present abnormality of every report, in ``LABELS`` order."""
    rows = []
    for name, text in zip(ids, texts, strict=True):
        for label, sentences in labeler.sentences_by_label(text).items():
            rows.append((name, label, join_sentences(sentences)))
    return rows
