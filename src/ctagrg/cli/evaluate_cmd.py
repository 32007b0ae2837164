"""``ctagrg evaluate --model DIR --data DIR --split test --out OUT``: score a packaged model on a dataset split."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Generate reports for every volume of a split of a CT-RATE-layout dataset (real or phantom) and write "
    "OUT/predictions.jsonl, OUT/metrics.json (classification AUROC/F1, clinical P/R/F1, BLEU/METEOR/ROUGE-L/CIDEr, "
    "grounding on phantoms, bootstrap 95% CIs) and OUT/report.md + report.html with figures. "
    "Definitions: docs/evaluation.md. Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="packaged model folder (Reporter.save_pretrained)")
    parser.add_argument("--data", required=True, help="dataset root in CT-RATE layout")
    parser.add_argument("--split", default="test",
                        help="split name (default: test, the phantoms'); CT-RATE's is valid (validation names the "
                             "same split): its radiology_text_reports/validation_reports.csv and "
                             "multi_abnormality_labels/valid_predicted_labels.csv")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cache", default=None, help="preprocessed cache (default: DATA/cache if it exists)")
    parser.add_argument("--labeler", default="rules",
                        help="labeler for clinical metrics: rules (default) | radbert:DIR")
    parser.add_argument("--clinical-reference", choices=("csv", "reports"), default="csv",
                        help="reference labels: the dataset's label CSV, or the labeler run on the reference "
                             "reports (default: csv)")
    parser.add_argument("--reference-columns", default="Findings_EN",
                        help="report columns joined as the NLG reference (default: Findings_EN)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a JVM)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for CIs (default 1000; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="volumes per batch (default 4)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: CUDA when available)")
    parser.add_argument("--examples", type=int, default=5, help="example reports shown in report.md")
    parser.add_argument("--limit", type=int, default=None, help="only the first N volumes of the split")


def run(args: argparse.Namespace) -> int:
    from ctagrg.evaluation.evaluate import EvaluateConfig, evaluate, headline_table
    from ctagrg.generation.reporter import check_model_dir
    from ctagrg.text.labeler import check_labeler_spec
    from ctagrg.utils.device import resolve_device

    try:  # usage errors first (exit 2, as `ctagrg report` and `ctagrg serve`), before any report is generated
        resolve_device(args.device)
        check_labeler_spec(args.labeler)
        check_model_dir(args.model)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ctagrg evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = EvaluateConfig(split=args.split, cache_dir=args.cache, labeler=args.labeler,
                             clinical_reference=args.clinical_reference,
                             reference_columns=tuple(c.strip() for c in args.reference_columns.split(",") if c),
                             meteor=not args.no_meteor, bootstrap=args.bootstrap, seed=args.seed,
                             batch_size=args.batch_size, device=args.device, examples=args.examples,
                             limit=args.limit)
        metrics = evaluate(args.model, args.data, args.out, cfg)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ctagrg evaluate: {exc}", file=sys.stderr)
        return 1
    meta = metrics["meta"]
    print(f"{meta['evaluated']} of {meta['volumes']} volumes evaluated ({meta['failed']} failed) in "
          f"{meta['seconds']} s")
    print(headline_table(metrics))
    print(f"wrote {args.out}/metrics.json, predictions.jsonl, report.md, report.html")
    return 1 if meta["failed"] else 0
