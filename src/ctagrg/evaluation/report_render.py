"""Render an evaluation as ``report.md`` and ``report.html`` with PNG figures beside them.

The document is built once as a list of blocks (heading, paragraph, table, image, example) and written in both
formats, so the two never disagree. Figures use matplotlib's Agg backend (no display needed):
``f1_per_label.png`` (classification and clinical F1), ``auroc_per_label.png`` and ``roc_curves.png``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.labels import LABELS
from ctagrg.utils.atomic import atomic_path, write_text_atomic

Block = tuple[str, Any]  # ("h1"|"h2"|"p"|"table"|"img"|"example", payload)
DISCLAIMER = "Research software, not for diagnostic use."


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _save(fig: Any, path: Path, tight: bool = True, dpi: int = 110) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None, format="png")
    plt.close(fig)


def plot_per_label(values: dict[str, list[float | None]], title: str, path: Path) -> None:
    """Horizontal grouped bars, one group per label; ``values``: series name -> 18 values (None drawn as 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6.5))
    y = np.arange(len(LABELS))
    height = 0.8 / max(len(values), 1)
    for k, (name, vals) in enumerate(values.items()):
        ax.barh(y + k * height, [v or 0.0 for v in vals], height=height, label=name)
    ax.set_yticks(y + height * (len(values) - 1) / 2, LABELS, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if len(values) > 1:
        ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_roc_curves(probs: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """ROC curve of every label with both classes present; probs, labels: (N, 18)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = plt.subplots(3, 6, figsize=(15, 8), sharex=True, sharey=True)
    for j, ax in enumerate(axes.flat):
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        y = labels[:, j]
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, probs[:, j])
            ax.plot(fpr, tpr, lw=1.5)
            ax.set_title(f"{LABELS[j][:32]}\nAUROC {roc_auc_score(y, probs[:, j]):.3f}", fontsize=7.5)
        else:
            ax.set_title(f"{LABELS[j][:32]}\n(one class only)", fontsize=7.5)
    fig.supxlabel("false positive rate")
    fig.supylabel("true positive rate")
    # fixed margins: a "tight" bounding box costs an extra full draw of 18 axes (~2x the save time)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.93, bottom=0.07, hspace=0.45, wspace=0.1)
    _save(fig, path, tight=False, dpi=90)


def build_blocks(metrics: dict[str, Any], examples: list[dict[str, str]], failed: list[dict[str, Any]],
                 figures: list[tuple[str, str]]) -> list[Block]:
    """The report's content, independent of the output format."""
    meta, ci = metrics.get("meta", {}), metrics.get("ci95", {})
    title = f"Evaluation: {meta.get('split', '?')} split, protocol {meta.get('protocol', '?')}"
    blocks: list[Block] = [("h1", title), ("p", DISCLAIMER), (
        "p", f"Model `{meta.get('model')}` on `{meta.get('data')}`: {meta.get('evaluated')} volumes evaluated, "
             f"{meta.get('failed')} failed, {meta.get('seconds')} s. Definitions: docs/evaluation.md.")]
    rows = [[k, _fmt(v), f"[{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if ci.get(k) else "—"]
            for k, v in metrics.get("headline", {}).items()]
    blocks += [("h2", "Headline metrics"), ("table", (["metric", "value", "95% CI (bootstrap)"], rows))]
    notes = {**metrics.get("nlg", {}).get("notes", {}), **metrics.get("vlm3d", {}).get("notes", {})}
    blocks += [("p", f"{k}: {v}") for k, v in notes.items()]
    blocks += [("h2", "Per label"), ("table", _per_label_table(metrics))]
    blocks += [("h2", "Figures")] + [("img", f) for f in figures]
    blocks += [("h2", "Example reports")] + [("example", e) for e in examples]
    if failed:
        blocks += [("h2", "Failed volumes"), ("table", (["input", "error"],
                                                        [[f.get("input", "?"), f["error"]] for f in failed]))]
    return blocks


def clinical_per_label(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per-label scores of the generated reports' labels, from whichever protocol scored them."""
    return (metrics.get("clinical", {}).get("per_label")
            or metrics.get("vlm3d", {}).get("classification", {}).get("per_label", {}))


def _per_label_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cls = metrics.get("classification", {}).get("per_label", {})
    clin = clinical_per_label(metrics)
    head = ["label", "support", "AUROC", "classifier F1", "clinical P", "clinical R", "clinical F1"]
    rows = []
    for name in LABELS:
        c, k = cls.get(name, {}), clin.get(name, {})
        rows.append([name, _fmt(c.get("support", k.get("support"))), _fmt(c.get("auroc")), _fmt(c.get("f1")),
                     _fmt(k.get("precision")), _fmt(k.get("recall")), _fmt(k.get("f1"))])
    return head, rows


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for kind, data in blocks:
        if kind == "h1":
            out.append(f"# {data}\n")
        elif kind == "h2":
            out.append(f"## {data}\n")
        elif kind == "p":
            out.append(f"{data}\n")
        elif kind == "table":
            head, rows = data
            cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
            out.append("\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                                 + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]) + "\n")
        elif kind == "img":
            out.append(f"![{data[1]}]({data[0]})\n")
        elif kind == "example":
            out.append(f"**{data['name']}**\n\n- generated: {data['generated']}\n- reference: {data['reference']}\n")
    return "\n".join(out)


def to_html(blocks: list[Block]) -> str:
    e = html.escape
    body: list[str] = []
    for kind, data in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{e(data)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(data)}</p>")
        elif kind == "table":
            head, rows = data
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
        elif kind == "img":
            body.append(f'<figure><img src="{e(data[0])}" alt="{e(data[1])}"><figcaption>{e(data[1])}'
                        "</figcaption></figure>")
        elif kind == "example":
            body.append(f"<div class='ex'><b>{e(data['name'])}</b><div><i>generated</i>: {e(data['generated'])}"
                        f"</div><div><i>reference</i>: {e(data['reference'])}</div></div>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}"
             ".ex{margin:1em 0;padding:.5em;background:#f6f6f6}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>ctagrg evaluation</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def render_report(out_dir: str | Path, metrics: dict[str, Any], arrays: dict[str, Any],
                  examples: list[dict[str, str]], failed: list[dict[str, Any]]) -> list[Path]:
    """Write the figures, ``report.md`` and ``report.html`` into ``out_dir``; return the paths written.

    ``arrays``: ``probs`` (N, 18), ``detected`` (N, 18), ``labels`` (N, 18) or None (no ROC/AUROC figures).
    """
    out_dir = Path(out_dir)
    figures: list[tuple[str, str]] = []
    cls = metrics.get("classification", {}).get("per_label", {})
    clin = clinical_per_label(metrics)
    series = {"classifier F1": [cls.get(n, {}).get("f1") for n in LABELS]} if cls else {}
    series["clinical F1 (generated reports)"] = [clin.get(n, {}).get("f1") for n in LABELS]
    plot_per_label(series, "F1 per label", out_dir / "f1_per_label.png")
    figures.append(("f1_per_label.png", "F1 per label"))
    if arrays.get("labels") is not None:
        plot_per_label({"AUROC": [cls.get(n, {}).get("auroc") for n in LABELS]}, "AUROC per label",
                       out_dir / "auroc_per_label.png")
        plot_roc_curves(arrays["probs"], arrays["labels"], out_dir / "roc_curves.png")
        figures += [("auroc_per_label.png", "AUROC per label"), ("roc_curves.png", "ROC curves")]
    blocks = build_blocks(metrics, examples, failed, figures)
    write_text_atomic(out_dir / "report.md", to_markdown(blocks))
    write_text_atomic(out_dir / "report.html", to_html(blocks))
    return [out_dir / f for f, _ in figures] + [out_dir / "report.md", out_dir / "report.html"]
