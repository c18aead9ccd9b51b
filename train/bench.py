"""Cost benchmark: ``python -m train.bench [--seconds 10] [--repeats 3] [--train-steps 20]``.

1. Inference, teacher and student side by side in one run, on the same mel: parameters,
   weight-file bytes, seconds of compute per second of audio on this CPU (1 thread and all
   threads) and on CUDA when there is one, peak memory, first-chunk latency
   (:func:`train.cost.profile`), and the student's speed-up over the teacher.
2. Training throughput (seconds of audio per second) of one step at the configured batch,
   with the real data pipeline and with the same batches already in memory.

Both models carry random weights at their full sizes (cost does not depend on the values);
``train/evaluate.py`` reports the same table for a trained checkpoint. Timings on shared
machines are noisy: compare the rows of one run, quote ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from lightning.pytorch import Callback, LightningDataModule
from torch.utils.data import DataLoader

from train.cost import compare, stand_in_teacher
from train.mel import HOP_LENGTH, SAMPLE_RATE
from train.report import cost_table, table
from train.student import build_student


def run(seconds: float = 10.0, repeats: int = 3, chunk_frames: tuple[int, ...] = (10, 25, 50)) -> list[dict]:
    """Cost rows of the teacher and the student, both at full size with random weights, on one mel."""
    torch.manual_seed(0)
    mel = torch.randn(1, 80, int(seconds * SAMPLE_RATE / HOP_LENGTH)) - 5.0
    models = [
        ("teacher (HiFT)", stand_in_teacher(), "random"),
        ("student (Vocos)", build_student().eval().requires_grad_(False), "random"),
    ]
    return compare(models, mel, chunk_frames, repeats)["models"]


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

    from train.config import REPO_ROOT
    from train.pipeline import build

    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        base = [
            f"paths.output_dir={tmp}",
            "~logger",
            "callbacks.model_checkpoint=null",
            "++trainer.enable_progress_bar=false",
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


def format_rows(rows: list[dict]) -> str:
    return table(
        list(rows[0]), [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length to vocode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--chunk-frames", type=int, nargs="+", default=[10, 25, 50], help="streaming chunk sizes")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps (0: skip)")
    parser.add_argument(
        "--train-config", nargs="*", default=["experiment=finetune"], help="Hydra overrides of the training run"
    )
    args = parser.parse_args(argv)
    rows = run(args.seconds, args.repeats, tuple(args.chunk_frames))
    print(f"Inference on {args.seconds:g} s of audio; s/s = seconds of compute per second of audio (median)")
    print(cost_table(rows))
    teacher, student = rows[0], rows[-1]
    for key in ("rtf_cpu_1_thread", "rtf_cpu_all_threads", "rtf_cuda"):
        if teacher[key] is not None:
            print(f"student speed-up, {key[4:].replace('_', ' ')}: {teacher[key] / student[key]:.1f}x")
    print(f"student size: {teacher['weights_bytes'] / student['weights_bytes']:.1f}x smaller")
    if args.train_steps:
        train_rows = train_throughput(args.train_config, args.train_steps)
        print(f"Training ({' '.join(args.train_config)}, {torch.get_num_threads()} threads, median step)")
        print(format_rows(train_rows))
        real, memory = train_rows
        print(f"real data vs in-memory step time: {100 * (real['s_per_step'] / memory['s_per_step'] - 1):+.1f} %")


if __name__ == "__main__":
    main()
