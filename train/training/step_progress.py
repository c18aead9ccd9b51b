"""Progress in generator updates: training here is step-based, so "epochs" mean nothing to a user.

One bar from the run's first step to ``max_steps`` (rate, ETA, current losses) and one line
per validation. Written to a log file rather than a terminal, it updates at most every
``log_interval_s`` seconds, so a long run's log stays readable.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from tqdm import tqdm

from train.utils.progress import progress


class StepProgressBar(ProgressBar):
    def __init__(self, enable: bool = True, log_interval_s: float = 60.0) -> None:
        super().__init__()
        self._enabled = enable
        self.log_interval_s = log_interval_s
        self.bar: tqdm | None = None

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        self.bar = progress(
            total=trainer.max_steps,
            initial=trainer.global_step,
            desc="train",
            unit="step",
            smoothing=0.05,
            log_interval_s=self.log_interval_s,
        )

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.bar is None:
            return
        metrics = trainer.progress_bar_metrics
        losses = {k.removeprefix("train/"): v for k, v in metrics.items() if k.startswith("train/")}
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
        self.bar.update(trainer.global_step - self.bar.n)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bar is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.bar.write(f"step {trainer.global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bar is not None:
            self.bar.update(trainer.global_step - self.bar.n)
            self.bar.close()
            self.bar = None
