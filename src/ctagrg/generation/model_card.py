"""The packaged model's ``README.md``: Hub metadata (YAML front matter), intended use, input format, training data,
metrics, evaluation results with their protocol, versions.

The front matter is what the Hugging Face Hub reads (https://huggingface.co/docs/hub/model-cards): ``license``,
``library_name``, ``tags``, ``pipeline_tag``, ``datasets`` and ``base_model`` when known, and, once evaluation
results are added (``ctagrg push --evaluation``), ``metrics`` and a ``model-index`` whose metric names state the
evaluation protocol and labeler (docs/evaluation.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ctagrg.labels import LABELS

DEFAULT_LICENSE = "apache-2.0"  # ctagrg's own; a model trained on CT-RATE states the data's terms (card "license")
PIPELINE_TAG = "image-to-text"  # a 3D CT in, a report out: the Hub's nearest task
TAGS = ("ctagrg", "ct-agrg", "medical", "radiology", "chest-ct", "3d", "report-generation", "research-only")
TASK = {"type": PIPELINE_TAG, "name": "Chest CT report generation"}
# Hub metric ids of the headline figures, by the last part of their dotted name (ctagrg.evaluation.protocols)
_METRIC_TYPES = (("auroc", "roc_auc"), ("f1", "f1"), ("precision", "precision"), ("recall", "recall"),
                 ("accuracy", "accuracy"), ("bleu", "bleu"), ("meteor", "meteor"), ("rouge", "rouge"),
                 ("cider", "cider"), ("crg", "crg"))
EVALUATION_HEADING = "## Evaluation"


def _table(rows: dict[str, Any]) -> str:
    if not rows:
        return "_not recorded_\n"
    lines = ["| name | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def render_model_card(*, preprocess: dict[str, Any], thresholds: list[float], generation: dict[str, Any],
                      training_data: str = "", metrics: dict[str, Any] | None = None,
                      versions: dict[str, str] | None = None, notes: list[str] | None = None,
                      hub: dict[str, Any] | None = None, evaluations: list[dict[str, Any]] | None = None) -> str:
    """Markdown model card, starting with its Hub metadata (``hub_metadata``).

    Args:
        preprocess: the resolved PreprocessConfig (dict); states the input format.
        thresholds: 18 probability thresholds, ``LABELS`` order.
        generation: decoding settings (dict).
        training_data: free text: dataset, splits, number of volumes.
        metrics: name → value (e.g. clinical F1, BLEU-4), with the split they were measured on in the name.
        versions: package → version.
        notes: paragraphs from the Reporter's post-processors (what they change in a report, e.g. that nodule
            sizes are measured, not generated).
        hub: Hub metadata fields: ``license``, ``datasets`` (Hub dataset ids), ``base_model`` (a Hub model id),
            ``tags`` (added to ``TAGS``), ``name`` (the model-index name).
        evaluations: ``evaluation_result`` dicts, shown under "Evaluation" and in the model-index.
    """
    shape = preprocess.get("shape")
    spacing = preprocess.get("spacing")
    measured = "".join(f"\n{note.strip()}\n" for note in notes or [])
    thr = "\n".join(f"| {label} | {t:.3f} |" for label, t in zip(LABELS, thresholds, strict=True))
    head = front_matter(hub_metadata(hub or {}, evaluations or []))
    return head + f"""# CT-AGRG report generator (ctagrg packaged model)

**Research software. Not for diagnostic use.** This model writes draft chest CT findings for research on report
generation. It has not been validated clinically, it can miss abnormalities or invent them, and its output must not
inform the care of any patient.

## What it does
A 3D visual encoder scores the 18 CT-RATE abnormalities. For each abnormality whose probability reaches its
threshold, a GPT-2 decoder with pseudo self-attention writes one sentence from that abnormality's embedding. The
report is those sentences in CT-RATE label order, or "No abnormalities detected." (CT-AGRG, Di Piazza et al.,
ISBI 2025; implementation: ctagrg.)
{measured}
## Input
- A non-contrast chest CT: NIfTI, NRRD, MHA/MHD, a DICOM series folder or a `.zip` of one, with intensities in
  Hounsfield units (or raw values with rescale slope/intercept in the header).
- Preprocessing (done by `Reporter.report` / `ctagrg report`, settings in `preprocess.json`): reoriented to
  {preprocess.get("axcodes", "SLP")}, resampled to {spacing} mm (D, H, W), HU window
  [{preprocess.get("hu_min")}, {preprocess.get("hu_max")}] mapped to [0, 1] − {preprocess.get("offset")},
  centre-cropped or padded to {shape}.
- A NumPy array given directly must already be preprocessed this way: float32 (D, H, W) = {shape}.

## Training data
{training_data or "_not recorded_"}

## Metrics
{_table(metrics or {})}
{evaluation_section(evaluations or [])}
## Decision thresholds (probability)
| abnormality | threshold |
| --- | --- |
{thr}

## Generation
{_table(generation)}
## Files
`visual/` (encoder + step-1 heads), `decoder/` (GPT-2 + conditioning), `tokenizer/`, `thresholds.json`,
`preprocess.json`, `reporter.json` (generation and assembly settings).

## Versions
{_table(versions or {})}"""


def hub_metadata(hub: dict[str, Any], evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    """The card's front matter as a dict (see the module docstring); ``hub`` and ``evaluations`` as in
    ``render_model_card``. Keys without a value (no datasets, no base model, no evaluation) are left out."""
    meta: dict[str, Any] = {"license": hub.get("license") or DEFAULT_LICENSE, "library_name": "ctagrg",
                            "tags": list(dict.fromkeys([*TAGS, *hub.get("tags", [])])), "pipeline_tag": PIPELINE_TAG}
    if hub.get("datasets"):
        meta["datasets"] = list(hub["datasets"])
    if hub.get("base_model"):
        meta["base_model"] = hub["base_model"]
    results = [_model_index_result(e) for e in evaluations]
    results = [r for r in results if r["metrics"]]
    if results:
        meta["metrics"] = sorted({m["type"] for r in results for m in r["metrics"]})
        meta["model-index"] = [{"name": hub.get("name") or "ctagrg", "results": results}]
    return meta


def front_matter(meta: dict[str, Any]) -> str:
    """``meta`` as a YAML block between ``---`` lines, as the Hub reads it at the top of README.md."""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n"


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a README.md; ({}, text) when it has no front matter."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---\n", 4)
    if end < 0:
        return {}, text
    meta = yaml.safe_load(text[4:end]) or {}
    return (meta if isinstance(meta, dict) else {}), text[end + 5 :].lstrip("\n")


def evaluation_result(metrics: dict[str, Any], where: str = "metrics.json") -> dict[str, Any]:
    """What the card keeps of one ``ctagrg evaluate`` metrics.json: ``protocol``, ``split``, ``dataset`` (the last
    two parts of the data folder), ``labeler``, ``volumes`` and the ``headline`` figures (None values dropped).
    ValueError naming ``where`` for a metrics.json without a protocol (written before protocols existed)."""
    meta = metrics.get("meta") or {}
    if not meta.get("protocol") or not isinstance(metrics.get("headline"), dict):
        raise ValueError(f"{where}: no meta.protocol or headline; not a metrics.json of this ctagrg evaluate "
                         f"(evaluate the model again)")
    data = Path(str(meta.get("data", "")))
    return {"protocol": meta["protocol"], "split": meta.get("split"), "dataset": "/".join(data.parts[-2:]),
            "labeler": (meta.get("config") or {}).get("labeler", "rules"), "volumes": meta.get("evaluated"),
            "headline": {k: float(v) for k, v in metrics["headline"].items() if isinstance(v, (int, float))}}


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """``evaluation_result`` of an evaluation folder (or its metrics.json)."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    try:
        return evaluation_result(json.loads(file.read_text(encoding="utf-8")), str(file))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: cannot read the evaluation's metrics ({exc})") from None


def evaluation_section(evaluations: list[dict[str, Any]]) -> str:
    """The card's "Evaluation" section: per evaluation, its protocol, data and headline figures."""
    if not evaluations:
        return (f"{EVALUATION_HEADING}\n_No evaluation recorded. `ctagrg evaluate` measures the model; `ctagrg push "
                f"--evaluation EVAL_DIR` adds the results here and to the Hub metadata._\n")
    parts = [EVALUATION_HEADING]
    for e in evaluations:
        parts.append(f"Protocol `{e['protocol']}` (docs/evaluation.md), labeler `{e['labeler']}`, split "
                     f"`{e['split']}` of `{e['dataset']}`, {e['volumes']} volumes:\n\n" + _table(e["headline"]))
    return "\n".join(parts)


def with_evaluations(text: str, evaluations: list[dict[str, Any]], hub: dict[str, Any]) -> str:
    """README.md ``text`` with its Evaluation section and the Hub metadata's results replaced by ``evaluations``;
    the other metadata is kept (a card without front matter gets ``hub_metadata(hub, ...)``)."""
    meta, body = split_front_matter(text)
    fresh = hub_metadata({**hub, **{k: meta[k] for k in ("license", "datasets", "base_model") if k in meta}},
                         evaluations)
    meta = {**{k: v for k, v in meta.items() if k not in ("metrics", "model-index")}, **fresh}
    section = evaluation_section(evaluations) + "\n"
    start = body.find(EVALUATION_HEADING + "\n")
    if start < 0:  # a card written before evaluations were recorded: the section goes before the thresholds
        anchor = body.find("## Decision thresholds")
        start = end = anchor if anchor >= 0 else len(body)
    else:
        nxt = body.find("\n## ", start + len(EVALUATION_HEADING))
        end = nxt + 1 if nxt >= 0 else len(body)
    return front_matter(meta) + body[:start] + section + body[end:]


def _model_index_result(e: dict[str, Any]) -> dict[str, Any]:
    dataset = {"type": e["dataset"], "name": e["dataset"], "split": e["split"]}
    metrics = [{"type": _metric_type(k), "value": round(v, 6),
                "name": f"{k} (protocol {e['protocol']}, labeler {e['labeler']})"} for k, v in e["headline"].items()]
    return {"task": dict(TASK), "dataset": dataset, "metrics": metrics}


def _metric_type(key: str) -> str:
    last = key.rsplit(".", 1)[-1].lower()
    return next((hub_id for part, hub_id in _METRIC_TYPES if part in last), last)
