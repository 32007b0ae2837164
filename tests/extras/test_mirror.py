"""Step 2's mirror augmentation: mirrored sentences (ctagrg.text.mirror) and mirrored training pairs
(DecoderTaskConfig.mirror)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ctagrg.config import ConfigError
from ctagrg.extras.mirror.extension import MirrorConfig, MirroredPairs, collate_mirrored, draw_mirrors
from ctagrg.extras.mirror.sentences import mirror_sentence
from ctagrg.labels import LABEL_INDEX, NUM_LABELS
from ctagrg.training.decoder_task import PairDataset, TargetConfig, collate_pairs
from ctagrg.training.embedding_cache import EmbeddingTable
from ctagrg.training.extensions import build_extensions


def test_mirror_sentence_swaps_sides_and_refuses_one_sided_anatomy():
    assert mirror_sentence("A 9 mm nodule in the Right lower lobe; LEFT lung clear.") == \
        "A 9 mm nodule in the Left lower lobe; RIGHT lung clear."
    assert mirror_sentence("Bilateral effusions, larger on the left.") == "Bilateral effusions, larger on the right."
    assert mirror_sentence("Emphysema in both upper lobes.") == "Emphysema in both upper lobes."
    assert mirror_sentence("The leftover contrast is not a finding.") == "The leftover contrast is not a finding."
    for sentence in ("Consolidation in the middle lobe of the right lung.", "Opacity in the lingula.",
                     "Calcification of the left anterior descending artery.", "Right paratracheal node, 14 mm.",
                     "Nodule in the RUL.", "The left ventricle is dilated.", "Thickened right minor fissure."):
        assert mirror_sentence(sentence) is None, sentence


class WordTokenizer:
    """Whitespace words -> ids from a growing vocabulary (stands in for GPT-2's tokenizer)."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[self.vocab.setdefault(w, len(self.vocab) + 10) for w in t.split()] for t in texts]}


def _table(parts: int = 2) -> EmbeddingTable:
    emb = torch.arange(3 * NUM_LABELS * 4, dtype=torch.float32).view(3, NUM_LABELS, 4).half()
    return EmbeddingTable(names=["train_1_a_1", "train_2_a_1", "train_3_a_1"], embeddings=emb,
                          probabilities=torch.ones(3, NUM_LABELS), labels=torch.ones(3, NUM_LABELS, dtype=torch.int8),
                          targets=[{}, {}, {}], thresholds=None, parts=parts)


NODULE, HERNIA = LABEL_INDEX["Lung nodule"], LABEL_INDEX["Hiatal hernia"]
PAIRS = [(0, NODULE, "Nodule in the right upper lobe."), (1, NODULE, "Nodule in the middle lobe of the right lung."),
         (2, HERNIA, "Hernia, left of the midline.")]


def test_pairs_carry_their_mirror_image_and_batches_draw_it_in_the_main_process():
    tok = WordTokenizer()
    ds = MirroredPairs(PairDataset(_table(), PAIRS, tok, TargetConfig(), bos=1, eos=2), MirrorConfig(p=0.5).labels)
    assert len(ds.mirror_ids) == 1  # the middle lobe has no mirror image; the hernia's label is not in mirror.labels
    item = ds[0]
    original = _table().embeddings[0, NODULE].float()
    assert torch.equal(item["embedding"], original)  # the dataset itself never draws
    assert torch.equal(item["mirror_embedding"], torch.cat([original[2:], original[:2]]))
    assert item["mirror_input_ids"].tolist() == [1, *tok(["Nodule in the left upper lobe."])["input_ids"][0], 2]
    assert ds[1]["mirror_embedding"] is None and ds[2]["mirror_input_ids"] is None
    batch = collate_mirrored([ds[k] for k in range(3)], pad_id=0)
    assert batch["mirrorable"].tolist() == [True, False, False]
    assert batch["mirror_input_ids"].shape == batch["input_ids"].shape
    always = draw_mirrors(batch, 1.0)
    assert always["mirrored"].tolist() == [True, False, False]
    assert torch.equal(always["embeddings"][0], item["mirror_embedding"])
    assert torch.equal(always["embeddings"][1:], batch["embeddings"][1:])
    n = len(item["mirror_input_ids"])
    assert always["input_ids"][0, :n].tolist() == item["mirror_input_ids"].tolist()
    assert always["attention_mask"][0].sum() == n and torch.equal(always["input_ids"][1:], batch["input_ids"][1:])
    assert draw_mirrors(batch, 0.0) is batch
    # p = 0.5: torch's global generator decides, so a seeded run (and a resumed one) repeats its draws
    torch.manual_seed(0)
    draws = [bool(draw_mirrors(batch, 0.5)["mirrored"][0]) for _ in range(40)]
    torch.manual_seed(0)
    assert [bool(draw_mirrors(batch, 0.5)["mirrored"][0]) for _ in range(40)] == draws and 5 < sum(draws) < 35
    # without mirroring there is nothing to draw from
    plain = collate_pairs([PairDataset(_table(), PAIRS, tok, TargetConfig(), bos=1, eos=2)[k] for k in range(3)], 0)
    assert "mirrorable" not in plain and draw_mirrors(plain, 1.0) is plain
    # nor when no pair in the batch has a mirror image
    items = [ds[k] for k in (1, 2)]
    assert "mirrorable" not in collate_mirrored(items, 0) and collate_mirrored(items, 0).keys() == collate_pairs(
        items, 0).keys()


def test_decoder_task_mirrors_training_batches_only(tmp_path):
    """training_step draws mirrored pairs, validate never does (its loss is the same whatever extras.mirror.p is);
    the extension mirrors training pairs only and collates their mirror images."""
    from ctagrg.config import load_config
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig

    cfg = load_config(DecoderTaskConfig, None, ["extras.mirror.p=1.0", "extras.mirror.labels=[Lung nodule]"])
    task = DecoderTask(cfg)
    (mirror,) = task.extensions
    assert mirror.config.labels == ("Lung nodule",)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, embeddings, label_index, input_ids, attention_mask):
            seen.append(embeddings.clone())
            return {"loss": embeddings.sum() * 0.0}

    base = PairDataset(_table(), PAIRS, WordTokenizer(), TargetConfig(), 1, 2)
    assert mirror.wrap_dataset(base, "valid") is base
    ds = mirror.wrap_dataset(base, "train")
    assert isinstance(ds, MirroredPairs) and len(ds.mirror_ids) == 1
    batch = task.collate([ds[k] for k in range(3)])
    assert batch["mirrorable"].tolist() == [True, False, False]
    task.training_step(Recorder(), batch)
    task.validate(Recorder(), [batch])
    assert torch.equal(seen[0][0], batch["mirror_embeddings"][0]) and torch.equal(seen[1], batch["embeddings"])


def test_mirror_config_errors():
    from ctagrg.config import load_config
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig

    (mirror,) = DecoderTask(load_config(DecoderTaskConfig, None, ["extras.mirror.p=0.5"])).extensions
    with pytest.raises(ConfigError, match=r"extras.mirror.p > 0 needs an embedding cache of \[right half, left half\]"):
        mirror.wrap_dataset(PairDataset(_table(parts=1), PAIRS, WordTokenizer(), TargetConfig(), 1, 2), "train")
    with pytest.raises(ConfigError, match=r"extras.mirror: not for the classifier stage \(only decoder\)"):
        build_extensions(SimpleNamespace(extensions=[]), {"mirror": {"p": 0.5}}, "classifier")
    with pytest.raises(ConfigError, match=r"^extras.mirror.p: expected a probability in \[0, 1\], got 1.5"):
        MirrorConfig(p=1.5)
    with pytest.raises(ConfigError, match="^extras.mirror.labels: unknown abnormalities"):
        MirrorConfig(labels=("Lung nodules",))
    with pytest.raises(ConfigError, match="^extras.mirror.labels: expected a list of abnormality names, got None"):
        MirrorConfig(labels=None)
