"""Sentence splitter: measurements, abbreviations, semicolon clauses, impression quotes, doubtful '?'."""

from __future__ import annotations

import pytest

from ctagrg.text.sentences import split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A 12x9.3 mm nodule is seen. A 3.5 mm nodule too.", ["A 12x9.3 mm nodule is seen.", "A 3.5 mm nodule too."]),
        ("Clinical and lab. correlation is advised. Liver normal.",
         ["Clinical and lab. correlation is advised.", "Liver normal."]),
        ("When examined in the lung parenchyma window; There is emphysema.",
         ["When examined in the lung parenchyma window", "There is emphysema."]),
        ('Mild hernia. " Bronchiectasis in both lungs', ["Mild hernia.", "Bronchiectasis in both lungs"]),
        ("Consolidation (infective? atelectasis) is seen. Effusion? The liver is normal.",
         ["Consolidation (infective? atelectasis) is seen.", "Effusion?", "The liver is normal."]),
        ("Measured 3 cm. 1-2 mm nodules are seen.", ["Measured 3 cm.", "1-2 mm nodules are seen."]),
        ("First line\nSecond line", ["First line", "Second line"]),
        ("Trailing text without a period", ["Trailing text without a period"]),
    ],
)
def test_split(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", ["", None, "   ", ' " ... "'])
def test_empty_gives_nothing(text: str | None) -> None:
    assert split_sentences(text) == []


def test_real_report_sentences_are_whole(shared_data) -> None:
    import pandas as pd

    reports = pd.read_csv(shared_data / "reports" / "dev_reports.csv")
    sentences = split_sentences(reports.Findings_EN[1])
    assert "A 13x9.3 mm lymph node that did not reach the pathological size was observed in the right " \
           "paratracheal area." in sentences
    assert all(s[0].isupper() or s[0].isdigit() for s in sentences)
