"""The lateral-halves side probe (extras/halves/side_probe.py)."""

from __future__ import annotations

import numpy as np
import pytest


def test_the_half_logit_side_probe_picks_the_higher_half():
    from ctagrg.extras.halves.side_probe import half_side_probe, side_probe_summary
    from ctagrg.labels import LABEL_INDEX, NUM_LABELS

    half = np.zeros((2, NUM_LABELS))
    half[0, LABEL_INDEX["Lung nodule"]] = 2.0  # the right half's nodule logit is higher
    half[1, LABEL_INDEX["Pleural effusion"]] = 1.0  # the left half's effusion logit is higher
    findings = [{"label": "Lung nodule", "side": "right", "size_mm": 12.0},
                {"label": "Lung nodule", "side": "left", "size_mm": 6.0},  # same volume, other side: wrong
                {"label": "Pleural effusion", "side": "right"},
                {"label": "Pleural effusion", "side": "bilateral"},  # not one-sided: not probed
                {"label": "Consolidation", "side": "left"},  # both halves 0: a tie names no side
                {"label": "Cardiomegaly", "side": None}]
    entries = half_side_probe(half, findings)
    assert [(e["label"], e["said"], e["correct"], e["size_mm"]) for e in entries] == [
        ("Lung nodule", "right", True, 12.0), ("Lung nodule", "right", False, 6.0),
        ("Pleural effusion", "left", False, None), ("Consolidation", None, False, None)]
    summary = side_probe_summary(entries)
    assert summary["Lung nodule"]["correct"] == 1 and summary["Lung nodule"]["n"] == 2
    assert summary["all"]["accuracy"] == pytest.approx(1 / 4)
    low, high = summary["all"]["ci95"]
    assert 0.0 < low < 1 / 4 < high < 1.0
    assert side_probe_summary([])["all"]["n"] == 0
    for bad in (half[:1], half[:, :17]):
        with pytest.raises(ValueError, match=r"\(2, 18\)"):
            half_side_probe(bad, findings)
