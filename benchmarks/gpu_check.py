"""Paper scale on one GPU, measured in one command (issue #26; how to run it: benchmarks/GPU_CHECK.md).

    python benchmarks/gpu_check.py --out gpu_check_out           # a CUDA machine; under 8 minutes on one H100
    python benchmarks/gpu_check.py --cpu --tiny --out /tmp/gc     # tiny shapes on the CPU (tests/test_gpu_check.py)

Sections, each with a time budget (an item that would start after its section's budget is skipped, with the
reason recorded; an item that fails, e.g. out of memory, is recorded as failed and the run goes on):

- train: a few timed optimiser steps of pretraining and step 1 (configs/ctrate), CT-Net and CT-ViT, on synthetic
  uint8 batches of the paper's shape, at the configs' batch and precision (bf16 autocast on CUDA, fp32 with
  --cpu), activation checkpointing off and on (CT-Net also with ``trunk_chunk``). Per run: seconds per step,
  volumes/s, peak device memory, model FLOPs per step (FlopCounterMode) and the utilisation they imply on the
  card's peak dense bf16 rate (``PEAK_BF16_TFLOPS``; null for a card not in it or on the CPU).
- decoder: step 2 with a GPT-2-medium-sized random decoder at decoder.yaml's batch and accumulation, then the
  batched beam search of 18 sentences (fp32, as the Reporter runs it).
- end_to_end: one ``.nii.gz`` to report with a paper-size Reporter (CT-Net, GPT-2 medium, random weights,
  thresholds 0 so all 18 abnormalities are detected), split into read, preprocess, encoder + heads, generation.
- loader: the uint8 cache read through the training DataLoader with 0, 4 and 8 workers, volumes/s, against the
  fastest training run's volumes/s.

Writes OUT/gpu_check.json and OUT/gpu_check.md (rewritten after every section, so a run stopped early keeps what
it measured). Exit status 2, with one line on stderr, when no CUDA device is present and --cpu --tiny is not given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paper_scale as ps
import torch

# Peak dense bf16 tensor-core rates, TFLOP/s, from NVIDIA's data sheets; the first name fragment that occurs in
# torch.cuda.get_device_name() wins, so the more specific come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0),
)
SECTIONS = ("train", "decoder", "end_to_end", "loader")
# seconds per section on a full run (total 450 s, under the 8-minute goal with start-up)
BUDGETS = {"train": 200.0, "decoder": 70.0, "end_to_end": 90.0, "loader": 70.0}


def peak_bf16_tflops(device_name: str) -> float | None:
    """The card's peak dense bf16 rate from ``PEAK_BF16_TFLOPS``, or None for a card not listed."""
    name = device_name.lower()
    return next((rate for key, rate in PEAK_BF16_TFLOPS if key.lower() in name), None)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Budget:
    """Per-section deadlines: ``left(section)`` is the seconds that section may still start items in."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.started = seconds, {}

    def start(self, section: str) -> None:
        self.started[section] = time.perf_counter()

    def left(self, section: str) -> float:
        return self.seconds[section] - (time.perf_counter() - self.started[section])


def attempt(record: dict[str, Any], device: torch.device, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``record`` updated with ``fn()`` and status "ok", or with status "oom"/"failed" and the reason (one line);
    device memory is freed either way."""
    try:
        record |= fn() | {"status": "ok"}
    except torch.OutOfMemoryError as exc:
        record |= {"status": "oom", "reason": f"out of memory: {str(exc).splitlines()[0]}"}
    except Exception as exc:  # noqa: BLE001 - any failure of one item is recorded and the check goes on
        record |= {"status": "failed", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        traceback.print_exc()
    ps.free_memory(device)
    log(f"  {record.get('status')}: {json.dumps({k: v for k, v in record.items() if k != 'status'})[:300]}")
    return record


def skip_if_late(record: dict[str, Any], budget: Budget, section: str) -> bool:
    if budget.left(section) > 0:
        return False
    record |= {"status": "skipped", "reason": f"time budget: section {section} has {budget.seconds[section]:.0f} s"}
    return True


def rate(flops: int, seconds: float, peak: float | None) -> dict[str, float | None]:
    achieved = flops / seconds / 1e12
    return {"achieved_tflops": float(f"{achieved:.4g}"), "mfu": float(f"{achieved / peak:.3g}") if peak else None}


# -- train --------------------------------------------------------------------------------------------------------
def train_runs(tiny: bool) -> list[dict[str, Any]]:
    """The visual training runs, most important first: checkpointing off, on, on with trunk_chunk (CT-Net)."""
    runs = []
    for ckpt, chunk in ((False, None), (True, None), (True, 16)):
        for stage in ps.STAGES:
            for encoder in ("ctnet", "ctvit"):
                if chunk is None or encoder == "ctnet":
                    runs.append({"stage": stage, "encoder": encoder, "activation_checkpointing": ckpt,
                                 "trunk_chunk": chunk})
    return runs


def train_once(run: dict[str, Any], args: argparse.Namespace, device: torch.device, peak: float | None
               ) -> dict[str, Any]:
    from ctagrg.training.loop import autocast_context, build_optimizer
    from ctagrg.training.task import get_task

    extra = [f"model.ctnet.trunk_chunk={run['trunk_chunk']}"] if run["trunk_chunk"] else []
    cfg = ps.visual_task_config(run["stage"], run["encoder"], tiny=args.tiny, fp32=device.type == "cpu",
                                extra=extra)
    tc = cfg.train
    task = get_task(ps.STAGES[run["stage"]][0])(cfg)
    task.device = device
    torch.manual_seed(0)
    model = ps.build_on(device, task.build_model).train()
    if run["activation_checkpointing"]:
        model.gradient_checkpointing_enable()
    optimizer = build_optimizer(task.param_groups(model), tc)
    shape = tuple(cfg.model.encoder_config().input_shape)
    batch = ps.visual_batch(tc.batch_size, shape, pin=device.type == "cuda")

    def step() -> float:
        with autocast_context(tc, device):
            out = task.training_step(model, batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out["loss"].detach())  # the loop reads the loss every step too

    ps.reset_peak(device)
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        seconds, loss = ps.timed(step, device)
        losses.append(loss)
        if i >= args.warmup:
            times.append(seconds)
    memory = ps.peak_memory_gb(device)
    flops = ps.train_flops(task.model_cls, cfg.model, tc.batch_size)
    s = ps.summary(times)
    return {"batch": tc.batch_size, "precision": tc.precision, "input_shape": list(shape), "steps": len(times),
            "s_per_step": s, "volumes_per_s": round(tc.batch_size / s["median"], 2), **memory,
            "model_flops_per_step": flops, **rate(flops, s["median"], peak),
            "loss_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses))}


def section_train(args: argparse.Namespace, device: torch.device, peak: float | None, budget: Budget) -> dict:
    results = []
    for run in train_runs(args.tiny):
        record = dict(run)
        if not skip_if_late(record, budget, "train"):
            log(f"train {run}")
            attempt(record, device, lambda run=run: train_once(run, args, device, peak))
        results.append(record)
    return {"runs": results}


# -- decoder ------------------------------------------------------------------------------------------------------
def decoder_train(args: argparse.Namespace, device: torch.device, peak: float | None, store: dict) -> dict:
    from ctagrg.models.decoder import ReportDecoder
    from ctagrg.training.decoder_task import DecoderTask
    from ctagrg.training.loop import autocast_context, build_optimizer

    cfg = ps.decoder_task_config(tiny=args.tiny, fp32=device.type == "cpu")
    tc, tokens = cfg.train, cfg.target.max_tokens + 2
    task = DecoderTask(cfg)
    task.device = device
    torch.manual_seed(0)
    model = ps.build_on(device, lambda: ReportDecoder(cfg.model)).train()
    store |= {"model": model, "cfg": cfg}
    params = task.param_groups(model)
    optimizer = build_optimizer(params, tc)
    batch = ps.decoder_batch(tc.batch_size, tokens, cfg.model.conditioning.input_dim, device)
    accum = tc.grad_accum(1)  # one process: the config's global batch in micro-batches of batch_size

    def step() -> None:  # one optimizer step: accum micro-batches, value clipping, as the loop does
        for _ in range(accum):
            with autocast_context(tc, device):
                loss = task.training_step(model, batch)["loss"]
            (loss / accum).backward()
        torch.nn.utils.clip_grad_value_([p for p in params if p.grad is not None], tc.grad_clip_value)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops = ps.counted_flops(step)  # one extra step, counted, not timed
    ps.reset_peak(device)
    times = [ps.timed(step, device)[0] for _ in range(args.warmup + args.steps)][args.warmup:]
    memory = ps.peak_memory_gb(device)
    optimizer.state.clear()  # Adam's moments: not needed by the generation that follows
    s = ps.summary(times)
    pairs = tc.batch_size * accum
    return {"batch": tc.batch_size, "grad_accum": accum, "tokens_per_pair": tokens,
            "precision": tc.precision, "params": ps.count_params(model),
            "trainable_params": sum(p.numel() for p in params), "steps": len(times), "s_per_step": s,
            "pairs_per_s": round(pairs / s["median"], 1), **memory, "model_flops_per_step": flops,
            **rate(flops, s["median"], peak)}


def decoder_generate(args: argparse.Namespace, device: torch.device, store: dict) -> dict:
    from ctagrg.generation.generate import generate_token_ids
    from ctagrg.labels import NUM_LABELS

    model, cfg = store["model"].eval(), store["cfg"]
    settings = cfg.generation
    g = torch.Generator().manual_seed(1)
    h = torch.randn(NUM_LABELS, cfg.model.conditioning.input_dim, generator=g)
    labels = torch.arange(NUM_LABELS)
    ps.reset_peak(device)
    runs = [ps.timed(lambda: generate_token_ids(model, h, labels, settings), device) for _ in range(1 + args.repeats)]
    times = [t for t, _ in runs[1:]]
    return {"sentences": NUM_LABELS, "strategy": settings.strategy, "num_beams": settings.num_beams,
            "max_new_tokens": settings.max_new_tokens, "precision": "fp32", "tokens": sum(map(len, runs[-1][1])),
            "s": ps.summary(times), **ps.peak_memory_gb(device)}


def section_decoder(args: argparse.Namespace, device: torch.device, peak: float | None, budget: Budget) -> dict:
    store: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if not skip_if_late(train, budget, "decoder"):
        log("decoder: training steps")
        attempt(train, device, lambda: decoder_train(args, device, peak, store))
    generate: dict[str, Any] = {}
    if "model" not in store:
        generate |= {"status": "skipped", "reason": "no decoder: its training run did not build one"}
    elif not skip_if_late(generate, budget, "decoder"):
        log("decoder: batched beam search of 18 sentences")
        attempt(generate, device, lambda: decoder_generate(args, device, store))
    store.clear()
    ps.free_memory(device)
    return {"train": train, "generate": generate}


# -- end to end -----------------------------------------------------------------------------------------------------
def end_to_end(args: argparse.Namespace, device: torch.device, work: Path) -> dict:
    if args.scan:
        scan, source = Path(args.scan), "given"
    else:
        ct = ps.TINY_CT if args.tiny else ps.SYNTHETIC_CT
        scan, source = ps.write_synthetic_ct(work / "synthetic_ct.nii.gz", ct["shape"], ct["spacing"]), "synthetic"
    tokenizer, tokenizer_used = ps.load_tokenizer_or_ids(Path(args.tokenizer) if args.tokenizer else None)
    torch.manual_seed(0)
    reporter = ps.build_reporter(encoder="ctnet", tiny=args.tiny, device=device, tokenizer=tokenizer)
    ps.report_split(reporter, scan, device)  # warm-up: library start-up, kernels, allocator
    ps.reset_peak(device)
    splits = [ps.report_split(reporter, scan, device) for _ in range(args.repeats)]
    whole = [ps.timed(lambda: reporter.report(scan), device)[0] for _ in range(args.repeats)]
    parts = {p: ps.summary([s[p] for s in splits]) for p in (*ps.REPORT_PARTS, "total")}
    return {"scan": str(scan), "scan_source": source, "scan_mb": round(scan.stat().st_size / 1e6, 1),
            "encoder": "ctnet", "tokenizer": tokenizer_used, "detected": splits[-1]["detected"],
            "tokens": splits[-1]["tokens"], "split_s": parts, "report_s": ps.summary(whole),
            "generation": {"strategy": reporter.config.generation.strategy,
                           "num_beams": reporter.config.generation.num_beams,
                           "max_new_tokens": reporter.config.generation.max_new_tokens},
            **ps.peak_memory_gb(device), "peak_rss_mb": ps.peak_rss_mb()}


def section_end_to_end(args: argparse.Namespace, device: torch.device, peak: float | None, budget: Budget,
                       work: Path) -> dict:
    record: dict[str, Any] = {}
    if not skip_if_late(record, budget, "end_to_end"):
        log("end to end: one scan to report")
        attempt(record, device, lambda: end_to_end(args, device, work))
    return record


# -- loader ---------------------------------------------------------------------------------------------------------
def write_cache(folder: Path, n: int, shape: tuple[int, int, int]) -> None:
    """``n`` cached volumes (one written by ``save_cached``, then copied: equal bytes, equal cost to read)."""
    from ctagrg.data.cache import cache_path, save_cached

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    first = cache_path(folder, "train_0_a_1")
    save_cached(first, rng.uniform(-0.449, 0.551, size=shape).astype(np.float32), -0.449, 0.551)
    for i in range(1, n):
        shutil.copyfile(first, cache_path(folder, f"train_{i}_a_1"))


def loader_once(folder: Path, workers: int, batch_size: int, device: torch.device) -> dict:
    """One pass over the cache as the training loop reads it (``CachedVolumeDataset(dtype="uint8")``, pinned
    memory on CUDA), each batch's volumes copied to the device. volumes_per_s counts worker start-up as an epoch
    does; steady_volumes_per_s starts at the first batch."""
    from torch.utils.data import DataLoader

    from ctagrg.data.dataset import CachedVolumeDataset

    ds = CachedVolumeDataset(folder, dtype="uint8")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(0))
    start, first, count, first_count = time.perf_counter(), 0.0, 0, 0
    for batch in loader:
        batch["volume"].to(device, non_blocking=True)
        count += len(batch["name"])
        if not first:
            first, first_count = time.perf_counter(), count
    ps.synchronize(device)
    end = time.perf_counter()
    steady = (count - first_count) / (end - first) if count > first_count else None
    return {"volumes": count, "s": round(end - start, 3), "volumes_per_s": round(count / (end - start), 2),
            "steady_volumes_per_s": round(steady, 2) if steady else None}


def section_loader(args: argparse.Namespace, device: torch.device, budget: Budget, work: Path,
                   train: dict | None) -> dict:
    consumer = fastest_consumer(train)
    shape = (12, 64, 64) if args.tiny else (240, 480, 480)
    folder = work / "cache"
    runs = []
    try:
        write_cache(folder, args.loader_volumes, shape)
    except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
        return {"status": "failed", "reason": f"writing the cache: {type(exc).__name__}: {exc}".splitlines()[0]}
    for workers in args.workers:
        record: dict[str, Any] = {"workers": workers}
        if not skip_if_late(record, budget, "loader"):
            log(f"loader: {workers} workers")
            attempt(record, device, lambda w=workers: loader_once(folder, w, 4, device))
        if record.get("status") == "ok" and consumer:
            record["vs_model"] = round(record["steady_volumes_per_s"] / consumer["volumes_per_s"], 2) \
                if record["steady_volumes_per_s"] else None
        runs.append(record)
    shutil.rmtree(folder, ignore_errors=True)
    return {"volume_shape": list(shape), "volume_mb": round(np.prod(shape) / 1e6, 1), "batch": 4,
            "page_cache": "Files just written: reads come from memory, so storage speed is not measured",
            "model_consumes": consumer, "runs": runs}


def fastest_consumer(train: dict | None) -> dict | None:
    """The training run (no checkpointing) with the most volumes/s: what the loader must keep up with."""
    ok = [r for r in (train or {}).get("runs", []) if r.get("status") == "ok" and not r["activation_checkpointing"]]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["volumes_per_s"])
    return {k: best[k] for k in ("stage", "encoder", "volumes_per_s")}


# -- output ---------------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device_type": device.type, "torch": torch.__version__, "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info |= {"name": p.name, "memory_gb": round(p.total_memory / 1e9, 1), "capability": f"{p.major}.{p.minor}",
                 "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                 "cudnn_benchmark": torch.backends.cudnn.benchmark,
                 "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    else:
        info["name"] = platform.processor() or platform.machine()
    info["peak_bf16_tflops"] = peak_bf16_tflops(info["name"]) if device.type == "cuda" else None
    return info


def write_outputs(result: dict[str, Any], out: Path) -> None:
    from gpu_check_md import render

    from ctagrg.utils.atomic import write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "gpu_check.json", result)
    write_text_atomic(out / "gpu_check.md", render(result))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (only with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and models (CI); numbers mean nothing")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per training run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2, help="timed generations / reports")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 4, 8], help="DataLoader workers to try")
    parser.add_argument("--loader-volumes", type=int, default=0, help="cached volumes to read (0: 64, tiny: 8)")
    parser.add_argument("--scan", default="", help="a scan for end_to_end (default: a synthetic 512x512x300 one)")
    parser.add_argument("--tokenizer", default="", help="GPT-2 tokenizer folder (default: token ids as text)")
    parser.add_argument("--work", default="", help="scratch folder for the cache and the scan (default: a temp dir)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark = True (ctagrg's training leaves it off; to compare)")
    args = parser.parse_args(argv)
    args.loader_volumes = args.loader_volumes or (8 if args.tiny else 64)
    return args


def refusal(args: argparse.Namespace) -> str | None:
    """Why this run must not start (one line), or None."""
    if args.cpu and not args.tiny:
        return "gpu_check: --cpu runs only with --tiny (the paper-size models take hours per section on a CPU)"
    if not args.cpu and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        return (f"gpu_check: no CUDA device (torch {torch.__version__}, {build}); run it on a GPU machine, or pass "
                f"--cpu --tiny for the small CPU check")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = refusal(args)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    env = environment(device)
    peak = env["peak_bf16_tflops"]
    budget = Budget({k: v * args.budget_scale for k, v in BUDGETS.items()})
    out = Path(args.out)
    result: dict[str, Any] = {"schema": 1, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "tiny": args.tiny, "environment": env,
                              "load_average_start": ps.load_average(), "budgets_s": budget.seconds, "sections": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work or None) as tmp:
        work = Path(tmp)
        for name in args.sections:
            budget.start(name)
            log(f"section {name} (budget {budget.seconds[name]:.0f} s)")
            t0 = time.perf_counter()
            if name == "train":
                section = section_train(args, device, peak, budget)
            elif name == "decoder":
                section = section_decoder(args, device, peak, budget)
            elif name == "end_to_end":
                section = section_end_to_end(args, device, peak, budget, work)
            else:
                section = section_loader(args, device, budget, work, result["sections"].get("train"))
            result["sections"][name] = section | {"seconds": round(time.perf_counter() - t0, 1)}
            result["total_seconds"] = round(time.perf_counter() - start, 1)
            write_outputs(result, out)
    result["load_average_end"] = ps.load_average()
    write_outputs(result, out)
    log(f"done in {result['total_seconds']:.0f} s: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
