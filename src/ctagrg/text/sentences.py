"""Sentence splitting for chest CT reports (CT-RATE style).

CT-RATE reports are machine-translated Turkish reports with a few habits a generic splitter gets wrong:

- measurements with decimals and products ("3.5 mm", "12x9.3 mm") must not be split;
- abbreviations ("approx.", "lab.", "e.g.", "vs.") do not end a sentence;
- a semicolon often joins a preamble to the first finding ("When examined in the lung parenchyma window; There
  is ..."), so each semicolon clause is its own unit;
- impressions use a double quote as the separator between items ("Mild hernia. " Bronchiectasis ...");
- "?" marks a doubtful finding in the middle of a sentence ("(infective? atelectasis") unless an upper-case
  word follows.

We write this ourselves (a few regular expressions) rather than use a general NLP sentence splitter: those split
on "lab." and keep the quote/semicolon units together, and cost far more than the 50 reports/s budget allows.
"""

from __future__ import annotations

import re

# Tokens that end with a period but do not end a sentence (lower-cased, without the period).
ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "approx",
        "lab",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "vs",
        "dr",
        "no",
        "nr",
        "fig",
        "etc",
        "max",
        "min",
        "mr",
        "mrs",
        "st",
        "cf",
        "resp",
        "ca",
        "incl",
        "ref",
        "seg",
        "sect",
    }
)

# A candidate boundary: terminal punctuation followed by whitespace, or a semicolon, a double quote, a newline.
_BOUNDARY = re.compile(r'[.!?]+(?=\s)|;|"|\n+|\r+')
_WORD_BEFORE = re.compile(r"([A-Za-z.]+)$")
_EDGE = " \t\"'”“"


def _is_abbreviation(text: str, end: int) -> bool:
    """True when the period at ``text[end]`` closes a known abbreviation (e.g. "lab." before "correlation")."""
    match = _WORD_BEFORE.search(text, max(0, end - 40), end)  # a bounded look-back keeps splitting linear
    if not match:
        return False
    return match.group(1).lower().rstrip(".") in ABBREVIATIONS


def _ends_sentence(text: str, start: int, end: int) -> bool:
    """Decide whether the boundary match ``text[start:end]`` ends a sentence."""
    mark = text[start:end]
    if mark in (";", '"') or mark[0] in "\n\r":
        return True
    following = text[end:].lstrip()
    if not following:
        return True
    if mark.startswith("?") or mark.startswith("!"):
        # "disease? small nodules" keeps going; "disease? The liver" is a new sentence.
        return following[0].isupper() or following[0] in '"('
    if mark == "." and _is_abbreviation(text, start) and not following[0].isupper():
        return False
    return True


def split_sentences(text: str | None) -> list[str]:
    """Split a report (findings and/or impression) into sentences and semicolon clauses.

    Args:
        text: report text; ``None`` or empty gives ``[]``.

    Returns:
        The sentences in order, stripped, each keeping its final punctuation; empty pieces are dropped.

    Example:
        >>> split_sentences("A 12x9.3 mm nodule is seen. Lab. correlation; No effusion.")
        ['A 12x9.3 mm nodule is seen.', 'Lab. correlation', 'No effusion.']
    """
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if not _ends_sentence(text, match.start(), match.end()):
            continue
        keep = match.group() if match.group()[0] in ".!?" else ""
        _append(sentences, text[start : match.start()] + keep)
        start = match.end()
    _append(sentences, text[start:])
    return sentences


def _append(sentences: list[str], piece: str) -> None:
    piece = piece.strip(_EDGE)
    # A piece of bare punctuation ("..." or ".") carries no content.
    if piece and any(ch.isalnum() for ch in piece):
        sentences.append(piece)
