"""The numbers a generated sentence states, each marked as measured on the scan or written by the decoder."""

from __future__ import annotations

import math
from typing import Any

from ctagrg.text.attributes import size_spans


def stated_numbers(sentence: str | None, measured_mm: float | None) -> list[dict[str, Any]]:
    """Each size ``sentence`` states, marked "measured" when it is the measured diameter (as a post-processor wrote
    it: ``measured_mm`` rounded half up to whole mm) and "decoder" otherwise (a number the model wrote)."""
    out = []
    for span in size_spans(sentence):
        measured = measured_mm is not None and span.value_mm == math.floor(measured_mm + 0.5)
        out.append({"text": span.text, "start": span.start, "end": span.end, "value_mm": span.value_mm,
                    "source": "measured" if measured else "decoder"})
    return out
