"""What every entry point does around its job: one voice for the logs, and user errors as one message."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from train.utils.logs import route_library_logs
from vocos_distill.errors import ConfigError

log = logging.getLogger(__name__)


def holds_nothing(folder: Path) -> bool:
    """Only what Hydra writes at every start (``.hydra/``, the log file): no output of the run."""
    return all(p.is_dir() or ".hydra" in p.parts or p.suffix == ".log" for p in folder.rglob("*"))


def run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task(cfg)``. A :class:`ConfigError` (a wrong option, a missing file, weights that
    cannot be had) is printed as its message alone, the run folder is removed if the run
    wrote nothing into it, and the process exits with status 1."""
    route_library_logs()
    try:
        return task(cfg)
    except ConfigError as err:
        log.error("%s", err)
        folder = Path(cfg.paths.output_dir)
        if folder.is_dir() and holds_nothing(folder):
            logging.shutdown()  # release the log file before removing it
            shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()  # the experiment's runs folder, if this was its only run
            except OSError:
                pass
        raise SystemExit(1) from None
