"""Benchmark ``preprocess_file`` against a plain re-implementation of CT-CLIP's per-volume loader.

    .venv/bin/python benchmarks/preprocess.py [--source A0001.nii.gz] [--work-dir DIR] [--repeats 3]

Builds a realistic volume once (the A0001 chest CT resampled to 1 mm and padded with air to 512×512×320, int16
``.nii.gz``, LPS) in ``--work-dir`` (default: a folder under the system temp dir, never the repository), then
runs each loader in its own subprocess with one torch thread and reports the best wall time of ``--repeats``
runs, the peak RSS (``ru_maxrss``) and the RSS right after imports, the max abs difference of the outputs, and
the cache file size and load time. Targets (issue 2): ≥ 5× faster, ≤ 1/3 of the peak memory, max abs diff ≤ 1e-2,
cache ≤ 60 MB and ≤ 0.3 s load.

Baseline = CT-CLIP's logic: ``nib.load(path).get_fdata()`` (float64), slope/intercept, a fixed
``transpose(2, 0, 1)`` (which is SLP for this LPS volume), ``torch.tensor`` float32, ``F.interpolate`` trilinear
of the whole volume to ``int(size × spacing / target)``, then the seed's window and centre crop/pad. (CT-CLIP
clips before interpolating; the seed and ctagrg clip after, so the baseline does too, to compare like with like.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "ct" / "lung-pet-ct-dx-A0001.nii.gz"
SHAPE_1MM = (512, 512, 320)


def make_volume(source: Path, out: Path) -> Path:
    """A0001 (0.84 × 0.84 × 5 mm) → 1 mm isotropic, padded with −1024 to 512×512×320, int16, LPS."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    if out.is_file():
        return out
    img = nib.load(str(source))
    hu = torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32))[None, None]
    zooms = img.header.get_zooms()[:3]
    size = [int(round(n * z)) for n, z in zip(img.shape, zooms, strict=True)]
    res = F.interpolate(hu, size=size, mode="trilinear", align_corners=False)[0, 0].round().short().numpy()
    vol = np.full(SHAPE_1MM, -1024, np.int16)
    sl = tuple(slice((t - min(t, n)) // 2, (t - min(t, n)) // 2 + min(t, n)) for t, n in zip(SHAPE_1MM, size,
                                                                                               strict=True))
    vol[sl] = res[tuple(slice(0, min(t, n)) for t, n in zip(SHAPE_1MM, size, strict=True))]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = img.affine[:3, 3]
    nib.save(nib.Nifti1Image(vol, affine), str(out))
    return out


def baseline(path: str, spacing=(1.5, 0.75, 0.75), shape=(240, 480, 480)) -> np.ndarray:
    """CT-CLIP-style: float64 load, fixed permute, whole-volume float32 trilinear, then window and crop/pad."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    img = nib.load(path)
    data = img.get_fdata()  # float64
    slope, intercept = 1.0, 0.0  # CT-CLIP takes these from the metadata CSV
    data = slope * data + intercept
    current = (float(img.header.get_zooms()[2]), *map(float, img.header.get_zooms()[:2]))
    data = data.transpose(2, 0, 1)
    tensor = torch.tensor(data.astype(np.float32)).unsqueeze(0).unsqueeze(0)
    new = [int(n * c / t) for n, c, t in zip(tensor.shape[2:], current, spacing, strict=True)]
    arr = F.interpolate(tensor, size=new, mode="trilinear", align_corners=False)[0, 0].numpy()
    arr = (np.clip(arr, -1000, 200) + 1000) / 1200 - 0.449
    out = np.full(shape, -0.449, np.float32)
    src, dst = [], []
    for n, t in zip(arr.shape, shape, strict=True):
        if n >= t:
            src.append(slice((n - t) // 2, (n - t) // 2 + t))
            dst.append(slice(0, t))
        else:
            src.append(slice(0, n))
            dst.append(slice((t - n) // 2, (t - n) // 2 + n))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(which: str, path: str, out_npy: str, repeats: int) -> None:
    """Run one loader ``repeats`` times in this process; print a JSON line with times and memory."""
    import torch

    torch.set_num_threads(1)
    from ctagrg.data.preprocess import preprocess_file

    fn = baseline if which == "baseline" else preprocess_file
    rss_imports = _rss_mb()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(path)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if _ < repeats - 1:
            del out
    np.save(out_npy, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"which": which, "times": times, "cpu": cpu, "peak_rss_mb": peak,
                      "rss_after_imports_mb": rss_imports}))


def child_cache(out_npy: str, cache_file: str, repeats: int) -> None:
    import torch

    torch.set_num_threads(1)
    from ctagrg.data.cache import load_cached, save_cached

    x = np.load(out_npy)
    save_cached(cache_file, x, -0.449, 0.551)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        y = load_cached(cache_file)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(json.dumps({"size_mb": os.path.getsize(cache_file) / 1e6, "load_times": times, "load_cpu": cpu,
                      "max_abs_err": float(np.abs(y - x).max())}))


def _run_child(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "ctagrg-bench-preprocess")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "cache":
            child_cache(args.child[1], args.child[2], int(args.child[3]))
        else:
            child(args.child[0], args.child[1], args.child[2], int(args.child[3]))
        return
    if not args.source.is_file():
        raise SystemExit(f"{args.source}: source scan not found (pass --source)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    vol = make_volume(args.source, args.work_dir / "A0001-1mm-512x512x320.nii.gz")
    print(f"volume: {vol} ({vol.stat().st_size / 1e6:.0f} MB on disk)")
    r = {w: _run_child(w, str(vol), str(args.work_dir / f"{w}.npy"), str(args.repeats))
         for w in ("baseline", "ctagrg")}
    diff = float(np.abs(np.load(args.work_dir / "baseline.npy") - np.load(args.work_dir / "ctagrg.npy")).max())
    cache = _run_child("cache", str(args.work_dir / "ctagrg.npy"), str(args.work_dir / "cache.safetensors"), "5")
    tb, to = min(r["baseline"]["times"]), min(r["ctagrg"]["times"])
    cb, co = min(r["baseline"]["cpu"]), min(r["ctagrg"]["cpu"])
    mb, mo = r["baseline"]["peak_rss_mb"], r["ctagrg"]["peak_rss_mb"]
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'':10s} {'best wall s':>11s} {'wall runs s':>18s} {'best CPU s':>10s} {'peak RSS MB':>12s} "
          f"{'RSS after imports':>18s}")
    for w in ("baseline", "ctagrg"):
        times = " ".join(f"{t:.2f}" for t in r[w]["times"])
        print(f"{w:10s} {min(r[w]['times']):11.2f} {times:>18s} {min(r[w]['cpu']):10.2f} {r[w]['peak_rss_mb']:12.0f} "
              f"{r[w]['rss_after_imports_mb']:18.0f}")
    print(f"speed-up {tb / to:.1f}x wall, {cb / co:.1f}x CPU time (target >= 5); peak memory ratio {mo / mb:.2f} "
          f"(target <= 0.33); max abs diff {diff:.2e} (target <= 1e-2)")
    print(f"cache: {cache['size_mb']:.1f} MB (target <= 60), load best {min(cache['load_times']):.3f} s of "
          f"{' '.join(f'{t:.3f}' for t in cache['load_times'])}, best CPU {min(cache['load_cpu']):.3f} s "
          f"(target <= 0.3), quantisation error {cache['max_abs_err']:.4f}")


if __name__ == "__main__":
    main()
