"""Report assembly: per-abnormality sentences → one report, in CT-RATE label order, without duplicates.

Duplicates are removed by exact match after normalisation (case, whitespace, final punctuation). RGRG adds a
BERTScore > 0.9 pass between pairs; that needs a large model and is slow, so we leave it out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ctagrg.labels import LABEL_INDEX, LABELS


@dataclass
class AssemblyConfig:
    """How sentences become a report."""

    no_findings_text: str = "No abnormalities detected."  # the report when nothing is detected (paper's text)
    deduplicate: bool = True
    tidy: bool = True  # capitalise the first letter and end with a period (targets may be lowercased)


def normalise_sentence(sentence: str) -> str:
    """Key used to spot duplicates: lower case, single spaces, no final punctuation."""
    return re.sub(r"\s+", " ", sentence).strip().rstrip(".!;,: ").lower()


def tidy_sentence(sentence: str) -> str:
    """'left lung nodule of 4.5 mm' → 'Left lung nodule of 4.5 mm.'"""
    s = re.sub(r"\s+", " ", sentence).strip()
    if not s:
        return s
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def deduplicate(sentences: Iterable[str]) -> list[str]:
    """Keep the first of each group of sentences equal after ``normalise_sentence``; drop empty ones."""
    seen: set[str] = set()
    kept = []
    for s in sentences:
        key = normalise_sentence(s)
        if key and key not in seen:
            seen.add(key)
            kept.append(s)
    return kept


def _label_order(key: int | str) -> int:
    if isinstance(key, int):
        if not 0 <= key < len(LABELS):
            raise KeyError(f"label index {key} out of range [0, {len(LABELS)})")
        return key
    if key not in LABEL_INDEX:
        raise KeyError(f"unknown label {key!r}; expected one of the 18 CT-RATE labels")
    return LABEL_INDEX[key]


def assemble_report(sentences: Mapping[int | str, str], config: AssemblyConfig | None = None) -> str:
    """Join the sentences of the detected abnormalities (keyed by label name or index) in CT-RATE label order.

    Example:
        >>> assemble_report({"Lung nodule": "left lung nodule", "Cardiomegaly": "the heart is enlarged."})
        'The heart is enlarged. Left lung nodule.'
        >>> assemble_report({})
        'No abnormalities detected.'
    """
    config = config or AssemblyConfig()
    if not sentences:
        return config.no_findings_text
    ordered = [sentences[k] for k in sorted(sentences, key=_label_order)]
    if config.tidy:
        ordered = [tidy_sentence(s) for s in ordered]
    ordered = deduplicate(ordered) if config.deduplicate else [s for s in ordered if s.strip()]
    # Something was detected even if every sentence came out empty: never claim "no abnormalities" then.
    return " ".join(ordered)
