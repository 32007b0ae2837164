"""Compare ``radbert:DIR`` with CT-CLIP's own inference on all 800 development reports (the figures in
docs/labeler.md), from the fixture that ``radbert_make_reference.py`` wrote. Run with the project's environment:

    PYTHONPATH=src python tests/data/radbert_compare.py --shared ../shared/data --work /tmp/radbert_compare

It also shows what the two old input forms (lower-cased text; findings and impression joined by a newline) change.
tests/test_radbert.py builds its classifier folder with :func:`build_folder`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent


def reference() -> dict:
    return json.loads((DATA / "radbert_ctclip_reference.json").read_text(encoding="utf-8"))


def fixture_state() -> dict:
    """CT-CLIP's checkpoint as the reference run used it: the stored values as float32."""
    from safetensors.torch import load_file

    state = load_file(DATA / "radbert_tiny.safetensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def write_folder(folder: Path, state: dict, config: dict | None = None) -> Path:
    """A RadBERT classifier folder without tokenizer files: config.json + RadBertClassifier.pth."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or reference()["config"]), encoding="utf-8")
    torch.save(state, folder / "RadBertClassifier.pth")
    return folder


def build_folder(folder: Path, gpt2_dir: Path) -> Path:
    """The reference run's classifier folder: its config, CT-CLIP's state dict, and the same RoBERTa-layout tokenizer
    built from the GPT-2 BPE files by the generator's own function."""
    spec = importlib.util.spec_from_file_location("radbert_make_reference", DATA / "radbert_make_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    write_folder(folder, fixture_state())
    if generator.write_roberta_tokenizer(gpt2_dir, folder) != reference()["config"]["vocab_size"]:
        raise ValueError(f"{gpt2_dir}: not the GPT-2 vocabulary the reference was made with")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, required=True, help="../shared/data")
    parser.add_argument("--work", type=Path, required=True, help="folder for the classifier folder")
    args = parser.parse_args()

    from ctagrg.text.labeler import get_labeler
    from ctagrg.text.reports_io import read_reports

    ref = reference()
    labeler = get_labeler(f"radbert:{build_folder(args.work, args.shared / 'gpt2-tokenizer')}")
    reports = read_reports(args.shared / "reports" / "dev_reports.csv", separator=labeler.column_separator)
    if reports.ids != ref["volumes"]:
        raise ValueError("dev_reports.csv does not hold the reference's reports in its order")
    probs, decisions = np.array(ref["probabilities"]), np.array(ref["decisions"])
    rebuilt = np.array(ref["columns_rebuild_text"])
    texts = np.array(reports.texts, dtype=object)
    cases = {
        "columns rebuild CT-CLIP's text": (rebuilt, lambda t: t),
        "whitespace or quotes lost in the split": (~rebuilt, lambda t: t),
        "rebuilt, but lower-cased": (rebuilt, str.lower),
        "rebuilt, but joined by a newline": (rebuilt, lambda t: t.replace(labeler.column_separator, "\n", 1)),
    }
    for name, (mask, change) in cases.items():
        batch = [change(t) for t in texts[mask]]
        ours = labeler.probabilities(batch)
        differ = labeler.label_reports(batch) != decisions[mask]
        print(f"{name}: {mask.sum()} reports, max |p - p_CT-CLIP| {np.abs(ours - probs[mask]).max():.1e}, "
              f"{differ.sum()} of {differ.size} decisions differ ({differ.any(1).sum()} reports)")


if __name__ == "__main__":
    main()
