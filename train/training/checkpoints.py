"""A training run's checkpoints: whole or absent, never unpickling code, and bounded on disk.

* :class:`SafeCheckpointIO` writes each checkpoint to a temporary beside its destination and
  renames it into place (Lightning's own writer goes through the system temp folder and a
  copy, so a kill leaves a partial file there, or a truncated ``last.ckpt``), and reads with
  ``weights_only=True`` whatever the caller or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` ask.
* :class:`RunCheckpoints` keeps ``last.ckpt`` (the newest state, every ``every_n_train_steps``
  and at the end) and hard links of it named ``best-step<N>-<metric><value>.ckpt`` for the
  ``keep_best`` best validations. Lightning's ``ModelCheckpoint(save_last="link")`` points
  ``last.ckpt`` at the newest *best* file, which is older than the state whenever the newest
  validation is not among the best; and ``save_last=True`` writes a full copy of it.
  Disk use is at most ``keep_best + 1`` checkpoints, plus one being written.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from vocos_distill.errors import MissingFileError
from vocos_distill.files import atomic_write, temporary_path

log = logging.getLogger(__name__)
LAST = "last.ckpt"


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic writes beside the destination; loads that never run pickled code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(
        self, path: str | Path, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"checkpoint not found: {path}")
        return torch.load(path, map_location=map_location, weights_only=True)


def link_or_copy(source: Path, destination: Path) -> None:
    """Make ``destination`` a hard link of ``source`` (a copy where links are not supported), atomically."""
    tmp = temporary_path(destination)
    try:
        os.link(source, tmp)
        os.replace(tmp, destination)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(source, "rb") as src:
            atomic_write(destination, lambda f: shutil.copyfileobj(src, f, 1 << 24))


class RunCheckpoints(Checkpoint):
    """``last.ckpt`` every ``every_n_train_steps`` generator updates and at the end; the
    ``keep_best`` best states by ``monitor`` (after each validation) as hard links of it."""

    def __init__(
        self,
        dirpath: str | Path,
        every_n_train_steps: int = 1000,
        monitor: str = "val/mel_distance",
        mode: str = "min",
        keep_best: int = 3,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"callbacks.checkpoints.mode must be 'min' or 'max', got {mode!r}")
        if every_n_train_steps < 1 or keep_best < 0:
            raise ValueError("callbacks.checkpoints: every_n_train_steps must be >= 1 and keep_best >= 0")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.monitor = monitor
        self.mode = mode
        self.keep_best = keep_best
        self.best: list[tuple[float, str, int]] = []  # (score, file name, step), best first
        self.ranked_shape: dict | None = None  # the student shape the best list ranks
        self.last_step_saved = -1

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    # -- when ----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_train_steps == 0:
            self.save_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or not self.keep_best:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        score = float(value)
        shape = pl_module.generator.config.to_dict()
        if self.ranked_shape is not None and shape != self.ranked_shape:
            self.best = []  # pruned since: the new shape is ranked on its own (the older files stay)
        self.ranked_shape = shape
        if len(self.best) >= self.keep_best and not self._better(score, self.best[-1][0]):
            return
        name = f"best-step{trainer.global_step:08d}-{self.monitor.rsplit('/', 1)[-1]}{score:.4f}.ckpt"
        self.best = sorted([*self.best, (score, name, trainer.global_step)], key=self._order)
        evicted, self.best = self.best[self.keep_best :], self.best[: self.keep_best]
        self.save_last(trainer, force=True)  # again if need be: its callback state now lists this file
        if trainer.is_global_zero:
            link_or_copy(self.last_path, self.dirpath / name)
            for _, old, _ in evicted:
                (self.dirpath / old).unlink(missing_ok=True)
        trainer.strategy.barrier("checkpoints")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_last(trainer)

    # -- how -----------------------------------------------------------------------------
    def save_last(self, trainer: Trainer, force: bool = False) -> None:
        """Write the current state to ``last.ckpt`` unless this step is saved already (every rank calls it)."""
        if self.last_step_saved == trainer.global_step and not force:
            return
        self.last_step_saved = trainer.global_step
        trainer.save_checkpoint(self.last_path, weights_only=False)  # the whole state: optimizers too

    def _better(self, score: float, than: float) -> bool:
        return score < than if self.mode == "min" else score > than

    def _order(self, entry: tuple[float, str, int]) -> tuple[float, int]:
        return (entry[0] if self.mode == "min" else -entry[0], -entry[2])

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": str(self.dirpath), "best": [list(b) for b in self.best], "ranked_shape": self.ranked_shape}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the best list belongs to the folder it was made in; a resume into a new folder starts its own
        if state_dict.get("dirpath") == str(self.dirpath):
            self.best = [(float(s), str(n), int(k)) for s, n, k in state_dict.get("best", [])]
            self.ranked_shape = state_dict.get("ranked_shape")
