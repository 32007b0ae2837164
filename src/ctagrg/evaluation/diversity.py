"""How different the generated reports are from one another: the peers' users report near-identical outputs.

Both figures are computed on the NLG tokenisation (:func:`ctagrg.evaluation.nlg.tokenize`: lowercased words and
numbers, punctuation dropped), for the generated reports and, for scale, for their references:

- ``unique_reports``: distinct report texts / reports. 1.0 when every report differs; 1/N when a model writes the
  same report for every scan.
- ``distinct_2``: distinct word bigrams / all word bigrams over the corpus (Li et al., 2016, "distinct-2"). Low when
  the reports repeat the same phrases.
"""

from __future__ import annotations

from collections.abc import Sequence

from ctagrg.evaluation.nlg import tokenize


def unique_fraction(texts: Sequence[str]) -> float:
    """Distinct tokenised texts / texts (NaN for no texts)."""
    if not texts:
        return float("nan")
    return len({tokenize(t) for t in texts}) / len(texts)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams over ``texts`` (NaN when there is none)."""
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = tokenize(text).split()
        grams += [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def diversity_metrics(generated: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``unique_reports`` and ``distinct_2`` of the generated reports, and the same for the references."""
    return {"unique_reports": unique_fraction(generated), "distinct_2": distinct_n(generated, 2),
            "reference_unique_reports": unique_fraction(references),
            "reference_distinct_2": distinct_n(references, 2)}
