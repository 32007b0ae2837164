"""Step-2 targets under the paper's setting and under ours, measured on the 800 development reports.

For each setting, the (report, abnormality) targets the embedding cache would hold, built with the library's own
functions (``read_reports``, ``extract_sentences``, ``prepare_target``), and

- how many targets there are (the paper's setting has none for an abnormality stated only in the impression);
- the fraction that are one sentence (``split_sentences`` of the target gives one piece);
- the fraction that contain an impression sentence (a sentence of Impressions_EN that Findings_EN does not hold);
- the fraction cut at ``max_tokens`` (60) GPT-2 tokens, after case and punctuation handling.

Settings: ``paper`` (configs/ctrate: Findings_EN, the first sentence, lower-cased, punctuation stripped) and
``ours`` (the earlier default: Findings_EN + Impressions_EN, every sentence joined, text as written).

    python benchmarks/step2_targets.py [--reports ../shared/data/reports/dev_reports.csv] \
        [--tokenizer ../shared/data/gpt2-tokenizer] [--labeler rules]

Results: docs/decoder.md, "Targets".
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Setting:
    name: str
    text_columns: tuple[str, ...]
    rule: str
    lowercase: bool
    strip_punctuation: bool


SETTINGS = (
    Setting("paper", ("Findings_EN",), "first", True, True),
    Setting("ours", ("Findings_EN", "Impressions_EN"), "joined", False, False),
)


def impression_only(reports_csv: Path) -> dict[str, set[str]]:
    """Per report, the sentences of Impressions_EN that Findings_EN does not also hold."""
    from ctagrg.text.reports_io import read_reports
    from ctagrg.text.sentences import split_sentences

    findings = read_reports(reports_csv, ("Findings_EN",))
    with warnings.catch_warnings():  # 206 of the 800 have no impression: expected here
        warnings.simplefilter("ignore")
        impressions = read_reports(reports_csv, ("Impressions_EN",))
    found = dict(zip(findings.ids, findings.texts, strict=True))
    return {i: set(split_sentences(t)) - set(split_sentences(found.get(i, ""))) for i, t in
            zip(impressions.ids, impressions.texts, strict=True)}


def measure(setting: Setting, reports_csv: Path, labeler_spec: str, tokenizer, max_tokens: int,
            impressions: dict[str, set[str]]) -> dict[str, float]:
    from ctagrg.text.extract import extract_sentences
    from ctagrg.text.labeler import get_labeler
    from ctagrg.text.reports_io import read_reports
    from ctagrg.text.sentences import split_sentences
    from ctagrg.training.decoder_task import TargetConfig, prepare_target

    labeler = get_labeler(labeler_spec)
    reports = read_reports(reports_csv, setting.text_columns, separator=labeler.column_separator)
    rows = extract_sentences(labeler, reports.ids, reports.texts, setting.rule)
    target = TargetConfig(lowercase=setting.lowercase, strip_punctuation=setting.strip_punctuation,
                          max_tokens=max_tokens)
    texts = [prepare_target(sentence, target) for _, _, sentence in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    pieces = [split_sentences(sentence) for _, _, sentence in rows]
    n = len(rows)
    return {
        "targets": n,
        "one_sentence": sum(len(p) == 1 for p in pieces) / n,
        "impression_sentence": sum(bool(set(p) & impressions.get(i, set())) for (i, _, _), p in
                                   zip(rows, pieces, strict=True)) / n,
        "cut_at_max_tokens": sum(k > max_tokens for k in lengths) / n,
        "median_tokens": float(sorted(lengths)[n // 2]),
    }


def main() -> None:
    from ctagrg.models.decoder import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", default=str(SHARED / "reports" / "dev_reports.csv"))
    parser.add_argument("--tokenizer", default=str(SHARED / "gpt2-tokenizer"))
    parser.add_argument("--labeler", default="rules", help="rules | radbert:DIR")
    parser.add_argument("--max-tokens", type=int, default=60)
    args = parser.parse_args()
    reports, tokenizer = Path(args.reports), load_tokenizer(args.tokenizer)
    impressions = impression_only(reports)
    print(f"{reports} ({len(impressions)} reports), labeler {args.labeler}, GPT-2 tokens, cut at {args.max_tokens}")
    print("| setting | targets | one sentence | contain an impression sentence | cut at 60 tokens | median tokens |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for setting in SETTINGS:
        r = measure(setting, reports, args.labeler, tokenizer, args.max_tokens, impressions)
        print(f"| {setting.name} | {r['targets']} | {r['one_sentence']:.3f} | {r['impression_sentence']:.3f} | "
              f"{r['cut_at_max_tokens']:.3f} | {r['median_tokens']:.0f} |")


if __name__ == "__main__":
    main()
