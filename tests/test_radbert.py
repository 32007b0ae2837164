"""RadBERT adapter against CT-CLIP's own text_classifier inference, and its errors for mismatched checkpoints.

The reference numbers come from running CT-CLIP's ``infer.py`` (unchanged) on a tiny random RoBERTa with the GPT-2
byte-level BPE that RoBERTa shares: ``tests/data/radbert_make_reference.py`` wrote ``radbert_tiny.safetensors`` (the
state dict of CT-CLIP's ``RadBertClassifier``) and ``radbert_ctclip_reference.json`` (CT-CLIP's probabilities and
decisions on the 800 development reports, from its own ``report_text``); docs/labeler.md gives the command.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctagrg.cli.main import main
from ctagrg.labels import LABELS
from ctagrg.text.labeler import get_labeler
from ctagrg.text.radbert import RadBertLabeler
from ctagrg.text.reports_io import read_reports

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_spec = importlib.util.spec_from_file_location("radbert_compare", Path(__file__).parent / "data" / "radbert_compare.py")
reference_files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_files)
REFERENCE = reference_files.reference()
N_LONG = N_SHORT = 40  # reports over / within 512 tokens compared here; radbert_compare.py compares all of them


@pytest.fixture(scope="module")
def ctclip_folder(tmp_path_factory, gpt2_tokenizer_dir: Path) -> Path:
    return reference_files.build_folder(tmp_path_factory.mktemp("radbert"), gpt2_tokenizer_dir)


@pytest.fixture(scope="module")
def dev_reports(shared_data: Path) -> Path:
    path = shared_data / "reports" / "dev_reports.csv"
    if not path.is_file():
        pytest.skip(f"development reports not found at {path}")
    return path


def _compared() -> np.ndarray:
    """Indices of the reports compared: whose CT-CLIP text the split Findings_EN / Impressions_EN columns rebuild
    (docs/labeler.md), the first ``N_LONG`` over 512 tokens and the first ``N_SHORT`` within."""
    rebuilt = np.array(REFERENCE["columns_rebuild_text"])
    long = np.array(REFERENCE["n_tokens"]) > 512
    return np.sort(np.concatenate([np.flatnonzero(rebuilt & long)[:N_LONG], np.flatnonzero(rebuilt & ~long)[:N_SHORT]]))


@pytest.mark.shared
def test_probabilities_and_decisions_equal_ctclip_infer(ctclip_folder: Path, dev_reports: Path) -> None:
    labeler = get_labeler(f"radbert:{ctclip_folder}")
    assert isinstance(labeler, RadBertLabeler)
    reports = read_reports(dev_reports, separator=labeler.column_separator)
    assert reports.ids == REFERENCE["volumes"]
    keep = _compared()
    assert (np.array(REFERENCE["n_tokens"])[keep] > 512).sum() == N_LONG  # the comparison covers truncation
    texts = [reports.texts[i] for i in keep]
    expected = np.array(REFERENCE["probabilities"])[keep]
    np.testing.assert_allclose(labeler.probabilities(texts), expected, rtol=0, atol=1e-5)
    decisions = labeler.label_reports(texts)
    np.testing.assert_array_equal(decisions, np.array(REFERENCE["decisions"])[keep])
    assert 0.2 < decisions.mean() < 0.8  # the reference's labels are neither all on nor all off


@pytest.mark.shared
def test_label_cli_writes_ctclip_decisions(ctclip_folder: Path, dev_reports: Path, tmp_path: Path) -> None:
    keep = _compared()[:24]
    subset = tmp_path / "reports.csv"
    pd.read_csv(dev_reports).iloc[keep].to_csv(subset, index=False)
    out = tmp_path / "labels.csv"
    assert main(["label", str(subset), "--out", str(out), "--labeler", f"radbert:{ctclip_folder}"]) == 0
    frame = pd.read_csv(out)
    assert frame.VolumeName.tolist() == [REFERENCE["volumes"][i] for i in keep]
    np.testing.assert_array_equal(frame[list(LABELS)].to_numpy(), np.array(REFERENCE["decisions"])[keep])


@pytest.mark.shared
def test_probability_exactly_half_is_positive(ctclip_folder: Path, tmp_path: Path) -> None:
    """CT-CLIP thresholds with >= 0.5: a zero classifier (every probability 0.5) labels everything positive."""
    state = reference_files.fixture_state()
    state = {k: torch.zeros_like(v) if k.startswith("classifier.") else v for k, v in state.items()}
    folder = reference_files.write_folder(tmp_path / "zero", state)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((ctclip_folder / name).read_bytes())
    labeler = get_labeler(f"radbert:{folder}")
    texts = ["Trachea, both main bronchi are open.", "Bilateral pleural effusion."]
    np.testing.assert_array_equal(labeler.label_reports(texts), np.array(REFERENCE["zero_head_decisions"]))


@pytest.mark.shared
def test_accepts_dataparallel_prefix_wrapper_and_checkpoint_path(ctclip_folder: Path, tmp_path: Path) -> None:
    state = {"state_dict": {"module." + k: v for k, v in reference_files.fixture_state().items()}}
    folder = reference_files.write_folder(tmp_path / "wrapped", state)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((ctclip_folder / name).read_bytes())
    text = "Trachea, both main bronchi are open. Bilateral pleural effusion is observed."
    direct = get_labeler(f"radbert:{ctclip_folder}").probabilities([text])
    wrapped = get_labeler(f"radbert:{folder / 'RadBertClassifier.pth'}").probabilities([text])
    np.testing.assert_array_equal(wrapped, direct)


def _error(folder: Path) -> str:
    with pytest.raises(ValueError) as info:
        get_labeler(f"radbert:{folder}")
    message = str(info.value)
    assert "\n" not in message and str(folder / "RadBertClassifier.pth") in message
    return message


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = reference_files.fixture_state()
    del state["classifier.bias"], state["model.pooler.dense.weight"]
    state["model.extra.weight"] = torch.zeros(2)
    message = _error(reference_files.write_folder(tmp_path / "keys", state))
    assert "2 missing keys [model.pooler.dense.weight, classifier.bias]" in message
    assert "1 unexpected keys [model.extra.weight]" in message


def test_many_missing_keys_are_counted(tmp_path: Path) -> None:
    # a bare RobertaModel's keys, without CT-CLIP's "model." attribute
    state = {k.removeprefix("model."): v for k, v in reference_files.fixture_state().items()}
    message = _error(reference_files.write_folder(tmp_path / "bare", state))
    assert "missing keys [model.embeddings.word_embeddings.weight" in message and "more)" in message


def test_wrong_number_of_labels(tmp_path: Path) -> None:
    state = reference_files.fixture_state()
    state["classifier.weight"], state["classifier.bias"] = state["classifier.weight"][:14], state["classifier.bias"][:5]
    message = _error(reference_files.write_folder(tmp_path / "labels", state))
    assert "the classifier has 14 outputs, expected 18" in message


def test_shapes_that_disagree_with_config(tmp_path: Path) -> None:
    config = {**REFERENCE["config"], "vocab_size": 50265}  # the real RadBERT's vocabulary, not this checkpoint's
    message = _error(reference_files.write_folder(tmp_path / "shapes", reference_files.fixture_state(), config))
    assert "1 tensor shapes differ" in message
    assert "model.embeddings.word_embeddings.weight (50262, 4) vs (50265, 4)" in message


def test_unreadable_checkpoints(tmp_path: Path) -> None:
    folder = reference_files.write_folder(tmp_path / "garbage", {})
    (folder / "RadBertClassifier.pth").write_bytes(b"not a checkpoint")
    assert "not a readable PyTorch state dict" in _error(folder)
    torch.save([torch.zeros(1)], folder / "RadBertClassifier.pth")
    assert "expected a state dict of tensors, got list" in _error(folder)


def test_missing_folder_and_ambiguous_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        get_labeler(f"radbert:{tmp_path / 'nope'}")
    folder = reference_files.write_folder(tmp_path / "radbert", reference_files.fixture_state())
    torch.save({}, folder / "other.pt")
    with pytest.raises(ValueError, match="exactly one classifier checkpoint"):
        get_labeler(f"radbert:{folder}")
