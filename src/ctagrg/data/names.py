"""Volume names: the key that joins a scan, its cache file, its report, labels and predictions.

A volume's name is its file name without the volume suffix, e.g. ``valid_53_a_1.nii.gz`` (CT-RATE's VolumeName),
``cache/valid_53_a_1.safetensors`` and ``/data/valid/valid_53/valid_53_a/valid_53_a_1.nii.gz`` all name
``valid_53_a_1``.
"""

from __future__ import annotations

import os
from pathlib import Path

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
ITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
# a file that is one scan (a .zip holds one DICOM series); DICOM slices (.dcm) name their folder instead
SCAN_SUFFIXES: tuple[str, ...] = NIFTI_SUFFIXES + ITK_SUFFIXES + (".zip",)
# the volume cache's files (data/cache.py) and the array formats a prediction's ``input`` may name
CACHE_SUFFIXES: tuple[str, ...] = (".safetensors", ".npy", ".npz", ".pt", ".zarr", ".zst")
# longest first, so that ".nii.gz" wins over ".nii"-like prefixes of another suffix
_STRIPPED = tuple(sorted(SCAN_SUFFIXES + CACHE_SUFFIXES, key=len, reverse=True))


def volume_stem(name_or_path: str | os.PathLike[str]) -> str:
    """A volume's name from a VolumeName, a file name or a path: the last path component, without surrounding
    whitespace and without one volume suffix (matched case-insensitively).

    >>> volume_stem("valid_53_a_1.nii.gz"), volume_stem("/cache/valid_53_a_1.safetensors"), volume_stem("scan.MHA")
    ('valid_53_a_1', 'valid_53_a_1', 'scan')

    A name without a known suffix comes back as it is (``"valid_53_a_1"`` -> ``"valid_53_a_1"``).
    """
    name = Path(os.fspath(name_or_path).strip()).name
    lower = name.lower()
    for suffix in _STRIPPED:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name
