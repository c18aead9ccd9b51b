"""Fill the data cache before training: ``python train/prepare.py experiment=distill`` (``--help``).

Any number of processes: ``torchrun --standalone --nproc-per-node=N train/prepare.py ...``
or a SLURM array; each prepares its own share.
"""

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import hydra
from omegaconf import DictConfig

import train.utils.hydra_setup  # noqa: F401  (resolvers and schemas the configs use)
from train.utils.entry import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    from train.data.prepare import prepare  # imported here so that --help answers at once

    run(prepare, cfg)


if __name__ == "__main__":
    main()
