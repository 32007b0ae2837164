"""Compute and memory cost of the paper's visual models (CT-Net, CT-ViT at (240, 480, 480)), one JSON line per
model and batch size, from :mod:`ctagrg.models.cost` (meta device: no memory, no arithmetic)::

    .venv/bin/python benchmarks/model_cost.py [--batch 1 4]
"""

from __future__ import annotations

import argparse
import json

from ctagrg.models.cost import measure, paper_configs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    for cfg in paper_configs().values():
        for b in args.batch:
            print(json.dumps(measure(cfg, b)))


if __name__ == "__main__":
    main()
