"""Adapter for CT-CLIP's RadBERT report classifier (the labeler CT-RATE and CT-AGRG used), from local files.

CT-CLIP's ``text_classifier`` defines ``RadBertClassifier`` = ``self.model`` (a ``RobertaModel`` from
``zzxslp/RadBERT-RoBERTa-4m``) + ``self.classifier`` (``Linear(768, 18)``) on ``pooler_output``, saved with
``torch.save(model.state_dict())``. So its keys are ``model.embeddings.…``, ``model.encoder.…``,
``model.pooler.dense.…``, ``classifier.weight``, ``classifier.bias``. Inference: lower-cased text, at most 512
tokens, sigmoid, > 0.5.

Folder layout expected by ``RadBertLabeler.from_dir(DIR)``:

    DIR/config.json                 RoBERTa config (as in the RadBERT-RoBERTa-4m repository)
    DIR/vocab.json, merges.txt      its tokenizer (or tokenizer.json)
    DIR/<checkpoint>.pt|.pth|.bin   the classifier state dict (or pass the checkpoint file itself as the spec)

Nothing is downloaded: every path is local. Checkpoints are loaded with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctagrg.labels import LABELS
from ctagrg.text.sentences import split_sentences

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


class RadBertClassifier(nn.Module):
    """RoBERTa encoder + Linear(hidden, 18) on the pooled [CLS] output; same attribute names as CT-CLIP's."""

    def __init__(self, config, num_labels: int = len(LABELS)) -> None:  # config: transformers.RobertaConfig
        super().__init__()
        from transformers import RobertaModel

        self.model = RobertaModel(config, add_pooling_layer=True)
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) int64 -> logits (B, 18) float32."""
        pooled = self.model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.classifier(pooled)


def find_checkpoint(path: Path) -> Path:
    """The classifier state-dict file: ``path`` itself, or the single ``*.pt|*.pth|*.bin`` in folder ``path``."""
    if path.is_file():
        return path
    candidates = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        found = [p.name for p in candidates]
        raise ValueError(f"{path}: expected exactly one classifier checkpoint (*.pt, *.pth, *.bin), found {found}")
    return candidates[0]


def load_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely and normalise it: unwrap {"state_dict": ...}, strip DataParallel ``module.``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and "classifier.weight" not in state:
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


class RadBertLabeler:
    """The ``Labeler`` interface over a ``RadBertClassifier``: reports -> (N, 18) 0/1 at sigmoid > threshold."""

    def __init__(self, model: RadBertClassifier, tokenizer, *, threshold: float = 0.5, max_length: int = 512,
                 batch_size: int = 16, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device

    @classmethod
    def from_dir(cls, path: str | Path, **kwargs) -> RadBertLabeler:
        """Build from a local folder (see the module docstring) or a checkpoint file inside such a folder."""
        from transformers import AutoTokenizer, RobertaConfig

        path = Path(path)
        if not path.exists():
            raise ValueError(f"{path}: RadBERT folder or checkpoint not found")
        folder = path.parent if path.is_file() else path
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder}: no config.json (expected the RadBERT-RoBERTa-4m folder layout)")
        config = RobertaConfig.from_pretrained(folder, local_files_only=True)
        model = RadBertClassifier(config)
        checkpoint = find_checkpoint(path)
        state = load_state_dict(checkpoint)
        # position_ids is a buffer that older transformers saved and newer ones rebuild.
        state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{checkpoint}: state dict does not match RadBertClassifier; missing keys "
                             f"{missing[:8]}, unexpected keys {unexpected[:8]}")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(model, tokenizer, **kwargs)

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 18) float32 sigmoid probabilities; texts are lower-cased as the released classifier expects."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = [str(t or "").lower() for t in texts[i:i + self.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            logits = self.model(enc["input_ids"], enc["attention_mask"])
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)

    def label_reports(self, texts: list[str]) -> np.ndarray:
        """(N, 18) int 0/1; empty texts get all zeros without running the model."""
        result = np.zeros((len(texts), len(LABELS)), dtype=np.int64)
        keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        if keep:
            probs = self.probabilities([texts[i] for i in keep])
            result[keep] = (probs > self.threshold).astype(np.int64)
        return result

    def sentences_by_label(self, text: str) -> dict[str, list[str]]:
        """Classify each sentence on its own; a sentence belongs to every label it is positive for."""
        sentences = split_sentences(text) if isinstance(text, str) else []
        if not sentences:
            return {}
        labels = self.label_reports(sentences)
        return {name: [s for s, row in zip(sentences, labels, strict=True) if row[j]]
                for j, name in enumerate(LABELS) if labels[:, j].any()}
