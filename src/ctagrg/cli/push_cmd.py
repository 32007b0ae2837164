"""``ctagrg push --model DIR --repo org/name[@branch] [--private] [--message TEXT] [--evaluation EVAL_DIR...]``."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "Upload a packaged model folder (ctagrg package, Reporter.save_pretrained) to the Hugging Face Hub, so that "
    "`ctagrg report --model org/name` and Reporter.from_pretrained('org/name') can use it. The repository is created "
    "when missing; org/name@branch commits to that branch. Only the model's files and its card are uploaded. "
    "--evaluation adds the results of `ctagrg evaluate` folders (with their protocol) to the model card first. "
    "The token is huggingface_hub's: `hf auth login` or HF_TOKEN. Exit 2 for a usage error (not a packaged model, "
    "a bad --repo or --evaluation), 1 when the upload fails. Research software, not for diagnostic use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="packaged model folder")
    parser.add_argument("--repo", required=True, metavar="ORG/NAME[@BRANCH]", help="Hub repository (and branch)")
    parser.add_argument("--private", action="store_true", help="create the repository as a private one")
    parser.add_argument("--message", metavar="TEXT", help="commit message")
    parser.add_argument("--evaluation", nargs="+", default=[], metavar="EVAL_DIR",
                        help="ctagrg evaluate output folders of this model: their headline figures, protocol and "
                             "labeler go into the model card (README.md, rewritten in DIR) before the upload")


def run(args: argparse.Namespace) -> int:
    from ctagrg.generation.hub import add_evaluations, check_packaged_model, parse_hub_id, push_model

    hub = parse_hub_id(args.repo)
    try:
        if hub is None:
            raise ValueError(f"--repo {args.repo}: expected a Hub id org/name or org/name@branch")
        check_packaged_model(args.model)
        if args.evaluation:
            card = add_evaluations(args.model, args.evaluation, name=hub.repo_id)
            print(f"{card}: evaluation results of {', '.join(args.evaluation)} recorded")
    except (OSError, ValueError) as exc:
        print(f"ctagrg push: {exc}", file=sys.stderr)
        return 2
    try:
        url = push_model(args.model, args.repo, private=args.private, message=args.message)
    except (OSError, ValueError) as exc:  # huggingface_hub's HTTP errors are OSErrors
        print(f"ctagrg push: {hub}: upload failed ({exc})", file=sys.stderr)
        return 1
    print(f"pushed {args.model} to {hub}: {url}")
    return 0
