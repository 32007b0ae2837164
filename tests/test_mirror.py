"""Step 2's mirror augmentation: mirrored sentences (ctagrg.text.mirror) and mirrored training pairs
(DecoderTaskConfig.mirror)."""

from __future__ import annotations

import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.labels import LABEL_INDEX, NUM_LABELS
from ctagrg.text.mirror import mirror_sentence
from ctagrg.training.decoder_task import MirrorConfig, PairDataset, TargetConfig
from ctagrg.training.embedding_cache import EmbeddingTable


def test_mirror_sentence_swaps_sides_and_refuses_one_sided_anatomy():
    assert mirror_sentence("A 9 mm nodule in the Right lower lobe; LEFT lung clear.") == \
        "A 9 mm nodule in the Left lower lobe; RIGHT lung clear."
    assert mirror_sentence("Bilateral effusions, larger on the left.") == "Bilateral effusions, larger on the right."
    assert mirror_sentence("Emphysema in both upper lobes.") == "Emphysema in both upper lobes."
    assert mirror_sentence("The leftover contrast is not a finding.") == "The leftover contrast is not a finding."
    for sentence in ("Consolidation in the middle lobe of the right lung.", "Opacity in the lingula.",
                     "Calcification of the left anterior descending artery.", "Right paratracheal node, 14 mm.",
                     "Nodule in the RUL.", "The left ventricle is dilated."):
        assert mirror_sentence(sentence) is None, sentence


class WordTokenizer:
    """Whitespace words -> ids from a growing vocabulary (stands in for GPT-2's tokenizer)."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[self.vocab.setdefault(w, len(self.vocab) + 10) for w in t.split()] for t in texts]}


def _table(halves: int = 2) -> EmbeddingTable:
    emb = torch.arange(3 * NUM_LABELS * 4, dtype=torch.float32).view(3, NUM_LABELS, 4).half()
    return EmbeddingTable(names=["train_1_a_1", "train_2_a_1", "train_3_a_1"], embeddings=emb,
                          probabilities=torch.ones(3, NUM_LABELS), labels=torch.ones(3, NUM_LABELS, dtype=torch.int8),
                          targets=[{}, {}, {}], thresholds=None, halves=halves)


NODULE, HERNIA = LABEL_INDEX["Lung nodule"], LABEL_INDEX["Hiatal hernia"]
PAIRS = [(0, NODULE, "Nodule in the right upper lobe."), (1, NODULE, "Nodule in the middle lobe of the right lung."),
         (2, HERNIA, "Hernia, left of the midline.")]


def test_pairs_are_drawn_mirrored_with_swapped_halves_and_sentence():
    tok = WordTokenizer()
    ds = PairDataset(_table(), PAIRS, tok, TargetConfig(), bos=1, eos=2, mirror=MirrorConfig(p=1.0))
    assert ds.mirrorable == 1  # the middle lobe has no mirror image; the hernia's label is not in mirror.labels
    item = ds[0]
    original = _table().embeddings[0, NODULE].float()
    assert item["mirrored"] and torch.equal(item["embedding"], torch.cat([original[2:], original[:2]]))
    expected = tok(["Nodule in the left upper lobe."])["input_ids"][0]
    assert item["input_ids"].tolist() == [1, *expected, 2]
    for k in (1, 2):
        assert not ds[k]["mirrored"]
        assert torch.equal(ds[k]["embedding"], _table().embeddings[PAIRS[k][0], PAIRS[k][1]].float())
    plain = PairDataset(_table(), PAIRS, tok, TargetConfig(), bos=1, eos=2)
    assert not plain[0]["mirrored"] and plain[0]["input_ids"].tolist() == [1, *tok([PAIRS[0][2]])["input_ids"][0], 2]
    # p = 0.5: seeded draws repeat, and both versions occur
    torch.manual_seed(0)
    half = PairDataset(_table(), PAIRS, tok, TargetConfig(), bos=1, eos=2, mirror=MirrorConfig(p=0.5))
    draws = [half[0]["mirrored"] for _ in range(40)]
    torch.manual_seed(0)
    assert [half[0]["mirrored"] for _ in range(40)] == draws and 5 < sum(draws) < 35


def test_mirror_config_errors():
    with pytest.raises(ConfigError, match=r"needs an embedding cache of \[right half, left half\]"):
        PairDataset(_table(halves=1), PAIRS, WordTokenizer(), TargetConfig(), 1, 2, MirrorConfig(p=0.5))
    with pytest.raises(ConfigError, match=r"mirror.p: expected a probability in \[0, 1\], got 1.5"):
        MirrorConfig(p=1.5)
    with pytest.raises(ConfigError, match="mirror.labels: unknown abnormalities"):
        MirrorConfig(labels=("Lung nodules",))
