"""CPU cost of one saliency map (ctagrg.generation.saliency): seconds per map and peak memory (BENCHMARKS.md).

Two models: a packaged model (``--model``, e.g. the demo's; its own input shape) and CT-Net as published (ResNet-18
trunk, Conv3d reducer, random weights: the cost does not depend on them) on ``--ctnet-depths`` slices of 480 x 480,
fewer than the paper's 240 so that it fits in memory: the trunk, which dominates, runs once per slice triplet, so
time and activation memory grow linearly with the depth. Each measurement runs in a fresh process (peak RSS is
per process); the first map of a volume is left out (warm-up, the demo encoder's sphere finder).

    PYTHONPATH=src python benchmarks/saliency_cost.py --model demo_out/model --ctnet-depths 12 24 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _measure(spec: dict) -> dict:
    """Run in a child process: build the model, time ``spec["repeats"]`` maps after one warm-up map."""
    from ctagrg.generation.saliency import abnormality_saliency

    torch.set_num_threads(spec["threads"])
    if spec["kind"] == "model":
        from ctagrg.generation.reporter import Reporter

        reporter = Reporter.from_pretrained(spec["model"])
        model, shape = reporter.visual, tuple(reporter.preprocess.shape)
    else:
        from ctagrg.models.ctnet import CTNetConfig
        from ctagrg.models.heads import HeadsConfig
        from ctagrg.models.step1 import Step1Model, VisualModelConfig

        torch.manual_seed(0)
        shape = (spec["depth"], 480, 480)
        model = Step1Model(VisualModelConfig(encoder="ctnet", ctnet=CTNetConfig(input_shape=shape),
                                             heads=HeadsConfig())).eval()
    x = np.random.default_rng(0).uniform(-0.449, 0.551, shape).astype(np.float32)
    abnormality_saliency(model, x, [0], method=spec["method"])
    start = time.perf_counter()
    for label in range(1, 1 + spec["repeats"]):
        abnormality_saliency(model, x, [label], method=spec["method"])
    seconds = (time.perf_counter() - start) / spec["repeats"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**spec, "shape": list(shape), "seconds_per_map": round(seconds, 2), "peak_rss_mb": round(peak_mb)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="packaged model folder (e.g. demo_out/model)")
    parser.add_argument("--ctnet-depths", type=int, nargs="*", default=[12, 24],
                        help="CT-Net input depths (slices of 480 x 480, multiples of 3)")
    parser.add_argument("--methods", nargs="+", default=["hirescam", "gradcam"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(json.loads(args.child))))
        return
    specs = [{"kind": "model", "model": args.model} for _ in [0] if args.model]
    specs += [{"kind": "ctnet", "depth": d} for d in args.ctnet_depths]
    for spec in specs:
        for method in args.methods:
            child = {**spec, "method": method, "threads": args.threads, "repeats": args.repeats}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(child)], check=True,
                                 capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
