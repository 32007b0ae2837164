"""Per-abnormality sentence extraction: the step-2 decoder's training targets.

For every report and every abnormality the labeler finds present, the sentence(s) asserting it, in report order.
Two rules (``SENTENCE_RULES``):

- ``first``: the first such sentence only, one sentence per abnormality as CT-AGRG's targets are (with the reports'
  ``Findings_EN`` as the text, configs/ctrate);
- ``joined``: every such sentence, exact duplicates (ignoring case and final punctuation) removed, joined with a
  space. With Findings and Impressions as the text, an impression restating a finding adds it once more.

docs/decoder.md, "Targets", measures both on the development reports.
"""

from __future__ import annotations

from collections.abc import Sequence

from ctagrg.text.labeler import Labeler

SENTENCE_RULES: tuple[str, ...] = ("first", "joined")


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


def check_rule(rule: str) -> str:
    """``rule`` if it is one of ``SENTENCE_RULES``; otherwise a ValueError naming them."""
    if rule not in SENTENCE_RULES:
        raise ValueError(f"sentence rule: expected one of {', '.join(SENTENCE_RULES)}, got {rule!r}")
    return rule


def extract_sentences(labeler: Labeler, ids: Sequence[str], texts: Sequence[str],
                      rule: str = "joined") -> list[tuple[str, str, str]]:
    """(id, AbnormalityName, sentence text) for every present abnormality of every report, in ``LABELS`` order;
    ``rule`` (``first`` | ``joined``) says which of an abnormality's sentences make its text."""
    check_rule(rule)
    rows = []
    for name, text in zip(ids, texts, strict=True):
        for label, sentences in labeler.sentences_by_label(text).items():
            rows.append((name, label, sentences[0] if rule == "first" else join_sentences(sentences)))
    return rows
