"""Step-2 embedding cache: build, resume, read back, pair selection, thresholds and sentence sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ctagrg.config import ConfigError
from ctagrg.labels import LABELS
from ctagrg.training.embedding_cache import (
    EmbeddingCacheConfig,
    build_embedding_cache,
    build_from_config,
    load_embedding_cache,
    read_sentences_csv,
)


class FakeStep1(nn.Module):
    """(B, 1, D, H, W) → logits from the volume mean, embeddings that encode the volume mean and the label."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dim = dim
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        m = x.mean(dim=(1, 2, 3, 4))  # (B,)
        logits = (m[:, None] * 10 + torch.linspace(-2, 2, 18)[None]).clone()
        emb = m[:, None, None] + torch.arange(18.0)[None, :, None] + torch.zeros(1, 1, self.dim)
        return {"logits": logits, "embeddings": emb}


def make_items(n: int) -> list[dict]:
    items = []
    for v in range(n):
        labels = torch.zeros(18)
        labels[v % 18] = 1
        labels[9] = 1  # every volume has a lung nodule
        items.append({"volume": torch.full((1, 2, 3, 3), v / 10), "labels": labels, "name": f"train_{v}_a_1"})
    return items


SENTENCES = {f"train_{v}_a_1": {"Lung nodule": f"A {v}.5 mm nodule in the left lower lobe.",
                                LABELS[v % 18]: f"finding {v}"} for v in range(5)}


def test_build_and_load_roundtrip(tmp_path: Path) -> None:
    step1 = FakeStep1()
    items = make_items(5)
    build_embedding_cache(step1, items, SENTENCES, tmp_path / "emb", batch_size=2, shard_size=2,
                          thresholds=[0.5] * 18)
    files = sorted(p.name for p in (tmp_path / "emb").iterdir())
    assert files == ["index.json", *[f"shard_0000{k}.{e}" for k in range(3) for e in ("json", "safetensors")]]
    table = load_embedding_cache(tmp_path / "emb")
    assert table.names == [it["name"] for it in items]
    assert table.embeddings.shape == (5, 18, 8) and table.embeddings.dtype == torch.float16
    assert torch.allclose(table.embeddings[3, 4].float(), torch.full((8,), 4.3), atol=1e-2)
    expected_p = torch.sigmoid(torch.tensor(0.2) * 10 + torch.linspace(-2, 2, 18))
    assert torch.allclose(table.probabilities[2], expected_p, atol=1e-6)
    assert table.labels[1].tolist() == [1 if i in (1, 9) else 0 for i in range(18)]
    assert table.targets[2] == {"Lung nodule": "A 2.5 mm nodule in the left lower lobe.", LABELS[2]: "finding 2"}
    assert table.thresholds == [0.5] * 18
    assert step1.calls == 3  # 2 + 2 + 1 volumes


def test_resume_keeps_finished_shards(tmp_path: Path) -> None:
    items = make_items(5)
    build_embedding_cache(FakeStep1(), items, SENTENCES, tmp_path, batch_size=2, shard_size=2)
    before = load_embedding_cache(tmp_path)
    (tmp_path / "index.json").unlink()
    (tmp_path / "shard_00001.safetensors").unlink()  # as if killed while writing shard 1
    again = FakeStep1()
    build_embedding_cache(again, items, SENTENCES, tmp_path, batch_size=2, shard_size=2)
    assert again.calls == 1  # only shard 1 recomputed (2 volumes, batch 2)
    after = load_embedding_cache(tmp_path)
    assert torch.equal(before.embeddings, after.embeddings) and after.names == before.names
    # the index's width is read from shard 0's header, which this build did not write
    assert json.loads((tmp_path / "index.json").read_text())["embedding_dim"] == 8


def test_pairs_detected_and_present_vs_present(tmp_path: Path) -> None:
    build_embedding_cache(FakeStep1(), make_items(5), SENTENCES, tmp_path, shard_size=8)
    table = load_embedding_cache(tmp_path)
    present = table.pairs("present")
    assert len(present) == 10  # 5 nodules + one other label per volume (labels 0..4)
    assert (0, 9, "A 0.5 mm nodule in the left lower lobe.") in present
    # Thresholds: labels 9..17 are always detected, labels 0..8 never; of the present pairs only nodules remain.
    thr = [0.99] * 9 + [0.0] * 9
    detected = table.pairs("detected_and_present", thresholds=thr)
    assert sorted({i for _, i, _ in detected}) == [9]
    assert len(detected) == 5
    assert table.pairs("present", names={"train_1_a_1"}) == [(1, 1, "finding 1"),
                                                            (1, 9, "A 1.5 mm nodule in the left lower lobe.")]
    with pytest.raises(ConfigError, match="needs thresholds"):
        table.pairs("detected_and_present")
    with pytest.raises(ConfigError, match="expected 'detected_and_present' or 'present'"):
        table.pairs("all")


def test_read_sentences_csv(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("VolumeName,AbnormalityName,Sentence\nvalid_1_a_1.nii.gz,Lung nodule,A 3 mm nodule.\n"
                    "valid_1_a_1.nii.gz,Lung nodule,Another 4.5 mm nodule.\nvalid_2_a_1,Emphysema,Emphysema.\n")
    assert read_sentences_csv(path) == {"valid_1_a_1": {"Lung nodule": "A 3 mm nodule. Another 4.5 mm nodule."},
                                        "valid_2_a_1": {"Emphysema": "Emphysema."}}
    path.write_text("VolumeName,AbnormalityName,Sentence\nv,Nodule,x\n")
    with pytest.raises(ConfigError, match="s.csv:2: unknown abnormality 'Nodule'"):
        read_sentences_csv(path)
    path.write_text("VolumeName,Label\nv,x\n")
    with pytest.raises(ConfigError, match="expected columns"):
        read_sentences_csv(path)


def test_build_from_config_with_volume_cache(tmp_path: Path) -> None:
    from ctagrg.data.cache import cache_path, save_cached

    for v in range(3):
        save_cached(cache_path(tmp_path / "vols", f"train_{v}_a_1"), np.full((2, 3, 3), v / 10, np.float32), -0.5, 1)
    (tmp_path / "s.csv").write_text("VolumeName,AbnormalityName,Sentence\n"
                                    "train_0_a_1.nii.gz,Pleural effusion,Right pleural effusion.\n"
                                    "train_2_a_1.nii.gz,Lung nodule,A 6 mm nodule.\n")
    (tmp_path / "thr.json").write_text(json.dumps([0.3] * 18))
    cfg = EmbeddingCacheConfig(out_dir=str(tmp_path / "emb"), volume_cache=str(tmp_path / "vols"),
                               sentences_csv=str(tmp_path / "s.csv"), thresholds=str(tmp_path / "thr.json"),
                               device="cpu")
    build_from_config(cfg, step1=FakeStep1())
    table = load_embedding_cache(tmp_path / "emb")
    assert table.names == ["train_0_a_1", "train_1_a_1", "train_2_a_1"]
    assert table.labels[0, LABELS.index("Pleural effusion")] == 1 and table.labels[1].sum() == 0
    assert table.thresholds == [0.3] * 18
    index = json.loads((tmp_path / "emb" / "index.json").read_text())
    assert index["source"]["thresholds_file"] == str(tmp_path / "thr.json") and index["embedding_dim"] == 8
    with pytest.raises(ConfigError, match="exactly one of sentences_csv and reports_csv"):
        build_from_config(EmbeddingCacheConfig(out_dir="x", volume_cache="y"), step1=FakeStep1())


def test_missing_cache_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index.json missing"):
        load_embedding_cache(tmp_path)


def test_build_from_report_and_label_folders(tmp_path: Path) -> None:
    """CT-RATE layout: every CSV of radiology_text_reports/ and multi_abnormality_labels/, sentences by the labeler."""
    from ctagrg.data.cache import cache_path, save_cached

    for name in ("train_1_a_1", "valid_2_a_1"):
        save_cached(cache_path(tmp_path / "vols", name), np.zeros((2, 3, 3), np.float32), -0.5, 1)
    (tmp_path / "reports").mkdir()
    (tmp_path / "labels").mkdir()
    texts = {"train_1_a_1": "A 6 mm nodule in the right upper lobe. Heart size is normal.",
             "valid_2_a_1": "Left pleural effusion is present. No nodule was detected."}
    for name, text in texts.items():
        split = name.split("_")[0]
        (tmp_path / "reports" / {"train": "train_reports.csv", "valid": "validation_reports.csv"}[split]).write_text(
            f'VolumeName,Findings_EN,Impressions_EN\n{name}.nii.gz,"{text}",\n')
        row = [1 if (label == "Lung nodule") == (split == "train") and label in ("Lung nodule", "Pleural effusion")
               else 0 for label in LABELS]
        (tmp_path / "labels" / f"{split}_predicted_labels.csv").write_text(
            "VolumeName," + ",".join(LABELS) + f"\n{name}.nii.gz," + ",".join(map(str, row)) + "\n")
    cfg = EmbeddingCacheConfig(out_dir=str(tmp_path / "emb"), volume_cache=str(tmp_path / "vols"),
                               reports_csv=str(tmp_path / "reports"), labels_csv=str(tmp_path / "labels"))
    build_from_config(cfg, step1=FakeStep1())
    table = load_embedding_cache(tmp_path / "emb")
    assert table.names == ["train_1_a_1", "valid_2_a_1"]
    assert table.targets == [{"Lung nodule": "A 6 mm nodule in the right upper lobe."},
                             {"Pleural effusion": "Left pleural effusion is present."}]
    assert table.pairs("present") == [(0, 9, "A 6 mm nodule in the right upper lobe."),
                                      (1, 12, "Left pleural effusion is present.")]
    with pytest.raises(FileNotFoundError, match="no .csv files"):
        build_from_config(EmbeddingCacheConfig(out_dir=str(tmp_path / "e2"), volume_cache=str(tmp_path / "vols"),
                                               reports_csv=str(tmp_path / "vols")), step1=FakeStep1())
