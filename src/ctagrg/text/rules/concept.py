"""One label's concept: its mention patterns and the context that cancels or is required for a mention."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Concept:
    """The words and phrases by which reports mention one label, compiled once. Patterns run on normalised text
    (``context.normalise``).

    - ``include``: mentions of the finding (synonyms, adjectives, Turkish-English translation variants);
    - ``exclude``: clause-level context that makes a mention about something else (a *thyroid* nodule, a *lymph
      node* calcification), checked within ``window`` characters of the mention in the same clause; matched at a
      word start only;
    - ``reject``: phrases that, when they overlap the mention, cancel it (e.g. "fibrocalcific atheroma");
    - ``require``: context that must appear in the same sentence.
    """

    label: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    reject: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    window: int = 60
    include_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    exclude_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    reject_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    require_re: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "include_re", _compile(self.include))
        # Exclusion words match at a word start only ("consistent" must not hit "stent").
        exclude = tuple(rf"\b(?:{p})" for p in self.exclude)
        object.__setattr__(self, "exclude_re", _compile(exclude) if exclude else None)
        object.__setattr__(self, "reject_re", _compile(self.reject) if self.reject else None)
        object.__setattr__(self, "require_re", _compile(self.require) if self.require else None)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns))
