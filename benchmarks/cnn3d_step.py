"""Where a training step of the demo encoder (cnn3d) goes, on the CPU: the fixed stem, and the conv stages with
contiguous or channels-last weights and inputs.

    .venv/bin/python benchmarks/cnn3d_step.py [--batch 8] [--threads 2] [--repeats 5]

Random inputs at the demo's shape ((B, 1, 64, 128, 128) preprocessed values, configs/demo/pretrain.yaml's
encoder). Prints seconds per batch (mean of --repeats after one warm-up) for: the stem's measurements, its assembly,
the conv stages' forward + backward + AdamW step both ways, and a whole step as pretraining runs it with and
without the ``stem_cache`` extension (with it, the stem is assembled from measurements made once); and the blob
channel: its float32 reference (the implementation until 2026-11-29), the uint8 one for 4 radii, the 9-radius
profile, and a whole stem measurement with the profile.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable

import torch


def seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def blob_float(stem: torch.nn.Module, bins: torch.Tensor) -> torch.Tensor:
    """The blob score as cnn3d computed it until 2026-11-29 (float32 masks and sums, erosion by max_pool3d), for
    comparison with ``ctagrg.extras.cnn3d.channels.blob.blob_score`` (uint8, separable AND): the same values
    (tests/extras/test_blob_channel.py)."""
    import torch.nn.functional as F

    cfg = stem.config
    lung = (bins < len(cfg.lung_bins)).float()[:, None]
    lo, hi = cfg.solid_bins[0], cfg.solid_bins[-1]
    solid = ((bins >= lo) & (bins <= hi)).float()[:, None]
    k = cfg.blob.erosion
    eroded = -F.max_pool3d(F.pad(-solid, [v // 2 for v in reversed(k) for _ in range(2)], value=0.0), k, stride=1)
    offsets = cfg.blob.offsets(cfg.voxel_mm)
    p = max(abs(v) for shell in offsets for o in shell for v in o)
    padded = F.pad(lung, (p,) * 6)
    d, h, w = lung.shape[2:]
    best = torch.zeros_like(lung)
    for shell in offsets:
        around = torch.zeros_like(lung)
        for a, b, c in shell:
            around += padded[:, :, p + a:p + a + d, p + b:p + b + h, p + c:p + c + w]
        best = torch.maximum(best, around / len(shell))
    return eroded * best


def main() -> None:
    from ctagrg.extras.cnn3d.channels.blob import BlobConfig, blob_score
    from ctagrg.extras.cnn3d.channels.context import ContextConfig
    from ctagrg.extras.cnn3d.config import CNN3DConfig
    from ctagrg.extras.cnn3d.encoder import CNN3DEncoder
    from ctagrg.extras.cnn3d.stem import HUBinStem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = CNN3DConfig(input_shape=(64, 128, 128), input_hu=(-1000.0, 1500.0, 0.449), width=8, region_grid=4,
                      context=ContextConfig(enabled=True), embed_dim=0, dropout=0.2)
    enc = CNN3DEncoder(cfg)
    x = torch.rand(args.batch, 1, *cfg.input_shape) - 0.449
    measured = enc.stem.measure(x)
    stem = enc.stem.assemble(measured)

    def conv_step(features: torch.nn.Module, inp: torch.Tensor) -> Callable[[], None]:
        """forward + backward + AdamW step of the conv stages alone."""
        opt = torch.optim.AdamW(features.parameters())

        def step() -> None:
            loss = features(inp).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    contiguous = copy.deepcopy(enc.features).to(memory_format=torch.contiguous_format)
    channels_last = copy.deepcopy(enc.features)  # as CNN3DEncoder keeps it
    stem_cl = stem.contiguous(memory_format=torch.channels_last_3d)

    def whole_step(cached: bool) -> Callable[[], None]:
        opt = torch.optim.AdamW(enc.parameters())

        def step() -> None:
            s = enc.stem.assemble(measured) if cached else enc.stem(x)
            loss = enc.forward_from_stem(s).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    # the blob channel (demo until 2026-11-29: the best of 4 radii; since: one channel per radius of 9)
    common = {"input_shape": cfg.input_shape, "input_hu": cfg.input_hu, "context": ContextConfig(enabled=True),
              "voxel_mm": (4.0, 2.0, 2.0)}
    blob4 = HUBinStem(CNN3DConfig(**common, blob=BlobConfig(enabled=True, radii_mm=(8.0, 12.0, 16.0, 22.0))))
    profile9 = HUBinStem(CNN3DConfig(**common, blob=BlobConfig(
        enabled=True, profile=True, radii_mm=(4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0))))

    def blob(stem: HUBinStem) -> torch.Tensor:
        c = stem.config
        return blob_score(bins, c.blob, c.voxel_mm, len(c.lung_bins), c.solid_bins)

    hu_min, hu_max, offset = cfg.input_hu
    bins = torch.bucketize(x[:, 0], (blob4.edges - hu_min) / (hu_max - hu_min) - offset, out_int32=True)
    if not torch.equal(blob_float(blob4, bins), blob(blob4)):
        raise SystemExit("the blob score differs from the float reference")

    r = args.repeats
    results = {
        "batch": args.batch, "threads": args.threads,
        "stem_measure_s": seconds(lambda: enc.stem.measure(x), r),
        "stem_assemble_s": seconds(lambda: enc.stem.assemble(measured), r),
        "blob_4_radii_float_reference_s": seconds(lambda: blob_float(blob4, bins), r),
        "blob_4_radii_s": seconds(lambda: blob(blob4), r),
        "blob_profile_9_radii_s": seconds(lambda: blob(profile9), r),
        "stem_measure_with_blob_profile_s": seconds(lambda: profile9.measure(x), r),
        "conv_step_contiguous_s": seconds(conv_step(contiguous, stem), r),
        "conv_step_channels_last_s": seconds(conv_step(channels_last, stem_cl), r),
        "whole_step_stem_each_step_s": seconds(whole_step(False), r),
        "whole_step_cache_stem_s": seconds(whole_step(True), r),
    }
    for key, value in results.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
