"""benchmarks/gpu_check.py: its refusal without CUDA, its card table, and a whole ``--cpu --tiny`` run whose JSON is
checked section by section (CI runs it; the paper-size run needs a GPU, benchmarks/GPU_CHECK.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_refuses_without_cuda_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check would run instead of refusing")
    out = tmp_path / "out"
    proc = _run(["--out", str(out)])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--cpu --tiny" in lines[0]
    assert not out.exists()


def test_cpu_needs_tiny(tmp_path: Path) -> None:
    proc = _run(["--cpu", "--out", str(tmp_path / "out")])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["gpu_check: --cpu runs only with --tiny (the paper-size models take "
                                                "hours per section on a CPU)"]


def test_peak_rates_by_card_name() -> None:
    from gpu_check import peak_bf16_tflops

    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA H100 NVL") == 835.0
    assert peak_bf16_tflops("NVIDIA H200") == 989.0
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_bf16_tflops("Tesla T4") is None


def test_markdown_shows_failed_and_skipped_items() -> None:
    from gpu_check_md import render

    result = {"environment": {"name": "NVIDIA H100 80GB HBM3"}, "sections": {
        "train": {"runs": [{"stage": "pretrain", "encoder": "ctnet", "activation_checkpointing": False,
                            "trunk_chunk": None, "status": "oom", "reason": "out of memory: tried 30 GiB"}],
                  "seconds": 3.0},
        "end_to_end": {"status": "skipped", "reason": "time budget: section end_to_end has 90 s"}}}
    text = render(result)
    assert "| pretrain | ctnet | off |" in text and "oom: out of memory: tried 30 GiB" in text
    assert "skipped: time budget" in text


@pytest.mark.slow
def test_cpu_tiny_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(["--cpu", "--tiny", "--out", str(out), "--steps", "1", "--repeats", "1", "--workers", "0", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["tiny"] is True and result["environment"]["device_type"] == "cpu"
    assert result["environment"]["peak_bf16_tflops"] is None
    sections = result["sections"]
    assert list(sections) == ["train", "decoder", "end_to_end", "loader"]
    assert all(s["seconds"] > 0 for s in sections.values())

    runs = sections["train"]["runs"]
    assert len(runs) == 10 and all(r["status"] == "ok" for r in runs), runs
    flops: dict[tuple[str, str], set[int]] = {}
    for r in runs:
        median = r["s_per_step"]["median"]
        assert median > 0 and r["batch"] == 4 and r["precision"] == "fp32" and r["loss_finite"]
        assert r["volumes_per_s"] == pytest.approx(4 / median, rel=0.01)
        assert r["model_flops_per_step"] > 0 and r["achieved_tflops"] > 0 and r["mfu"] is None
        flops.setdefault((r["stage"], r["encoder"]), set()).add(r["model_flops_per_step"])
    # model FLOPs do not depend on checkpointing (recomputation is not model work)
    assert all(len(v) == 1 for v in flops.values()) and len(flops) == 4

    train, generate = sections["decoder"]["train"], sections["decoder"]["generate"]
    assert train["status"] == "ok" and generate["status"] == "ok"
    assert train["model_flops_per_step"] > 0 and train["s_per_step"]["median"] > 0
    assert 0 < train["trainable_params"] < train["params"]  # GPT-2 frozen: only Φ_T, uk, uv train
    assert generate["sentences"] == 18 and 0 < generate["tokens"] <= 18 * generate["max_new_tokens"]

    e2e = sections["end_to_end"]
    assert e2e["status"] == "ok" and e2e["detected"] == 18 and e2e["scan_source"] == "synthetic"
    split = {k: v["median"] for k, v in e2e["split_s"].items()}
    assert all(split[p] > 0 for p in ("read", "preprocess", "encoder_heads", "generation"))
    assert split["total"] >= split["generation"] and e2e["report_s"]["median"] > 0

    loader = sections["loader"]
    assert [r["workers"] for r in loader["runs"]] == [0, 2]
    assert all(r["status"] == "ok" and r["volumes"] == 8 and r["volumes_per_s"] > 0 for r in loader["runs"])
    assert loader["model_consumes"]["volumes_per_s"] == max(r["volumes_per_s"] for r in runs
                                                            if not r["activation_checkpointing"])
    assert all(r["vs_model"] > 0 for r in loader["runs"])

    md = (out / "gpu_check.md").read_text()
    for heading in ("### Training steps", "### Step 2 decoder", "### One scan to report", "### Loader"):
        assert heading in md
