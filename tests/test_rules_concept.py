"""ctagrg.text.rules.concept and locations: how a concept's patterns compile, and the shared location patterns."""

from __future__ import annotations

import re

from ctagrg.text.rules.concept import Concept
from ctagrg.text.rules.concepts import CONCEPTS
from ctagrg.text.rules.locations import ARTERY, EXTRAPULMONARY, LUNG


def test_concept_compiles_its_patterns() -> None:
    c = Concept("Medical material", include=(r"\bstents?\b", "pacemaker"), exclude=("stent",))
    assert c.include_re.pattern == r"(?:\bstents?\b)|(?:pacemaker)"
    assert [m.group() for m in c.include_re.finditer("a stent and a pacemaker")] == ["stent", "pacemaker"]
    # exclusions match at a word start only: "consistent" does not exclude
    assert c.exclude_re is not None and c.exclude_re.search("consistent with") is None
    assert c.exclude_re.search("coronary stent") is not None
    assert (c.reject_re, c.require_re, c.window) == (None, None, 60)


def test_location_patterns() -> None:
    assert re.search(ARTERY, "calcific plaques in the aorta")
    assert not re.search(ARTERY, "coronary artery calcification")
    assert not re.search(ARTERY, "abdominal aorta")
    assert re.search(EXTRAPULMONARY, "thyroid nodule") and not re.search(EXTRAPULMONARY, "right upper lobe nodule")
    assert re.search(LUNG, "in the right lower lobe") and not re.search(LUNG, "in the liver")


def test_one_concept_per_label_name_and_all_compiled() -> None:
    from ctagrg.labels import LABELS

    assert {c.label for c in CONCEPTS} == set(LABELS)
    assert all(isinstance(c.include_re, re.Pattern) for c in CONCEPTS)
