"""Run the VLM3D challenge's own evaluation scripts on the inputs of tests/vlm3d_fixtures.py; write the figures.

This produced tests/data/vlm3d_reference.json (see docs/evaluation.md, "Checked against the challenge's code"):

    git --git-dir=<mirror of forithmus/VLM3D-Dockers> archive HEAD reportgen_evaluation | tar -x -C /tmp/vlm3d
    python3.11 -m venv /tmp/vlm3d/venv
    /tmp/vlm3d/venv/bin/pip install scikit-learn==1.2.2 pandas==2.0.2 numpy==1.24.3 pycocoevalcap tqdm
    PYTHONPATH=src python tests/data/vlm3d_make_reference.py --harness /tmp/vlm3d/reportgen_evaluation \
        --python /tmp/vlm3d/venv/bin/python --reports ../shared/data/reports --out tests/data/vlm3d_reference.json

It runs the harness's ``calc_scores.py``, ``crg_score.py`` and ``nlg_metrics.py`` (their command lines, as the
harness's ``evaluation.py`` calls them) in that venv; the label step (``infer.py``, RadBERT) is replaced by the
given label matrix of the generated reports. Java must be on PATH (the harness's METEOR). Nothing of the harness
is imported here or copied into ctagrg.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for vlm3d_fixtures

from vlm3d_fixtures import dev_inputs, synthetic_inputs  # noqa: E402

from ctagrg.labels import LABELS  # noqa: E402


def _label_csv(path: Path, names: list[str], labels: list[list[int]], suffix: str) -> None:
    lines = [",".join(["AccessionNo", *(f'"{c}"' if "," in c else c for c in LABELS)])]
    lines += [",".join([n + suffix, *map(str, row)]) for n, row in zip(names, labels, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_harness(inputs: dict[str, Any], harness: Path, python: str) -> dict[str, Any]:
    """The three figure files of the harness for one input set, merged as its evaluation.py merges them."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # predictions keyed as the harness's infer.py writes them; ground truth with the .nii.gz it strips
        _label_csv(d / "pred.csv", inputs["names"], inputs["generated_labels"], "")
        _label_csv(d / "gt.csv", inputs["names"], inputs["reference_labels"], ".nii.gz")
        sub = {"generated_reports": [{"input_image_name": n, "report": r}
                                     for n, r in zip(inputs["names"], inputs["generated"], strict=True)]}
        (d / "pred.json").write_text(json.dumps([{"outputs": [{"value": sub}]}]), encoding="utf-8")
        gt = {"generated_reports": [{"input_image_name": n + ".mha", "report": r}
                                    for n, r in zip(inputs["names"], inputs["references"], strict=True)]}
        (d / "gt.json").write_text(json.dumps(gt), encoding="utf-8")
        calls = [("calc_scores.py", "--pred_csv", d / "pred.csv", "--gt_csv", d / "gt.csv", "cls.json"),
                 ("crg_score.py", "--pred_csv", d / "pred.csv", "--gt_csv", d / "gt.csv", "crg.json"),
                 ("nlg_metrics.py", "--pred_json", d / "pred.json", "--gt_json", d / "gt.json", "nlg.json")]
        for script, a, av, b, bv, out in calls:
            subprocess.run([python, str(harness / script), a, str(av), b, str(bv), "--out_json", str(d / out)],
                           check=True, cwd=harness)
        read = lambda name: json.loads((d / name).read_text(encoding="utf-8"))  # noqa: E731
        return {"generation": read("nlg.json"), "classification": read("cls.json"), "crg": read("crg.json")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--harness", type=Path, required=True, help="the reportgen_evaluation folder")
    ap.add_argument("--python", required=True, help="python of the venv with the harness's requirements")
    ap.add_argument("--reports", type=Path, required=True, help="../shared/data/reports")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    synthetic, dev = synthetic_inputs(), dev_inputs(args.reports)
    versions = subprocess.run([args.python, "-c", "import sklearn, pandas, numpy, importlib.metadata as m; "
                               "print(sklearn.__version__, pandas.__version__, numpy.__version__, "
                               "m.version('pycocoevalcap'))"], check=True, capture_output=True, text=True)
    result = {
        "produced_by": "tests/data/vlm3d_make_reference.py (command in its docstring)",
        "harness": "forithmus/VLM3D-Dockers reportgen_evaluation/ (calc_scores.py, crg_score.py, nlg_metrics.py)",
        "versions": dict(zip(("scikit-learn", "pandas", "numpy", "pycocoevalcap"), versions.stdout.split(),
                             strict=True)),
        "synthetic": {"inputs": synthetic, "harness_output": run_harness(synthetic, args.harness, args.python)},
        "dev": {"inputs": "tests/vlm3d_fixtures.py dev_inputs(../shared/data/reports, n=40, seed=0)",
                "harness_output": run_harness(dev, args.harness, args.python)},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
