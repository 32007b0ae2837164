"""``ctagrg.data.read_cost``: the memory that reading a scan needs, from its headers, and the budget that refuses
it before any buffer of the promised size exists (peak RSS measured in a subprocess)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ctagrg.data.ctio import CTReadError, load_ct
from ctagrg.data.read_cost import FLOAT32_WORKING_COPIES, ScanTooLarge, check_read_cost, estimate_read_cost

RSS_LIMIT_MB = 500


def _nifti_header_only(path: Path, shape: tuple[int, ...], dtype: type) -> Path:
    """A plain .nii of 4.4 kB whose header claims ``shape`` voxels of ``dtype``."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_data_offset(352)
    header.set_zooms((0.7,) * len(shape))
    path.write_bytes(header.binaryblock + bytes(4) + bytes(4000))
    return path


def _zip_of_zeros(path: Path, size: int) -> Path:
    """One member of ``size`` zero bytes, streamed into the archive (about 1 kB packed per MiB)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("zeros.dcm", "w",
                                                                                  force_zip64=True) as fh:
        for _ in range(size // len(chunk)):
            fh.write(chunk)
        fh.write(bytes(size % len(chunk)))
    return path


CHILD = r"""
import json, sys
from pathlib import Path
kind, path = sys.argv[1], sys.argv[2]
error = None
if kind == "cli":
    from ctagrg.cli.main import main
    code = main(["inspect", path])
else:
    from ctagrg.data.ctio import load_ct
    from ctagrg.serve.limits import check_upload
    code = 0
    try:
        load_ct(check_upload(Path(path), Path(path).name, max_voxels=600_000_000, max_bytes=12 << 30))
    except ValueError as exc:
        code, error = 1, str(exc)
# VmHWM: this process's peak RSS since exec (ru_maxrss would carry the forking pytest's over exec)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "error": error, "maxrss_mb": int(hwm.split()[1]) / 1024}))
"""


def _peak(kind: str, path: Path) -> tuple[dict, str]:
    """(the child's code, error and peak RSS, its stderr) of reading ``path`` the CLI's or the service's way."""
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True,
                          timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cli", "serve"])
def test_lying_headers_and_zip_bombs_stay_under_500_mb(tmp_path: Path, kind: str) -> None:
    float64 = _nifti_header_only(tmp_path / "f64.nii", (512, 512, 2285), np.float64)  # 4.8 GB promised
    int16 = _nifti_header_only(tmp_path / "i16.nii", (32767, 32767, 1), np.int16)  # 2.1 GB promised
    zeros = _zip_of_zeros(tmp_path / "zeros.zip", int(1.09 * (1 << 30)))  # 1.09 GiB unpacked
    assert zeros.stat().st_size < 2 << 20
    expected = {float64: "truncated: the header promises 598,999,040 voxels of float64",
                int16: "truncated: the header promises 1,073,676,289 voxels of int16",
                zeros: "no DICOM image files found"}
    for path, message in expected.items():
        result, stderr = _peak(kind, path)
        assert result["code"] != 0
        assert message in (stderr if kind == "cli" else result["error"]), (stderr, result)
        assert result["maxrss_mb"] < RSS_LIMIT_MB, (path.name, result)


def test_the_estimate_counts_stored_bytes_copies_and_float32_work(tmp_path: Path) -> None:
    import nibabel as nib

    data = np.full((20, 16, 12), -1000, np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii")
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii.gz")
    plain, packed = estimate_read_cost(tmp_path / "a.nii"), estimate_read_cost(tmp_path / "a.nii.gz")
    assert (plain.voxels, plain.itemsize, plain.copies, plain.held_bytes) == (3840, 2, 1, 0)
    assert plain.bytes == 3840 * 2 + 3840 * 4 * FLOAT32_WORKING_COPIES
    assert packed.held_bytes == (tmp_path / "a.nii.gz").stat().st_size  # the compressed file is held while decoding
    assert packed.bytes == plain.bytes + packed.held_bytes
    assert check_read_cost(tmp_path / "a.nii", plain.bytes) == plain
    with pytest.raises(ScanTooLarge, match=r"a\.nii: reading it needs about 0 MiB \(3,840 voxels of 2 bytes\), over "
                                           r"the memory budget of 0 MiB \(--max-memory-mb\)"):
        load_ct(tmp_path / "a.nii", max_bytes=plain.bytes - 1)
    assert load_ct(tmp_path / "a.nii", max_bytes=plain.bytes).shape == (20, 16, 12)


def test_a_header_of_ten_billion_voxels_is_over_any_budget(tmp_path: Path) -> None:
    path = _nifti_header_only(tmp_path / "huge.nii", (2048, 2048, 2560), np.int16)  # 1.07e10 voxels
    with pytest.raises(CTReadError, match=r"huge\.nii: truncated: the header promises 10,737,418,240 voxels"):
        load_ct(path)
    packed = tmp_path / "huge.nii.gz"  # its length is only known by decompressing: the budget refuses it first
    packed.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(ScanTooLarge, match=r"huge\.nii\.gz: reading it needs about 102,400 MiB .* over the memory "
                                           r"budget of 65,536 MiB"):
        check_read_cost(packed, 64 << 30)
    with pytest.raises(ScanTooLarge, match=r"huge\.nii\.gz: reading it needs about 102,400 MiB"):
        load_ct(packed)  # the default budget: half of this machine's memory


def test_itk_payloads_must_hold_their_voxels(tmp_path: Path) -> None:
    import SimpleITK as sitk

    noise = np.random.default_rng(0).integers(-1000, 1000, (6, 8, 10), dtype=np.int16)  # compresses to > 40 bytes
    image = sitk.GetImageFromArray(noise)
    for name, compress in (("a.mha", False), ("b.mha", True), ("c.nrrd", False), ("d.nrrd", True)):
        sitk.WriteImage(image, str(tmp_path / name), useCompression=compress)
        cost = check_read_cost(tmp_path / name)
        assert (cost.voxels, cost.itemsize, cost.copies, cost.shape) == (480, 2, 2, (10, 8, 6))
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes((tmp_path / name).read_bytes()[:-40])
        with pytest.raises(CTReadError, match=rf"cut-{name}: (truncated|cannot decompress)"):
            load_ct(cut)


def test_gzip_of_many_members_decodes_in_linear_time(tmp_path: Path) -> None:
    import time

    import nibabel as nib

    from ctagrg.data.read_cost import gunzip_bounded

    nii = nib.Nifti1Image(np.full((32, 32, 16), -1000, np.int16), np.eye(4)).to_bytes()
    members = b"".join(gzip.compress(nii[k:k + 64]) for k in range(0, len(nii), 64)) + gzip.compress(b"") * 20_000
    start = time.perf_counter()
    assert gunzip_bounded(members, len(nii), "many.nii.gz") == nii  # 20,512 members
    assert time.perf_counter() - start < 20  # quadratic copying took minutes at this size
    (tmp_path / "many.nii.gz").write_bytes(members)
    assert load_ct(tmp_path / "many.nii.gz").shape == (32, 32, 16)
