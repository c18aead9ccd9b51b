"""Experiment tracking: Weights & Biases online when logged in, offline otherwise."""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger  # imports wandb itself only when a logger is made

log = logging.getLogger(__name__)


def wandb_mode(mode: str | None = None) -> str | None:
    """``mode`` if given; else ``WANDB_MODE``'s (``None``: W&B reads it itself); else ``online``
    when W&B credentials exist and ``offline`` otherwise (sync later with ``wandb sync``)."""
    import wandb  # here: fit and evaluate import this module for finish_runs, most runs without W&B

    if mode is None and "WANDB_MODE" not in os.environ:
        mode = "online" if wandb.login(prompt=False) else "offline"
        if mode == "offline":
            log.info("W&B: not logged in, logging offline; upload later with `wandb sync`")
    return mode


def wandb_logger(mode: str | None = None, **kwargs: Any) -> WandbLogger:
    """A ``WandbLogger`` whose mode follows the user's login, and that prints only what matters.

    ``mode=None`` means: ``WANDB_MODE`` if set, else ``online`` when W&B credentials exist
    and ``offline`` otherwise (sync later with ``wandb sync <run dir>``). W&B's own console
    output is kept to where the run is (``quiet``).
    """
    mode = wandb_mode(mode)
    if mode is not None:
        kwargs["mode"] = mode
    import wandb  # here: see wandb_mode

    kwargs.setdefault("settings", wandb.Settings(quiet=True))
    logger = WandbLogger(**kwargs)
    # Lightning passes anonymous=None, which W&B answers with a deprecation warning on every start
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def finish_runs(loggers: Any) -> None:
    """End the W&B runs that ``loggers`` began. Lightning leaves a run open until the process exits,
    and the next ``WandbLogger`` of the same process (the next job of a Hydra multirun, a second
    ``fit`` in a notebook) would find it open and log into it instead of starting its own."""
    for logger in loggers:
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        if run is not None:
            run.finish()
