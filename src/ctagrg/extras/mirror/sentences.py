"""A report sentence as it would read for the left-right mirror image of the patient.

Step 2's mirror augmentation (ctagrg.training.decoder_task, ``mirror``) pairs a cached abnormality embedding whose
[right, left] halves are swapped with its sentence mirrored here: "right" and "left" exchanged. Anatomy that has no
mirror image makes a sentence unmirrorable (None), and such a pair is never mirrored: the middle lobe and the
lingula (the right lung has three lobes, the left two), the heart, the aorta and the coronary arteries (one side
only), side-specific lymph node stations (right paratracheal, aortopulmonary window), and segments and fissures
one lung has and the other has not (the minor or horizontal fissure, apicoposterior, anteromedial, medial basal).

>>> mirror_sentence("A 12 mm nodule is seen in the upper lobe of the right lung.")
'A 12 mm nodule is seen in the upper lobe of the left lung.'
>>> mirror_sentence("Left-sided pleural effusion; right lung clear.")
'Right-sided pleural effusion; left lung clear.'
>>> mirror_sentence("Small bilateral pleural effusion.")
'Small bilateral pleural effusion.'
>>> mirror_sentence("Consolidation in the right middle lobe.") is None
True
"""

from __future__ import annotations

import re

_SIDE_RE = re.compile(r"\b(right|left)\b", re.IGNORECASE)
_SWAP = {"right": "left", "left": "right"}
# anatomy without a mirror image; abbreviations such as RML/LUL name a lobe and a side at once
_UNMIRRORABLE_RE = re.compile(
    r"\b(middle lobe|lingul\w*|minor fissure|horizontal fissure|apicoposterior|anteromedial|medial basal|"
    r"heart|cardiac|ventric\w*|atri(um|al|a)|aort\w*|coronary|descending|circumflex|paratracheal|aortopulmonary|"
    r"azygo\w*|[RL][UML]L)\b", re.IGNORECASE)


def _swap(match: re.Match[str]) -> str:
    word = match.group(0)
    other = _SWAP[word.lower()]
    if word.isupper():
        return other.upper()
    return other.capitalize() if word[0].isupper() else other


def mirror_sentence(sentence: str) -> str | None:
    """``sentence`` with "right" and "left" exchanged (case kept), or None when it names anatomy without a mirror
    image (``_UNMIRRORABLE_RE``). A sentence naming no side is its own mirror image."""
    if _UNMIRRORABLE_RE.search(sentence):
        return None
    return _SIDE_RE.sub(_swap, sentence)
