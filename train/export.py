"""Release folder from a trained student: ``python train/export.py checkpoint=PATH [report=...]`` (``--help``)."""

import hydra
from omegaconf import DictConfig

import train.utils.config  # noqa: F401  (resolvers and schemas the configs use)
from train.utils.entry import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from train.release.export import export  # imported here so that --help answers at once

    run(export, cfg)


if __name__ == "__main__":
    main()
