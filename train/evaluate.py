"""Evaluate a student: ``python train/evaluate.py [checkpoint=...] [teacher.checkpoint=...]``.

Writes report.json, summary.md and plots/ into checkpoints/runs/evaluate/<time>/.
"""

import sys
from pathlib import Path

# As in fit.py: import the package from the repository root, not from train/ itself.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from train.evaluation import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
