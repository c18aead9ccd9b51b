"""One voice on the console: every library's records go through the root logger once.

Lightning and huggingface_hub attach console handlers of their own, so under Hydra (which
configures the root logger) each of their lines printed twice, once plain and once in
Hydra's format, and never reached the run's log file. Their handlers are removed and their
records propagate; Lightning's advertisements are dropped.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

LIBRARIES = ("lightning", "lightning.pytorch", "lightning.fabric", "huggingface_hub")
ADVERTISEMENTS = ("💡 Tip:",)
# Warnings that say nothing to a user of this project (reasons beside each).
IGNORED_WARNINGS = (
    # training is step-based; an "epoch" of a small corpus is a couple of batches
    r".*is smaller than the logging interval.*",
)


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENTS)


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line=None) -> str:
    """A warning as one line: this project's own say what and where in their message; others
    keep their file and line, but not the echoed source line."""
    if category.__module__.split(".")[0] == "train":
        return f"{category.__name__}: {message}"
    return f"{category.__name__}: {message} ({Path(filename).name}:{lineno})"


def route_library_logs() -> None:
    """Remove the libraries' own console handlers (when the root logger has one to take over),
    and send warnings through logging as one line each, so they reach the run's log file."""
    warnings.formatwarning = format_warning
    logging.captureWarnings(True)
    root = logging.getLogger()
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        if root.handlers:
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
        if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
            logger.addFilter(_DropAdvertisements())
    for logger_name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropAdvertisements) for f in logger.filters):
            logger.addFilter(_DropAdvertisements())
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
