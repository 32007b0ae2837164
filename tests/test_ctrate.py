"""ctagrg.data.ctrate: CT-RATE layout discovery, CSV parsing and joining, patient-level splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctagrg.data.ctrate import CTRateIndex, find_volumes, parse_name, patient_splits
from ctagrg.labels import LABELS


def _touch_volume(root: Path, split_dir: str, name: str) -> Path:
    split, pid, scan, _ = name.split("_")
    folder = root / split_dir / f"{split}_{pid}" / f"{split}_{pid}_{scan}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    path.write_bytes(b"")
    return path


def _labels_csv(path: Path, rows: dict[str, list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join(["VolumeName", *LABELS])
    lines = [header] + [",".join([f"{n}.nii.gz", *map(str, v)]) for n, v in rows.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "CT-RATE"
    _touch_volume(r, "train", "train_1_a_1")
    _touch_volume(r, "train", "train_1_a_2")
    _touch_volume(r, "train", "train_2_b_1")
    _touch_volume(r, "train_fixed", "train_2_b_1")  # corrected twin wins
    _touch_volume(r, "valid", "valid_7_a_1")
    (r / "radiology_text_reports").mkdir()
    (r / "radiology_text_reports" / "train_reports.csv").write_text(
        "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
        'train_1_a_1.nii.gz,Cough.,Non-contrast.,"Nodule in the right lung, 5 mm.",Nodule.\n'
        "train_2_b_1.nii.gz,,,Normal heart.,\n")
    (r / "radiology_text_reports" / "validation_reports.csv").write_text(
        "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"
        "valid_7_a_1.nii.gz,,,Pleural effusion.,Effusion.\n"
        "valid_8_a_1.nii.gz,,,No volume for this one.,\n")
    one = [0] * 18
    one[LABELS.index("Lung nodule")] = 1
    _labels_csv(r / "multi_abnormality_labels" / "train_predicted_labels.csv",
                {"train_1_a_1": one, "train_1_a_2": one, "train_2_b_1": [0] * 18})
    (r / "metadata").mkdir()
    (r / "metadata" / "train_metadata.csv").write_text(
        "VolumeName,XYSpacing,ZSpacing,RescaleSlope,RescaleIntercept,Manufacturer\n"
        'train_1_a_1.nii.gz,"[0.341796875, 0.341796875]",1.0,1,-1024,Philips\n')
    return r


def test_parse_name() -> None:
    assert parse_name("valid_53_a_1.nii.gz") == {"split": "valid", "patient": "valid_53", "scan": "a", "recon": "1"}
    with pytest.raises(ValueError, match="not a CT-RATE volume name"):
        parse_name("scan01.nii.gz")


def test_find_volumes_prefers_fixed(root: Path) -> None:
    vols = find_volumes(root)
    assert sorted(vols) == ["train_1_a_1", "train_1_a_2", "train_2_b_1", "valid_7_a_1"]
    assert vols["train_2_b_1"].parts[-4] == "train_fixed"


def test_index_joins_everything(root: Path) -> None:
    index = CTRateIndex(root)
    assert len(index) == 5 and index.splits == ["train", "valid"]
    row = index.row("train_1_a_1.nii.gz")
    assert row["patient"] == "train_1" and row["Findings_EN"] == "Nodule in the right lung, 5 mm."
    assert row["Lung nodule"] == 1.0 and row["Cardiomegaly"] == 0.0 and row["Manufacturer"] == "Philips"
    assert row["path"].endswith("train/train_1/train_1_a/train_1_a_1.nii.gz")
    assert index.names() == ["train_1_a_1", "train_1_a_2", "train_2_b_1", "valid_7_a_1"]
    assert index.names(with_volume=False)[-1] == "valid_8_a_1"  # report without a volume is kept
    assert index.names("train", labelled=True) == ["train_1_a_1", "train_1_a_2", "train_2_b_1"]
    assert index.names("valid", labelled=True) == []
    labels = index.labels(["train_1_a_2", "valid_7_a_1"])
    assert labels.shape == (2, 18) and labels[0, LABELS.index("Lung nodule")] == 1 and np.isnan(labels[1]).all()
    assert index.metadata("train_1_a_1")["XYSpacing"] == "[0.341796875, 0.341796875]"
    assert index.metadata("valid_7_a_1") is None
    assert index.report("valid_7_a_1") == "Pleural effusion.\n\nEffusion."
    assert index.report("train_2_b_1") == "Normal heart."


def test_labels_csv_missing_column_is_named(root: Path) -> None:
    (root / "multi_abnormality_labels" / "bad.csv").write_text("VolumeName,Emphysema\nx_1_a_1.nii.gz,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing column\(s\) Medical material"):
        CTRateIndex(root)


def test_empty_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no volumes"):
        CTRateIndex(tmp_path)
    with pytest.raises(FileNotFoundError, match="root folder not found"):
        CTRateIndex(tmp_path / "missing")


def test_patient_splits_are_seeded_and_disjoint() -> None:
    names = [f"train_{p}_{s}_{r}" for p in range(40) for s in "ab" for r in (1, 2)]
    a = patient_splits(names, {"train": 0.7, "valid": 0.15, "test": 0.15}, seed=3)
    b = patient_splits(names, {"train": 0.7, "valid": 0.15, "test": 0.15}, seed=3)
    c = patient_splits(names, {"train": 0.7, "valid": 0.15, "test": 0.15}, seed=4)
    assert a == b and a != c
    patients = {k: {parse_name(n)["patient"] for n in v} for k, v in a.items()}
    assert [len(patients[k]) for k in ("train", "valid", "test")] == [28, 6, 6]
    assert not (patients["train"] & patients["valid"]) and not (patients["train"] & patients["test"])
    assert sorted(n for v in a.values() for n in v) == sorted(names)
    with pytest.raises(ValueError, match="fractions"):
        patient_splits(names, {"train": -1.0})
