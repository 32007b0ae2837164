"""``ctagrg sentences REPORTS.csv --out SENTENCES.csv``: each present abnormality's sentences (step-2 targets)."""

from __future__ import annotations

import argparse

from ctagrg.cli.label_cmd import add_common_arguments

DESCRIPTION = (
    "Read a CT-RATE reports CSV and write one row per (VolumeName, AbnormalityName) the labeler finds present, "
    "with the sentence(s) of the report asserting it (--sentence joined: all of them, joined by spaces; first: the "
    "first one): the targets of the step-2 decoder. "
    "Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--sentence", choices=("joined", "first"), default="joined",
                        help="which of an abnormality's sentences make its row: all of them, joined by spaces "
                             "(default), or the first (CT-AGRG's one sentence, with --text-columns Findings_EN)")


def run(args: argparse.Namespace) -> int:
    from ctagrg.cli.label_cmd import read_for_cli
    from ctagrg.text.extract import extract_sentences
    from ctagrg.text.reports_io import write_sentences

    loaded = read_for_cli(args)
    if loaded is None:
        return 1
    reports, labeler = loaded
    rows = extract_sentences(labeler, reports.ids, reports.texts, args.sentence)
    write_sentences(args.out, rows, args.id_column)
    print(f"{len(rows)} (report, abnormality) rows from {len(reports.ids)} reports; wrote {args.out}")
    return 0
