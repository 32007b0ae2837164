"""Inputs of the VLM3D comparison: reference and "generated" reports with label matrices, built deterministically.

Used by tests/test_vlm3d.py and by tests/data/vlm3d_make_reference.py, which ran the challenge's own harness on
them to produce tests/data/vlm3d_reference.json. Two sets:

- ``synthetic``: short CT-style reports composed from the sentences below (stored verbatim in the fixture);
- ``dev``: real CT-RATE reports from ../shared/data/reports (not copied into the project: the fixture holds only
  the figures, and the inputs are rebuilt from the shared files).

"Generated" reports are the references with sentences dropped or swapped and with the formatting the harness's
clean-up deals with (newlines, quotes, underscores, " . ", ``<|eot_id|>``); one is empty and one is unchanged.
Generated labels are the reference labels with seeded random flips.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.labels import LABELS, NUM_LABELS

NORMAL = (
    "Trachea and both main bronchi are open.",
    "Mediastinal vascular structures and heart contour are normal.",
    "No enlarged lymph nodes were detected.",
    "Upper abdominal organs in the sections are normal.",
    "Bone structures in the study area are natural.",
    "Thoracic esophagus calibration was normal.",
)
ABNORMAL = {  # a few labels only, so that some labels have no reference positive (the macro counts them as 0)
    "Lung nodule": "A 6 mm nodule is seen in the upper lobe of the right lung.",
    "Pleural effusion": "Left pleural effusion reaching 15 mm is present.",
    "Cardiomegaly": "The heart is enlarged.",
    "Emphysema": "Centrilobular emphysema is seen in both lungs.",
    "Atelectasis": "Subsegmental atelectasis in the lower lobes.",
    "Arterial wall calcification": "Calcific plaques are seen in the aortic wall.",
}


def perturb(text: str, index: int, seed: int) -> str:
    """A deterministic "generated" version of ``text`` (the ``index``-th report of a set)."""
    rng = random.Random(seed * 1000 + index)
    if index == 1:
        return ""
    if index == 2:
        return text
    parts = [s.strip() + "." for s in text.split(".") if s.strip()]
    kept = [s for s in parts if rng.random() > 0.3] or parts[:1]
    if len(kept) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    out = " ".join(kept)
    style = index % 5
    if style == 0:
        out = out.replace(".", " .")
    elif style == 1:
        out = out.replace(". ", " . \n", 2)
    elif style == 2:
        out = '"' + out.replace(" ", "_", 3) + '"'
    elif style == 3:
        out = out.lower() + "<|eot_id|>"
    return out


def flip_labels(labels: np.ndarray, seed: int, p: float = 0.15) -> np.ndarray:
    """``labels`` (N, 18) 0/1 with each entry flipped with probability ``p`` (seeded)."""
    flips = np.random.default_rng(seed).random(labels.shape) < p
    return (labels.astype(bool) ^ flips).astype(int)


def synthetic_inputs(n: int = 16, seed: int = 0) -> dict[str, Any]:
    """``n`` composed reports: names (not in sorted order), references, generated, reference/generated labels."""
    rng = random.Random(seed)
    names, refs, labels = [], [], np.zeros((n, NUM_LABELS), dtype=int)
    for i in range(n):
        present = rng.sample(sorted(ABNORMAL), rng.randint(0, 3))
        sentences = rng.sample(NORMAL, 3) + [ABNORMAL[k] for k in present]
        rng.shuffle(sentences)
        refs.append(" ".join(sentences))
        for k in present:
            labels[i, LABELS.index(k)] = 1
        names.append(f"valid_{(i * 7) % n + 1}_a_1")
    gen = [perturb(r, i, seed) for i, r in enumerate(refs)]
    return {"names": names, "references": refs, "generated": gen, "reference_labels": labels.tolist(),
            "generated_labels": flip_labels(labels, seed).tolist()}


def dev_inputs(reports_dir: Path, n: int = 40, seed: int = 0) -> dict[str, Any]:
    """``n`` real reports of ``reports_dir``/dev_reports.csv (Findings_EN) with their manual labels."""
    import pandas as pd

    reports = pd.read_csv(reports_dir / "dev_reports.csv")
    labels = pd.read_csv(reports_dir / "dev_labels.csv").set_index("VolumeName")
    rows = sorted(random.Random(seed).sample(range(len(reports)), n))
    names = [str(reports.VolumeName[i]) for i in rows]
    refs = [str(reports.Findings_EN[i]) for i in rows]
    ref_labels = labels.loc[names, list(LABELS)].to_numpy().astype(int)
    gen = [perturb(r, i, seed) for i, r in enumerate(refs)]
    return {"names": names, "references": refs, "generated": gen, "reference_labels": ref_labels.tolist(),
            "generated_labels": flip_labels(ref_labels, seed).tolist()}
