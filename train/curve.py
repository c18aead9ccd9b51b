"""Held-out learning curve of a run: ``python train/curve.py RUN_FOLDER [--png FILE]``.

Prints a Markdown table (updates, minutes, PESQ-wb, log-mel distance, and the Griffin-Lim
floor) and writes the figure (``learning_curve.png`` in the run folder by default).
"""

from __future__ import annotations

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import argparse
import sys
from pathlib import Path

from train.evaluation import plots
from train.evaluation.curve import markdown, metrics_file, read_curve
from vocos_distill.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (checkpoints/runs/<group>/<run>) or its metrics.csv")
    parser.add_argument("--png", type=Path, help="where to write the figure (default: <run>/learning_curve.png)")
    args = parser.parse_args(argv)
    try:
        rows = read_curve(args.run)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {metrics_file(args.run)} has no validation rows", file=sys.stderr)
        return 2
    print(markdown(rows))
    png = args.png or (args.run if args.run.is_dir() else args.run.parent) / "learning_curve.png"
    plots.save(plots.learning_curve(rows, title=str(args.run)), png)
    print(f"figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
