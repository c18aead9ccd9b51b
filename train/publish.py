"""Publish a release folder: ``python train/publish.py release=DIR repo_id=NS/NAME [dry_run=true]`` (``--help``)."""

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import hydra
from omegaconf import DictConfig

import train.utils.hydra_setup  # noqa: F401  (resolvers and schemas the configs use)
from train.utils.entry import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="publish")
def main(cfg: DictConfig) -> None:
    from train.release.publish import publish  # imported here so that --help answers at once

    run(publish, cfg)


if __name__ == "__main__":
    main()
