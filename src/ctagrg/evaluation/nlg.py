"""Natural-language-generation metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr through pycocoevalcap's scorers.

pycocoevalcap is the reference implementation that RGRG and CT2Rep report, so numbers computed here are
comparable with theirs *given the same tokenisation*. pycocoevalcap's own PTBTokenizer needs Java and Stanford
CoreNLP; we use :func:`tokenize` instead (documented in docs/evaluation.md):

- lowercase;
- decimal numbers stay one token ("3.5", "0,8"), as do hyphenated or apostrophised words ("ground-glass");
- every other non-alphanumeric character is a separator, so punctuation is dropped. This matches what the
  COCO pipeline does after PTBTokenizer (it removes punctuation tokens) and what CT-AGRG's training targets do.

Aggregation (the scorers' own): BLEU is corpus-level (clipped n-gram counts and lengths summed over all reports,
brevity penalty with the closest reference length); METEOR is the jar's corpus-level score; ROUGE-L (β = 1.2)
and CIDEr-D are means of per-report scores. CIDEr's document frequencies come from the evaluated references
themselves, so CIDEr depends on the corpus and is 0 for a corpus of one report.

>>> tokenize("A 3.5 mm nodule, right upper lobe.")
'a 3.5 mm nodule right upper lobe'
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# A decimal number, or a run of letters with inner hyphens/apostrophes; anything else separates tokens, so
# "12x9.3" -> "12 x 9.3".
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:['\-][^\W\d_]+)*")

NLG_KEYS: tuple[str, ...] = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


def tokenize(text: str) -> str:
    """Lowercase ``text`` and return its tokens joined by single spaces (the form pycocoevalcap scorers expect)."""
    if not isinstance(text, str):
        return ""
    return " ".join(_TOKEN_RE.findall(text.lower()))


@dataclass
class NLGResult:
    """Corpus scores (``scores``: key -> float or None), per-report scores, and why a metric is missing."""

    scores: dict[str, float | None]
    per_report: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def java_available() -> str | None:
    """Return the path of ``java`` on PATH, or None. METEOR is skipped (null, with a reason) without it."""
    return shutil.which("java")


def _corpus(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    if len(hypotheses) != len(references):
        raise ValueError(f"NLG metrics: {len(hypotheses)} generated reports but {len(references)} references")
    if not hypotheses:
        raise ValueError("NLG metrics: no reports to score")
    gts = {i: [tokenize(r)] for i, r in enumerate(references)}
    res = {i: [tokenize(h)] for i, h in enumerate(hypotheses)}
    return gts, res


def meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> tuple[float | None, list[float], str]:
    """METEOR 1.5 through pycocoevalcap's jar wrapper. Returns (score or None, per-report, reason if None)."""
    if java_available() is None:
        return None, [], "java not found on PATH; METEOR needs Java (pycocoevalcap runs meteor-1.5.jar)"
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
    except (OSError, ImportError) as exc:
        return None, [], f"could not start METEOR: {exc}"
    try:
        score, scores = scorer.compute_score(gts, res)
    except (OSError, ValueError, BrokenPipeError) as exc:
        return None, [], f"METEOR failed: {exc}"
    finally:
        _close_meteor(scorer)
    return float(score), [float(s) for s in scores], ""


def _close_meteor(scorer: Any) -> None:
    # pycocoevalcap kills the JVM only in __del__; do it now so no java process outlives the call.
    proc = getattr(scorer, "meteor_p", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def nlg_metrics(hypotheses: Sequence[str], references: Sequence[str], meteor: bool = True) -> NLGResult:
    """Score generated reports against one reference each.

    Args:
        hypotheses: N generated report texts (untokenised).
        references: N reference report texts, same order.
        meteor: set False to skip METEOR (it starts a JVM, ~5 s).

    Returns:
        NLGResult with ``scores`` keyed by :data:`NLG_KEYS` (METEOR None with a note when unavailable).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _corpus(hypotheses, references)
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    out = NLGResult(scores={f"bleu_{n + 1}": float(bleu[n]) for n in range(4)})
    out.per_report = {f"bleu_{n + 1}": [float(v) for v in bleu_each[n]] for n in range(4)}
    if meteor:
        m, m_each, why = meteor_score(gts, res)
    else:
        m, m_each, why = None, [], "METEOR disabled"
    out.scores.update(meteor=m, rouge_l=float(rouge), cider=float(cider))
    out.per_report.update(rouge_l=[float(v) for v in rouge_each], cider=[float(v) for v in cider_each])
    if m is not None:
        out.per_report["meteor"] = m_each
    else:
        out.notes["meteor"] = why
    return out
