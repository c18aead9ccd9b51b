"""Build everything from a composed config and train: what ``train/fit.py`` runs."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import hydra
import lightning
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

import train.utils.config  # noqa: F401  (resolvers the configs use)
from train.utils.instantiate import instantiate_dict, instantiate_with_weights

log = logging.getLogger(__name__)
# Checkpoints hold the weights after each update, which is what we want.
warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")


def build(cfg: DictConfig) -> tuple[Any, Any, Trainer]:
    """(datamodule, module, trainer) from the config. Weights are fetched before anything trains."""
    lightning.seed_everything(cfg.seed, workers=True)
    teacher = instantiate_with_weights(cfg.teacher) if cfg.get("teacher") else None
    generator = instantiate_with_weights(cfg.student)
    datamodule = hydra.utils.instantiate(cfg.data, teacher=teacher)
    module = hydra.utils.instantiate(cfg.module, generator=generator)
    loggers: list[Logger] = instantiate_dict(cfg.get("logger"))
    callbacks: list[Callback] = instantiate_dict(cfg.get("callbacks"))
    trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks or None)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return datamodule, module, trainer


def fit(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Train (or resume from ``cfg.ckpt_path``).

    Returns ``{"initial": ..., "final": ...}`` metrics; ``initial`` is a validation pass
    before the first update (with ``validate_first``; empty when resuming).
    """
    datamodule, module, trainer = build(cfg)
    initial: dict[str, float] = {}
    if cfg.get("validate_first") and not cfg.get("ckpt_path"):
        initial = {k: float(v) for k, v in trainer.validate(module, datamodule=datamodule)[0].items()}
        log.info("step-0 validation: %s", initial)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    final = {k: float(v) for k, v in trainer.callback_metrics.items()}
    log.info("final metrics: %s", final)
    return {"initial": initial, "final": final}
