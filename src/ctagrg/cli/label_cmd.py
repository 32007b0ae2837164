"""``ctagrg label REPORTS.csv --out LABELS.csv``: label report text with the 18 CT-RATE abnormalities."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Read a CT-RATE reports CSV and write the CT-RATE labels schema: the id column plus the 18 abnormality "
    "columns as 0/1, in CT-RATE order. Reports with empty text get all-zero labels (counted in a warning). "
    "Labelers: 'rules' (offline rule labeler, docs/labeler.md) or 'radbert:DIR' (CT-CLIP's RadBERT classifier "
    "from a local folder). Research software, not for diagnostic use."
)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by ``label`` and ``sentences``."""
    parser.add_argument("reports", help="reports CSV (CT-RATE schema)")
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--labeler", default="rules", help="rules | radbert:DIR (default: rules)")
    parser.add_argument("--text-columns", default="Findings_EN,Impressions_EN",
                        help="comma-separated report columns to read (default: Findings_EN,Impressions_EN)")
    parser.add_argument("--id-column", default="VolumeName", help="id column (default: VolumeName)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def read_for_cli(args: argparse.Namespace):  # -> tuple[Reports, Labeler] | None
    """Read the reports and build the labeler; print ``path: problem`` and return None on bad input."""
    import warnings

    from ctagrg.text.labeler import get_labeler
    from ctagrg.text.reports_io import ReportsError, read_reports

    columns = [c.strip() for c in args.text_columns.split(",") if c.strip()]
    try:
        labeler = get_labeler(args.labeler)  # first: it says how to join the text columns
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reports = read_reports(args.reports, columns, args.id_column, labeler.column_separator)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except (ReportsError, OSError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return None
    return reports, labeler


def run(args: argparse.Namespace) -> int:
    from ctagrg.text.reports_io import write_labels

    loaded = read_for_cli(args)
    if loaded is None:
        return 1
    reports, labeler = loaded
    labels = labeler.label_reports(reports.texts)
    write_labels(args.out, reports.ids, labels, args.id_column)
    print(f"labelled {len(reports.ids)} reports ({reports.n_empty} empty), {int(labels.sum())} positive labels; "
          f"wrote {args.out}")
    return 0
