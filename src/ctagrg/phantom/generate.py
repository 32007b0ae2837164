"""Write a synthetic dataset in CT-RATE's layout, with the release's file names and columns (docs/architecture.md,
"CT-RATE layout"; names from ``ctagrg.data.ctrate.split_csv``):

    ROOT/<split>/<split>_<pid>/<split>_<pid>_a/<split>_<pid>_a_<recon>.nii.gz
    ROOT/radiology_text_reports/train_reports.csv, validation_reports.csv, test_reports.csv
    ROOT/multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv, test_predicted_labels.csv
    ROOT/metadata/train_metadata.csv, validation_metadata.csv, test_metadata.csv
    ROOT/ground_truth/<name>.json
    ROOT/phantom.json                      (the resolved PhantomConfig)

CT-RATE has no test split; the phantoms' ``test`` follows the release's pattern. Volumes are int16 raw values
(HU + 1024) with NIfTI scl_slope 1 / scl_inter −1024, and the metadata CSV (the release's 44 columns) lists the
same RescaleSlope/RescaleIntercept, like CT-RATE's original release. Patients have 1-3 reconstructions;
splits are by patient. Every volume is a pure function of (seed, patient, reconstruction), so the output does
not depend on ``workers`` and any file can be regenerated alone.

>>> root = generate_dataset("/tmp/phantoms", n=10, seed=0, size="tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.config import save_config, to_dict
from ctagrg.data.ctrate import METADATA_COLUMNS, REPORT_SECTIONS, canonical_split, split_csv
from ctagrg.labels import LABELS
from ctagrg.phantom.findings import Case
from ctagrg.phantom.reports import write_report
from ctagrg.phantom.volume import RESCALE_INTERCEPT, RESCALE_SLOPE, SIZES, Reconstruction, make_case, make_volume
from ctagrg.utils.atomic import atomic_open, write_json_atomic
from ctagrg.utils.progress import progress

REPORT_COLUMNS = ("VolumeName", *REPORT_SECTIONS)
RECON_COUNTS, RECON_P = (1, 2, 3), (0.5, 0.35, 0.15)
SCANNERS = (("PHANTOM", "Synthetic CT A"), ("PHANTOM", "Synthetic CT B"))
KERNELS = ("STANDARD", "LUNG", "SOFT")
CLINICAL = ("Cough.", "Shortness of breath.", "Chest pain.", "Routine control.", "Fever.", "Preoperative evaluation.")


@dataclass
class PhantomConfig:
    """Settings of ``generate_dataset`` (saved as ROOT/phantom.json).

    Args:
        n: number of volumes (reconstructions), over all splits.
        seed: dataset seed; volume (patient p, reconstruction r) is drawn from RNG(seed, p, r).
        size: grid preset, one of ``SIZES`` (tiny | small | paper).
        split: split name → fraction of volumes (by patient).
        workers: processes (output does not depend on it).
        min_prevalence: raise every label's probability to at least this (0 = CT-RATE-like prevalence).
    """

    n: int = 100
    seed: int = 0
    size: str = "small"
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "valid": 0.15, "test": 0.15})
    workers: int = 1
    min_prevalence: float = 0.0

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; valid sizes: {', '.join(SIZES)}")
        bad = [k for k in self.split if not re.fullmatch(r"[a-z]+", k)]
        if bad or not self.split:
            raise ValueError(f"split names must be lowercase letters (no '_'), got {list(self.split)}")
        if any(canonical_split(k) != k for k in self.split):  # volumes are named valid_*, as in CT-RATE
            raise ValueError(f"split names: use 'valid' for the validation split, got {list(self.split)}")
        if any(v < 0 for v in self.split.values()) or sum(self.split.values()) <= 0:
            raise ValueError(f"split fractions must be >= 0 and not all 0, got {self.split}")
        if abs(sum(self.split.values()) - 1.0) > 1e-6:  # a share left out would otherwise be spread silently
            raise ValueError(f"split fractions must sum to 1, got {self.split} (sum {sum(self.split.values()):g})")
        if not 0.0 <= self.min_prevalence <= 1.0:
            raise ValueError(f"min_prevalence must be in [0, 1], got {self.min_prevalence}")


@dataclass(frozen=True)
class VolumeSpec:
    """Where one volume goes: split, patient id within the split (1-based), global patient index, recon (0-based)."""

    split: str
    pid: int
    patient: int
    recon: int

    @property
    def name(self) -> str:
        return f"{self.split}_{self.pid}_a_{self.recon + 1}"

    def relpath(self) -> Path:
        return Path(self.split, f"{self.split}_{self.pid}", f"{self.split}_{self.pid}_a", f"{self.name}.nii.gz")


def parse_split(spec: str | Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    """'train=0.7,valid=0.15,test=0.15', (0.7, 0.15, 0.15) or a mapping → {name: fraction}; ``validation`` is
    read as ``valid``."""
    if isinstance(spec, Mapping):
        return _canonical_keys({str(k): float(v) for k, v in spec.items()}, spec)
    if isinstance(spec, str):
        out = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            if canonical_split(name.strip()) in out:
                raise ValueError(f"--split {spec!r}: split {canonical_split(name.strip())!r} given twice")
            try:
                out[canonical_split(name.strip())] = float(value)
            except ValueError:
                raise ValueError(f"--split {spec!r}: expected name=fraction pairs, got {part!r}") from None
            if not sep:
                raise ValueError(f"--split {spec!r}: expected name=fraction pairs, got {part!r}")
        return out
    if len(spec) != 3:
        raise ValueError(f"split tuple must be (train, valid, test) fractions, got {tuple(spec)}")
    return dict(zip(("train", "valid", "test"), (float(v) for v in spec), strict=True))


def _canonical_keys(split: dict[str, float], spec: object) -> dict[str, float]:
    out = {canonical_split(k): v for k, v in split.items()}
    if len(out) != len(split):
        raise ValueError(f"split {spec!r}: 'valid' and 'validation' name the same split; give it once")
    return out


def plan_volumes(n: int, seed: int, split: Mapping[str, float]) -> list[VolumeSpec]:
    """Assign ``n`` volumes to patients (1-3 reconstructions each) and patients to splits."""
    rng = np.random.default_rng([seed, 2**22])
    counts: list[int] = []
    while sum(counts) < n:
        counts.append(int(rng.choice(RECON_COUNTS, p=RECON_P)))
    counts[-1] -= sum(counts) - n
    order = rng.permutation(len(counts))
    total = sum(split.values())
    bounds = np.cumsum([v / total for v in split.values()])
    names, next_pid, specs, done = list(split), dict.fromkeys(split, 1), [], 0
    for patient in order:
        k = min(int(np.searchsorted(bounds, (done + counts[patient] / 2) / n)), len(names) - 1)
        name = names[k]
        specs += [VolumeSpec(name, next_pid[name], int(patient), r) for r in range(counts[patient])]
        next_pid[name] += 1
        done += counts[patient]
    return specs


def _nifti_bytes(rec: Reconstruction) -> bytes:
    """gzip-compressed NIfTI-1 of the raw int16 volume with slope/intercept and a scanner-based affine."""
    import nibabel as nib
    from isal import igzip  # several times faster than zlib at the same ratio

    img = nib.Nifti1Image(rec.raw(), rec.affine)
    img.header.set_slope_inter(RESCALE_SLOPE, RESCALE_INTERCEPT)
    img.header.set_xyzt_units("mm")
    img.set_qform(rec.affine, code=1)
    img.set_sform(rec.affine, code=1)
    return igzip.compress(img.to_bytes(), compresslevel=1)


def _metadata_row(spec: VolumeSpec, case: Case, rec: Reconstruction, rng: np.random.Generator) -> dict[str, Any]:
    """A row with the release's 44 metadata columns; those a phantom has no value for stay empty, as many do in
    CT-RATE."""
    g = rec.grid
    maker, model = SCANNERS[spec.patient % len(SCANNERS)]
    kernel = str(rng.choice(KERNELS))
    position = [round(float(v), 3) for v in np.asarray(g.origin) + rec.table_lps]
    known = {"VolumeName": spec.name + ".nii.gz", "Manufacturer": maker, "SeriesDescription": f"CHEST {kernel}",
             "ManufacturerModelName": model, "PatientSex": case.sex, "PatientAge": f"{case.age:03d}Y",
             "ReconstructionDiameter": f"{g.shape[0] * g.spacing[0]:.6g}", "GantryDetectorTilt": 0,
             "ConvolutionKernel": kernel, "PatientPosition": "HFS", "ImagePositionPatient": str(position),
             "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]", "SliceLocation": position[2], "SamplesPerPixel": 1,
             "PhotometricInterpretation": "MONOCHROME2", "Rows": g.shape[1], "Columns": g.shape[0],
             "XYSpacing": f"[{g.spacing[0]:.6g}, {g.spacing[1]:.6g}]", "RescaleIntercept": RESCALE_INTERCEPT,
             "RescaleSlope": RESCALE_SLOPE, "RescaleType": "HU", "NumberofSlices": g.shape[2],
             "ZSpacing": f"{g.spacing[2]:.6g}"}
    return {c: known.get(c, "") for c in METADATA_COLUMNS}


def _ground_truth(spec: VolumeSpec, case: Case, rec: Reconstruction, sentences: dict[str, str]) -> dict[str, Any]:
    findings = []
    for f in case.findings:
        item = f.attributes()
        item["sentence"] = sentences[f.label]
        if f.center is not None:
            item["center_ras_mm"] = [round(float(v), 2) for v in rec.ras_of(f.center)]
            item["center_voxel"] = [round(float(v), 2) for v in rec.voxel_of(f.center)]
        findings.append(item)
    return {"name": spec.name, "patient": {"age": case.age, "sex": case.sex}, "shape": list(rec.grid.shape),
            "spacing": [round(float(s), 6) for s in rec.grid.spacing], "axcodes": "LPS",
            "noise_hu": round(rec.noise_hu, 2), "findings": findings}


def write_patient(root: Path, specs: list[VolumeSpec], cfg: PhantomConfig) -> list[dict[str, Any]]:
    """Render and write all reconstructions of one patient; returns one row dict per volume for the CSVs."""
    case = make_case(cfg.seed, specs[0].patient, cfg.min_prevalence)
    text_rng = np.random.default_rng([cfg.seed, specs[0].patient, 2**21])
    findings_text, impression, sentences = write_report(case, text_rng)
    clinical = str(text_rng.choice(CLINICAL))
    rows = []
    for spec in specs:
        _, rec = make_volume(cfg.seed, spec.patient, spec.recon, cfg.size, case=case)
        meta_rng = np.random.default_rng([cfg.seed, spec.patient, spec.recon + 1, 7])
        with atomic_open(root / spec.relpath(), "wb") as fh:
            fh.write(_nifti_bytes(rec))
        write_json_atomic(root / "ground_truth" / f"{spec.name}.json", _ground_truth(spec, case, rec, sentences))
        technique = f"Non-contrast chest CT, axial images reconstructed at {rec.grid.spacing[2]:.3g} mm."
        rows.append({"split": spec.split, "labels": case.labels().tolist(),
                     "report": dict(zip(REPORT_COLUMNS, (spec.name + ".nii.gz", clinical, technique,
                                                         findings_text, impression), strict=True)),
                     "metadata": _metadata_row(spec, case, rec, meta_rng)})
    return rows


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())


def _write_tables(root: Path, rows: list[dict[str, Any]], splits: Sequence[str]) -> None:
    rows = sorted(rows, key=lambda r: _natural_key(r["report"]["VolumeName"]))
    for split in splits:
        mine = [r for r in rows if r["split"] == split]
        if not mine:
            continue
        _write_csv(split_csv(root, "reports", split), REPORT_COLUMNS, [r["report"] for r in mine])
        labels = [{"VolumeName": r["report"]["VolumeName"], **dict(zip(LABELS, r["labels"], strict=True))}
                  for r in mine]
        _write_csv(split_csv(root, "labels", split), ("VolumeName", *LABELS), labels)
        _write_csv(split_csv(root, "metadata", split), METADATA_COLUMNS, [r["metadata"] for r in mine])


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _job(args: tuple[Path, list[VolumeSpec], PhantomConfig]) -> list[dict[str, Any]]:
    return write_patient(*args)


def _check_out_dir(root: Path, cfg: PhantomConfig) -> None:
    """Refuse a file, or a non-empty folder that is not a dataset of the same settings (``phantom.json``; the
    number of workers does not count)."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: is a file; --out is the dataset folder to write")
    if not root.is_dir() or not any(root.iterdir()):
        return
    saved_path = root / "phantom.json"
    if not saved_path.is_file():
        raise ValueError(f"{root}: is not empty and holds no phantom dataset (phantom.json); use an empty or new "
                         f"folder")
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{saved_path}: unreadable ({exc}); use an empty or new folder") from None
    wanted = {k: v for k, v in to_dict(cfg).items() if k != "workers"}
    differs = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if differs:
        what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differs.items())
        raise ValueError(f"{root}: holds a phantom dataset made with other settings ({what}); its volumes would stay "
                         f"beside the new ones: use another --out, or delete it first")


def generate_dataset(out_dir: str | Path, n: int, seed: int = 0, size: str = "small",
                     split: str | Sequence[float] | Mapping[str, float] = (0.7, 0.15, 0.15), workers: int = 1,
                     min_prevalence: float = 0.0) -> Path:
    """Generate ``n`` phantom volumes in CT-RATE layout under ``out_dir``; returns the root path.

    Args:
        out_dir: dataset root: created, or an empty folder, or a dataset this function wrote with the same
            settings (an interrupted run; its files are rewritten). Anything else is refused (ValueError), so that
            no volume of another dataset is left beside the new one's.
        n: number of volumes over all splits. seed: dataset seed. size: tiny | small | paper.
        split: fractions per split: a (train, valid, test) tuple, a mapping or 'train=0.7,valid=0.15,test=0.15'.
        workers: processes to use; the output is identical for any value.
        min_prevalence: floor on every label's probability (0 keeps CT-RATE-like prevalence).
    """
    cfg = PhantomConfig(n=n, seed=seed, size=size, split=parse_split(split), workers=workers,
                        min_prevalence=min_prevalence)
    cfg.validate()
    root = Path(out_dir)
    _check_out_dir(root, cfg)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "phantom.json")
    by_patient: dict[int, list[VolumeSpec]] = {}
    for spec in plan_volumes(cfg.n, cfg.seed, cfg.split):
        by_patient.setdefault(spec.patient, []).append(spec)
    jobs = [(root, specs, cfg) for specs in by_patient.values()]
    rows: list[dict[str, Any]] = []
    if workers > 1:
        # fork starts workers instantly (no re-import); output is per-patient deterministic either way.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(min(workers, len(jobs))) as pool:
            for out in progress(pool.imap_unordered(_job, jobs), desc="phantoms", total=len(jobs)):
                rows += out
    else:
        for job in progress(jobs, desc="phantoms", total=len(jobs)):
            rows += _job(job)
    _write_tables(root, rows, list(cfg.split))
    return root


__all__ = ["PhantomConfig", "VolumeSpec", "generate_dataset", "parse_split", "plan_volumes", "write_patient"]
