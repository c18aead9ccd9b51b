"""Inference cost benchmark: ``python -m train.bench [--seconds 10] [--repeats 3]``.

Prints parameters, fp32 weight bytes and wall-clock seconds per ``--seconds`` of audio
on this CPU (1 thread and all threads) for every model, side by side in one run.
Timings on shared machines are noisy: compare the models of one run, quote ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from train.hift import HiFTGenerator
from train.mel import HOP_LENGTH, SAMPLE_RATE


def build_teacher() -> nn.Module:
    """Chatterbox-sized HiFT with random weights (cost does not depend on the values)."""
    return HiFTGenerator().eval().requires_grad_(False)


MODELS: dict[str, Callable[[], nn.Module]] = {"teacher (HiFT)": build_teacher}


def time_call(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: nn.Module, mel: torch.Tensor, threads: int, repeats: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return time_call(lambda: model(mel), repeats)
    finally:
        torch.set_num_threads(previous)


def run(seconds: float = 10.0, repeats: int = 3) -> list[dict]:
    torch.manual_seed(0)
    frames = int(seconds * SAMPLE_RATE / HOP_LENGTH)
    mel = torch.randn(1, 80, frames) - 5.0
    all_threads = torch.get_num_threads()
    rows = []
    for name, build in MODELS.items():
        model = build()
        params = sum(p.numel() for p in model.parameters())  # as stored in the checkpoint
        if isinstance(model, HiFTGenerator):
            model.fold_weight_norm()  # how the teacher runs
        rows.append(
            {
                "model": name,
                "params": params,
                "fp32_bytes": params * 4,
                "s_1_thread": measure(model, mel, 1, repeats),
                f"s_{all_threads}_threads": measure(model, mel, all_threads, repeats),
            }
        )
    return rows


def format_table(rows: list[dict], seconds: float) -> str:
    keys = list(rows[0])
    header = "| " + " | ".join(keys) + " |"
    lines = [f"seconds of compute per {seconds:g} s of audio (median)", header, "|" + "---|" * len(keys)]
    for row in rows:
        cells = [
            f"{v:,}" if isinstance(v, int) else f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length to vocode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    args = parser.parse_args(argv)
    print(format_table(run(args.seconds, args.repeats), args.seconds))


if __name__ == "__main__":
    main()
