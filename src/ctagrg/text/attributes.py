"""What a report sentence states about a finding: its side and its size, read from the text.

Used by step 1's attribute targets, the grounding metric on phantoms, and the Reporter's marking of which numbers
in a sentence were measured and which the decoder wrote.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_BILATERAL_RE = re.compile(r"\b(bilateral(ly)?|both (lungs?|sides|hemithora(x|ces)|pleural)|bibasal|bibasilar)\b")
_LEFT_RE = re.compile(r"\bleft\b")
_RIGHT_RE = re.compile(r"\bright\b")
# "12 mm", "1.2 cm", "12x9.3 mm", "12 x 9 x 7 mm", "0,8 cm", "12 millimeters"
_NUM = r"\d+(?:[.,]\d+)?"
_SIZE_RE_ANY_CASE = re.compile(rf"({_NUM}(?:\s*[x×*]\s*{_NUM})*)\s*(mm|millimet(?:er|re)s?|cm|centimet(?:er|re)s?)\b",
                               re.IGNORECASE)
# a number and a dash or "to" right before a size: the size ends a range ("5-6 mm", "5 to 6 mm")
_RANGE_BEFORE_RE = re.compile(rf"{_NUM}\s*(?:-|–|to)\s*$", re.IGNORECASE)


def side_from_text(sentence: str | None) -> str | None:
    """The side a sentence states: "left", "right", "bilateral" (or both sides named), or None.

    >>> side_from_text("A 12 mm nodule in the upper lobe of the right lung.")
    'right'
    >>> side_from_text("Bilateral pleural effusion.")
    'bilateral'
    """
    if not sentence:
        return None
    text = sentence.lower()
    if _BILATERAL_RE.search(text):
        return "bilateral"
    left, right = bool(_LEFT_RE.search(text)), bool(_RIGHT_RE.search(text))
    if left and right:
        return "bilateral"
    return "left" if left else "right" if right else None


def size_mm_from_text(sentence: str | None) -> float | None:
    """The first size a sentence states, in mm; for "12x9 mm" the largest dimension. None when there is none.

    >>> size_mm_from_text("A 1.2 cm nodule")
    12.0
    >>> size_mm_from_text("a 12x9.3 mm nodule")
    12.0
    """
    spans = size_spans(sentence)
    return spans[0].value_mm if spans else None


def restate_size(sentence: str, size_mm: float) -> str:
    """``sentence`` with the size it states (as :func:`size_mm_from_text` reads it: "12 mm", "1.2 cm",
    "12 x 9 mm") replaced by ``size_mm``, rounded half up to whole mm. Unchanged when it states no size, more than
    one ("12 mm x 9 mm", "up to 8 mm, the largest 14 mm") or a range ("5-6 mm", "5 to 6 mm"): one number cannot
    replace those without garbling them.

    >>> restate_size("A 1.2 cm nodule in the right upper lobe.", 17.4)
    'A 17 mm nodule in the right upper lobe.'
    >>> restate_size("A 5-6 mm nodule.", 17.4)
    'A 5-6 mm nodule.'
    """
    matches = list(_SIZE_RE_ANY_CASE.finditer(sentence))  # on the sentence itself: lower() can move offsets
    if len(matches) != 1 or _RANGE_BEFORE_RE.search(sentence[: matches[0].start()]):
        return sentence
    match = matches[0]
    return f"{sentence[: match.start()]}{math.floor(size_mm + 0.5):d} mm{sentence[match.end():]}"


@dataclass(frozen=True)
class SizeSpan:
    """One size a sentence states: ``sentence[start:end]`` (e.g. "1.2 cm", "12 x 9 mm") and its largest
    dimension in mm."""

    start: int
    end: int
    text: str
    value_mm: float


def size_spans(sentence: str | None) -> list[SizeSpan]:
    """Every size ``sentence`` states, in order (the same reading as :func:`size_mm_from_text`).

    >>> [(s.text, s.value_mm) for s in size_spans("A 12 x 9 mm nodule, another of 1.5 cm.")]
    [('12 x 9 mm', 12.0), ('1.5 cm', 15.0)]
    """
    spans = []
    for match in _SIZE_RE_ANY_CASE.finditer(sentence or ""):
        dims = [float(v.replace(",", ".")) for v in re.findall(_NUM, match.group(1))]
        scale = 10.0 if match.group(2).lower().startswith(("cm", "centimet")) else 1.0
        spans.append(SizeSpan(match.start(), match.end(), match.group(0), max(dims) * scale))
    return spans
