"""Scans per second of ``ctagrg report`` with ``--workers 0`` and ``--workers 2`` (docs/inference.md).

    PYTHONPATH=src .venv/bin/python benchmarks/report_workers.py [--n 24] [--work-dir DIR] [--device cpu]

Writes ``--n`` phantom NIfTI files (``ctagrg phantom --size small``: ~64 x 128 x 128 voxels at 4 x 2.5 x 2.5 mm,
int16 .nii.gz) and a demo-sized packaged model with random weights (the demo's preprocessing, 64 x 128 x 128 at
4 x 2 x 2 mm, its cnn3d encoder width and region grid, 64-d abnormality embeddings, its 2-layer 128-wide GPT-2 and
the GPT-2 tokenizer of ../shared; thresholds at each label's median probability, so about half the labels get a
sentence) into ``--work-dir`` (default: a temp folder), then times ``ctagrg report`` over all scans in a fresh
process per setting, after one warm-up run, and prints scans/s from the wall time (process start and model load
included) and from the summed ``seconds`` of the lines, with the machine's load (``uptime``) before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(out: Path, tokenizer: Path) -> Path:
    import torch

    from ctagrg.config import load_config, to_dict
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.extras.cnn3d.config import CNN3DConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.models.conditioning import ConditioningConfig
    from ctagrg.models.decoder import DecoderConfig, ReportDecoder, load_tokenizer
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig

    torch.manual_seed(0)
    pp = load_config(PreprocessConfig, ROOT / "configs" / "demo" / "preprocess.yaml", [])
    cnn = CNN3DConfig(input_shape=tuple(pp.shape), input_hu=(pp.hu_min, pp.hu_max, pp.offset), width=8,
                      region_grid=4, embed_dim=0)
    visual = Step1Model(VisualModelConfig(encoder="cnn3d", extras={"cnn3d": to_dict(cnn)}, heads=HeadsConfig(
        in_dim=2880, embed_dim=64, classifier_hidden=128))).eval()  # 2880: cnn3d's pooled features (embed_dim 0)
    with torch.no_grad():
        probs = torch.sigmoid(visual(torch.rand(4, 1, *pp.shape) - pp.offset)["logits"])
    cond = ConditioningConfig(input_dim=64, hidden_dims=(256,), output_dim=128)
    decoder = ReportDecoder(DecoderConfig(n_layer=2, n_embd=128, n_head=4, n_positions=128, conditioning=cond))
    reporter = Reporter(visual, decoder.eval(), load_tokenizer(tokenizer), probs.median(0).values.tolist(), pp,
                        ReporterConfig(generation=GenerationSettings(max_new_tokens=24)))
    return reporter.save_pretrained(out)


def timed_report(model: Path, scans: Path, out: Path, workers: int, device: str) -> dict[str, float]:
    out.unlink(missing_ok=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CTAGRG_PROGRESS": "off"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ctagrg.cli.main", "--quiet", "report", str(scans), "--model", str(model),
                    "--out", str(out), "--device", device, "--workers", str(workers)], env=env, check=True)
    wall = time.perf_counter() - start
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert all("report" in line for line in lines), "a scan failed"
    return {"workers": workers, "scans": len(lines), "wall_s": round(wall, 1),
            "scans_per_s": round(len(lines) / wall, 3),
            "line_seconds_sum": round(sum(line["seconds"] for line in lines), 1), "uptime": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokenizer", type=Path, default=ROOT.parent / "shared" / "data" / "gpt2-tokenizer")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ctagrg_report_workers_"))
    scans = work / "data" / "train"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if not scans.is_dir():
        subprocess.run([sys.executable, "-m", "ctagrg.cli.main", "--quiet", "phantom", "--out", str(work / "data"),
                        "--n", str(args.n), "--size", "small", "--split", "train=1.0"], env=env, check=True)
    model = work / "model"
    if not model.is_dir():
        build_model(model, args.tokenizer)
    timed_report(model, scans, work / "warmup.jsonl", 0, args.device)  # page cache and imports warm
    for workers in (0, 2):
        print(json.dumps(timed_report(model, scans, work / f"w{workers}.jsonl", workers, args.device)), flush=True)


if __name__ == "__main__":
    main()
