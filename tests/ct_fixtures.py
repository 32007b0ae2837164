"""Helpers for the data tests: tiny synthetic CTs written as NIfTI, NRRD/MHA and DICOM series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def phantom_hu(shape: Sequence[int] = (16, 20, 24), seed: int = 0) -> np.ndarray:
    """int16 HU: air (-1000) outside an elliptic body (40 HU) holding two lungs (-850), plus mild noise."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r_body = sum((g / 0.85) ** 2 for g in grid)
    hu = np.where(r_body < 1, 40.0, -1000.0)
    for cx in (-0.4, 0.4):
        lung = (grid[0] / 0.6) ** 2 + ((grid[1] - cx) / 0.3) ** 2 + (grid[2] / 0.5) ** 2 < 1
        hu[lung] = -850.0
    hu += np.random.default_rng(seed).normal(0, 5, shape)
    return np.round(hu).astype(np.int16)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, slope: float | None = None,
                inter: float | None = None) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def write_itk(path: Path, hu_kji: np.ndarray, spacing_ijk: Sequence[float], direction: Sequence[float],
              origin: Sequence[float]) -> Path:
    """Write an array given in SimpleITK's (k, j, i) order with LPS geometry."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(hu_kji)
    img.SetSpacing([float(s) for s in spacing_ijk])
    img.SetDirection([float(d) for d in direction])
    img.SetOrigin([float(o) for o in origin])
    sitk.WriteImage(img, str(path))
    return path


def write_dicom_series(folder: Path, hu: np.ndarray, spacing: Sequence[float] = (2.5, 0.8, 0.7),
                       origin: Sequence[float] = (-100.0, -90.0, -50.0), intercept: float = -1024.0,
                       series_uid: str | None = None, shuffle: bool = True, per_slice_intercepts: bool = False
                       ) -> list[Path]:
    """Write ``hu`` (slices, rows, cols) as an axial DICOM series (LPS, IOP = [1,0,0, 0,1,0]).

    ``spacing`` is (slice step, row spacing, column spacing) in mm; stored values are ``hu - intercept`` as
    uint16. Files are numbered in a shuffled order unless ``shuffle`` is False.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = np.random.default_rng(1).permutation(len(hu)) if shuffle else np.arange(len(hu))
    paths = []
    for file_no, k in enumerate(order):
        b = intercept - (k % 3) if per_slice_intercepts else intercept
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series_uid, "1.2.3"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + int(k) * spacing[0]]
        ds.RescaleSlope, ds.RescaleIntercept = 1, b
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = (hu[k].astype(np.int32) - int(b)).astype(np.uint16).tobytes()
        path = folder / f"IM{file_no:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dicom_affine(n_rows_cols: Sequence[int], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The RAS affine that ``write_dicom_series`` geometry implies for the (slice, row, col) array."""
    lps = np.eye(4)
    lps[:3, 0] = [0, 0, spacing[0]]
    lps[:3, 1] = [0, spacing[1], 0]
    lps[:3, 2] = [spacing[2], 0, 0]
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps
