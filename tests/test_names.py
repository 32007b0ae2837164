"""ctagrg.data.names: one volume name from a VolumeName, a scan path or a cache file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctagrg.data import cache, dataset, inputs
from ctagrg.data.names import CACHE_SUFFIXES, SCAN_SUFFIXES, volume_stem


@pytest.mark.parametrize(("given", "expected"), [
    ("valid_53_a_1.nii.gz", "valid_53_a_1"),
    ("valid_53_a_1.nii", "valid_53_a_1"),
    ("valid_53_a_1", "valid_53_a_1"),
    ("  valid_53_a_1.nii.gz \n", "valid_53_a_1"),
    ("/d/test/test_3/test_3_a/test_3_a_1.nii.gz", "test_3_a_1"),
    ("cache/test_3_a_1.npy", "test_3_a_1"),
    ("cache/test_3_a_1.safetensors", "test_3_a_1"),
    (Path("scans/scan.MHA"), "scan"),
    ("scans/scan.nrrd", "scan"),
    ("series.zip", "series"),
    ("slices/0001.dcm", "0001.dcm"),  # a DICOM slice is not a volume: its folder names the series
    ("scan.nii.gz.nii.gz", "scan.nii.gz"),  # one suffix only
    ("scan.gz", "scan.gz"),
    ("", ""),
])
def test_volume_stem(given: str | Path, expected: str) -> None:
    assert volume_stem(given) == expected


def test_the_suffix_lists_cover_what_the_readers_and_the_cache_use() -> None:
    assert cache.SUFFIX in CACHE_SUFFIXES
    assert set(inputs.VOLUME_SUFFIXES) == set(SCAN_SUFFIXES) >= {".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"}


def test_the_old_names_are_the_one_function() -> None:
    """``data.dataset.volume_stem`` (imported by training) and ``inputs.input_stem`` give the same names."""
    assert dataset.volume_stem is volume_stem
    assert inputs.input_stem(Path("/x/y/Scan.Nii.Gz")) == "Scan"
