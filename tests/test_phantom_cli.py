"""``ctagrg phantom``: generate and preview from the command line, with clear errors."""

from __future__ import annotations

import json

from ctagrg.cli.main import main


def test_generate_then_preview(tmp_path, capsys):
    root = tmp_path / "ph"
    assert main(["phantom", "--out", str(root), "--n", "3", "--size", "tiny", "--split", "train=1",
                 "--min-prevalence", "0.5", "--seed", "4"]) == 0
    assert "wrote 3 phantom volumes" in capsys.readouterr().out
    assert len(list(root.glob("train/*/*/*.nii.gz"))) == 3
    assert json.loads((root / "phantom.json").read_text())["min_prevalence"] == 0.5
    png = tmp_path / "preview.png"
    assert main(["phantom", "--preview", str(root), "--out", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "x")]) == 2
    assert "--n is required" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "x"), "--n", "2", "--split", "train:1"]) == 2
    assert "name=fraction" in capsys.readouterr().err
    assert main(["phantom", "--preview", str(tmp_path), "--out", str(tmp_path / "p.png")]) == 2
    assert f"{tmp_path}: no ground_truth/ folder" in capsys.readouterr().err


def test_ctagrg_preprocess_reads_a_phantom_root(tmp_path):
    import csv

    root = tmp_path / "ph"
    assert main(["phantom", "--out", str(root), "--n", "2", "--size", "tiny", "--split", "valid=1"]) == 0
    cache = tmp_path / "cache"
    assert main(["preprocess", str(root), "--out", str(cache), "--set", "shape=[16,32,32]",
                 "--set", "spacing=[16,10,10]"]) == 0
    with open(cache / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert {r["name"] for r in rows} == {p.name[:-7] for p in root.glob("valid/*/*/*.nii.gz")}


def test_an_existing_folder_is_reused_only_for_the_same_dataset(tmp_path, capsys):
    out = tmp_path / "ps"
    assert main(["phantom", "--out", str(out), "--n", "3", "--size", "tiny"]) == 0
    before = sorted(p.name for p in out.rglob("*.nii.gz"))
    # the same settings (an interrupted run rerun; workers do not count): rewritten in place
    assert main(["phantom", "--out", str(out), "--n", "3", "--size", "tiny", "--workers", "2"]) == 0
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == before
    capsys.readouterr()
    # other settings would leave the old volumes beside the new ones: refused, nothing written
    assert main(["phantom", "--out", str(out), "--n", "2", "--size", "tiny", "--seed", "1"]) == 2
    assert f"{out}: holds a phantom dataset made with other settings (n 3 -> 2, seed 0 -> 1)" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == before
    (tmp_path / "notes.txt").write_text("x")
    assert main(["phantom", "--out", str(tmp_path / "notes.txt"), "--n", "1", "--size", "tiny"]) == 2
    assert "notes.txt: is a file; --out is the dataset folder to write" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("x")
    assert main(["phantom", "--out", str(tmp_path / "other"), "--n", "1", "--size", "tiny"]) == 2
    assert "other: is not empty and holds no phantom dataset (phantom.json)" in capsys.readouterr().err


def test_split_fractions_must_sum_to_one_and_the_preview_is_a_png(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "x"), "--n", "10", "--size", "tiny",
                 "--split", "train=0.5,valid=0.2"]) == 2
    assert "split fractions must sum to 1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["phantom", "--preview", str(tmp_path), "--out", str(tmp_path / "p.jpg")]) == 2
    assert "p.jpg: the preview is a PNG image; give a .png path" in capsys.readouterr().err
