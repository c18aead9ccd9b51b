"""Train a Vocos student: ``python train/fit.py experiment=distill`` (Hydra overrides welcome)."""

import hydra
from omegaconf import DictConfig

import train.utils.config  # noqa: F401  (resolvers the configs use)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from train.training.pipeline import fit  # imported here so that --help answers at once

    fit(cfg)


if __name__ == "__main__":
    main()
