"""Scoring long utterances on bounded windows: which spans are scored (:func:`windows`) and how
their scores combine (:func:`combine_windows`), as :data:`WINDOW_RULE` says."""

from __future__ import annotations

import math

WINDOW_RULE = (
    "Utterances longer than scoring.window_seconds are cut into equal, consecutive, frame-aligned "
    "windows about that long (round(length / window) of them); at most scoring.max_windows, evenly "
    "spaced from the first to the last, are scored, and each metric of the utterance is the "
    "length-weighted mean of its finite window scores."
)


def windows(n_samples: int, window_samples: int, max_windows: int, align: int = 480) -> list[tuple[int, int]]:
    """``(start, end)`` sample spans that score a signal of ``n_samples`` (see :data:`WINDOW_RULE`).

    Keeps every metric's input short (PESQ's own code crashes the process on signals of about
    two minutes; CREPE and DNSMOS memory and time grow with length) and the number of windows
    bounded, so one long file costs at most ``max_windows`` windows of work.
    """
    if max_windows < 1 or window_samples < align:
        raise ValueError("scoring.max_windows must be >= 1 and scoring.window_seconds at least one frame")
    count = max(1, round(n_samples / window_samples))
    bounds = [min(n_samples, round(i * n_samples / count / align) * align) for i in range(count)] + [n_samples]
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    if len(spans) > max_windows:
        picks = sorted({round(i * (len(spans) - 1) / max(1, max_windows - 1)) for i in range(max_windows)})
        spans = [spans[i] for i in picks]
    return spans


def combine_windows(scored: list[tuple[int, dict[str, dict[str, float]]]]) -> dict[str, dict[str, float]]:
    """Length-weighted mean, per comparison and metric, of the finite scores of ``(length, scores)``
    windows; NaN where no window has a finite score."""
    combined: dict[str, dict[str, float]] = {}
    for group in dict.fromkeys(g for _, scores in scored for g in scores):
        metrics = dict.fromkeys(m for _, scores in scored for m in scores.get(group, {}))
        combined[group] = {}
        for metric in metrics:
            pairs = [(n, s[group][metric]) for n, s in scored if math.isfinite(s.get(group, {}).get(metric, math.nan))]
            weight = sum(n for n, _ in pairs)
            combined[group][metric] = sum(n * v for n, v in pairs) / weight if weight else math.nan
    return combined
