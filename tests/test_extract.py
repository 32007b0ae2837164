"""Step-2 targets: which sentences, from which report columns, and a cache built otherwise is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctagrg.config import ConfigError, load_config
from ctagrg.labels import LABELS
from ctagrg.text.extract import extract_sentences
from ctagrg.text.labeler import get_labeler
from ctagrg.training.decoder_task import TargetConfig, prepare_target

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ("A 4.5 mm nodule is seen in the right upper lobe. Emphysema in both lungs. "
            "Another nodule, 3 mm, in the left lower lobe.")
IMPRESSION = "Pulmonary nodules. Pleural effusion on the left."


def _reports(path: Path) -> Path:
    path.write_text('VolumeName,Findings_EN,Impressions_EN\n'
                    f'train_1_a_1.nii.gz,"{FINDINGS}","{IMPRESSION}"\n', encoding="utf-8")
    return path


def test_first_and_joined_rules() -> None:
    labeler = get_labeler("rules")
    first = {label: s for _, label, s in extract_sentences(labeler, ["v"], [FINDINGS], "first")}
    joined = {label: s for _, label, s in extract_sentences(labeler, ["v"], [FINDINGS], "joined")}
    assert first["Lung nodule"] == "A 4.5 mm nodule is seen in the right upper lobe."
    assert joined["Lung nodule"] == ("A 4.5 mm nodule is seen in the right upper lobe. Another nodule, 3 mm, in the "
                                     "left lower lobe.")
    assert first["Emphysema"] == joined["Emphysema"] == "Emphysema in both lungs."
    with pytest.raises(ValueError, match="expected one of first, joined, got 'last'"):
        extract_sentences(labeler, ["v"], [FINDINGS], "last")


def test_paper_targets_read_findings_only(tmp_path: Path) -> None:
    """configs/ctrate's targets: Findings_EN only, the first sentence, lower-cased without punctuation; the
    abnormality that only the impression states has no target."""
    from ctagrg.training.embedding_cache import sentences_from_reports

    csv = _reports(tmp_path / "reports.csv")
    from ctagrg.training.decoder_task import DecoderTaskConfig

    cfg = load_config(DecoderTaskConfig, ROOT / "configs" / "ctrate" / "decoder.yaml")
    emb = cfg.embeddings
    paper = sentences_from_reports(csv, emb.labeler, emb.text_columns, emb.sentence)["train_1_a_1"]
    ours = sentences_from_reports(csv)["train_1_a_1"]
    assert "Pleural effusion" not in paper and ours["Pleural effusion"] == "Pleural effusion on the left."
    assert ours["Lung nodule"].endswith("Pulmonary nodules.")  # the impression's sentence joins the findings'
    assert prepare_target(paper["Lung nodule"], cfg.target) == "a 4.5 mm nodule is seen in the right upper lobe"
    assert cfg.target == TargetConfig(lowercase=True, strip_punctuation=True, max_tokens=60)


def test_cache_built_with_other_targets_is_refused(tmp_path: Path) -> None:
    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig
    from ctagrg.training.embedding_cache import build_embedding_cache, sentences_from_reports

    csv = _reports(tmp_path / "reports.csv")
    items = [{"volume": torch.zeros(1, 1, 1, 1), "name": "train_1_a_1", "labels": torch.ones(len(LABELS))}]
    step1 = lambda x: {"logits": torch.zeros(x.shape[0], 18), "embeddings": torch.zeros(x.shape[0], 18, 4)}  # noqa: E731
    source = {"reports_csv": str(csv), "text_columns": ["Findings_EN", "Impressions_EN"], "sentence": "joined"}
    build_embedding_cache(step1, items, sentences_from_reports(csv), tmp_path / "emb", source=source)
    overrides = [f"embeddings.out_dir={tmp_path / 'emb'}", f"embeddings.reports_csv={csv}"]
    same = DecoderTask(load_config(DecoderTaskConfig, None, overrides))
    assert same.table().targets[0]["Pleural effusion"] == "Pleural effusion on the left."
    paper = DecoderTask(load_config(DecoderTaskConfig, None, [*overrides, "embeddings.text_columns=[Findings_EN]",
                                                              "embeddings.sentence=first"]))
    with pytest.raises(ConfigError, match=r"its targets were taken from \['Findings_EN', 'Impressions_EN'\] with "
                                          r"sentence rule 'joined', the config asks for \['Findings_EN'\] and 'first'"):
        paper.table()
    with pytest.raises(ConfigError, match="embeddings.sentence: expected one of first, joined"):
        load_config(DecoderTaskConfig, None, ["embeddings.sentence=all"])
