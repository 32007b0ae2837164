"""Batched vs one-at-a-time sentence generation (BENCHMARKS.md, "Batched generation").

Generates 18 sentences (one per CT-RATE label, the worst case of one volume) with a small random GPT-2 decoder,
first in one batched ``generate()`` call, then one call per sentence as CT-AGRG does, checks that the token ids are
identical, and prints the timings. A random model rarely emits EOS, so every sentence runs to the token limit.

    .venv/bin/python benchmarks/batched_generation.py [--layers 4] [--hidden 256] [--strategy beam] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ctagrg.generation.generate import GenerationSettings, generate_token_ids
from ctagrg.models.conditioning import ConditioningConfig
from ctagrg.models.decoder import DecoderConfig, ReportDecoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--strategy", default="beam", choices=["beam", "greedy"])
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cond = ConditioningConfig(input_dim=256, hidden_dims=(512, 256), output_dim=256)
    config = DecoderConfig(n_layer=args.layers, n_embd=args.hidden, n_head=4, n_positions=128, conditioning=cond)
    decoder = ReportDecoder(config).eval().to(args.device)
    h, idx = torch.randn(18, 256), torch.arange(18)
    settings = GenerationSettings(strategy=args.strategy, max_new_tokens=args.max_new_tokens)

    def batched() -> list[list[int]]:
        return generate_token_ids(decoder, h, idx, settings)

    def one_at_a_time() -> list[list[int]]:
        return [generate_token_ids(decoder, h[i : i + 1], idx[i : i + 1], settings)[0] for i in range(18)]

    batched()  # warm-up
    timings = {}
    outputs = {}
    for name, fn in (("batched", batched), ("one at a time", one_at_a_time)):
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs[name] = fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    same = outputs["batched"] == outputs["one at a time"]
    tokens = sum(map(len, outputs["batched"]))
    print(f"GPT-2 {args.layers} layers, hidden {args.hidden}, vocab 50257; {args.strategy}"
          f"{' x4 beams' if args.strategy == 'beam' else ''}, {args.max_new_tokens} tokens; 18 sentences, "
          f"{tokens} tokens generated; torch {torch.__version__}, {args.threads} thread(s), {args.device}, "
          f"{platform.processor() or platform.machine()}")
    print(f"| mode | seconds (best of {args.repeats}) | speed-up |")
    print("| --- | --- | --- |")
    for name, sec in timings.items():
        print(f"| {name} | {sec:.2f} | {timings['one at a time'] / sec:.1f}x |")
    print(f"identical token ids: {same}")
    if not same:
        raise SystemExit("batched output differs from one-at-a-time output")


if __name__ == "__main__":
    main()
