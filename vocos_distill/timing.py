"""Timing a vocoder fairly on a shared machine: a fixed thread count, a warm-up, medians, and
candidates run in turn so that a burst of load falls on all of them."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from vocos_distill.config import FRAME_MS, N_MELS


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)`` (``None``: as it is), restoring the count after."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_call(fn: Callable[[], object], repeats: int, synchronize: Callable[[], None] | None = None) -> float:
    """Median wall-clock seconds of ``fn`` after one warm-up call."""
    return interleaved({"fn": fn}, repeats, synchronize)["fn"]


def interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int, synchronize: Callable[[], None] | None = None
) -> dict[str, float]:
    """Median wall-clock seconds of each of ``fns``, after a warm-up of each, over ``repeats``
    rounds that call every one once in turn."""
    sync = synchronize or (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        sync()
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timing_mel(frames: int, seed: int = 0, n_mels: int = N_MELS) -> Tensor:
    """A random S3Gen-range log-mel ``(1, n_mels, frames)``, the same for a given seed: what speed
    and reach are measured on (a vocoder's cost does not depend on what it says)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, n_mels, frames, generator=generator) - 5.0


def frames_of(seconds: float) -> int:
    """S3Gen mel frames in ``seconds`` of audio (50 a second)."""
    return int(seconds * 1000 / FRAME_MS)
