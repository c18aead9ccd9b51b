"""Evaluate a student: ``python train/evaluate.py [checkpoint=...] [teacher.checkpoint=...]``.

Writes report.json, summary.md and plots/ into checkpoints/runs/evaluate/<time>/.
"""

import hydra
from omegaconf import DictConfig

import train.utils.config  # noqa: F401  (resolvers the configs use)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from train.evaluation.pipeline import evaluate  # imported here so that --help answers at once

    evaluate(cfg)


if __name__ == "__main__":
    main()
