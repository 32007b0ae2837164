"""A montage for checking phantoms by eye: one row per abnormality, slices through the finding's location.

Columns: axial slice in a lung window, the same slice in a mediastinal window, and a coronal slice (lung window),
each centred on the finding's ``center_ras_mm`` from the ground truth, with a small marker beside it. Images are
shown in radiological convention (patient right on the image left, anterior up, superior up).

>>> render_preview("phantoms/", "preview.png")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ctagrg.data.names import volume_stem
from ctagrg.labels import LABELS

LUNG_WINDOW = (-1150.0, 250.0)
MEDIASTINAL_WINDOW = (-160.0, 240.0)


def find_examples(root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """First volume (by name) showing each label: label → (volume path, that finding's ground truth)."""
    gt_dir = root / "ground_truth"
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{root}: no ground_truth/ folder; is this a phantom dataset?")
    volumes = {volume_stem(p): p for p in root.glob("*/*/*/*.nii.gz")}
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for gt_path in sorted(gt_dir.glob("*.json")):
        gt = json.loads(gt_path.read_text(encoding="utf-8"))
        if gt["name"] not in volumes:
            continue
        for f in gt["findings"]:
            if f["label"] not in out and f.get("center_ras_mm") is not None:
                out[f["label"]] = (volumes[gt["name"]], f)
    return out


def _load_lps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU array reoriented to (L, P, S) axis order and its RAS affine."""
    import nibabel as nib

    img = nib.load(str(path))
    ornt = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt("LPS"))
    img = img.as_reoriented(ornt)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _window(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    return np.clip((image - window[0]) / (window[1] - window[0]), 0.0, 1.0)


def render_preview(root: str | Path, out_png: str | Path, labels: tuple[str, ...] = LABELS) -> Path:
    """Draw the montage of ``root`` (a phantom dataset) into ``out_png``; labels without an example get a blank row.

    Returns the PNG path. Raises FileNotFoundError when ``root`` has no ground truth.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctagrg.utils.atomic import atomic_path

    root, out_png = Path(root), Path(out_png)
    examples = find_examples(root)
    fig, axes = plt.subplots(len(labels), 3, figsize=(7.5, 2.5 * len(labels)), squeeze=False)
    for row, label in enumerate(labels):
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label.replace(" ", "\n", 1), fontsize=8)
        if label not in examples:
            axes[row, 1].set_title("no example in this dataset", fontsize=7)
            continue
        path, finding = examples[label]
        _draw_row(axes[row], path, finding)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)
    return out_png


def _draw_row(axes: Any, path: Path, finding: dict[str, Any]) -> None:
    hu, affine = _load_lps(path)
    ijk = np.linalg.solve(affine, np.append(finding["center_ras_mm"], 1.0))[:3]
    i, j, k = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(ijk, hu.shape, strict=True))
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    axial = hu[:, :, k].T  # rows: anterior → posterior; columns: patient right → left
    coronal = hu[:, j, :].T[::-1]  # rows: superior → inferior
    for ax, img, window, title in ((axes[0], axial, LUNG_WINDOW, "axial, lung"),
                                   (axes[1], axial, MEDIASTINAL_WINDOW, "axial, mediastinum"),
                                   (axes[2], coronal, LUNG_WINDOW, "coronal, lung")):
        aspect = 1.0 if img is axial else spacing[2] / spacing[0]
        ax.imshow(_window(img, window), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        y = j if img is axial else hu.shape[2] - 1 - k
        ax.plot([i + 6], [y - 6], marker="v", color="red", markersize=5, alpha=0.8)
        ax.set_title(title, fontsize=7)
    details = [finding.get(key) for key in ("side", "lobe", "region", "extent")]
    size = finding.get("size_mm")
    text = ", ".join(str(v) for v in details if v) + (f", {size:g} mm" if size else "")
    axes[1].set_xlabel(f"{path.name}: {text}", fontsize=6)
