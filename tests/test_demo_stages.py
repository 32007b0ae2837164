"""Demo stages that call the library where they once ran a ``ctagrg`` subcommand: the same files as the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctagrg.cli.main import main as cli_main
from ctagrg.demo.runner import DemoConfig, config_dir
from ctagrg.demo.stages import _write_sentences


def test_sentences_match_the_cli(tmp_path: Path) -> None:
    """The embeddings stage's sentences CSV is byte-identical to ``ctagrg sentences --text-columns Findings_EN``."""
    reports = tmp_path / "reports.csv"
    reports.write_text("VolumeName,Findings_EN,Impressions_EN\n"
                       "a_1_1.nii.gz,\"Bilateral pleural effusion. Heart size is enlarged. No nodule.\",x\n"
                       "b_1_1.nii.gz,\"No acute finding.\",y\n"
                       "c_1_1.nii.gz,\"A 6 mm nodule in the right upper lobe. Emphysema.\",z\n", encoding="utf-8")
    _write_sentences(reports, tmp_path / "demo.csv")
    assert cli_main(["sentences", str(reports), "--out", str(tmp_path / "cli.csv"),
                     "--text-columns", "Findings_EN"]) == 0
    demo_text = (tmp_path / "demo.csv").read_text(encoding="utf-8")
    assert demo_text == (tmp_path / "cli.csv").read_text(encoding="utf-8")
    assert "Pleural effusion" in demo_text and "b_1_1.nii.gz" not in demo_text


def test_config_dir_finds_configs_demo_beside_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from elsewhere, the demo still finds this checkout's configs/demo (the package is a folder now)."""
    monkeypatch.chdir(tmp_path)
    found = config_dir(DemoConfig())
    assert found == Path(__file__).resolve().parents[1] / "configs" / "demo"
    assert (found / "preprocess.yaml").is_file()
    with pytest.raises(FileNotFoundError, match="nowhere: config folder not found"):
        config_dir(DemoConfig(configs=str(tmp_path / "nowhere")))
