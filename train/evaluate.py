"""Evaluate a student: ``python train/evaluate.py [checkpoint=...] [teacher.checkpoint=...]`` (``--help``).

Writes report.json, summary.md and plots/ into checkpoints/runs/evaluate/<run>/.
"""

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import hydra
from omegaconf import DictConfig

import train.utils.hydra_setup  # noqa: F401  (resolvers and schemas the configs use)
from train.utils.entry import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from train.evaluation.evaluate import evaluate  # imported here so that --help answers at once

    run(evaluate, cfg)


if __name__ == "__main__":
    main()
