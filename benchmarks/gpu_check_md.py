"""Markdown tables of a ``gpu_check.json`` result (written beside it by ``gpu_check.py``; paste them into
BENCHMARKS.md, "Paper scale").

    python benchmarks/gpu_check_md.py OUT/gpu_check.json      # print the tables again
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _status(record: dict[str, Any]) -> str:
    status = record.get("status", "not run")
    return status if status == "ok" else f"{status}: {record.get('reason', '')}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _train(section: dict[str, Any]) -> list[str]:
    rows = []
    for r in section.get("runs", []):
        ckpt = "on" + (f", trunk_chunk {r['trunk_chunk']}" if r.get("trunk_chunk") else "") \
            if r["activation_checkpointing"] else "off"
        s = r.get("s_per_step", {})
        rows.append([r["stage"], r["encoder"], ckpt, _num(r.get("batch")), r.get("precision", "–"),
                     _num(s.get("median")), _num(r.get("volumes_per_s")), _num(r.get("peak_allocated_gb")),
                     _num(r.get("peak_reserved_gb")), _num((r.get("model_flops_per_step") or 0) / 1e12 or None),
                     _num(r.get("achieved_tflops")), _num(r.get("mfu")), _status(r)])
    return ["### Training steps (synthetic batches)", "",
            *_table(["stage", "encoder", "checkpointing", "batch", "precision", "s/step (median)", "volumes/s",
                     "peak alloc GB", "peak reserved GB", "model TFLOP/step", "TFLOP/s", "MFU", "status"], rows)]


def _decoder(section: dict[str, Any]) -> list[str]:
    t, g = section.get("train", {}), section.get("generate", {})
    rows = [["step 2 optimiser step", f"batch {_num(t.get('batch'))} × accumulation {_num(t.get('grad_accum'))}, "
             f"{_num(t.get('tokens_per_pair'))} tokens, {t.get('precision', '–')}",
             _num(t.get("s_per_step", {}).get("median")), f"{_num(t.get('pairs_per_s'))} pairs/s, "
             f"{_num(t.get('achieved_tflops'))} TFLOP/s, MFU {_num(t.get('mfu'))}", _num(t.get("peak_allocated_gb")),
             _status(t)],
            ["beam search, 18 sentences", f"{_num(g.get('num_beams'))} beams, ≤ {_num(g.get('max_new_tokens'))} "
             f"tokens, {g.get('precision', '–')}", _num(g.get("s", {}).get("median")),
             f"{_num(g.get('tokens'))} tokens", _num(g.get("peak_allocated_gb")), _status(g)]]
    return ["### Step 2 decoder (random weights)", "",
            *_table(["what", "settings", "s (median)", "throughput", "peak alloc GB", "status"], rows)]


def _end_to_end(r: dict[str, Any]) -> list[str]:
    split = r.get("split_s", {})
    parts = ["read", "preprocess", "encoder_heads", "generation", "assemble", "total"]
    rows = [[p, _num(split.get(p, {}).get("median"))] for p in parts]
    rows.append(["`Reporter.report(path)`, whole", _num(r.get("report_s", {}).get("median"))])
    return ["### One scan to report (Reporter with random weights, all 18 abnormalities detected)", "",
            f"Scan: {r.get('scan_source', '–')} ({_num(r.get('scan_mb'))} MB); {_num(r.get('detected'))} detected, "
            f"{_num(r.get('tokens'))} tokens generated; peak GPU {_num(r.get('peak_allocated_gb'))} GB allocated; "
            f"peak RSS {_num(r.get('peak_rss_mb'))} MB. Status: {_status(r)}.", "",
            *_table(["part", "s (median)"], rows)]


def _loader(section: dict[str, Any]) -> list[str]:
    if "runs" not in section:
        return ["### Loader", "", f"Status: {_status(section)}."]
    consumer = section.get("model_consumes") or {}
    rows = [[_num(r["workers"]), _num(r.get("volumes_per_s")), _num(r.get("steady_volumes_per_s")),
             _num(r.get("vs_model")), _status(r)] for r in section["runs"]]
    return ["### Loader (uint8 cache, training DataLoader, batch 4)", "",
            f"The fastest training run consumes {_num(consumer.get('volumes_per_s'))} volumes/s "
            f"({consumer.get('stage', '–')}, {consumer.get('encoder', '–')}). {section.get('page_cache', '')}.", "",
            *_table(["workers", "volumes/s (with start-up)", "volumes/s (steady)", "× the model's need", "status"],
                    rows)]


def render(result: dict[str, Any]) -> str:
    env = result.get("environment", {})
    lines = [f"## gpu_check: {env.get('name', '?')} ({result.get('started', '')})", "",
             f"`{result.get('command', '')}`; torch {env.get('torch')}, CUDA {env.get('cuda', '–')}; peak dense bf16 "
             f"{_num(env.get('peak_bf16_tflops'))} TFLOP/s; load average {result.get('load_average_start')}; "
             f"{_num(result.get('total_seconds'))} s in all" + (" (tiny shapes: not paper figures)"
                                                                  if result.get("tiny") else "") + ".", ""]
    render_section = {"train": _train, "decoder": _decoder, "end_to_end": _end_to_end, "loader": _loader}
    for name, section in result.get("sections", {}).items():
        lines += [*render_section[name](section), "", f"(section {name}: {_num(section.get('seconds'))} s)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(render(json.load(f)))
