"""What a CPU-only user gets at paper scale (issue #26 item 2; BENCHMARKS.md, "Paper scale").

    python benchmarks/cpu_report_latency.py report [--again] [--threads N]
    python benchmarks/cpu_report_latency.py encoder (--bf16 | --channels-last)
    python benchmarks/cpu_report_latency.py generate [--beams 4 2 1] [--bf16]
    python benchmarks/cpu_report_latency.py train [--depth 240] [--checkpointing] [--trunk-chunk 16]
    python benchmarks/cpu_report_latency.py all --out DIR       # the measurements of BENCHMARKS.md, one at a time

``report``: one real chest CT (default ../shared/data/ct/lung-pet-ct-dx-A0001.nii.gz) through a paper-size Reporter
(CT-Net, GPT-2 medium, random weights, thresholds 0 so all 18 abnormalities are detected: the worst case), split
into read, preprocess, encoder + heads, generation, assemble; with ``--again`` ``Reporter.report(path)`` once more
as a whole. Random weights never write the end-of-text token, so every sentence runs to 60 tokens.
``encoder``: the step-1 model on that scan in fp32, then with the option, then in fp32 again; the figures and how
far the probabilities and embeddings moved. ``generate``: the 18 sentences' beam search alone, per beam count, or
with the decoder's weights in bf16. ``train``: one CT-Net pretraining step (configs/ctrate/pretrain.yaml, batch 1,
fp32) on a synthetic volume; with ``--depth`` below 240 a shallower volume (the trunk's activations grow with it).

Each prints one JSON line with its figures, the process's peak RSS and the load averages before and after.
``--max-rss-gb`` (default 11.5) stops a run whose resident memory passes it (the machine is shared); the line
then says so. ``all`` runs each measurement in its own process, so each peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paper_scale as ps
import torch

SHARED = ps.ROOT.parent / "shared" / "data"
DEFAULT_SCAN = SHARED / "ct" / "lung-pet-ct-dx-A0001.nii.gz"
DEFAULT_TOKENIZER = SHARED / "gpt2-tokenizer"
# the measurements of BENCHMARKS.md, "Paper scale": (name, arguments)
PLAN: tuple[tuple[str, list[str]], ...] = (
    ("report, paper settings", ["report"]),
    # two shallower volumes give the memory per slice triplet
    ("train step, depth 60", ["train", "--depth", "60"]),
    ("train step, depth 120", ["train", "--depth", "120"]),
    ("train step, depth 240", ["train", "--depth", "240"]),
    ("train step, depth 240, checkpointing, trunk_chunk 16", ["train", "--checkpointing", "--trunk-chunk", "16"]),
    ("encoder, bf16 autocast", ["encoder", "--bf16"]),
    ("generation, 1, 2 and 4 beams", ["generate", "--beams", "1", "2", "4"]),
    ("generation, bf16 weights, 4 beams", ["generate", "--bf16", "--beams", "4"]),
    ("encoder, channels-last trunk", ["encoder", "--channels-last"]),
)


def guard_rss(limit_gb: float) -> None:
    """Stop this process (exit 3, one JSON line) if its resident memory passes ``limit_gb``."""
    page = os.sysconf("SC_PAGE_SIZE")

    def watch() -> None:
        while True:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            if rss > limit_gb * 1e9:
                print(json.dumps({"status": "stopped", "reason": f"resident memory passed {limit_gb} GB",
                                  "peak_rss_mb": ps.peak_rss_mb()}), flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def report(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu")
    tokenizer, used = ps.load_tokenizer_or_ids(Path(args.tokenizer))
    torch.manual_seed(0)
    build_s, reporter = ps.timed(lambda: ps.build_reporter(encoder="ctnet", tiny=False, device=device,
                                                           tokenizer=tokenizer), device)
    scan = Path(args.scan)
    split = ps.report_split(reporter, scan, device)
    g = reporter.config.generation
    out = {"scan": scan.name, "scan_mb": round(scan.stat().st_size / 1e6, 1), "tokenizer": used,
           "threads": torch.get_num_threads(), "strategy": g.strategy, "num_beams": g.num_beams,
           "max_new_tokens": g.max_new_tokens, "build_s": round(build_s, 2),
           "split_s": {k: round(v, 3) for k, v in split.items() if k in (*ps.REPORT_PARTS, "total")},
           "split_cpu_s": split["cpu"], "detected": split["detected"], "tokens": split["tokens"]}
    if args.again:
        cpu0 = time.process_time()
        whole_s, rep = ps.timed(lambda: reporter.report(scan), device)
        out |= {"report_again_s": round(whole_s, 2), "report_again_cpu_s": round(time.process_time() - cpu0, 2),
                "report_text_head": rep.text[:80]}
    return out


def encoder(args: argparse.Namespace) -> dict[str, Any]:
    """The step-1 model on the scan: fp32, the variant (``--bf16`` autocast or ``--channels-last`` trunk), fp32."""
    from ctagrg.data.cache import as_cached
    from ctagrg.data.preprocess import PreprocessConfig, preprocess_file
    from ctagrg.models.step1 import Step1Model

    pp = PreprocessConfig()
    x = torch.from_numpy(as_cached(preprocess_file(args.scan, config=pp), -pp.offset, 1.0 - pp.offset))[None, None]
    torch.manual_seed(0)
    model = Step1Model(ps.visual_task_config("step1", "ctnet", tiny=False, fp32=True).model).eval()

    def run(variant: bool) -> tuple[float, float, dict[str, torch.Tensor]]:
        if args.channels_last:
            model.encoder.trunk.to(memory_format=torch.channels_last if variant else torch.contiguous_format)
        context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant and args.bf16)
        cpu0 = time.process_time()
        with torch.no_grad(), context:
            seconds, out = ps.timed(lambda: model(x), torch.device("cpu"))
        return seconds, time.process_time() - cpu0, {k: v.float() for k, v in out.items()}

    runs = [run(False), run(True), run(False)]
    (_, _, ref), (_, _, var) = runs[0], runs[1]
    p_ref, p_var = torch.sigmoid(ref["logits"]), torch.sigmoid(var["logits"])
    emb_rel = float((var["embeddings"] - ref["embeddings"]).norm() / ref["embeddings"].norm())
    return {"variant": "bf16 autocast" if args.bf16 else "channels-last trunk",
            "fp32_s": [round(runs[0][0], 2), round(runs[2][0], 2)], "variant_s": round(runs[1][0], 2),
            "fp32_cpu_s": [round(runs[0][1], 1), round(runs[2][1], 1)], "variant_cpu_s": round(runs[1][1], 1),
            "fp32_repeat_max_abs_dprob": float((torch.sigmoid(runs[2][2]["logits"]) - p_ref).abs().max()),
            "max_abs_dprob": float((p_var - p_ref).abs().max()), "embeddings_rel_diff": round(emb_rel, 5)}


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """The 18 sentences' batched search alone (random GPT-2-medium-sized decoder), per beam count."""
    from ctagrg.generation.generate import generate_token_ids
    from ctagrg.models.decoder import ReportDecoder

    cfg = ps.decoder_task_config(tiny=False, fp32=True)
    torch.manual_seed(0)
    decoder = ReportDecoder(cfg.model).eval()
    if args.bf16:
        decoder.to(torch.bfloat16)
    h, labels = torch.randn(18, cfg.model.conditioning.input_dim), torch.arange(18)
    runs = []
    for beams in args.beams or [cfg.generation.num_beams]:
        settings = ps.with_beams(cfg.generation, beams)
        cpu0 = time.process_time()
        seconds, ids = ps.timed(lambda s=settings: generate_token_ids(decoder, h, labels, s), torch.device("cpu"))
        runs.append({"num_beams": beams, "strategy": settings.strategy, "s": round(seconds, 1),
                     "cpu_s": round(time.process_time() - cpu0, 1), "tokens": sum(map(len, ids))})
    return {"weights": "bf16" if args.bf16 else "fp32", "max_new_tokens": cfg.generation.max_new_tokens,
            "runs": runs}


def train(args: argparse.Namespace) -> dict[str, Any]:
    from ctagrg.training.loop import autocast_context, build_optimizer
    from ctagrg.training.task import get_task

    device = torch.device("cpu")
    extra = [f"model.ctnet.input_shape=[{args.depth}, 480, 480]", "train.batch_size=1"]
    if args.trunk_chunk:
        extra.append(f"model.ctnet.trunk_chunk={args.trunk_chunk}")
    cfg = ps.visual_task_config("pretrain", "ctnet", tiny=False, fp32=True, extra=extra)
    task = get_task("pretrain")(cfg)
    torch.manual_seed(0)
    model = task.build_model().train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = build_optimizer(task.param_groups(model), cfg.train)
    batch = ps.visual_batch(1, (args.depth, 480, 480), pin=False)
    rss_before = ps.peak_rss_mb()

    def step() -> float:
        with autocast_context(cfg.train, device):
            out = task.training_step(model, batch)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out["loss"].detach())

    times, cpu = [], []
    for _ in range(args.steps):
        cpu0 = time.process_time()
        times.append(ps.timed(step, device)[0])
        cpu.append(round(time.process_time() - cpu0, 1))
    return {"encoder": "ctnet", "input_shape": [args.depth, 480, 480], "batch": 1, "precision": "fp32",
            "activation_checkpointing": args.checkpointing, "trunk_chunk": args.trunk_chunk,
            "threads": torch.get_num_threads(), "step_s": [round(t, 2) for t in times], "step_cpu_s": cpu,
            "rss_before_steps_mb": rss_before}


def run_plan(args: argparse.Namespace) -> int:
    """Every PLAN entry in its own process, one after the other; JSON and markdown into ``args.out``."""
    from ctagrg.utils.atomic import write_json_atomic, write_text_atomic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, argv in PLAN:
        if args.only and not any(s in name for s in args.only):
            continue
        cmd = [sys.executable, str(Path(__file__)), *argv, "--scan", args.scan, "--tokenizer", args.tokenizer,
               "--max-rss-gb", str(args.max_rss_gb), "--steps", str(args.steps)]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        record = json.loads(lines[-1]) if lines else {"status": "failed", "reason": proc.stderr.strip()[-500:]}
        results.append({"name": name, "command": "python benchmarks/cpu_report_latency.py " + " ".join(argv),
                        "returncode": proc.returncode, **record})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        write_json_atomic(out / "cpu_report_latency.json", {"machine": machine(), "runs": results})
    write_text_atomic(out / "cpu_report_latency.md", render(results))
    return 0


def machine() -> dict[str, Any]:
    import platform

    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
                                                            / 1e9, 1)}


def _figures(r: dict[str, Any]) -> str:
    """The headline figures of one run, wall seconds with CPU seconds in brackets."""
    if "split_s" in r:
        w, c = r["split_s"], r["split_cpu_s"]
        parts = "; ".join(f"{p} {w[p]:.2f} ({c[p]:.1f})" for p in ("read", "preprocess", "encoder_heads",
                                                                   "generation"))
        return f"total {w['total']:.1f} ({c['total']:.0f}): {parts}"
    if "step_s" in r:
        return f"step {', '.join(map(str, r['step_s']))} ({', '.join(map(str, r['step_cpu_s']))})"
    if "variant_s" in r:
        return (f"fp32 {r['fp32_s']} ({r['fp32_cpu_s']}), {r['variant']} {r['variant_s']} ({r['variant_cpu_s']}); "
                f"max abs Δp {r['max_abs_dprob']:.2g}, embeddings rel. diff {r['embeddings_rel_diff']:.2g}")
    if "runs" in r:
        return "; ".join(f"{g['num_beams']} beam(s) {g['s']} ({g['cpu_s']})" for g in r["runs"]) + \
            f", {r['weights']} weights"
    return f"{r.get('status')}: {str(r.get('reason', ''))[:100]}"


def render(results: list[dict[str, Any]]) -> str:
    rows = ["| measurement | wall s (CPU s) | peak RSS MB | load average before → after |", "| --- | --- | --- | --- |"]
    for r in results:
        rows.append(f"| {r['name']} | {_figures(r)} | {r.get('peak_rss_mb', '–')} | "
                    f"{r.get('load_average_before', '–')} → {r.get('load_average_after', '–')} |")
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["report", "encoder", "generate", "train", "all"])
    parser.add_argument("--scan", default=str(DEFAULT_SCAN))
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--again", action="store_true", help="report: then Reporter.report(path) as a whole")
    parser.add_argument("--beams", type=int, nargs="*", default=[], help="generate: beam counts (1: greedy)")
    parser.add_argument("--bf16", action="store_true", help="encoder: bf16 autocast; generate: bf16 weights")
    parser.add_argument("--channels-last", action="store_true", help="encoder: CT-Net's trunk in channels-last")
    parser.add_argument("--depth", type=int, default=240, help="train: input depth (D of D x 480 x 480)")
    parser.add_argument("--checkpointing", action="store_true", help="train: activation checkpointing")
    parser.add_argument("--trunk-chunk", type=int, default=0, help="train: triplets per trunk call (0: all)")
    parser.add_argument("--steps", type=int, default=1, help="train: steps (each timed)")
    parser.add_argument("--max-rss-gb", type=float, default=11.5)
    parser.add_argument("--out", default="", help="all: folder for cpu_report_latency.json and .md")
    parser.add_argument("--only", nargs="*", default=[], help="all: run only plan entries whose name has one of these")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.what == "all":
        if not args.out:
            print("cpu_report_latency: all needs --out DIR", file=sys.stderr)
            return 2
        return run_plan(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    guard_rss(args.max_rss_gb)
    before = ps.load_average()
    record = {"report": report, "encoder": encoder, "generate": generate, "train": train}[args.what](args)
    print(json.dumps({**record, "peak_rss_mb": ps.peak_rss_mb(), "load_average_before": before,
                      "load_average_after": ps.load_average(), "status": "ok"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
