"""``ctagrg report``: files, folders, CSV lists, DICOM; JSON lines; resume; a bad scan does not stop the batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctagrg.cli.main import main
from ctagrg.generation.reporter import model_fingerprint
from ctagrg.labels import LABELS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    from test_reporter import SHAPE, tiny_decoder, tiny_visual

    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.decoder import load_tokenizer

    torch.manual_seed(0)
    reporter = Reporter(tiny_visual(), tiny_decoder(), load_tokenizer(gpt2_tokenizer_dir), [0.0] * 9 + [1.01] * 9,
                        PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE),
                        ReporterConfig(generation=GenerationSettings(max_new_tokens=6)))
    return reporter.save_pretrained(tmp_path_factory.mktemp("model") / "model")


def write_scan(path: Path, seed: int) -> Path:
    import nibabel as nib

    hu = np.random.default_rng(seed).integers(-1000, 400, size=(20, 20, 14)).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 5.0, 1.0])), path)
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_report_files_folders_csv_and_resume(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    one = write_scan(tmp_path / "one.nii.gz", 0)
    write_scan(tmp_path / "folder" / "a.nii.gz", 1)
    write_scan(tmp_path / "folder" / "sub" / "b.nii.gz", 2)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    write_scan(tmp_path / "listed" / "c.nii.gz", 3)
    (tmp_path / "list.csv").write_text("path,note\nlisted/c.nii.gz,x\n")
    out = tmp_path / "out" / "reports.jsonl"
    argv = ["report", str(one), str(tmp_path / "folder"), str(bad), str(tmp_path / "list.csv"),
            "--model", str(model_dir), "--out", str(out), "--batch-size", "2", "--device", "cpu"]
    assert main(argv) == 1  # one scan failed
    lines = read_lines(out)
    assert len(lines) == 5
    by_input = {line["input"]: line for line in lines}
    assert set(by_input) == {str(one), str(tmp_path / "folder" / "a.nii.gz"), str(tmp_path / "folder" / "sub" /
                             "b.nii.gz"), str(bad), str(tmp_path / "listed" / "c.nii.gz")}
    assert set(by_input[str(bad)]) == {"input", "input_resolved", "name", "error", "model"}
    assert "bad.nii.gz" in by_input[str(bad)]["error"]
    good = by_input[str(one)]
    assert set(good) == {"input", "input_resolved", "name", "report", "abnormalities", "seconds", "model"}
    assert good["seconds"] > 0 and good["input_resolved"] == str(one.resolve())
    assert {line["model"] for line in lines} == {model_fingerprint(model_dir)}
    assert list(good["abnormalities"]) == list(LABELS)
    detected = [k for k, v in good["abnormalities"].items() if v["detected"]]
    assert detected == list(LABELS[:9])  # thresholds 0 for the first 9 labels, above 1 for the rest
    assert all(good["abnormalities"][k]["sentence"] is None for k in LABELS[9:])
    printed = capsys.readouterr()
    assert f"== {one}\n{good['report']}\n" in printed.out
    # one line per failure, naming the scan once, without the exception class of our own read errors
    error = by_input[str(bad)]["error"]
    assert error.startswith(f"{bad}: ") and error.count("bad.nii.gz") == 1 and "CTReadError" not in error
    assert f"{error}\n" in printed.err

    # Resume: the four reported scans are skipped, only the failed one is tried again; its old error line is
    # replaced, not repeated, however often the run is repeated.
    for _ in range(2):
        assert main(argv) == 1
        again = read_lines(out)
        assert len(again) == 5 and again[:4] == [x for x in lines if "report" in x]
        assert again[4]["input"] == str(bad) and "error" in again[4]
    # the same scan by a relative path from another folder is the same scan
    monkeypatch.chdir(tmp_path / "folder")
    assert main(["report", "a.nii.gz", "--model", str(model_dir), "--out", str(out)]) == 0
    assert len(read_lines(out)) == 5 and "1 scan(s) already reported, skipped" in capsys.readouterr().err


def test_resume_from_another_working_folder(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    write_scan(tmp_path / "a" / "scans" / "x.nii.gz", 1)
    out = tmp_path / "r.jsonl"
    monkeypatch.chdir(tmp_path / "a")
    assert main(["report", "scans/x.nii.gz", "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    monkeypatch.chdir(tmp_path)  # the recorded input "scans/x.nii.gz" means nothing from here; input_resolved does
    assert main(["report", "a/scans/x.nii.gz", "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    assert len(read_lines(out)) == 1 and "1 scan(s) already reported, skipped" in capsys.readouterr().err
    # one run given the same scan twice, relatively and absolutely, reports it once
    out2 = tmp_path / "r2.jsonl"
    assert main(["report", "a/scans/x.nii.gz", str(tmp_path / "a" / "scans" / "x.nii.gz"), "--model",
                 str(model_dir), "--out", str(out2), "--quiet"]) == 0
    assert [line["name"] for line in read_lines(out2)] == ["x"]


def test_reports_of_another_model_are_refused(model_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    import shutil

    scan = write_scan(tmp_path / "s.nii.gz", 5)
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    (other / "thresholds.json").write_text((other / "thresholds.json").read_text().replace("0.0", "0.5"))
    out = tmp_path / "r.jsonl"
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    assert main(["report", str(scan), "--model", str(other), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (f"r.jsonl: holds reports of another model (fingerprint {model_fingerprint(model_dir)}; {other} is "
            f"{model_fingerprint(other)}); use another --out" in err)
    assert len(read_lines(out)) == 1
    # an OUT holding only another model's error lines, or lines of an older ctagrg, is refused too
    errors_only = tmp_path / "e.jsonl"
    errors_only.write_text(json.dumps({"input": "x", "name": "x", "error": "x: bad", "model": "0123"}) + "\n")
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(errors_only), "--quiet"]) == 2
    assert "holds reports of another model (fingerprint 0123;" in capsys.readouterr().err
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"input": "x", "name": "x", "report": "r"}) + "\n")
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(old), "--quiet"]) == 2
    assert "(fingerprint none recorded: an older ctagrg;" in capsys.readouterr().err


def test_the_fingerprint_covers_what_the_model_loads(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    before = model_fingerprint(copy)
    assert before == model_fingerprint(model_dir)  # a copy is the same model
    (copy / ".DS_Store").write_bytes(b"x")
    (copy / "reports.jsonl").write_text("{}\n")  # an --out kept inside the model folder
    (copy / "README.md").write_text("edited card")
    assert model_fingerprint(copy) == before
    (copy / "reporter.json").write_text((copy / "reporter.json").read_text().replace("6", "7", 1))
    assert model_fingerprint(copy) != before


def test_bad_out_and_csv_files_are_clear_errors(model_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    scan = write_scan(tmp_path / "s.nii.gz", 5)
    (tmp_path / "folder").mkdir()
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(tmp_path / "folder")]) == 2
    assert f"--out {tmp_path / 'folder'}: is a folder; give a .jsonl file path" in capsys.readouterr().err
    (tmp_path / "binary.jsonl").write_bytes(b"\x8b\x00\xff")
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(tmp_path / "binary.jsonl")]) == 2
    assert "binary.jsonl: not a reports file (not UTF-8 text" in capsys.readouterr().err
    (tmp_path / "latin.csv").write_bytes("path\ncaf\xe9.nii.gz\n".encode("latin-1"))
    assert main(["report", str(tmp_path / "latin.csv"), "--model", str(model_dir)]) == 2
    assert "latin.csv: not UTF-8 text" in capsys.readouterr().err
    assert main(["report", str(scan), "--model", str(scan)]) == 2
    assert "s.nii.gz: a file, not a model folder" in capsys.readouterr().err


def test_warnings_from_reading_a_scan_are_in_its_line(model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import ctagrg.data.ctio as ctio

    real = ctio.load_ct

    def load_with_warning(source, metadata=None, **kwargs):
        warnings.warn(f"{source}: irregular slice spacing; missing slices?", ctio.CTReadWarning, stacklevel=2)
        warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=2)  # not about the scan
        return real(source, metadata, **kwargs)

    monkeypatch.setattr(ctio, "load_ct", load_with_warning)
    scan = write_scan(tmp_path / "s.nii.gz", 5)
    out = tmp_path / "r.jsonl"
    with pytest.warns(DeprecationWarning, match="a library's deprecation"):  # passed on, not swallowed
        assert main(["report", str(scan), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    line = read_lines(out)[0]
    assert line["warnings"][0] == f"{scan}: irregular slice spacing; missing slices?"
    assert not any("deprecation" in w for w in line["warnings"])  # other warnings go their usual way


def test_resume_after_a_cut_line(model_dir: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "s.nii.gz", 5)
    out = tmp_path / "r.jsonl"
    model = model_fingerprint(model_dir)
    kept = f'{{"input": "elsewhere", "report": "x", "model": "{model}"}}'
    out.write_text(f'{kept}\n{{"input": "cut')  # a write cut by an interruption
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    lines = out.read_text().splitlines()  # the cut line is repaired away, not kept
    assert len(lines) == 2 and lines[0] == kept and json.loads(lines[1])["input"] == str(scan)
    assert all(isinstance(json.loads(x), dict) for x in lines)


def test_a_folder_mixing_a_dicom_series_and_scan_files_reports_every_scan(
        model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ct_fixtures import phantom_hu, write_dicom_series

    folder = tmp_path / "mixed"
    write_dicom_series(folder, phantom_hu((8, 16, 16)), spacing=(5.0, 2.0, 2.0))
    nifti = write_scan(folder / "extra.nii.gz", 1)
    nested = write_scan(folder / "sub" / "nested.nii.gz", 2)
    (folder / "notes.txt").write_text("not a scan")
    out = tmp_path / "r.jsonl"
    with caplog.at_level("WARNING", logger="ctagrg.data.inputs"):
        assert main(["report", str(folder), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    inputs = {line["input"] for line in read_lines(out)}
    assert inputs == {str(folder), str(nifti), str(nested)}
    assert all("report" in line for line in read_lines(out))
    assert f"{folder}: 1 file(s) that are not scans skipped: notes.txt" in caplog.text


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "x.nii.gz", "--model", str(tmp_path)]) == 2
    assert "not a packaged ctagrg model" in capsys.readouterr().err
    assert main(["report", "x.nii.gz", "--model", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such model folder" in capsys.readouterr().err


def test_cuda_without_cuda_or_an_unknown_device_is_a_clear_error(model_dir: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # torch itself raises an AssertionError ("Torch not compiled with CUDA enabled") at the first .to("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    scan = write_scan(tmp_path / "s.nii.gz", 5)
    out = tmp_path / "r.jsonl"
    assert main(["report", str(scan), "--model", str(model_dir), "--device", "cuda", "--out", str(out)]) == 2
    assert "device 'cuda': CUDA is not available here" in capsys.readouterr().err
    assert not out.exists()
    assert main(["report", str(scan), "--model", str(model_dir), "--device", "gpu"]) == 2
    assert "device 'gpu'" in capsys.readouterr().err
    # auto falls back to the CPU
    assert main(["report", str(scan), "--model", str(model_dir), "--device", "auto", "--out", str(out),
                 "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 1


@pytest.mark.shared
def test_real_cts_nifti_nrrd_dicom(model_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    ct = shared_data / "ct"
    scans = [ct / "lung-pet-ct-dx-A0001.nii.gz", ct / "cip-ct64.nrrd", ct / "cip-ct64-dicom"]
    out = tmp_path / "real.jsonl"
    assert main(["report", *map(str, scans), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 0
    lines = read_lines(out)
    assert [line["input"] for line in lines] == list(map(str, scans))
    assert all("report" in line and len(line["abnormalities"]) == 18 for line in lines)


def _without_timing(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def _scans_with_a_bad_one(folder: Path, n: int = 5) -> list[str]:
    scans = [str(write_scan(folder / f"s{k}.nii.gz", 10 + k)) for k in range(n)]
    bad = folder / "s2_bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    return scans[:2] + [str(bad)] + scans[2:]


def test_workers_give_the_lines_of_workers_0_and_a_bad_scan_is_one_error_line(model_dir: Path, tmp_path: Path
                                                                              ) -> None:
    scans = _scans_with_a_bad_one(tmp_path / "scans")
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.jsonl"
        assert main(["report", *scans, "--model", str(model_dir), "--out", str(out), "--batch-size", "2",
                     "--device", "cpu", "--workers", str(workers), "--quiet"]) == 1  # the bad scan failed
        runs[workers] = read_lines(out)
    assert [line["input"] for line in runs[2]] == scans  # in input order
    assert _without_timing(runs[2]) == _without_timing(runs[0])
    errors = [line for line in runs[2] if "error" in line]
    assert len(errors) == 1 and errors[0]["error"].startswith(f"{scans[2]}: ")
    assert all(line["seconds"] > 0 for line in runs[2] if "report" in line)


def test_shards_concatenate_to_the_unsharded_output(model_dir: Path, tmp_path: Path) -> None:
    scans = _scans_with_a_bad_one(tmp_path / "scans", n=6)
    common = ["--model", str(model_dir), "--device", "cpu", "--quiet"]
    assert main(["report", str(tmp_path / "scans"), *common, "--out", str(tmp_path / "all.jsonl")]) == 1
    whole = read_lines(tmp_path / "all.jsonl")
    assert sorted(line["input"] for line in whole) == sorted(scans)
    parts: list[dict] = []
    for k in range(3):
        out = tmp_path / f"shard{k}.jsonl"
        code = main(["report", str(tmp_path / "scans"), *common, "--out", str(out), "--shard", f"{k}/3",
                     "--workers", "1"])
        lines = read_lines(out)
        assert len(lines) in (2, 3) and code == int(any("error" in line for line in lines))
        parts += lines
    assert _without_timing(parts) == _without_timing(whole)


@pytest.mark.parametrize("shard", ["3/3", "1/0", "a/2", "1"])
def test_shard_must_be_i_of_n(model_dir: Path, tmp_path: Path, shard: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path), "--model", str(model_dir), "--shard", shard])
    assert "--shard" in capsys.readouterr().err


def test_evaluate_predictions_with_workers_equal_those_without(tmp_path: Path, model_dir: Path) -> None:
    """``ctagrg evaluate --workers``: ``predict_split`` reads ahead in worker processes, same lines."""
    from ctagrg.evaluation.predict import Split, predict_split

    names = [f"test_{k}_a_1" for k in range(5)]
    paths: list[Path | None] = [write_scan(tmp_path / "scans" / f"{n}.nii.gz", k) for k, n in enumerate(names)]
    paths[2] = None  # no file and no cache: an error line, the others go on
    split = Split(names, paths, [""] * 5, None)
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}" / "predictions.jsonl"
        predict_split(model_dir, split, out, cache_dir=None, data_dir=tmp_path, batch_size=2, device="cpu",
                      workers=workers)
        runs[workers] = [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                         for x in out.read_text().splitlines()]
    assert runs[2] == runs[0] and [line["name"] for line in runs[2]] == names
    assert [("error" in line) for line in runs[2]] == [False, False, True, False, False]
    assert runs[2][2]["error"] == "FileNotFoundError: test_2_a_1: no volume file found and no preprocessed cache"
    probabilities = {line["abnormalities"][LABELS[0]]["probability"] for line in runs[2] if "report" in line}
    assert len(probabilities) == 4  # each scan its own


def test_out_dash_writes_json_lines_to_stdout_and_no_report_text(model_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    scans = _scans_with_a_bad_one(tmp_path / "scans", n=2)
    assert main(["report", *scans, "--model", str(model_dir), "--out", "-", "--batch-size", "2"]) == 1
    printed = capsys.readouterr()
    lines = [json.loads(x) for x in printed.out.splitlines()]  # stdout holds JSON lines only
    assert [line["input"] for line in lines] == scans
    assert [("error" in line) for line in lines] == [False, False, True]
    assert all(len(line["abnormalities"]) == 18 for line in lines if "report" in line)
    assert "== " not in printed.out and f"{lines[2]['error']}\n" in printed.err  # errors still on stderr
    assert not (tmp_path / "-").exists() and not Path("-").exists()


def test_out_dev_stdout_and_a_fifo_are_written_without_resume(model_dir: Path, tmp_path: Path,
                                                               capfd: pytest.CaptureFixture) -> None:
    import os
    import threading

    scan = write_scan(tmp_path / "s.nii.gz", 5)
    assert main(["report", str(scan), "--model", str(model_dir), "--out", "/dev/stdout"]) == 0
    printed = capfd.readouterr()
    [line] = [json.loads(x) for x in printed.out.splitlines()]  # stdout is the output: no report text there
    assert line["input"] == str(scan) and "report" in line
    assert "not seekable" not in printed.err

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(fifo), "--quiet"]) == 0
    reader.join(timeout=60)
    assert [json.loads(x)["input"] for x in received[0].splitlines()] == [str(scan)]


def test_an_out_that_cannot_be_opened_is_named(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                               ) -> None:
    scan = write_scan(tmp_path / "s.nii.gz", 5)
    blocked = tmp_path / "file"
    blocked.write_text("")
    out = blocked / "r.jsonl"  # its folder is a file
    assert main(["report", str(scan), "--model", str(model_dir), "--out", str(out)]) == 2
    assert f"--out {out}: cannot write there (" in capsys.readouterr().err


def test_text_output_carries_each_scans_warnings_beside_its_report(model_dir: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import ctagrg.data.ctio as ctio
    from ctagrg.generation.reporter import Reporter

    a, b = write_scan(tmp_path / "a.nii.gz", 1), write_scan(tmp_path / "b.nii.gz", 2)
    real_load, real_report = ctio.load_ct, Reporter.report_volumes

    def load(source, metadata=None, **kwargs):
        if Path(source) == b:
            warnings.warn(f"{source}: irregular slice spacing; missing slices?", ctio.CTReadWarning, stacklevel=2)
        return real_load(source, metadata, **kwargs)

    def report_volumes(self, volumes):  # what an out-of-distribution scan gets from a cnn3d model
        reports = real_report(self, volumes)
        reports[-1].warnings.append("out of distribution: 3.0% of the encoder's features lie far out")
        return reports

    monkeypatch.setattr(ctio, "load_ct", load)
    monkeypatch.setattr(Reporter, "report_volumes", report_volumes)
    out = tmp_path / "r.jsonl"
    assert main(["report", str(a), str(b), "--model", str(model_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    by_input = {line["input"]: line for line in read_lines(out)}
    ood = "out of distribution: 3.0% of the encoder's features lie far out"
    assert by_input[str(b)]["warnings"] == [f"{b}: irregular slice spacing; missing slices?", ood]
    assert f"== {b}\nwarning: {b}: irregular slice spacing; missing slices?\nwarning: {ood}\n" \
           f"{by_input[str(b)]['report']}\n" in printed.out
    assert f"== {a}\nwarning: {ood}\n{by_input[str(a)]['report']}\n" in printed.out
    assert "warning" not in printed.err  # shown once, beside the report
    # --quiet prints no reports: the warnings go to stderr, naming the scan
    assert main(["report", str(b), "--model", str(model_dir), "--out", str(tmp_path / "q.jsonl"), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and f"{b}: warning: {ood}\n" in printed.err


def test_out_dash_into_a_reader_that_stops_ends_without_a_traceback(model_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys as _sys

    scans = [str(write_scan(tmp_path / f"s{i}.nii.gz", i)) for i in range(3)]
    cmd = [_sys.executable, "-m", "ctagrg.cli.main", "report", *scans, "--model", str(model_dir), "--out", "-"]
    # the reader takes one line and closes the pipe, as `| head -1` does
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) in (0, 1)
    assert json.loads(first)["input"] == scans[0]
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
