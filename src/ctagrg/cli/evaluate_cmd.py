"""``ctagrg evaluate --model DIR --data DIR --split test --out OUT``: score a packaged model on a dataset split.

``ctagrg evaluate --runs DIR... --out OUT`` aggregates finished evaluations into mean ± sd instead.
"""

from __future__ import annotations

import argparse
import sys

from ctagrg.cli.arguments import non_negative_int

DESCRIPTION = (
    "Generate reports for every volume of a split of a CT-RATE-layout dataset (real or phantom) and score them "
    "under a protocol: ctagrg (labeler on generated and reference reports, clinical P/R/F1 micro and macro, "
    "BLEU/METEOR/ROUGE-L/CIDEr on our tokenisation) or vlm3d (the VLM3D challenge's harness: labeler on the "
    "generated reports vs the label CSV, per-label macro P/R/F1, CRG, pycocoevalcap on the raw strings). Writes "
    "OUT/predictions.jsonl, metrics.json (with bootstrap 95% CIs and a definition of each figure), "
    "generated_labels.csv, vlm3d_submission.json and report.md + report.html. With --runs DIR...: mean ± sd of "
    "several finished evaluations (e.g. five seeds) into OUT/runs_summary.json and .md. A stop signal (SIGTERM, "
    "SIGUSR1) ends report generation between batches with exit status 75; rerun to resume. "
    "Definitions: docs/evaluation.md. Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="packaged model folder (Reporter.save_pretrained) or a Hugging Face Hub id "
                        "org/name[@revision]; required without --runs")
    parser.add_argument("--data", help="dataset root in CT-RATE layout; required without --runs")
    parser.add_argument("--split", default="test",
                        help="split name (default: test, the phantoms'); CT-RATE's is valid (validation names the "
                             "same split): its radiology_text_reports/validation_reports.csv and "
                             "multi_abnormality_labels/valid_predicted_labels.csv")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--protocol", choices=("ctagrg", "vlm3d"), default="ctagrg",
                        help="scoring convention (default: ctagrg): ctagrg labels generated and reference reports "
                             "with --labeler (micro + macro); vlm3d scores as the VLM3D challenge's harness "
                             "(reference labels from the label CSV; see docs/evaluation.md)")
    parser.add_argument("--clinical-reference", choices=("reports", "csv"), default="reports",
                        help="protocol ctagrg's reference labels: the labeler on the reference reports (default, "
                             "the convention) or the dataset's label CSV (phantoms, whose CSV is the truth)")
    parser.add_argument("--runs", nargs="+", metavar="DIR", default=None,
                        help="aggregate these finished evaluation folders into mean ± sd per metric "
                             "(no model is run); they must share protocol, split, labeler and reference columns")
    parser.add_argument("--cache", default=None, help="preprocessed cache (default: DATA/cache if it exists)")
    parser.add_argument("--labeler", default="rules",
                        help="labeler of the reports for clinical metrics: rules (default) | radbert:DIR")
    parser.add_argument("--reference-columns", default="Findings_EN",
                        help="report columns joined as the NLG reference (default: Findings_EN)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a JVM)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for CIs (default 1000; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="volumes per batch (default 4)")
    parser.add_argument("--workers", type=non_negative_int, default=0,
                        help="processes that read (and, without a cache, preprocess) volumes ahead of the model "
                             "(default 0: in this one); the results do not depend on it")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: CUDA when available)")
    parser.add_argument("--examples", type=int, default=5, help="example reports shown in report.md")
    parser.add_argument("--limit", type=int, default=None, help="only the first N volumes of the split")


def run_aggregate(args: argparse.Namespace) -> int:
    from ctagrg.evaluation.runs import aggregate_runs, summary_table, write_summary

    try:
        summary = aggregate_runs(args.runs)
        paths = write_summary(args.out, summary)
    except (OSError, ValueError) as exc:
        print(f"ctagrg evaluate: {exc}", file=sys.stderr)
        return 1
    print(summary_table(summary), end="")
    print(f"wrote {paths[0]}, {paths[1]}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.runs is not None:
        if args.model or args.data:
            print("ctagrg evaluate: --runs aggregates finished evaluations; drop --model and --data", file=sys.stderr)
            return 2
        return run_aggregate(args)
    if not (args.model and args.data):
        print("ctagrg evaluate: --model and --data are required (or --runs DIR... to aggregate)", file=sys.stderr)
        return 2
    from ctagrg.evaluation.evaluate import EvaluateConfig, evaluate, headline_table
    from ctagrg.generation.hub import resolve_model_dir
    from ctagrg.text.labeler import check_labeler_spec
    from ctagrg.utils.device import resolve_device

    try:  # usage errors first (exit 2, as `ctagrg report` and `ctagrg serve`), before any report is generated
        resolve_device(args.device)
        check_labeler_spec(args.labeler)
        model_dir = resolve_model_dir(args.model)  # a folder, or a Hub id's snapshot
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ctagrg evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = EvaluateConfig(split=args.split, protocol=args.protocol, cache_dir=args.cache, labeler=args.labeler,
                             clinical_reference=args.clinical_reference,
                             reference_columns=tuple(c.strip() for c in args.reference_columns.split(",") if c),
                             meteor=not args.no_meteor, bootstrap=args.bootstrap, seed=args.seed,
                             batch_size=args.batch_size, workers=args.workers, device=args.device,
                             examples=args.examples,
                             limit=args.limit)
        metrics = evaluate(model_dir, args.data, args.out, cfg)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"ctagrg evaluate: {exc}", file=sys.stderr)
        return 1
    meta = metrics["meta"]
    print(f"{meta['evaluated']} of {meta['volumes']} volumes evaluated ({meta['failed']} failed) in "
          f"{meta['seconds']} s, protocol {meta['protocol']}")
    print(headline_table(metrics))
    print(f"wrote {args.out}/metrics.json, predictions.jsonl, generated_labels.csv, vlm3d_submission.json, "
          "report.md, report.html")
    return 1 if meta["failed"] else 0
