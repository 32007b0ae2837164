"""A tree in CT-RATE's release layout, with the release's exact file names and CSV headers, for the tests.

The headers are the release's own (written out here, not taken from ``ctagrg.data.ctrate``, so that a change to the
package's constants cannot make the tests agree with themselves). Source of the metadata header: the first line
of ``dataset/metadata/validation_metadata.csv`` of ibrahimhamamci/CT-RATE, as quoted in public code that reads it
(docs/architecture.md, "CT-RATE layout").
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ctagrg.labels import LABELS

REPORTS_HEADER = "VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN"
METADATA_HEADER = (
    "VolumeName,Manufacturer,SeriesDescription,ManufacturerModelName,PatientSex,PatientAge,ReconstructionDiameter,"
    "DistanceSourceToDetector,DistanceSourceToPatient,GantryDetectorTilt,TableHeight,RotationDirection,ExposureTime,"
    "XRayTubeCurrent,Exposure,FilterType,GeneratorPower,FocalSpots,ConvolutionKernel,PatientPosition,RevolutionTime,"
    "SingleCollimationWidth,TotalCollimationWidth,TableSpeed,TableFeedPerRotation,SpiralPitchFactor,"
    "DataCollectionCenterPatient,ReconstructionTargetCenterPatient,ExposureModulationType,CTDIvol,"
    "ImagePositionPatient,ImageOrientationPatient,SliceLocation,SamplesPerPixel,PhotometricInterpretation,Rows,"
    "Columns,XYSpacing,RescaleIntercept,RescaleSlope,RescaleType,NumberofSlices,ZSpacing,StudyDate"
)
# (folder, file) of each split's CSVs in the release: "valid" in the label file, "validation" in the other two
RELEASE_FILES = {
    "train": {"reports": "radiology_text_reports/train_reports.csv",
              "labels": "multi_abnormality_labels/train_predicted_labels.csv",
              "metadata": "metadata/train_metadata.csv"},
    "valid": {"reports": "radiology_text_reports/validation_reports.csv",
              "labels": "multi_abnormality_labels/valid_predicted_labels.csv",
              "metadata": "metadata/validation_metadata.csv"},
}


@dataclass
class Volume:
    """One release volume: its report, its positive labels, where its file lies and its metadata geometry.

    ``folder``: ``"valid"``, ``"valid_fixed"``, ... or None when only the CSVs name it (a partial download).
    ``shape``: (i, j, k) voxels (Columns, Rows, NumberofSlices); ``xy``/``z``: spacing in mm.
    """

    findings: str
    labels: Sequence[str] = ()
    folder: str | None = None
    shape: tuple[int, int, int] = (16, 16, 8)
    xy: float = 2.0
    z: float = 4.0
    intercept: int = -1024


def volume_path(root: Path, folder: str, name: str) -> Path:
    split, pid, scan, _ = name.split("_")
    return root / folder / f"{split}_{pid}" / f"{split}_{pid}_{scan}" / f"{name}.nii.gz"


def _metadata_row(name: str, v: Volume) -> dict[str, str]:
    """Values shaped like the release's (e.g. Philips iCT 256, XYSpacing "[0.341796875, 0.341796875]")."""
    row = dict.fromkeys(METADATA_HEADER.split(","), "")
    row.update({"VolumeName": f"{name}.nii.gz", "Manufacturer": "Philips", "SeriesDescription": "HRCT",
                "ManufacturerModelName": "iCT 256", "PatientSex": "M", "PatientAge": "036Y",
                "ConvolutionKernel": "YA", "PatientPosition": "HFS", "ImagePositionPatient": "[-166, 9, 56.2998657]",
                "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]", "SamplesPerPixel": "1",
                "PhotometricInterpretation": "MONOCHROME2", "Rows": str(v.shape[1]), "Columns": str(v.shape[0]),
                "XYSpacing": f"[{v.xy}, {v.xy}]", "RescaleIntercept": str(v.intercept), "RescaleSlope": "1",
                "NumberofSlices": str(v.shape[2]), "ZSpacing": str(v.z), "StudyDate": "20210427"})
    return row


def _write(path: Path, header: str, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header.split(","), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_release_tree(root: Path, volumes: Mapping[str, Volume],
                       write_volume: Callable[[Path, str, Volume], None] | None = None) -> Path:
    """Write ``volumes`` (name → :class:`Volume`) as the release lays them out, with its six CSV names.

    ``write_volume(path, name, volume)`` writes each file that has a ``folder``; by default an empty file."""
    for split, files in RELEASE_FILES.items():
        mine = {n: v for n, v in volumes.items() if n.startswith(split + "_")}
        if not mine:
            continue
        _write(root / files["reports"], REPORTS_HEADER,
               [{"VolumeName": f"{n}.nii.gz", "ClinicalInformation_EN": "Cough.",
                 "Technique_EN": "Non-contrast chest CT.", "Findings_EN": v.findings, "Impressions_EN": ""}
                for n, v in mine.items()])
        _write(root / files["labels"], ",".join(["VolumeName", *LABELS]),
               [{"VolumeName": f"{n}.nii.gz", **{lab: str(int(lab in v.labels)) for lab in LABELS}}
                for n, v in mine.items()])
        _write(root / files["metadata"], METADATA_HEADER, [_metadata_row(n, v) for n, v in mine.items()])
    for name, v in volumes.items():
        if v.folder is not None:
            path = volume_path(root, v.folder, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if write_volume is None:
                path.write_bytes(b"")
            else:
                write_volume(path, name, v)
    return root


def drop_rows(path: Path, names: Sequence[str]) -> None:
    """Remove the rows of ``names`` (stems) from a CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    _write(path, ",".join(header), [r for r in rows if r["VolumeName"].removesuffix(".nii.gz") not in names])
