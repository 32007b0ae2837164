"""Supervision from the sides and sizes that report sentences state (not in the published method): the config, the
targets read from a sentences CSV, and the losses. Used by the ``attributes`` training extension
(:mod:`ctagrg.extras.attributes.extension`); docs/demo-encoder.md, "Half supervision" and "Attribute supervision"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctagrg.extras.halves.heads import SIDE_CLASSES, SIDE_HALVES, SIZE_SCALE_MM
from ctagrg.labels import LABEL_INDEX, LABELS


@dataclass
class AttributeConfig:
    """Supervision from the sides and sizes that report sentences state (not in the published method; off unless a
    weight is > 0). The targets come from report text, as CT-RATE has it, not from any image annotation.

    - ``half_weight`` (pretraining and step 1, with ``model.extras.halves.lateral_halves``): a present finding whose
      sentence states its side tells the label's two half logits which half holds it: binary cross-entropy of the right
      half's logit against "right or bilateral" and of the left half's against "left or bilateral". The label alone only
      says that one half holds it, and the soft maximum sends most of the gradient to whichever half already scores
      higher, right or wrong; told the side, the encoder learns from the difference between a patient's two halves, one
      with the finding and one without (docs/demo-encoder.md, "Half supervision").
    - ``side_weight``, ``size_weight`` (step 1, with ``model.extras.halves.attribute_heads``): label i's side read-out
      (cross-entropy over left / right / bilateral) and size read-out (smooth L1 in cm) on embedding i. Step 2
      writes each sentence from that embedding alone, and the presence loss does not ask it to keep where or how
      large the finding is."""

    sentences_csv: str = ""  # `ctagrg sentences` output (VolumeName, AbnormalityName, Sentence): a file or folder
    half_weight: float = 0.0
    side_weight: float = 0.0
    size_weight: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.half_weight > 0 or self.side_weight > 0 or self.size_weight > 0


def half_side_loss(half_logits: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each half's logit against "the stated side holds the finding", over the present
    findings whose side is known.

    Args:
        half_logits: (B, 2, L), [right half, left half]; side: (B, L) index into ``SIDE_CLASSES`` (left, right,
            bilateral), -1 where unknown.
    Returns a scalar; 0 (still connected to the graph) when the batch has no known side."""
    known = side >= 0
    if not known.any():
        return half_logits.sum() * 0.0
    target = SIDE_HALVES.to(side.device)[side.clamp(min=0)].permute(0, 2, 1).float()  # (B, 2, L)
    mask = known.unsqueeze(1).expand_as(target)
    return F.binary_cross_entropy_with_logits(half_logits.float()[mask], target[mask])


def attribute_losses(side_logits: torch.Tensor, size_mm: torch.Tensor, side: torch.Tensor, size: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Side cross-entropy and size smooth L1 (in units of SIZE_SCALE_MM, 1 cm) over the known targets.

    Args:
        side_logits: (B, L, 3) over ``SIDE_CLASSES``; size_mm: (B, L) predicted sizes in mm.
        side: (B, L) int64 class index, -1 where unknown; size: (B, L) float32 mm, NaN where unknown.
    Returns two scalars; each is 0 (still connected to the graph) when the batch has no known target."""
    known = side >= 0
    side_loss = (F.cross_entropy(side_logits[known].float(), side[known]) if known.any()
                 else side_logits.sum() * 0.0)
    sized = ~torch.isnan(size)
    size_loss = (F.smooth_l1_loss(size_mm[sized].float() / SIZE_SCALE_MM, size[sized] / SIZE_SCALE_MM)
                 if sized.any()
                 else size_mm.sum() * 0.0)
    return side_loss, size_loss


class AttributeTargets:
    """Per volume and label, the side and the size (mm) that the label's report sentence states.

    Read from a sentences CSV with :func:`ctagrg.text.attributes.side_from_text` and
    :func:`~ctagrg.text.attributes.size_mm_from_text`, the same parsers the grounding metric uses."""

    def __init__(self, table: dict[str, tuple[np.ndarray, np.ndarray]], source: str = "") -> None:
        self.table = table  # volume stem -> (side (L,) int64, -1 unknown; size (L,) float32 mm, NaN unknown)
        self.source = source

    @classmethod
    def from_sentences_csv(cls, path: str | Path) -> AttributeTargets:
        from ctagrg.text.attributes import side_from_text, size_mm_from_text
        from ctagrg.training.embedding_cache import csv_files, read_sentences_csv

        table: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for file in csv_files(path):
            for name, sentences in read_sentences_csv(file).items():
                side = np.full(len(LABELS), -1, np.int64)
                size = np.full(len(LABELS), np.nan, np.float32)
                for label, sentence in sentences.items():
                    i = LABEL_INDEX[label]
                    stated = side_from_text(sentence)
                    side[i] = SIDE_CLASSES.index(stated) if stated else -1
                    mm = size_mm_from_text(sentence)
                    size[i] = np.nan if mm is None else mm
                table[name] = (side, size)
        return cls(table, str(path))

    def gather(self, names: Sequence[str], labels: torch.Tensor, device: torch.device | str,
               lr_flipped: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) side classes and (B, L) sizes for ``names``; unknown (-1 / NaN) where the label is not present
        (``labels`` (B, L) < 0.5 or NaN) or its sentence states none. ``lr_flipped`` (B,) bool: volumes that
        augmentation mirrored left-right, whose left and right are swapped."""
        from ctagrg.data.dataset import volume_stem

        missing = (np.full(len(LABELS), -1, np.int64), np.full(len(LABELS), np.nan, np.float32))
        rows = [self.table.get(volume_stem(n), missing) for n in names]
        side = torch.from_numpy(np.stack([r[0] for r in rows]))
        size = torch.from_numpy(np.stack([r[1] for r in rows]))
        present = labels.detach().cpu() > 0.5  # NaN compares False
        side = torch.where(present, side, -1)
        size = torch.where(present, size, torch.nan)
        if lr_flipped is not None:
            left, right = SIDE_CLASSES.index("left"), SIDE_CLASSES.index("right")
            swapped = torch.where(side == left, right, torch.where(side == right, left, side))
            side = torch.where(lr_flipped.cpu().bool().unsqueeze(1), swapped, side)
        return side.to(device), size.to(device)

    def summary(self, dataset: Any) -> str:
        names = list(getattr(dataset, "names", []))
        rows = [self.table[n] for n in names if n in self.table]
        sides = sum(int((r[0] >= 0).sum()) for r in rows)
        sizes = sum(int((~np.isnan(r[1])).sum()) for r in rows)
        return (f"attributes: {self.source}: {len(rows)} of {len(names)} training volumes have sentences; "
                f"{sides} state a side, {sizes} a size")
