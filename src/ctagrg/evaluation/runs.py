"""Aggregate several finished evaluations (e.g. five training seeds) into mean ± sd per headline figure.

Each run is an ``ctagrg evaluate`` output folder with a ``metrics.json``. Runs are comparable only when they were
scored the same way, so the folders must agree on :data:`MUST_AGREE` (protocol, split, labeler, reference text);
otherwise :func:`aggregate_runs` raises a one-line ValueError naming the folders and their values.

For each headline key: ``mean``, ``sd`` (sample standard deviation, ddof = 1; None for a single run), ``n`` (runs
with a number) and ``values`` (per run, None where that run has none, e.g. METEOR without Java).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MUST_AGREE: tuple[str, ...] = ("protocol", "split", "labeler", "reference_columns", "clinical_reference")
SUMMARY_JSON, SUMMARY_MD = "runs_summary.json", "runs_summary.md"


def _load(folder: Path) -> dict[str, Any]:
    path = folder / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (is {folder} an ctagrg evaluate output folder?)")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if "protocol" not in metrics.get("meta", {}):
        raise ValueError(f"{path}: no protocol recorded (written by an older ctagrg evaluate); evaluate it again")
    return metrics


def _setting(metrics: dict[str, Any], key: str) -> Any:
    meta = metrics["meta"]
    value = meta.get(key, meta.get("config", {}).get(key))
    return tuple(value) if isinstance(value, list) else value


def check_comparable(folders: Sequence[Path], runs: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError naming the folders when the runs differ in any :data:`MUST_AGREE` setting."""
    for key in MUST_AGREE:
        values = [_setting(m, key) for m in runs]
        if len(set(values)) > 1:
            shown = ", ".join(f"{f} ({_show(v)})" for f, v in zip(folders, values, strict=True))
            raise ValueError(f"runs were evaluated with different {key}: {shown}")


def _show(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _stats(values: list[float | None]) -> dict[str, Any]:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    mean = sum(nums) / len(nums) if nums else None
    sd = math.sqrt(sum((v - mean) ** 2 for v in nums) / (len(nums) - 1)) if len(nums) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(nums), "values": values}


def aggregate_runs(folders: Sequence[str | Path]) -> dict[str, Any]:
    """Mean ± sd of every headline figure over the evaluation folders ``folders`` (at least one).

    Returns ``runs`` (the folders), the agreed settings, and ``metrics``: key -> mean, sd, n, values.
    """
    paths = [Path(f) for f in folders]
    if not paths:
        raise ValueError("no evaluation folders given")
    runs = [_load(p) for p in paths]
    check_comparable(paths, runs)
    keys: list[str] = []
    for m in runs:
        keys += [k for k in m.get("headline", {}) if k not in keys]
    metrics = {k: _stats([m.get("headline", {}).get(k) for m in runs]) for k in keys}
    settings = {k: _setting(runs[0], k) for k in MUST_AGREE}
    return {"runs": [str(p) for p in paths], "settings": settings, "metrics": metrics,
            "sd": "sample standard deviation over runs (ddof = 1)"}


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown table: metric | mean ± sd | n."""
    s = summary["settings"]
    lines = [f"{len(summary['runs'])} runs, protocol {s['protocol']}, split {s['split']}, labeler {s['labeler']}",
             "", "| metric | mean ± sd | n |", "| --- | --- | --- |"]
    for key, st in summary["metrics"].items():
        if st["mean"] is None:
            shown = "null"
        else:
            shown = f"{st['mean']:.3f}" + (f" ± {st['sd']:.3f}" if st["sd"] is not None else "")
        lines.append(f"| {key} | {shown} | {st['n']} |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str | Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``runs_summary.json`` and ``runs_summary.md`` into ``out_dir`` (atomically); return their paths."""
    from ctagrg.utils.atomic import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / SUMMARY_JSON, summary)
    write_text_atomic(out / SUMMARY_MD, summary_table(summary))
    return out / SUMMARY_JSON, out / SUMMARY_MD
