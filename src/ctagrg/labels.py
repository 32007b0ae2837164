"""The 18 CT-RATE abnormality labels, in CT-RATE's column order. Everything in ctagrg uses this order."""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
NUM_LABELS = len(LABELS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# Findings that have a side (left/right/bilateral); used by grounding metrics.
LATERALISED: tuple[str, ...] = ("Lung nodule", "Pleural effusion", "Consolidation")
