"""Report diversity: distinct reports and distinct-2, on hand-counted examples."""

from __future__ import annotations

import math

from ctagrg.evaluation.diversity import distinct_n, diversity_metrics, unique_fraction


def test_unique_fraction_counts_reports_that_differ_after_tokenisation() -> None:
    # "No effusion." and "no effusion" tokenise alike: 2 distinct of 4
    assert unique_fraction(["No effusion.", "no effusion", "A nodule.", "A nodule."]) == 0.5
    assert unique_fraction(["same"] * 5) == 0.2
    assert math.isnan(unique_fraction([]))


def test_distinct_2_over_the_corpus() -> None:
    # bigrams: (a b) (b c) | (a b) (b d) -> 3 distinct of 4
    assert distinct_n(["a b c", "a b d"], 2) == 0.75
    assert distinct_n(["a b c", "a b d"], 1) == 4 / 6
    assert math.isnan(distinct_n(["one"], 2))  # no bigram at all


def test_diversity_metrics_for_generated_and_references() -> None:
    m = diversity_metrics(["x y", "x y"], ["x y", "y z"])
    assert m == {"unique_reports": 0.5, "distinct_2": 0.5, "reference_unique_reports": 1.0,
                 "reference_distinct_2": 1.0}
