"""ctagrg.data.cache and the ``ctagrg preprocess`` cache builder (resume, bad files, shards, CT-RATE roots)."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from ct_fixtures import phantom_hu, write_dicom_series, write_nifti
from ctrate_fixtures import Volume, drop_rows, write_release_tree

from ctagrg.cli.main import main
from ctagrg.data.cache import CacheError, cache_path, load_cached, load_cached_tensor, read_cache_metadata, save_cached
from ctagrg.data.cachebuild import shard_items
from ctagrg.data.inputs import InputItem, discover_inputs

SMALL = ["--set", "shape=[12,16,16]", "--set", "spacing=[4.0,2.0,2.0]"]


def test_roundtrip_error_bounded_and_ends_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((6, 7, 8), dtype=np.float32) - 0.449).astype(np.float32)
    x[0] = -0.449  # padding / air
    x[1] = 0.551  # top of the window
    path = cache_path(tmp_path, "vol")
    save_cached(path, x, -0.449, 0.551, {"source": "s.nii.gz"})
    y = load_cached(path)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(y[0], np.float32(-0.449))
    assert np.allclose(y[1], 0.551, atol=1e-6)
    meta = read_cache_metadata(path)
    assert meta["shape"] == (6, 7, 8) and meta["extra"] == {"source": "s.nii.gz"} and meta["lo"] == -0.449
    assert path.stat().st_size < x.size + 1024  # one byte per voxel plus a small header
    assert tuple(load_cached_tensor(path).shape) == (6, 7, 8)


def test_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="cache file not found"):
        load_cached(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CacheError, match="bad.safetensors: not a readable cache file"):
        load_cached(bad)
    with pytest.raises(ValueError, match="plain file stem"):
        cache_path(tmp_path, "a/b")


def _read_manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    write_nifti(folder / "good1.nii.gz", phantom_hu((16, 16, 8)), np.diag([-2.0, -2.0, 4.0, 1.0]))
    write_nifti(folder / "good2.nii", phantom_hu((16, 16, 8), seed=1), np.diag([2.0, 2.0, 4.0, 1.0]))
    (folder / "broken.nii.gz").write_bytes((folder / "good1.nii.gz").read_bytes()[:500])
    write_dicom_series(folder / "patient" / "series", phantom_hu((8, 16, 16)), spacing=(4.0, 2.0, 2.0))
    return folder


def test_cli_survives_a_bad_file_and_resumes(scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cache"
    assert main(["preprocess", str(scans), "--out", str(out), *SMALL]) == 1
    err = capsys.readouterr()
    assert "broken.nii.gz: cannot read" in err.err
    assert "3 done, 0 already cached, 1 failed" in err.out
    rows = _read_manifest(out)
    assert {n: r["status"] for n, r in rows.items()} == {"good1": "ok", "good2": "ok", "series": "ok",
                                                         "broken": "failed"}
    assert rows["good1"]["shape"] == "16x16x8" and rows["good1"]["spacing"] == "2x2x4"
    assert rows["good1"]["out_shape"] == "12x16x16" and float(rows["good1"]["seconds"]) > 0
    assert load_cached(cache_path(out, "series")).shape == (12, 16, 16)
    assert json.loads((out / "preprocess.json").read_text())["shape"] == [12, 16, 16]
    before = cache_path(out, "good1").stat().st_mtime_ns
    assert main(["preprocess", str(scans), "--out", str(out), *SMALL]) == 1
    assert "0 done, 3 already cached, 1 failed" in capsys.readouterr().out
    assert cache_path(out, "good1").stat().st_mtime_ns == before
    assert _read_manifest(out)["good1"]["out_shape"] == "12x16x16"  # the old row is kept on resume


def test_cli_refuses_another_config_in_the_same_folder(scans: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cache"
    main(["preprocess", str(scans / "good1.nii.gz"), "--out", str(out), *SMALL])
    assert main(["preprocess", str(scans / "good1.nii.gz"), "--out", str(out)]) == 2
    assert "made with another preprocessing config" in capsys.readouterr().err


def test_shards_partition_the_items_and_merge_manifests(scans: Path, tmp_path: Path) -> None:
    items = discover_inputs([scans])
    parts = [shard_items(items, (i, 3)) for i in range(3)]
    names = [it.name for part in parts for it in part]
    assert sorted(names) == sorted(it.name for it in items) and len(set(names)) == len(names)
    out = tmp_path / "cache"
    good = [str(scans / "good1.nii.gz"), str(scans / "good2.nii")]
    assert main(["preprocess", *good, "--out", str(out), "--shard", "0/2", *SMALL]) == 0
    assert main(["preprocess", *good, "--out", str(out), "--shard", "1/2", *SMALL]) == 0
    assert set(_read_manifest(out)) == {"good1", "good2"}
    assert (out / "manifest.shard-1-of-2.csv").is_file()
    with pytest.raises(SystemExit):
        main(["preprocess", *good, "--out", str(out), "--shard", "2/2"])


@pytest.mark.slow
def test_workers_use_processes(scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    good = [str(scans / "good1.nii.gz"), str(scans / "good2.nii")]
    assert main(["preprocess", *good, "--out", str(out), "--workers", "2", *SMALL]) == 0
    np.testing.assert_array_equal(load_cached(cache_path(out, "good2")).shape, (12, 16, 16))


def test_discover_inputs_names_and_failures(scans: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_nifti(other / "good1.nii.gz", phantom_hu((8, 8, 8)), np.eye(4))
    (tmp_path / "empty").mkdir()
    items = discover_inputs([scans, other, tmp_path / "empty", tmp_path / "missing.nrrd"])
    names = sorted(i.name for i in items)
    assert [n for n in names if n.startswith("good1-")] and len([n for n in names if n.startswith("good1")]) == 2
    assert {"good2", "series", "broken", "empty", "missing"} <= set(names)
    assert InputItem("empty", str(tmp_path / "empty")) in items


def test_ctrate_root_input_uses_metadata(tmp_path: Path) -> None:
    root = tmp_path / "ctrate"
    vol_dir = root / "valid_fixed" / "valid_3" / "valid_3_a"
    vol_dir.mkdir(parents=True)
    raw = (phantom_hu((16, 16, 8)) + 1024).astype(np.int16)  # raw values, needs intercept -1024
    write_nifti(vol_dir / "valid_3_a_1.nii.gz", raw, np.eye(4))
    (root / "metadata").mkdir()
    (root / "metadata" / "validation_metadata.csv").write_text(
        'VolumeName,XYSpacing,ZSpacing,RescaleSlope,RescaleIntercept\n'
        'valid_3_a_1.nii.gz,"[2.0, 2.0]",4.0,1,-1024\n')
    out = tmp_path / "cache"
    assert main(["preprocess", str(root), "--out", str(out), *SMALL]) == 0
    row = _read_manifest(out)["valid_3_a_1"]
    assert row["spacing"] == "2x2x4" and row["hu_min"].startswith("-10")


def _release_root(tmp_path: Path) -> Path:
    return write_release_tree(tmp_path / "ctrate", {"train_1_a_1": Volume("Normal.", folder="train_fixed"),
                                                    "valid_2_a_1": Volume("Normal.", folder="valid_fixed")})


def test_ctrate_root_metadata_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, out = _release_root(tmp_path), str(tmp_path / "cache")
    meta = root / "metadata" / "validation_metadata.csv"
    items = {i.name: i for i in discover_inputs([root])}
    assert items["valid_2_a_1"].metadata["XYSpacing"] == "[2.0, 2.0]"  # from validation_metadata.csv
    drop_rows(meta, ["valid_2_a_1"])
    assert main(["preprocess", str(root), "--out", out]) == 2
    assert capsys.readouterr().err == f"{meta}: no row for 1 of the 1 volume(s) of split valid, e.g. valid_2_a_1\n"
    meta.write_text("Name,XYSpacing\nvalid_2_a_1.nii.gz,\"[2.0, 2.0]\"\n")
    assert main(["preprocess", str(root), "--out", out]) == 2
    assert capsys.readouterr().err == f"{meta}: missing column(s) VolumeName; found Name, XYSpacing\n"
    meta.unlink()
    assert main(["preprocess", str(root), "--out", out]) == 2
    assert capsys.readouterr().err == (f"{meta}: file not found (the spacing and rescale of the valid split)\n")
    # an explicit --metadata CSV stands in for the root's own
    other = tmp_path / "meta.csv"
    other.write_text("VolumeName,XYSpacing,ZSpacing\nvalid_2_a_1.nii.gz,\"[1.5, 1.5]\",3\n")
    items = {i.name: i for i in discover_inputs([root], other)}
    assert items["valid_2_a_1"].metadata["XYSpacing"] == "[1.5, 1.5]"
    assert items["train_1_a_1"].metadata["XYSpacing"] == "[2.0, 2.0]"


def test_lost_manifest_is_rebuilt_from_the_cache_files(scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    good = str(scans / "good1.nii.gz")
    assert main(["preprocess", good, "--out", str(out), *SMALL]) == 0
    (out / "manifest.csv").unlink()
    assert main(["preprocess", good, "--out", str(out), *SMALL]) == 0
    row = _read_manifest(out)["good1"]
    assert (row["status"], row["shape"], row["spacing"], row["out_shape"]) == ("ok", "16x16x8", "2x2x4", "12x16x16")


def test_cache_files_repeat_byte_for_byte(scans: Path, tmp_path: Path) -> None:
    import hashlib

    volume = np.linspace(-0.449, 0.551, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    digests = set()
    for k in range(6):  # safetensors orders the metadata by hash: six equal files by chance are (1/24)^5 unlikely
        save_cached(tmp_path / f"v{k}.safetensors", volume, -0.449, 0.551, {"source": "a", "spacing": "1x1x1"})
        digests.add(hashlib.sha256((tmp_path / f"v{k}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
    np.testing.assert_allclose(load_cached(tmp_path / "v0.safetensors"), volume, atol=1 / 255)
    runs = []
    for run in ("a", "b"):
        good = [str(scans / "good1.nii.gz"), str(scans / "good2.nii"), str(scans / "patient")]
        assert main(["preprocess", *good, "--out", str(tmp_path / run), *SMALL]) == 0
        runs.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted((tmp_path / run).glob("*.safetensors"))})
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc to find the worker processes")
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(24):
        write_nifti(folder / f"s{k}.nii.gz", phantom_hu((96, 96, 48), seed=k), np.diag([1.0, 1.0, 2.0, 1.0]))
    parent = subprocess.Popen([sys.executable, "-m", "ctagrg.cli.main", "preprocess", str(folder), "--out",
                               str(tmp_path / "cache"), "--workers", "2", "--set", "shape=[64,128,128]"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        cache = tmp_path / "cache"
        while time.monotonic() < deadline and parent.poll() is None and not list(cache.glob("*.safetensors")):
            time.sleep(0.05)  # the workers are running once the first volume is written
        workers = _children(parent.pid)
        assert len(workers) >= 2 and len(list(cache.glob("*.safetensors"))) < 24, "no workers running"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        gone_by = time.monotonic() + 2.0
        while any(_alive(p) for p in workers) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)], "worker processes outlived their killed parent"
    finally:
        for pid in _children(parent.pid) + [parent.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
