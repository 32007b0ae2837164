"""Where a training step of the demo encoder (cnn3d) goes, on the CPU: the fixed stem, and the conv stages with
contiguous or channels-last weights and inputs.

    .venv/bin/python benchmarks/cnn3d_step.py [--batch 8] [--threads 2] [--repeats 5]

Random inputs at the demo's shape ((B, 1, 64, 128, 128) preprocessed values, configs/demo/pretrain.yaml's
encoder). Prints seconds per batch (mean of --repeats after one warm-up) for: the stem's measurements, its assembly,
the conv stages' forward + backward + AdamW step both ways, and a whole step as pretraining runs it with and
without ``cache_stem`` (with it, the stem is assembled from measurements made once).
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


def main() -> None:
    from ctagrg.models.cnn3d import CNN3DConfig, CNN3DEncoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = CNN3DConfig(input_shape=(64, 128, 128), input_hu=(-1000.0, 1500.0, 0.449), width=8, region_grid=4,
                      context=True, embed_dim=0, dropout=0.2)
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

    r = args.repeats
    results = {
        "batch": args.batch, "threads": args.threads,
        "stem_measure_s": seconds(lambda: enc.stem.measure(x), r),
        "stem_assemble_s": seconds(lambda: enc.stem.assemble(measured), r),
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
