"""Phantom datasets: CT-RATE layout, CSV columns, determinism, ground truth vs labels, and the project's loader."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ctrate_fixtures import METADATA_HEADER, RELEASE_FILES, REPORTS_HEADER

from ctagrg.labels import LABELS, LATERALISED
from ctagrg.phantom.generate import (
    PhantomConfig,
    generate_dataset,
    parse_split,
    plan_volumes,
)
from ctagrg.phantom.volume import SIZES, make_case, make_volume, render, sample_grid


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("ph") / "root", n=6, seed=7, size="tiny",
                            split="train=0.5,valid=0.5", min_prevalence=0.3)


def test_layout_and_csv_columns(dataset):
    vols = sorted(p.relative_to(dataset).as_posix() for p in dataset.glob("*/*/*/*.nii.gz"))
    assert len(vols) == 6
    for rel in vols:
        split, patient, scan, name = rel.split("/")
        assert patient.startswith(split + "_") and scan == patient + "_a" and name.startswith(scan + "_")
    csvs = sorted(p.relative_to(dataset).as_posix() for p in dataset.glob("*/*.csv"))
    assert csvs == sorted(f for files in RELEASE_FILES.values() for f in files.values())  # the release's names
    for split in ("train", "valid"):
        reports = _rows(dataset / RELEASE_FILES[split]["reports"])
        labels = _rows(dataset / RELEASE_FILES[split]["labels"])
        meta = _rows(dataset / RELEASE_FILES[split]["metadata"])
        assert ",".join(reports[0]) == REPORTS_HEADER
        assert tuple(labels[0]) == ("VolumeName", *LABELS)
        assert ",".join(meta[0]) == METADATA_HEADER
        assert {meta[0]["RescaleType"], meta[0]["PatientPosition"], meta[0]["DistanceSourceToDetector"]} == {
            "HU", "HFS", ""}  # a value the phantom has none for stays empty, as in the release
        names = [r["VolumeName"] for r in reports]
        assert names == [r["VolumeName"] for r in labels] == [r["VolumeName"] for r in meta]
        assert all(n.startswith(split + "_") and n.endswith(".nii.gz") for n in names)
    assert json.loads((dataset / "phantom.json").read_text())["seed"] == 7


def test_the_test_split_follows_the_release_pattern(tmp_path):
    root = generate_dataset(tmp_path / "t", n=2, seed=1, size="tiny", split="test=1.0")
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.csv")) == [
        "metadata/test_metadata.csv", "multi_abnormality_labels/test_predicted_labels.csv",
        "radiology_text_reports/test_reports.csv"]
    name = _rows(root / "metadata" / "test_metadata.csv")[0]["VolumeName"][: -len(".nii.gz")]
    gt = json.loads((root / "ground_truth" / f"{name}.json").read_text())
    assert 8.0 <= gt["noise_hu"] <= 18.0  # the phantom's own setting lives in its ground truth, not the metadata


def test_splits_are_by_patient_and_sum_to_n():
    specs = plan_volumes(200, seed=3, split={"train": 0.7, "valid": 0.15, "test": 0.15})
    assert len(specs) == 200
    split_of: dict[int, set[str]] = {}
    for s in specs:
        split_of.setdefault(s.patient, set()).add(s.split)
    assert all(len(v) == 1 for v in split_of.values())
    counts = {k: sum(s.split == k for s in specs) for k in ("train", "valid", "test")}
    assert 125 <= counts["train"] <= 155 and counts["valid"] >= 20 and counts["test"] >= 20
    recons = [sum(s.patient == p for s in specs) for p in split_of]
    assert set(recons) <= {1, 2, 3} and max(recons) >= 2
    assert len({s.name for s in specs}) == 200


def test_volumes_store_raw_with_rescale_and_an_lps_affine(dataset):
    meta = {r["VolumeName"]: r for r in _rows(dataset / "metadata" / "train_metadata.csv")}
    for path in sorted((dataset / "train").glob("*/*/*.nii.gz")):
        img = nib.load(path)
        assert img.get_data_dtype() == np.int16
        assert (img.dataobj.slope, img.dataobj.inter) == (1.0, -1024.0)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert not np.allclose(img.affine[:3, 3], 0)
        hu = np.asarray(img.dataobj, dtype=np.float32)
        assert hu.min() == -1024.0 and 300.0 < hu.max() < 3072.0
        row = meta[path.name]
        assert (float(row["RescaleSlope"]), float(row["RescaleIntercept"])) == (1.0, -1024.0)
        assert int(row["NumberofSlices"]) == hu.shape[2] and int(row["Columns"]) == hu.shape[0]
        xy = json.loads(row["XYSpacing"])
        assert np.allclose(img.header.get_zooms(), (*xy, float(row["ZSpacing"])), atol=1e-4)


def test_ground_truth_matches_labels_and_reports(dataset):
    for split in ("train", "valid"):
        reports = {r["VolumeName"]: r for r in _rows(dataset / RELEASE_FILES[split]["reports"])}
        for row in _rows(dataset / RELEASE_FILES[split]["labels"]):
            gt = json.loads((dataset / "ground_truth" / (row["VolumeName"][:-7] + ".json")).read_text())
            present = {f["label"] for f in gt["findings"]}
            assert present == {name for name in LABELS if row[name] == "1"}
            text = reports[row["VolumeName"]]["Findings_EN"]
            for f in gt["findings"]:
                assert f["sentence"] in text
                assert set(f) >= {"label", "side", "lobe", "region", "size_mm", "extent"}
                if f["label"] in LATERALISED:
                    assert f["side"] in ("left", "right", "bilateral") and f["side"] in f["sentence"]
                if f["label"] == "Lung nodule":
                    assert f"{f['size_mm']:.0f} mm" in f["sentence"] and 4 <= f["size_mm"] <= 30


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    a = generate_dataset(tmp_path / "a", n=3, seed=11, size="tiny", split=(1.0, 0.0, 0.0))
    b = generate_dataset(tmp_path / "b", n=3, seed=11, size="tiny", split=(1.0, 0.0, 0.0), workers=2)
    c = generate_dataset(tmp_path / "c", n=3, seed=12, size="tiny", split=(1.0, 0.0, 0.0))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "phantom.json")
    assert len(files) >= 3 + 3 + 3
    for rel in files:
        da, db = (a / rel).read_bytes(), (b / rel).read_bytes()
        if rel.suffix == ".gz":
            da, db = gzip.decompress(da), gzip.decompress(db)
        assert da == db, rel
    vol = sorted(a.glob("train/*/*/*.nii.gz"))[0]
    other = c / vol.relative_to(a)
    assert not np.array_equal(np.asarray(nib.load(vol).dataobj), np.asarray(nib.load(other).dataobj))


def test_reconstructions_share_the_patient():
    case = make_case(5, 0)
    _, r1 = make_volume(5, 0, 0, "tiny", case=case)
    _, r2 = make_volume(5, 0, 1, "tiny", case=case)
    assert r1.noise_hu != r2.noise_hu or r1.grid != r2.grid
    assert make_case(5, 0).labels().tolist() == case.labels().tolist()


def test_bad_settings_are_reported():
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        generate_dataset("/nonexistent-never-written", n=1, size="huge")
    with pytest.raises(ValueError, match="name=fraction"):
        parse_split("train:0.5")
    with pytest.raises(ValueError, match="lowercase letters"):
        PhantomConfig(split={"train_fixed": 1.0}).validate()
    with pytest.raises(ValueError, match="at least 1"):
        PhantomConfig(n=0).validate()
    assert parse_split("train=0.8,validation=0.2") == {"train": 0.8, "valid": 0.2}  # the same split
    with pytest.raises(ValueError, match="given twice"):
        parse_split("valid=0.5,validation=0.5")
    with pytest.raises(ValueError, match="use 'valid' for the validation split"):
        PhantomConfig(split={"validation": 1.0}).validate()


def test_ctrate_loader_reads_the_dataset_unchanged(dataset):
    from ctagrg.data.ctio import load_ct
    from ctagrg.data.ctrate import CTRateIndex

    index = CTRateIndex(dataset)
    assert len(index) == 6 and sorted(index.splits) == ["train", "valid"]
    name = index.names()[0]
    row = index.row(name)
    vol = load_ct(row["path"], index.metadata(name))
    assert np.array_equal(vol.hu, np.asarray(nib.load(row["path"]).dataobj, dtype=np.float32))
    gt = json.loads((dataset / "ground_truth" / f"{name}.json").read_text())
    assert index.labels([name])[0].sum() == len(gt["findings"])


def test_after_preprocessing_to_slp_heart_is_left_anterior_and_spine_posterior(tmp_path):
    from ctagrg.data.preprocess import PreprocessConfig, preprocess_file
    from ctagrg.phantom.findings import Case
    from ctagrg.phantom.generate import _nifti_bytes

    normal = Case(anatomy=make_case(2, 4).anatomy, age=50, sex="M", findings=[])  # no findings: clean anatomy
    rng = np.random.default_rng(0)
    rec = render(normal, sample_grid(rng, normal, SIZES["small"]), rng, texture_seed=0, noise_hu=0.0)
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(_nifti_bytes(rec))
    cfg = PreprocessConfig(spacing=(4.0, 2.5, 2.5), shape=(64, 128, 128))
    x = preprocess_file(path, config=cfg)  # (S, L, P): axis 1 → patient left, axis 2 → posterior
    hu = (x + cfg.offset) * (cfg.hu_max - cfg.hu_min) + cfg.hu_min
    _, n_l, n_p = hu.shape
    ll, pp = np.meshgrid(np.arange(n_l), np.arange(n_p), indexing="ij")
    # the output slice through the heart centre: resampled to 4 mm, then centre-cropped to 64 slices
    n_res = int(rec.grid.shape[2] * rec.grid.spacing[2] / 4.0)
    d = int(round(rec.voxel_of(normal.anatomy.heart()[0])[2] * rec.grid.spacing[2] / 4.0 - (n_res - 64) // 2))
    band = hu[max(d - 2, 0): d + 3]
    body = band > -500
    _, lb, pb = np.nonzero(body)
    centre_l, centre_p = lb.mean(), pb.mean()  # the body's centre (it lies low on the table, not mid-image)
    blood = np.abs(band - 45.0) < 4.0  # heart and great vessels (liver is 55, fat -80)
    blood &= ((np.abs(ll - centre_l) < n_l / 4) & (np.abs(pp - centre_p) < n_p / 4))[None]  # not the body wall
    _, li, pi = np.nonzero(blood)
    assert li.mean() > centre_l + 3  # heart to the patient's left
    assert pi.mean() < centre_p - 3  # and anterior
    bone = (band > 190) & (np.abs(ll - centre_l) < 8)[None]
    _, _, pbone = np.nonzero(bone)
    assert pbone.mean() > centre_p + 10  # spine (the bulk of midline bone) posterior


def test_bones_lie_under_soft_tissue_and_the_body_fits_the_field_of_view():
    """No bone touches the air around the body: the spinous processes lie under the paraspinal muscles (before
    2026-11-29 a slim patient's stood outside the skin, where a nodule detector read it as a blob in air). The
    grid's first and last rows and columns are air: the body, back bulge included, lies inside the image."""
    from scipy import ndimage

    from ctagrg.phantom.findings import Case

    for patient in range(12):
        normal = Case(anatomy=make_case(3, patient).anatomy, age=50, sex="F", findings=[])
        rng = np.random.default_rng(patient)
        rec = render(normal, sample_grid(rng, normal, SIZES["small"]), rng, texture_seed=0, noise_hu=0.0)
        air, _ = ndimage.label(rec.hu < -950.0)
        border = np.unique(np.concatenate([air[0].ravel(), air[-1].ravel(), air[:, 0].ravel(), air[:, -1].ravel()]))
        outside = np.isin(air, border[border > 0])
        near_outside = ndimage.binary_dilation(outside, np.ones((5, 5, 1), bool))  # within 2 voxels (~5 mm)
        bone = rec.hu > 200.0
        assert bone.any() and not (bone & near_outside).any(), f"patient {patient}: bone at the skin"
        for edge in (rec.hu[0], rec.hu[-1], rec.hu[:, 0], rec.hu[:, -1]):
            assert edge.max() < -900.0, f"patient {patient}: the body reaches the edge of the image"
