"""The packaged model's ``README.md``: intended use, input format, training data, metrics, versions."""

from __future__ import annotations

from typing import Any

from ctagrg.labels import LABELS


def _table(rows: dict[str, Any]) -> str:
    if not rows:
        return "_not recorded_\n"
    lines = ["| name | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def render_model_card(*, preprocess: dict[str, Any], thresholds: list[float], generation: dict[str, Any],
                      training_data: str = "", metrics: dict[str, Any] | None = None,
                      versions: dict[str, str] | None = None, nodule_size: dict[str, Any] | None = None) -> str:
    """Markdown model card.

    Args:
        preprocess: the resolved PreprocessConfig (dict); states the input format.
        thresholds: 18 probability thresholds, ``LABELS`` order.
        generation: decoding settings (dict).
        training_data: free text: dataset, splits, number of volumes.
        metrics: name → value (e.g. clinical F1, BLEU-4), with the split they were measured on in the name.
        versions: package → version.
        nodule_size: the Reporter's NoduleSizeConfig (dict); when enabled, the card says that nodule sizes are
            measured, not generated.
    """
    shape = preprocess.get("shape")
    spacing = preprocess.get("spacing")
    measured = ""
    if nodule_size and nodule_size.get("enabled"):
        cal = nodule_size.get("calibration") or {}
        how = (f"calibrated on {cal.get('measured')} validation nodules" if cal.get("calibrated")
               else "not calibrated")
        offset = f"{nodule_size.get('offset_mm', 0.0):.2f}"
        measured = f"""
A detected lung nodule's size is **measured, not generated** (not part of the published method): the diameter of
the largest solid sphere with aerated lung around it, in the lateral half where the nodule was found (the whole
volume for a model without lateral halves): diameter = 2 x radius + {offset} mm ({how}). The nodule's sentence
states that diameter in place of the one the decoder wrote (a sentence with a range or several sizes is left as
written), and `size_mm` holds it. Validated on synthetic phantoms only.
"""
    thr = "\n".join(f"| {label} | {t:.3f} |" for label, t in zip(LABELS, thresholds, strict=True))
    return f"""# CT-AGRG report generator (ctagrg packaged model)

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
