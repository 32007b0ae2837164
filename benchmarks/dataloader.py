"""Throughput of training-data loading: the uint8 cache in DataLoader workers vs CT-CLIP-style on-the-fly
preprocessing of a .nii.gz, at the paper's shape (240, 480, 480).

    .venv/bin/python benchmarks/dataloader.py --volumes 8 --workers 0 1 2 --raw 2 --dtypes float32 uint8

Synthetic inputs are written to a temporary folder (nothing from real data is read): cached volumes through
``ctagrg.data.cache.save_cached`` and, for the on-the-fly path, 512 x 512 x 240 int16 NIfTI files with a body-like
HU pattern. The on-the-fly path follows CT-CLIP's loader: nibabel ``get_fdata`` (float64), slope/intercept, clip
to [-1000, 1000] / 1000, whole-volume trilinear ``F.interpolate`` to (1.5, 0.75, 0.75) mm, centre crop/pad.
``--dtypes``: the dataset's output, float32 (dequantised in the worker) or uint8 (the stored levels, dequantised
on the training device); for each, the CPU seconds of one item (what a worker pays) and of the default collate are
also measured apart, per volume. Prints one JSON line per measurement (volumes per second, seconds per volume).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_cache(folder: Path, n: int, shape: tuple[int, int, int]) -> list[str]:
    from ctagrg.data.cache import cache_path, save_cached

    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        vol = np.clip(rng.normal(0.1, 0.3, shape), -0.449, 0.551).astype(np.float32)
        names.append(f"train_{i}_a_1")
        save_cached(cache_path(folder, names[-1]), vol, -0.449, 0.551)
    return names


def make_nifti(path: Path) -> None:
    import nibabel as nib

    z, y, x = np.mgrid[0:240, 0:512, 0:512].astype(np.float32)
    body = ((y - 256) ** 2 / 200**2 + (x - 256) ** 2 / 150**2) < 1
    lungs = body & (((y - 256) ** 2 / 120**2 + (np.abs(x - 256) - 70) ** 2 / 50**2) < 1)
    hu = np.where(lungs, -850, np.where(body, 40, -1000)).astype(np.int16) + 1024
    hu = (hu + np.random.default_rng(0).integers(-20, 20, hu.shape)).astype(np.int16)
    img = nib.Nifti1Image(hu.transpose(2, 1, 0), np.diag([0.7, 0.7, 1.0, 1.0]))  # (x, y, z) voxel order
    img.header.set_slope_inter(1, -1024)
    nib.save(img, str(path))


def ctclip_style(path: Path) -> torch.Tensor:
    """CT-CLIP's per-item preprocessing (data_inference_nii.py style), returning (1, 240, 480, 480)."""
    import nibabel as nib
    import torch.nn.functional as F

    img = nib.load(str(path))
    data = img.get_fdata()  # float64; the header's slope/intercept are applied here...
    data = data * 1.0 + 0.0  # ...and CT-CLIP applies the CSV slope/intercept again (identity here, see REFERENCE)
    zooms = img.header.get_zooms()
    data = np.clip(data.transpose(2, 1, 0), -1000, 1000) / 1000.0  # (z, y, x)
    t = torch.tensor(data).unsqueeze(0).unsqueeze(0)
    size = [int(n * s / tgt) for n, s, tgt in zip(t.shape[2:], (zooms[2], zooms[1], zooms[0]), (1.5, 0.75, 0.75),
                                                     strict=True)]
    t = F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0]
    out = torch.full((1, 240, 480, 480), -1.0)
    src = [slice(max(0, (n - m) // 2), max(0, (n - m) // 2) + min(n, m)) for n, m in zip(t.shape[1:], out.shape[1:],
                                                                                        strict=True)]
    dst = [slice(max(0, (m - n) // 2), max(0, (m - n) // 2) + min(n, m)) for n, m in zip(t.shape[1:], out.shape[1:],
                                                                                        strict=True)]
    out[(slice(None), *dst)] = t[(slice(None), *src)].float()
    return out


def bench_cache(folder: Path, workers: int, n: int, dtype: str = "float32") -> dict:
    from torch.utils.data import DataLoader

    from ctagrg.data.dataset import CachedVolumeDataset

    ds = CachedVolumeDataset(folder, dtype=dtype)  # type: ignore[arg-type]
    loader = DataLoader(ds, batch_size=1, num_workers=workers, shuffle=False)
    start, cpu0 = time.perf_counter(), time.process_time()
    count = sum(batch["volume"].shape[0] for batch in loader)
    sec = time.perf_counter() - start  # includes worker start-up, as a real epoch does
    cpu = time.process_time() - cpu0  # main process only: meaningful for workers=0
    return {"path": "cache (uint8 safetensors)", "dtype": dtype, "workers": workers, "volumes": count,
            "volumes_per_s": round(count / sec, 2), "s_per_volume": round(sec / count, 3),
            "main_cpu_s_per_volume": round(cpu / count, 3)}


def bench_split(folder: Path, dtype: str) -> dict:
    """CPU seconds per volume, measured apart: ``ds[i]`` (the worker's read, plus dequantise for float32), the
    default collate of that one item (a copy into the batch tensor), and for uint8 a CPU ``dequantize`` of the
    collated batch (what the training device does instead; on a GPU it is not CPU time). Min and median."""
    from torch.utils.data import default_collate

    from ctagrg.data.cache import dequantize
    from ctagrg.data.dataset import CachedVolumeDataset

    ds = CachedVolumeDataset(folder, dtype=dtype)  # type: ignore[arg-type]
    item_s, collate_s, deq_s = [], [], []
    for i in range(len(ds)):
        cpu0 = time.process_time()
        item = ds[i]
        cpu1 = time.process_time()
        batch = default_collate([item])
        cpu2 = time.process_time()
        item_s.append(cpu1 - cpu0)
        collate_s.append(cpu2 - cpu1)
        if dtype == "uint8":
            dequantize(batch["volume"], batch["lo"], batch["hi"])
            deq_s.append(time.process_time() - cpu2)
        del item, batch
    out = {"path": "cache, split", "dtype": dtype, "volumes": len(ds),
           "item_cpu_s": [round(min(item_s), 3), round(float(np.median(item_s)), 3)],
           "collate_cpu_s": [round(min(collate_s), 3), round(float(np.median(collate_s)), 3)]}
    if deq_s:
        out["dequantize_on_cpu_s"] = [round(min(deq_s), 3), round(float(np.median(deq_s)), 3)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--raw", type=int, default=2, help="NIfTI files for the on-the-fly path (0: skip)")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 480, 480])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "uint8"],
                        help="CachedVolumeDataset output dtype(s) to measure")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_cache(tmp / "cache", args.volumes, tuple(args.shape))
        for dtype in args.dtypes:
            print(json.dumps(bench_split(tmp / "cache", dtype)), flush=True)
            for w in args.workers:
                print(json.dumps(bench_cache(tmp / "cache", w, args.volumes, dtype)), flush=True)
        if args.raw:
            make_nifti(tmp / "scan.nii.gz")
            times, cpus = [], []
            for _ in range(args.raw):
                start, cpu0 = time.perf_counter(), time.process_time()
                vol = ctclip_style(tmp / "scan.nii.gz")
                times.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu0)
            assert vol.shape == (1, 240, 480, 480)
            sec = float(np.min(times))
            print(json.dumps({"path": "on the fly, CT-CLIP style (nibabel float64 + trilinear)", "workers": 0,
                              "volumes": args.raw, "volumes_per_s": round(1 / sec, 2), "s_per_volume": round(sec, 3),
                              "main_cpu_s_per_volume": round(float(np.min(cpus)), 3)}))


if __name__ == "__main__":
    main()
