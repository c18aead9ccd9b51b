"""Training throughput, for ``python -m train.bench``: seconds of audio trained per second of
wall time at the configured batch, with the real data pipeline and with the same batches
already in memory (the data-free baseline)."""

from __future__ import annotations

import statistics
import tempfile
import time

from lightning.pytorch import Callback, LightningDataModule
from torch.utils.data import DataLoader

from train.s3gen.mel import HOP_LENGTH, SAMPLE_RATE


class StepTimer(Callback):
    """Wall-clock time between consecutive training batches: data fetch plus the step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last: float | None = None

    def on_train_batch_end(self, *args: object) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


class InMemory(LightningDataModule):
    """Serves batches that are already tensors in memory: the data-free baseline."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)


def train_throughput(overrides: list[str], steps: int) -> list[dict]:
    """Seconds of audio trained per second, real data pipeline vs the same batches in memory."""
    from hydra import compose, initialize_config_dir

    from train.training.pipeline import build
    from train.utils.config import CONF_DIR

    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = [
            f"paths.output_dir={tmp}",
            "~logger",
            "callbacks.checkpoints=null",
            "callbacks.progress.enable=false",
            "++trainer.enable_model_summary=false",
            "++trainer.limit_val_batches=0",
            f"trainer.max_steps={steps + 1}",
        ]
        cfg = compose("train", overrides=[*base, *overrides])
        rows = []
        for source in ("real data pipeline", "in-memory tensors"):
            datamodule, module, trainer = build(cfg)
            if source == "in-memory tensors":
                datamodule.prepare_data()
                datamodule.setup("fit")
                loader = iter(datamodule.train_dataloader())
                datamodule = InMemory([next(loader) for _ in range(min(steps + 1, len(loader)))] * (steps + 1))
            timer = StepTimer()
            trainer.callbacks.append(timer)
            trainer.fit(module, datamodule=datamodule)
            batch_seconds = cfg.data.batch_size * cfg.data.segment_frames * HOP_LENGTH / SAMPLE_RATE
            step = statistics.median(timer.times)
            rows.append({"data": source, "s_per_step": step, "audio_s_per_s": batch_seconds / step})
        return rows
