"""ctagrg.data.ctrate: the release's file names, layout discovery, CSV parsing, joining and errors, patient splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ctrate_fixtures import METADATA_HEADER, RELEASE_FILES, Volume, drop_rows, volume_path, write_release_tree

from ctagrg.data.ctrate import (
    METADATA_COLUMNS,
    CTRateIndex,
    canonical_split,
    find_volumes,
    parse_name,
    patient_splits,
    split_csv,
)
from ctagrg.labels import LABELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """The release's names and headers: train/ and train_fixed/, valid/, and a validation report and label row
    whose volume was not downloaded."""
    r = write_release_tree(tmp_path / "CT-RATE", {
        "train_1_a_1": Volume("Nodule in the right lung, 5 mm.", ["Lung nodule"], folder="train", xy=0.341796875),
        "train_1_a_2": Volume("Nodule.", ["Lung nodule"], folder="train"),
        "train_2_b_1": Volume("Normal heart.", folder="train_fixed"),
        "valid_7_a_1": Volume("Pleural effusion.", ["Pleural effusion"], folder="valid"),
        "valid_8_a_1": Volume("No volume for this one."),
    })
    twin = volume_path(r, "train", "train_2_b_1")  # the uncorrected twin: train_fixed/ wins
    twin.parent.mkdir(parents=True)
    twin.write_bytes(b"")
    return r


def test_split_csv_spells_the_release_names() -> None:
    for split, files in RELEASE_FILES.items():
        for kind, rel in files.items():
            assert split_csv("R", kind, split) == Path("R", rel)  # type: ignore[arg-type]
    for kind in ("reports", "labels", "metadata"):  # "validation" names the same split
        assert split_csv("R", kind, "validation") == split_csv("R", kind, "valid")  # type: ignore[arg-type]
    assert [split_csv("R", k, "test").name for k in ("reports", "labels", "metadata")] == [  # type: ignore[arg-type]
        "test_reports.csv", "test_predicted_labels.csv", "test_metadata.csv"]
    assert canonical_split("validation") == "valid" and canonical_split("train") == "train"
    with pytest.raises(ValueError, match="kind must be one of reports, labels, metadata"):
        split_csv("R", "findings", "train")  # type: ignore[arg-type]


def test_metadata_columns_are_the_release_header() -> None:
    assert ",".join(METADATA_COLUMNS) == METADATA_HEADER and len(METADATA_COLUMNS) == 44


def test_ctrate_configs_name_the_release_files() -> None:
    """Training reads train's files only: CT-RATE's valid is left to `ctagrg evaluate` (tests/test_splits.py runs
    the stages)."""
    data = Path("data/CT-RATE/dataset")
    for stage in ("pretrain", "classifier"):
        cfg = yaml.safe_load((CONFIGS / "ctrate" / f"{stage}.yaml").read_text())["data"]
        assert Path(cfg["train_labels"]) == Path(cfg["valid_labels"]) == split_csv(data, "labels", "train")
    emb = yaml.safe_load((CONFIGS / "ctrate" / "decoder.yaml").read_text())["embeddings"]
    assert Path(emb["labels_csv"]) == split_csv(data, "labels", "train")
    assert Path(emb["reports_csv"]) == split_csv(data, "reports", "train")


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
    assert index.names(with_volume=False)[-1] == "valid_8_a_1"  # rows without a volume are kept
    assert index.names("train", labelled=True) == ["train_1_a_1", "train_1_a_2", "train_2_b_1"]
    assert index.names("valid", labelled=True) == ["valid_7_a_1"]
    assert index.names("validation", with_volume=False) == index.names("valid", with_volume=False) == [
        "valid_7_a_1", "valid_8_a_1"]
    labels = index.labels(["train_1_a_2", "valid_8_a_1"])
    assert labels.shape == (2, 18) and labels[0, LABELS.index("Lung nodule")] == 1 and labels[1].sum() == 0
    meta = index.metadata("train_1_a_1")
    assert meta is not None and meta["XYSpacing"] == "[0.341796875, 0.341796875]" and meta["RescaleIntercept"] == -1024
    assert index.metadata("valid_7_a_1")["ZSpacing"] == 4.0  # from validation_metadata.csv
    assert index.report("valid_7_a_1") == "Pleural effusion."
    assert index.report("train_2_b_1") == "Normal heart."


def test_index_without_a_downloaded_split_needs_no_csvs_of_it(root: Path) -> None:
    for kind in ("reports", "labels", "metadata"):
        split_csv(root, kind, "valid").unlink()  # type: ignore[arg-type]
    for path in (root / "valid").rglob("*.nii.gz"):
        path.unlink()
    assert CTRateIndex(root).splits == ["train"]


@pytest.mark.parametrize("kind, what", [("reports", "report texts"), ("labels", "18 abnormality labels"),
                                        ("metadata", "spacing and rescale")])
def test_a_missing_csv_is_named(root: Path, kind: str, what: str) -> None:
    path = split_csv(root, kind, "valid")  # type: ignore[arg-type]
    path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{path}: file not found \(the {what} of the valid split\)$"):
        CTRateIndex(root)


def test_an_old_phantom_name_is_pointed_out(root: Path) -> None:
    old = root / "radiology_text_reports" / "valid_reports.csv"
    split_csv(root, "reports", "valid").rename(old)
    with pytest.raises(FileNotFoundError, match=r"validation_reports.csv: file not found .*; valid_reports.csv is "
                                                r"there, the name older `ctagrg phantom` versions wrote"):
        CTRateIndex(root)


@pytest.mark.parametrize("kind", ["reports", "labels", "metadata"])
def test_a_csv_without_volumename_is_named(root: Path, kind: str) -> None:
    path = split_csv(root, kind, "train")  # type: ignore[arg-type]
    path.write_text(path.read_text().replace("VolumeName", "Volume", 1))
    with pytest.raises(ValueError, match=rf"^{path}: missing column\(s\) VolumeName; found Volume,"):
        CTRateIndex(root)


@pytest.mark.parametrize("kind", ["reports", "labels", "metadata"])
def test_a_csv_lacking_volumes_of_its_split_is_named(root: Path, kind: str) -> None:
    path = split_csv(root, kind, "valid")  # type: ignore[arg-type]
    drop_rows(path, ["valid_7_a_1"])
    with pytest.raises(ValueError, match=rf"^{path}: no row for 1 of the 1 volume\(s\) of split valid, "
                                         r"e.g. valid_7_a_1$"):
        CTRateIndex(root)


def test_labels_csv_missing_label_column_is_named(root: Path) -> None:
    path = split_csv(root, "labels", "train")
    path.write_text(path.read_text().replace(",Medical material", ",Medical", 1))
    with pytest.raises(ValueError, match=r"train_predicted_labels\.csv: missing column\(s\) Medical material"):
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
