"""Adapter for CT-CLIP's RadBERT report classifier (the labeler CT-RATE and CT-AGRG used), from local files.

CT-CLIP's ``text_classifier`` defines ``RadBertClassifier`` = ``self.model`` (a ``RobertaModel`` from
``zzxslp/RadBERT-RoBERTa-4m``) + ``self.classifier`` (``Linear(768, 18)``) on ``pooler_output``, saved with
``torch.save(model.state_dict())``. So its keys are ``model.embeddings.…``, ``model.encoder.…``,
``model.pooler.dense.…``, ``classifier.weight``, ``classifier.bias``.

Inference as CT-CLIP's ``infer.py`` does it: the text as it is (CT-CLIP asks its RoBERTa tokenizer for
``do_lower_case=True``, which a RoBERTa tokenizer ignores, so the classifier was trained and run on cased text), at
most 512 tokens with truncation, sigmoid, positive when the probability is >= 0.5. The classifier's texts are a
report's findings, a space, a double quote, a space, then its impression (:data:`COLUMN_SEPARATOR`).
docs/labeler.md records the comparison with CT-CLIP's own code.

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
# How CT-CLIP's report_text joins findings and impression (its text_classifier/data/train.csv, docs/labeler.md).
COLUMN_SEPARATOR = ' " '
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# A buffer that older transformers saved in the state dict and newer ones rebuild.
_IGNORED_SUFFIXES = ("embeddings.position_ids",)


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
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a file that is not a tensor pickle
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{checkpoint}: not a readable PyTorch state dict ({reason})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and "classifier.weight" not in state:
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{checkpoint}: expected a state dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()
            if not k.removeprefix("module.").endswith(_IGNORED_SUFFIXES)}


def _some(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def check_state_dict(checkpoint: Path, state: dict[str, torch.Tensor], model: RadBertClassifier) -> None:
    """Raise a one-line ValueError naming ``checkpoint`` and what does not fit ``model`` (built from config.json):
    the number of labels, missing or unexpected keys, or tensor shapes."""
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith(_IGNORED_SUFFIXES)}
    head = state.get("classifier.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != len(LABELS):
        raise ValueError(f"{checkpoint}: the classifier has {head.shape[0]} outputs, expected {len(LABELS)} "
                         "(CT-RATE's abnormalities, ctagrg.labels.LABELS)")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: not a CT-CLIP RadBertClassifier state dict: {len(missing)} missing keys "
                         f"[{_some(missing)}], {len(unexpected)} unexpected keys [{_some(unexpected)}]")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{checkpoint}: {len(wrong)} tensor shapes differ from those config.json gives "
                         f"(checkpoint vs config): {_some(wrong, 3)}")


class RadBertLabeler:
    """The ``Labeler`` interface over a ``RadBertClassifier``: reports -> (N, 18) 0/1 at sigmoid >= threshold."""

    column_separator = COLUMN_SEPARATOR

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
        check_state_dict(checkpoint, state, model)
        model.load_state_dict(state, strict=False)  # strict=False: the ignored buffers; check_state_dict did the rest
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(model, tokenizer, **kwargs)

    @torch.no_grad()
    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 18) float32 sigmoid probabilities of the texts as they are (cased, as CT-CLIP's classifier reads them),
        each cut to ``max_length`` tokens. Padding is per batch: masked, so it does not change the result."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = [str(t or "") for t in texts[i:i + self.batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            logits = self.model(enc["input_ids"], enc["attention_mask"])
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)

    def label_reports(self, texts: list[str]) -> np.ndarray:
        """(N, 18) int 0/1, positive where the probability is >= ``threshold`` (CT-CLIP's rule). Empty texts get all
        zeros without running the model (CT-CLIP would classify the string "nan" or "")."""
        result = np.zeros((len(texts), len(LABELS)), dtype=np.int64)
        keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        if keep:
            probs = self.probabilities([texts[i] for i in keep])
            result[keep] = (probs >= self.threshold).astype(np.int64)
        return result

    def sentences_by_label(self, text: str) -> dict[str, list[str]]:
        """Classify each sentence on its own; a sentence belongs to every label it is positive for."""
        sentences = split_sentences(text) if isinstance(text, str) else []
        if not sentences:
            return {}
        labels = self.label_reports(sentences)
        return {name: [s for s, row in zip(sentences, labels, strict=True) if row[j]]
                for j, name in enumerate(LABELS) if labels[:, j].any()}
