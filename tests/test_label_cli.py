"""``ctagrg label`` / ``ctagrg sentences``: schemas, bad input (missing column, empty text, undecodable bytes)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ctagrg.cli.main import main
from ctagrg.labels import LABELS

REPORTS = (
    "VolumeName,Findings_EN,Impressions_EN\n"
    'valid_1_a_1.nii.gz,"A 6 mm nodule in the right upper lobe. No pleural effusion.",Hiatal hernia.\n'
    "valid_2_a_1.nii.gz,,\n"
    'valid_3_a_1.nii.gz,"Emphysematous changes in both lungs. Pericardial effusion was not observed.",\n'
)


@pytest.fixture()
def reports_csv(tmp_path: Path) -> Path:
    path = tmp_path / "reports.csv"
    path.write_text(REPORTS, encoding="utf-8")
    return path


def test_label_writes_ctrate_schema(reports_csv: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "labels.csv"
    assert main(["label", str(reports_csv), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["VolumeName", *LABELS]
    assert frame.VolumeName.tolist() == ["valid_1_a_1.nii.gz", "valid_2_a_1.nii.gz", "valid_3_a_1.nii.gz"]
    positives = {row.VolumeName: [c for c in LABELS if row[c]] for _, row in frame.iterrows()}
    assert positives == {"valid_1_a_1.nii.gz": ["Hiatal hernia", "Lung nodule"],
                         "valid_2_a_1.nii.gz": [], "valid_3_a_1.nii.gz": ["Emphysema"]}
    assert "1 report(s) have empty or NaN text" in capsys.readouterr().err


def test_text_columns_option(reports_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    assert main(["label", str(reports_csv), "--out", str(out), "--text-columns", "Impressions_EN"]) == 0
    frame = pd.read_csv(out)
    assert frame[list(LABELS)].to_numpy().sum() == 1 and frame["Hiatal hernia"][0] == 1


def test_sentences_rows(reports_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "sentences.csv"
    assert main(["sentences", str(reports_csv), "--out", str(out)]) == 0
    rows = pd.read_csv(out).values.tolist()
    assert rows == [
        ["valid_1_a_1.nii.gz", "Hiatal hernia", "Hiatal hernia."],
        ["valid_1_a_1.nii.gz", "Lung nodule", "A 6 mm nodule in the right upper lobe."],
        ["valid_3_a_1.nii.gz", "Emphysema", "Emphysematous changes in both lungs."],
    ]


def test_missing_column_lists_columns(reports_csv: Path, tmp_path: Path, capsys) -> None:
    code = main(["label", str(reports_csv), "--out", str(tmp_path / "x.csv"), "--id-column", "Name"])
    err = capsys.readouterr().err
    assert code == 1
    assert "missing column(s) ['Name']" in err
    assert "columns found: ['VolumeName', 'Findings_EN', 'Impressions_EN']" in err
    assert not (tmp_path / "x.csv").exists()


def test_undecodable_bytes_give_line_number(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(REPORTS.encode() + b'valid_4_a_1,"Caf\xe9 nodule",\n')
    assert main(["sentences", str(path), "--out", str(tmp_path / "s.csv")]) == 1
    err = capsys.readouterr().err
    assert f"{path}: line 5: bytes are not valid UTF-8" in err


def test_missing_file(tmp_path: Path, capsys) -> None:
    assert main(["label", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.csv")]) == 1
    assert "none.csv: file not found" in capsys.readouterr().err


def test_bad_labeler_spec(reports_csv: Path, tmp_path: Path, capsys) -> None:
    assert main(["label", str(reports_csv), "--out", str(tmp_path / "x.csv"), "--labeler", "radbert:/nope"]) == 1
    assert "/nope: RadBERT folder or checkpoint not found" in capsys.readouterr().err
