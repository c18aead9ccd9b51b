"""Figures for the evaluation report (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from train.evaluation.metrics import NO_REFERENCE, PAIRED  # noqa: E402
from vocos_distill.config import LOG_MEL_RANGE  # noqa: E402

TITLES = {"audio": "ground truth", "teacher": "teacher (HiFT)", "student": "student (Vocos)"}


def mel_comparison(name: str, mels: Mapping[str, Tensor]) -> Figure:
    """S3Gen log-mels ``(80, T)`` stacked: ground truth, teacher, student (those present), then
    any other systems in their given order, titled by their keys."""
    order = [k for k in TITLES if k in mels] + [k for k in mels if k not in TITLES]
    fig, axes = plt.subplots(len(order), 1, figsize=(9, 2.2 * len(order)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], order, strict=True):
        image = ax.imshow(
            mels[key].numpy(), origin="lower", aspect="auto", vmin=LOG_MEL_RANGE[0], vmax=LOG_MEL_RANGE[1]
        )
        ax.set_title(TITLES.get(key, key), fontsize=10)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("frame (20 ms)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="ln magnitude")
    fig.suptitle(name, fontsize=11)
    return fig


def metric_distributions(utterances: Sequence[Mapping[str, Any]], groups: Sequence[str]) -> Figure:
    """One panel per metric: each comparison's per-utterance values (dots) and their mean (bar)."""
    metrics = [
        m for m in {**PAIRED, **NO_REFERENCE} if any(m in u["scores"].get(g, {}) for u in utterances for g in groups)
    ]
    cols = 4
    rows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        present = [g for g in groups if any(metric in u["scores"].get(g, {}) for u in utterances)]
        for x, group in enumerate(present):
            values = [u["scores"][group][metric] for u in utterances if group in u["scores"]]
            values = [v for v in values if v is not None and math.isfinite(v)]
            if not values:
                continue
            jitter = [x + 0.15 * ((i % 5) - 2) / 2 for i in range(len(values))]
            ax.scatter(jitter, values, s=14, alpha=0.7)
            ax.hlines(sum(values) / len(values), x - 0.3, x + 0.3, color="black")
        ax.set_xticks(range(len(present)), [g.replace("_vs_", "\nvs ") for g in present], fontsize=8)
        info = PAIRED.get(metric) or NO_REFERENCE[metric]
        arrow = "higher is better" if info.higher_is_better else "lower is better"
        ax.set_title(f"{metric} ({arrow})", fontsize=9)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)


def learning_curve(rows: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """Held-out PESQ-wb and S3Gen mel distance against training steps (rows of
    :func:`train.evaluation.curve.read_curve`), the Griffin-Lim floor drawn as a line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [r["step"] for r in rows]
    for ax, (key, label) in zip(
        axes,
        (("pesq_wb", "PESQ-wb (higher is better)"), ("mel_distance_db", "log-mel distance, dB (lower is better)")),
        strict=True,
    ):
        ax.plot(steps, [r.get(key, math.nan) for r in rows], marker="o", label="student")
        floor = [r.get(f"floor_{key}") for r in rows if r.get(f"floor_{key}") is not None]
        if floor:
            ax.axhline(floor[0], color="tab:red", linestyle="--", label="Griffin-Lim floor")
        ax.set_xlabel("step (generator updates)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
