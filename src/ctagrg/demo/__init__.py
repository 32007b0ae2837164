"""The end-to-end demo: phantom dataset -> preprocess -> pretrain -> step 1 (+ thresholds) -> embedding cache ->
step 2 -> package -> evaluate, on synthetic CT-RATE-style phantoms, on a CPU.

The phantoms come in three patient-disjoint splits: every training stage trains on ``train`` and chooses its best
checkpoint (and step 1 its thresholds) on ``valid`` (configs/demo, ``split``; the names each stage used are in
``runs/<stage>/splits/``); ``test`` is read only by the evaluate stage.

Each stage (:mod:`ctagrg.demo.stages`) calls the other parts' public Python APIs, writes into its own folder under
``out_dir`` and, when it succeeds, a marker ``out_dir/stages/<stage>.json`` (with its seconds). A rerun skips every
stage whose marker exists, so an interrupted demo resumes cheaply; ``--force STAGE`` reruns one stage and everything
after it (:mod:`ctagrg.demo.runner`). The result, ``out_dir/model``, is a packaged model that ``ctagrg report``
loads. Research software, not for diagnostic use.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from ctagrg.demo.runner import (
    DEMO_DESIGN,
    PRESETS,
    STAGE_OUTPUTS,
    STAGES,
    DemoConfig,
    DemoError,
    DemoPreset,
    Stage,
    check_settings,
    config_dir,
    cpu_seconds,
    marker,
    paths,
    run_settings,
    run_stages,
    stage_overrides,
    stages_to_run,
)
from ctagrg.demo.stages import build_stages, train_tokenizer

__all__ = ["DEMO_DESIGN", "PRESETS", "STAGES", "STAGE_OUTPUTS", "DemoConfig", "DemoError", "DemoPreset", "Stage",
           "build_stages", "check_settings", "config_dir", "cpu_seconds", "examples_text", "main", "marker", "paths",
           "run_settings", "run_stages", "stage_overrides", "stages_to_run", "train_tokenizer"]


def examples_text(eval_dir: Path, n: int = 3) -> str:
    """``n`` generated reports beside their references, from the evaluation's predictions and references."""
    metrics_path = eval_dir / "examples.json"
    if not metrics_path.is_file():
        return ""
    examples = json.loads(metrics_path.read_text(encoding="utf-8"))[:n]
    blocks = [f"--- {e['name']}\n  generated: {e['generated']}\n  reference: {e['reference']}" for e in examples]
    return "\n".join(blocks)


DEMO_MEMO_BYTES = 256 * 2**20  # ~128 KiB per channel and demo volume: ~1,000 volumes with both channels


def main(cfg: DemoConfig, log: Callable[[str], None] = print) -> int:
    """Run the demo; print examples and headline metrics. Returns a process exit code."""
    import torch

    from ctagrg.evaluation.evaluate import headline_table, load_metrics
    from ctagrg.utils.array_memo import ArrayMemo

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        # one memo of the cnn3d sphere and node channels, injected into every model the stages build: each volume
        # is measured once
        if cfg.memo is None:
            cfg.memo = ArrayMemo(DEMO_MEMO_BYTES)
        seconds = run_stages(build_stages(), cfg, log)
    except DemoError as exc:
        print(f"ctagrg demo: {exc}", file=sys.stderr)
        return 1
    if cfg.until is not None and cfg.until != STAGES[-1]:
        log(f"stopped after stage {cfg.until} (--until); stage seconds: {json.dumps(seconds)}")
        return 0
    metrics = load_metrics(paths(out)["eval"] / "metrics.json")
    log("\nExample reports (phantom test split):\n" + examples_text(paths(out)["eval"]))
    log("\nHeadline metrics (95% bootstrap CI):\n" + headline_table(metrics))
    cpu = sum(json.loads(marker(out, s).read_text()).get("cpu_seconds", 0.0) for s in STAGES)
    log(f"\nstage seconds (this run; 0 = skipped): {json.dumps(seconds)}; total {sum(seconds.values()):.0f} s; "
        f"all stages used {cpu:.0f} CPU-s")
    log(f"next: ctagrg report {paths(out)['data']}/test --model {paths(out)['model']} --out reports.jsonl")
    return 0
