"""Training throughput, for ``python train/bench.py``: seconds of audio trained per second of
wall time at the configured batch, with the real data pipeline and with the same batches
already in memory (the data-free baseline)."""

from __future__ import annotations

import statistics
import tempfile
import time

from lightning.pytorch import Callback, LightningDataModule
from torch.utils.data import DataLoader

from train.utils.hydra_setup import project_root
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE


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


def train_throughput(overrides: list[str], steps: int, compare: list[str] = (), rounds: int = 2) -> list[dict]:
    """Median seconds per generator update and seconds of audio trained per second.

    Rows: the real data pipeline; the same batches already in memory; and, on those same
    batches, the configuration with each ``compare`` override. The in-memory variants run in
    alternation, ``rounds`` times each (A B A B ...), so that a noisy machine slows all alike.
    """
    from hydra import compose, initialize_config_dir

    # Lightning, in the process that trains only: this module's import stays light
    from train.training.fit import build

    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(project_root() / "conf"), version_base="1.3"):
        base = [
            f"paths.output_dir={tmp}",
            "~logger",
            "callbacks.checkpoints=null",
            "callbacks.progress.enable=false",
            "++trainer.enable_model_summary=false",
            "++trainer.limit_val_batches=0",
            f"trainer.max_steps={steps + 1}",
            *overrides,
        ]
        cfg = compose("train", overrides=base)
        batch_seconds = cfg.data.batch_size * cfg.data.segment_frames * HOP_LENGTH / SAMPLE_RATE

        def timed(config, datamodule=None) -> list[float]:
            built_datamodule, module, trainer = build(config)
            timer = StepTimer()
            trainer.callbacks.append(timer)
            trainer.fit(module, datamodule=datamodule or built_datamodule)
            return timer.times

        times = {"real data pipeline": timed(cfg)}
        datamodule, _, _ = build(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        loader = iter(datamodule.train_dataloader())
        batches = [next(loader) for _ in range(min(steps + 1, len(loader)))] * (steps + 1)
        variants = {"in-memory tensors": cfg}
        for override in compare:
            variants[f"in-memory, {override}"] = compose("train", overrides=[*base, override])
        for _ in range(rounds):
            for name, config in variants.items():
                times.setdefault(name, []).extend(timed(config, InMemory(batches)))
        rows = []
        for name, values in times.items():
            step = statistics.median(values)
            rows.append({"data": name, "s_per_step": step, "audio_s_per_s": batch_seconds / step})
        return rows
