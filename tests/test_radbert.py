"""RadBERT adapter: a tiny random RoBERTa + Linear head saved in CT-CLIP's released layout loads and agrees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ctagrg.labels import LABELS
from ctagrg.text.labeler import get_labeler
from ctagrg.text.radbert import RadBertLabeler

CORPUS = [
    "there is a nodule in the right lung.", "no pleural effusion was detected.", "mild emphysema in both lungs.",
    "the heart is enlarged. atelectasis and consolidation are observed.", "lymph nodes, hiatal hernia, catheter.",
]


class _CtClipStyle(nn.Module):
    """Stand-in for CT-CLIP's RadBertClassifier: the same attribute names, so the same state-dict keys."""

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import RobertaModel

        self.model = RobertaModel(config)
        self.classifier = nn.Linear(config.hidden_size, len(LABELS))


def _tiny_radbert_dir(root: Path, prefix: str = "") -> tuple[Path, _CtClipStyle]:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(root))
    tokenizer = RobertaTokenizerFast(vocab_file=str(root / "vocab.json"), merges_file=str(root / "merges.txt"))
    tokenizer.save_pretrained(root)
    config = RobertaConfig(vocab_size=len(json.loads((root / "vocab.json").read_text())), hidden_size=32,
                           num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                           max_position_embeddings=600, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    config.save_pretrained(root)
    torch.manual_seed(0)
    model = _CtClipStyle(config).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.linspace(-3, 3, len(LABELS)))  # some labels on, some off
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save(state, root / "RadBertClassifier.pth")
    return root, model


def test_loads_released_layout_and_matches_direct_forward(tmp_path: Path) -> None:
    folder, reference = _tiny_radbert_dir(tmp_path / "radbert")
    labeler = get_labeler(f"radbert:{folder}")
    assert isinstance(labeler, RadBertLabeler)
    texts = ["There is a nodule in the right lung.", "Mild emphysema."]
    enc = labeler.tokenizer([t.lower() for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = reference.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        expected = torch.sigmoid(reference.classifier(out)).numpy()
    np.testing.assert_allclose(labeler.probabilities(texts), expected, atol=1e-5)
    labels = labeler.label_reports(texts + [""])
    assert labels.shape == (3, 18) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels[:2], (expected > 0.5).astype(np.int64))
    assert labels[2].sum() == 0  # empty text: all zero
    assert 0 < labels[:2].sum() < 36  # the head bias makes some labels positive and some negative


def test_accepts_dataparallel_prefix_and_checkpoint_path(tmp_path: Path) -> None:
    folder, _ = _tiny_radbert_dir(tmp_path / "radbert", prefix="module.")
    labeler = get_labeler(f"radbert:{folder / 'RadBertClassifier.pth'}")
    by_label = labeler.sentences_by_label("There is a nodule. No effusion.")
    assert set(by_label) <= set(LABELS) and all(isinstance(s, list) for s in by_label.values())


def test_mismatched_state_dict_names_keys(tmp_path: Path) -> None:
    folder, model = _tiny_radbert_dir(tmp_path / "radbert")
    state = model.state_dict()
    state.pop("classifier.bias")
    torch.save(state, folder / "RadBertClassifier.pth")
    with pytest.raises(ValueError, match="missing keys.*classifier.bias"):
        get_labeler(f"radbert:{folder}")


def test_missing_folder_and_ambiguous_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        get_labeler(f"radbert:{tmp_path / 'nope'}")
    folder, _ = _tiny_radbert_dir(tmp_path / "radbert")
    torch.save({}, folder / "other.pt")
    with pytest.raises(ValueError, match="exactly one classifier checkpoint"):
        get_labeler(f"radbert:{folder}")
