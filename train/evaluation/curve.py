"""A run's held-out learning curve, read from its CSV log: ``python train/curve.py RUN_FOLDER``.

Each validation logs ``val/pesq_wb``, ``val/mel_distance`` (nepers) and, once computed, the
Griffin-Lim floor's ``val/floor_*`` (:class:`train.training.module.VocoderDistillation`);
``val/minutes`` is the wall-clock time since training began.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from train.evaluation.metrics import DB_PER_NEPER
from vocos_distill.errors import MissingFileError

COLUMNS = {
    "val/pesq_wb": "pesq_wb",
    "val/mel_distance": "mel_distance_db",
    "val/floor_pesq_wb": "floor_pesq_wb",
    "val/floor_mel_distance": "floor_mel_distance_db",
    "val/minutes": "minutes",
}


def metrics_file(run: str | Path) -> Path:
    """The newest ``metrics.csv`` under a run folder (or the file itself)."""
    run = Path(run)
    if run.is_file():
        return run
    found = sorted(run.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise MissingFileError(f"{run}: no metrics.csv under it; train with `logger=csv` (or `logger=[csv,wandb]`)")
    return found[-1]


def read_curve(run: str | Path) -> list[dict[str, float]]:
    """One row per validation: ``step`` and the :data:`COLUMNS` present (mel distances in dB)."""
    by_step: dict[int, dict[str, float]] = {}
    with open(metrics_file(run), newline="") as f:
        for row in csv.DictReader(f):
            values = {name: float(row[key]) for key, name in COLUMNS.items() if row.get(key) not in (None, "")}
            if not values:
                continue
            step = int(row["step"])
            by_step.setdefault(step, {"step": step}).update(values)
    rows = [by_step[s] for s in sorted(by_step)]
    for row in rows:
        for key in ("mel_distance_db", "floor_mel_distance_db"):
            if key in row:
                row[key] *= DB_PER_NEPER
    return rows


def markdown(rows: list[dict[str, float]]) -> str:
    def cell(row: dict[str, float], key: str, spec: str) -> str:
        value = row.get(key)
        return "–" if value is None or not math.isfinite(value) else format(value, spec)

    lines = [
        "| step | minutes | PESQ-wb | log-mel distance (dB) | floor PESQ-wb | floor log-mel (dB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['step']} | {cell(row, 'minutes', '.1f')} | {cell(row, 'pesq_wb', '.2f')} | "
            f"{cell(row, 'mel_distance_db', '.2f')} | {cell(row, 'floor_pesq_wb', '.2f')} | "
            f"{cell(row, 'floor_mel_distance_db', '.2f')} |"
        )
    return "\n".join(lines)
