"""ConText-style assertion scoping: is a concept mention in a clause asserted present?

Written for CT-RATE's translated reports, whose commonest negations are post-posed ("Pleural effusion-thickening
was not detected", "No enlarged lymph nodes ... were detected"). medspacy's default ConText rules miss the
post-posed form (see REFERENCE.md) and its install downgrades numpy, so we keep a small trigger set here.

All patterns run on *normalised* text (lower case, hyphens and slashes turned into spaces; see
``normalise``). A sentence is first cut into clauses at strong boundaries; a trigger's scope never leaves its
clause:

- a *forward* trigger ("no", "without", "absence of") covers the clause from the trigger onward, but stops at a
  comma or "and" that follows the negated predicate ("no nodule was seen, atelectasis is present");
- a *backward* trigger ("was not observed", "is normal") covers the clause back to the previous comma;
- *history* triggers ("history of", "treated for") cover the clause up to the next comma;
- *pseudo* triggers ("no significant change", "not only") are removed first, so they negate nothing.

Uncertainty ("may be compatible with", "suspicious for", "?") is deliberately *not* a negation: on the
development reports the annotators labelled hedged findings as present, and treating them as absent lowered F1.
"""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")
_JOINERS = re.compile(r"(?<=\w)[-/–—](?=\w)|(?<=\w)[-–—]\s|\s[-–—](?=\w)")


def normalise(text: str) -> str:
    """Lower-case, hyphens / dashes / slashes between words to spaces, single spaces. Same length not kept."""
    text = _JOINERS.sub(" ", text.lower())
    return _SPACES.sub(" ", text).strip()


# Strong clause boundaries inside a sentence: scope never crosses them.
_CLAUSE_BREAK = re.compile(
    r";|:|\?|\(|\)|•"
    r"|,?\s\b(?:but|however|although|though|whereas|while|except|apart from this|apart from these|other than this"
    r"|in addition|additionally|also|besides|on the other hand)\b"
    r"|,\s(?:and\s)?(?=(?:there|a|an|the|in|on|at|it|its|some|several|multiple)\b)"
    r"|\sand\s(?=(?:there|no|a|an|it|in the|on the)\b)"
)

_VERB = r"(?:is|are|was|were|has been|have been|could be|can be|be)"
_SEEN = (
    r"(?:observed|detected|seen|found|present|identified|noted|monitored|visualized|visualised|followed|"
    r"shown|demonstrated|encountered|described|evident|distinguished|determined|noticed|selected|revealed)"
)

# Forward negation: the mention comes after the trigger.
FORWARD_NEGATION = re.compile(
    r"\b(?:no|without|neither|nor|absence of|free of|negative for|atypical (?:for|in terms of)"
    r"|not (?:\w+ ){0,3}(?:compatible|consistent|typical|suggestive|in favou?r))\b"
)
# Backward negation / normality: the mention comes before the trigger.
BACKWARD_NEGATION = re.compile(
    rf"\b(?:{_VERB} not (?:\w+ )?{_SEEN}|{_VERB} not (?:present|available|noted)|not {_SEEN}"
    rf"|{_VERB} (?:of |within )?(?:normal|natural)(?: limits)?"
    rf"|(?:shows?|has|have|demonstrates?|contains?) no|{_VERB} absent|{_VERB} (?:excluded|ruled out)"
    rf"|(?:has|have|is|are|was|were) (?:completely )?(?:disappeared|resolved|regressed)"
    rf"|{_VERB} (?:no longer|not) (?:\w+ )?{_SEEN}"
    rf"|{_VERB} not|did not (?:develop|occur)|disappeared|(?:was|were) (?:surgically )?removed"
    rf"|(?:cannot|could not) be (?:clearly )?(?:distinguished|detected|seen|observed|identified|evaluated))\b"
)
# Phrases that look like negation but do not negate the finding ("no significant change in the nodule").
PSEUDO_NEGATION = re.compile(
    r"\b(?:no|not|without) (?:significant |apparent |obvious |evident |marked |remarkable |any )?"
    r"(?:change|changes|difference|progression|regression|increase in size|decrease in size|significant change)\b"
    r"|\bnot only\b|\bno longer\b(?= (?:be )?(?:clearly )?distinguish)"
    r"|\b(?:did|does|do) not (?:differ|change)\b|\bnot (?:changed|differ|different)\b"
    r"|\b(?:cannot|could not) be (?:clearly )?(?:distinguished|differentiated|separated) from\b"
    r"|\b(?:cannot|could not) be (?:clearly )?characterized\b"
    # "... which was not seen in the previous examination" says the finding is new, not absent.
    rf"|\b(?:{_VERB} )?not (?:\w+ )?{_SEEN} (?:in|on|at) (?:the |his |her |its )?(?:previous|prior|old|earlier)\b"
)
# History: a finding named as the reason for past treatment is not a current finding ("treated for pneumonia,
# ground glass densities ..."). The scope ends at the next comma.
HISTORY = re.compile(
    r"\b(?:history of|(?:operated|treated|followed up|followed) for|known to have|known case of|due to previous)\b"
)
# A finding placed only in an earlier study ("in the previous examination, there is a consolidation ...") is not a
# current finding, unless the clause also speaks of the current study, a change or persistence.
PAST_ONLY = re.compile(r"\b(?:in|on) the (?:previous|old|prior) (?:ct |thorax ct )?(?:examination|exam|ct|scan)s?\b")
_PAST_THERE = re.compile(r"\bthere (?:is|are|was|were)\b")
_CURRENT = re.compile(
    r"\b(?:current|present|today|this examination|now|also|still|again|stable|persist\w*|compared|new\w*"
    r"|increas\w*|decreas\w*|progress\w*|regress\w*|grow\w*|reduc\w*|(?:was|were|is|are) measured)\b"
)
# The negated predicate has been stated; a following comma / "and" starts something new.
_PREDICATE_END = re.compile(rf"\b{_SEEN}\b")
_SOFT_BREAK = re.compile(r",|\band (?=(?:there|a|an|the|it|its|in|on|at|\w+ (?:is|are|was|were))\b)")
# A comma-delimited aside inside a negated subject ("The effusion, which was seen before, was not detected").
_ASIDE = re.compile(r"\s*(?:which|that|observed|seen|described|detected|noted)\b")


def clauses(sentence: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the clauses of a normalised sentence."""
    spans, start = [], 0
    for match in _CLAUSE_BREAK.finditer(sentence):
        if match.start() > start:
            spans.append((start, match.start()))
        start = match.end()
    if start < len(sentence):
        spans.append((start, len(sentence)))
    return spans


def _blank(text: str, pattern: re.Pattern[str]) -> str:
    """Replace every match of ``pattern`` by spaces, keeping offsets."""
    return pattern.sub(lambda m: " " * (m.end() - m.start()), text)


def negated_spans(clause: str) -> list[tuple[int, int]]:
    """Character spans of ``clause`` under negation or normality (offsets into ``clause``)."""
    text = _blank(clause, PSEUDO_NEGATION)
    spans: list[tuple[int, int]] = []
    for match in FORWARD_NEGATION.finditer(text):
        end = len(text)
        predicate = _PREDICATE_END.search(text, match.end())
        if predicate:
            soft = _SOFT_BREAK.search(text, predicate.end())
            if soft:
                end = soft.start()
        spans.append((match.start(), end))
    for match in HISTORY.finditer(text):
        comma = text.find(",", match.end())
        spans.append((match.start(), comma if comma >= 0 else len(text)))
    for match in BACKWARD_NEGATION.finditer(text):
        spans.append((_backward_start(text, match.start()), match.end()))
    return spans


def describes_past_only(clause: str, previous: str = "") -> bool:
    """True for "there is X" placed in an earlier study, by this clause or by a bare lead-in clause before it."""
    if not _PAST_THERE.search(clause) or _CURRENT.search(clause):
        return False
    lead_in = previous if len(previous.split()) <= 8 and not _CURRENT.search(previous) else ""
    return bool(PAST_ONLY.search(clause) or PAST_ONLY.search(lead_in))


def _backward_start(text: str, trigger: int) -> int:
    """Start of a backward scope: the previous comma, but ", which was seen before," asides do not stop it."""
    comma = text.rfind(",", 0, trigger)
    while comma >= 0:
        previous = text.rfind(",", 0, comma)
        if previous < 0 or not _ASIDE.match(text, previous + 1):
            break
        comma = text.rfind(",", 0, previous)  # the segment (previous, comma) is an aside: look past it
    return comma + 1


def is_negated(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """True when the mention ``[start, end)`` starts or ends inside one of ``spans``.

    Either end counts because a long mention can straddle its trigger ("aortic wall shows no calcification").
    """
    return any(s <= start < e or s < end <= e for s, e in spans)
