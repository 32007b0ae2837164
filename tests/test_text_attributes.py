"""What a sentence states about a finding: side, size, every size span, and which sizes were measured."""

from __future__ import annotations

from ctagrg.generation.numbers import stated_numbers
from ctagrg.text.attributes import restate_size, size_mm_from_text, size_spans


def test_size_spans_cover_every_stated_size_with_its_offsets() -> None:
    sentence = "A 12 x 9 mm nodule in the right lobe and another of 1,5 cm; no 3 mm."
    spans = size_spans(sentence)
    assert [(s.text, s.value_mm) for s in spans] == [("12 x 9 mm", 12.0), ("1,5 cm", 15.0), ("3 mm", 3.0)]
    assert all(sentence[s.start:s.end] == s.text for s in spans)
    assert size_spans(None) == [] and size_spans("No nodule.") == []
    assert size_mm_from_text(sentence) == spans[0].value_mm


def test_measured_numbers_are_marked_apart_from_the_decoders() -> None:
    sentence = restate_size("A 1.2 cm nodule in the right upper lobe.", 17.46)
    assert sentence == "A 17 mm nodule in the right upper lobe."
    assert stated_numbers(sentence, 17.46) == [{"text": "17 mm", "start": 2, "end": 7, "value_mm": 17.0,
                                                "source": "measured"}]
    # a size the decoder wrote stays marked as such, also beside a measured one
    numbers = stated_numbers("A 17 mm nodule and a 4 mm one.", 17.46)
    assert [n["source"] for n in numbers] == ["measured", "decoder"]
    assert [n["source"] for n in stated_numbers("A 12 mm nodule.", None)] == ["decoder"]
    assert stated_numbers(None, 3.0) == []
