"""Size against quality: ``python train/tradeoff.py NAME=REPORT [NAME=REPORT ...]``.

Prints a Markdown table of evaluation reports (``report.json`` of ``train/evaluate.py``) of
the same clips: a parent and its compressed children, with the floor and the ground truth
(:mod:`train.evaluation.tradeoff`).
"""

from __future__ import annotations

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import argparse
import sys
from pathlib import Path

from train.evaluation.tradeoff import table
from vocos_distill.errors import ConfigError


def pair(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=path/to/report.json")
    return name, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=pair, help="NAME=path/to/report.json, the parent first")
    args = parser.parse_args(argv)
    try:
        print(table(args.reports))
    except (ConfigError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
