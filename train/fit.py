"""Train a Vocos student: ``python train/fit.py experiment=distill`` (Hydra overrides welcome)."""

import sys
from pathlib import Path

# `python train/fit.py` puts train/ itself first on sys.path, where the package's modules
# would shadow top-level ones; import the package from the repository root instead.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from train.pipeline import fit  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg)


if __name__ == "__main__":
    main()
