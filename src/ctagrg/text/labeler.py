"""The 18-label CT report labeler: which abnormalities does a report (or a sentence) assert as present?

``get_labeler("rules")`` is our offline rule labeler (concept patterns + ConText-style negation scoping, see
``ctagrg.text.rules``); ``get_labeler("radbert:DIR")`` loads CT-CLIP's RadBERT classifier from a local folder
(``ctagrg.text.radbert``). Both offer the same two calls:

- ``label_reports(texts) -> (N, 18) int`` in ``ctagrg.labels.LABELS`` order;
- ``sentences_by_label(text) -> {label: [sentences]}``, the sentences asserting each present label.

Example:
    >>> lab = get_labeler("rules")
    >>> lab.label_reports(["A 5 mm nodule in the right upper lobe. No pleural effusion."])[0].nonzero()[0].tolist()
    [9]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np

from ctagrg.labels import LABEL_INDEX, LABELS
from ctagrg.text.rules.concept import Concept
from ctagrg.text.rules.concepts import CONCEPTS
from ctagrg.text.rules.context import clauses, describes_past_only, is_negated, negated_spans, normalise
from ctagrg.text.sentences import split_sentences


class Labeler(Protocol):
    """What evaluation code may rely on, whichever labeler is behind it."""

    column_separator: str  # joins a report's text columns (findings, impression) into the text it labels

    def label_reports(self, texts: list[str]) -> np.ndarray: ...

    def sentences_by_label(self, text: str) -> dict[str, list[str]]: ...


def _is_empty(text: object) -> bool:
    return text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip()


class RuleLabeler:
    """Rule-based labeler: its concept list plus a bounded cache of sentence results.

    CT-RATE reports repeat template sentences ("Trachea, both main bronchi are open."): about half the sentences of
    the development reports are repeats, so caching per sentence roughly doubles throughput.
    """

    column_separator = "\n"  # each column is split into sentences on its own

    def __init__(self, concepts: tuple[Concept, ...] = CONCEPTS, cache_size: int = 65536) -> None:
        unknown = [c.label for c in concepts if c.label not in LABEL_INDEX]
        if unknown:
            raise ValueError(f"concepts name unknown labels: {unknown}; valid labels are {list(LABELS)}")
        self.concepts = concepts
        self.cache_size = cache_size
        self._cache: dict[str, frozenset[str]] = {}

    def sentence_labels(self, sentence: str) -> set[str]:
        """Labels that one sentence asserts as present."""
        cached = self._cache.get(sentence)
        if cached is None:
            cached = frozenset(self._sentence_labels(sentence))
            if len(self._cache) >= self.cache_size:
                self._cache.clear()  # simple bound; refilling is cheap
            self._cache[sentence] = cached
        return set(cached)

    def _sentence_labels(self, sentence: str) -> set[str]:
        text = normalise(sentence)
        found: set[str] = set()
        previous = ""
        for start, end in clauses(text):
            clause = text[start:end]
            past, previous = describes_past_only(clause, previous), clause
            if past:
                continue
            negated = negated_spans(clause)
            for concept in self.concepts:
                if concept.label not in found and _mentions(concept, clause, negated, text):
                    found.add(concept.label)
        return found

    def sentences_by_label(self, text: str) -> dict[str, list[str]]:
        """{label: sentences asserting it}, labels in ``LABELS`` order, sentences in report order."""
        by_label: dict[str, list[str]] = {}
        if _is_empty(text):
            return by_label
        for sentence in split_sentences(str(text)):
            for label in self.sentence_labels(sentence):
                by_label.setdefault(label, []).append(sentence)
        return {label: by_label[label] for label in LABELS if label in by_label}

    def label_text(self, text: str) -> np.ndarray:
        """(18,) int array of 0/1 for one report; empty or NaN text gives all zeros."""
        row = np.zeros(len(LABELS), dtype=np.int64)
        for label in self.sentences_by_label(text):
            row[LABEL_INDEX[label]] = 1
        return row

    def label_reports(self, texts: list[str]) -> np.ndarray:
        """(N, 18) int array of 0/1, one row per report text, columns in ``LABELS`` order."""
        rows = [self.label_text(t) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, len(LABELS)), dtype=np.int64)


def _mentions(concept: Concept, clause: str, negated: list[tuple[int, int]], sentence: str) -> bool:
    """True when ``clause`` (of normalised ``sentence``) holds a non-negated, non-excluded mention of ``concept``."""
    for match in concept.include_re.finditer(clause):
        start, end = match.span()
        if is_negated(negated, start, end):
            continue
        if concept.reject_re and any(r.start() < end and start < r.end() for r in concept.reject_re.finditer(clause)):
            continue
        if concept.require_re and not concept.require_re.search(sentence):
            continue
        if concept.exclude_re:
            lo, hi = max(0, start - concept.window), min(len(clause), end + concept.window)
            if concept.exclude_re.search(clause, lo, hi):
                continue
        return True
    return False


def check_labeler_spec(spec: str) -> None:
    """Raise ValueError for a spec :func:`get_labeler` would refuse (without loading a model), so that a long run
    can fail before its work rather than after it."""
    if spec == "rules":
        return
    if spec.startswith("radbert:"):
        path = Path(spec.split(":", 1)[1])
        if not path.exists():  # a classifier folder or its checkpoint file (RadBertLabeler.from_dir takes both)
            raise ValueError(f"{path}: RadBERT folder or checkpoint not found (labeler {spec!r})")
        return
    raise ValueError(f"unknown labeler {spec!r}; expected 'rules' or 'radbert:DIR'")


def get_labeler(spec: str = "rules") -> Labeler:
    """Build a labeler from a spec: ``"rules"`` or ``"radbert:DIR"`` (a local RadBERT classifier folder)."""
    check_labeler_spec(spec)
    if spec == "rules":
        return RuleLabeler()
    from ctagrg.text.radbert import RadBertLabeler

    return RadBertLabeler.from_dir(spec.split(":", 1)[1])
