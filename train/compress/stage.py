"""What every compression stage (``compress=prune|qat|lookahead``) is to the training run."""

from __future__ import annotations

from lightning.pytorch import Callback

from vocos_distill.errors import ConfigError
from vocos_distill.student import VocosStudent


class CompressionError(ConfigError, ValueError):
    """A compression option that cannot work with this student."""


class CompressionStage(Callback):
    """A Lightning callback that compresses the training student; ``next_stage`` is the command
    that follows it (``{last}``: the run's last checkpoint), printed at the end of the run."""

    next_stage: str = ""

    def check(self, parent: VocosStudent) -> None:
        """Refuse a parent this stage cannot compress, before anything trains (default: any will do)."""
