"""Scoring utterances on every core: one process per core, one thread each, results in order.

Each metric of an utterance runs on one thread (PESQ, STOI and the predictors' small calls
gain little from more), so the utterances themselves are shared out: ``workers`` processes,
each with its own :class:`~train.evaluation.metrics.QualityMetrics` built from the same
settings, score whole utterances while the main process vocodes the next ones. Results come
back in the order the utterances went in, so a report does not depend on the worker count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch
from torch import Tensor

from train.evaluation.metrics import Analysis, QualityMetrics
from train.evaluation.report import PAIRED_GROUPS, SYSTEMS
from train.evaluation.windows import combine_windows, windows
from vocos_distill.config import SAMPLE_RATE
from vocos_distill.errors import ConfigError

# One utterance to score: (name, {system: waveform}, keep its first window's mels and waveforms for plots)
Job = tuple[str, dict[str, Tensor], bool]
Examples = tuple[dict[str, Tensor], dict[str, Tensor]] | None
# What scoring one gives back: its record, its examples, and (hits, misses) of the score cache
Scored = tuple[dict[str, Any], Examples, tuple[int, int]]

_WORKER: dict[str, Any] = {}


class WorkersError(ConfigError, ValueError):
    """``workers=`` is not a worker count."""


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: int | str) -> int:
    """``auto``: one per core this process may use; a number: that many (0 and 1: in this process)."""
    if workers == "auto":
        return available_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise WorkersError(f"workers={workers!r}: a whole number >= 0, or 'auto' (one per core)")
    return workers


def score_signals(metrics: QualityMetrics, signals: dict[str, Analysis], name: str) -> dict[str, dict[str, float]]:
    """Every comparison the available signals allow."""

    scores = {}
    for group in PAIRED_GROUPS:
        estimate, reference = group.split("_vs_")
        if estimate in signals and reference in signals:
            scores[group] = metrics.paired(signals[estimate], signals[reference], name)
    if metrics.naturalness:
        for system in SYSTEMS:
            if system in signals:
                scores[system] = metrics.no_reference(signals[system], name)
    return scores


def score_utterance(
    metrics: QualityMetrics, wavs: dict[str, Tensor], name: str, window_s: float, max_windows: int
) -> tuple[dict[str, Any], dict[str, Analysis]]:
    """Score one utterance on bounded windows (:data:`train.evaluation.windows.WINDOW_RULE`): its
    record for the report, and the analyses of its first window (for plots)."""
    length = min(w.shape[-1] for w in wavs.values())
    spans = windows(length, round(window_s * SAMPLE_RATE), max_windows)
    scored, first = [], {}
    for start, end in spans:
        signals = {system: metrics.analyse(wav[start:end]) for system, wav in wavs.items()}
        label = name if len(spans) == 1 else f"{name} [{start / SAMPLE_RATE:.1f}-{end / SAMPLE_RATE:.1f} s]"
        scored.append((end - start, score_signals(metrics, signals, label)))
        first = first or signals
    record = {
        "name": name,
        "seconds": length / SAMPLE_RATE,
        "scored_seconds": sum(n for n, _ in scored) / SAMPLE_RATE,
        "windows": len(spans),
        "scores": combine_windows(scored),
    }
    return record, first


def _score(metrics: QualityMetrics, job: Job, window_s: float, max_windows: int) -> Scored:
    name, wavs, keep = job
    before = (metrics.cache.hits, metrics.cache.misses) if metrics.cache else (0, 0)
    record, first = score_utterance(metrics, wavs, name, window_s, max_windows)
    examples = ({k: s.mel for k, s in first.items()}, {k: s.wav for k, s in first.items()}) if keep else None
    after = (metrics.cache.hits, metrics.cache.misses) if metrics.cache else (0, 0)
    return record, examples, (after[0] - before[0], after[1] - before[1])


def _start_worker(settings: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    _WORKER["metrics"] = QualityMetrics(**settings)


def _score_in_worker(job: Job, window_s: float, max_windows: int) -> Scored:
    return _score(_WORKER["metrics"], job, window_s, max_windows)


class ScoringPool:
    """``map`` scores jobs in ``workers`` processes (or here, for 0 or 1) and yields
    ``(record, examples, (cache hits, misses))`` in the jobs' order; ``settings`` are
    :class:`QualityMetrics`' arguments."""

    def __init__(self, settings: dict[str, Any], workers: int, window_s: float, max_windows: int) -> None:
        self.settings = dict(settings)
        self.workers = workers
        self.window_s, self.max_windows = window_s, max_windows
        self.metrics = QualityMetrics(**self.settings) if workers <= 1 else None

    def map(self, jobs: Iterable[Job]) -> Iterator[Scored]:
        if self.metrics is not None:
            for job in jobs:
                yield _score(self.metrics, job, self.window_s, self.max_windows)
            return
        # spawn: a forked child of a process that has run torch's thread pools can hang
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, context, initializer=_start_worker, initargs=(self.settings,)) as pool:
            pending: deque[Future] = deque()
            for job in jobs:
                pending.append(pool.submit(_score_in_worker, job, self.window_s, self.max_windows))
                while len(pending) > 2 * self.workers:  # bounded: the main process vocodes ahead, not all at once
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
