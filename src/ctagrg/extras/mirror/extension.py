"""The ``mirror`` training extension (step 2, not in the published method): when the embedding cache holds [right
half, left half] embeddings (the halves heads), a training pair of a ``labels`` label is drawn with probability
``p`` (in the training step, in the main process) as its mirror image: the two halves swapped and "right" and "left"
exchanged in its sentence (:func:`ctagrg.extras.mirror.sentences.mirror_sentence`; sentences naming the middle
lobe, the heart and other one-sided anatomy are never mirrored). Every lateralised finding is then seen on both
sides, and the decoder cannot learn a side from the label alone. Validation pairs are never mirrored."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ctagrg.config import ConfigError
from ctagrg.extras.mirror.sentences import mirror_sentence
from ctagrg.labels import LABEL_INDEX
from ctagrg.training.decoder_task import PairDataset, collate_pairs, pad_rows
from ctagrg.training.extensions import Extension

logger = logging.getLogger(__name__)


# labels whose side words mean the patient's lung or pleura (or a hilum): their mirrored sentence is anatomy too
MIRROR_LABELS: tuple[str, ...] = (
    "Lymphadenopathy", "Emphysema", "Atelectasis", "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela",
    "Pleural effusion", "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
    "Interlobular septal thickening")


@dataclass
class MirrorConfig:
    """``extras.mirror`` (see the module docstring). Needs an embedding cache with two halves."""

    p: float = 0.0  # probability that a mirrorable training pair is drawn mirrored; 0: off (the paper)
    labels: tuple[str, ...] = MIRROR_LABELS

    def __post_init__(self) -> None:
        if not isinstance(self.labels, (list, tuple)):
            raise ConfigError(f"extras.mirror.labels: expected a list of abnormality names, got {self.labels!r}")
        self.labels = tuple(self.labels)
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"extras.mirror.p: expected a probability in [0, 1], got {self.p}")
        unknown = [label for label in self.labels if label not in LABEL_INDEX]
        if unknown:
            raise ConfigError(f"extras.mirror.labels: unknown abnormalities {unknown}")




class MirroredPairs(Dataset):
    """``base``'s pairs; a pair of a ``labels`` label whose sentence has a mirror image also carries it:
    "mirror_embedding" (the embedding's two halves swapped) and "mirror_input_ids" (the mirrored sentence's
    tokens). Which pairs are drawn mirrored is decided per batch in the main process, not here: loader workers have
    their own random streams, which an exact resume and DDP ranks would not share."""

    def __init__(self, base: PairDataset, labels: tuple[str, ...]) -> None:
        self.base = base
        allowed = {LABEL_INDEX[label] for label in labels}
        mirrored = [mirror_sentence(t) if i in allowed else None
                    for (_, i), t in zip(base.pairs, base.texts, strict=True)]
        todo = [k for k, t in enumerate(mirrored) if t is not None]
        self.mirror_ids = dict(zip(todo, base.encode([mirrored[k] for k in todo]), strict=True))

    def __getattr__(self, name: str) -> Any:  # pairs, table, ... of the base
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, k: int) -> dict[str, Any]:
        item = {**self.base[k], "mirror_embedding": None, "mirror_input_ids": None}
        if k in self.mirror_ids:  # [right, left] -> [left, right]: equal halves
            item["mirror_embedding"] = item["embedding"].view(2, -1).flip(0).reshape(-1)
            item["mirror_input_ids"] = torch.tensor(self.mirror_ids[k])
        return item


def collate_mirrored(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """:func:`collate_pairs`, and when some item has a mirror image also "mirrorable" (N,) bool and
    "mirror_embeddings", "mirror_input_ids", "mirror_attention_mask" (an item without one repeats itself there),
    both versions padded to one length."""
    if not any(it.get("mirror_input_ids") is not None for it in items):
        return collate_pairs(items, pad_id)
    alt = [it["mirror_input_ids"] if it["mirror_input_ids"] is not None else it["input_ids"] for it in items]
    longest = max(len(r) for r in [it["input_ids"] for it in items] + alt)
    batch = collate_pairs(items, pad_id, longest)
    batch["mirrorable"] = torch.tensor([it["mirror_input_ids"] is not None for it in items])
    batch["mirror_embeddings"] = torch.stack([it["mirror_embedding"] if it["mirror_embedding"] is not None
                                              else it["embedding"] for it in items])
    batch["mirror_input_ids"], batch["mirror_attention_mask"] = pad_rows(alt, longest, pad_id)
    return batch


def draw_mirrors(batch: dict[str, Any], p: float) -> dict[str, Any]:
    """``batch`` with each mirrorable pair replaced by its mirror image with probability ``p`` (torch's global
    generator, in the calling process); unchanged when it has no mirror images."""
    if p <= 0 or "mirrorable" not in batch:
        return batch
    flip = (torch.rand(len(batch["mirrorable"])) < p) & batch["mirrorable"]
    out = dict(batch)
    out["embeddings"] = torch.where(flip[:, None], batch["mirror_embeddings"], batch["embeddings"])
    for key in ("input_ids", "attention_mask"):
        out[key] = torch.where(flip[:, None], batch[f"mirror_{key}"], batch[key])
    out["mirrored"] = flip
    return out


class MirrorExtension(Extension):
    config_class = MirrorConfig
    stages = ("decoder",)

    def __init__(self, task: Any, config: MirrorConfig) -> None:
        super().__init__(task, config)
        if config.p > 0:
            task.collate = functools.partial(collate_mirrored, pad_id=task.cfg.model.pad_token_id)

    def wrap_dataset(self, dataset: Any, split: str) -> Any:
        if split != "train" or self.config.p <= 0:
            return dataset
        parts = dataset.table.parts
        if parts != 2:
            raise ConfigError("extras.mirror.p > 0 needs an embedding cache of [right half, left half] embeddings "
                              f"(step 1 with lateral halves; this cache has {parts} part(s)). Rebuild the cache from "
                              "such a model or set extras.mirror.p: 0")
        wrapped = MirroredPairs(dataset, self.config.labels)
        logger.info(f"mirror: {len(wrapped.mirror_ids)} of {len(wrapped)} training pairs have a mirror image, each "
                    f"drawn mirrored with probability {self.config.p:g}")
        return wrapped

    def training_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        return draw_mirrors(batch, self.config.p)
