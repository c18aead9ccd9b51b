"""Size against quality across evaluation reports: ``python train/tradeoff.py NAME=REPORT ...``.

One row per report (a parent and its compressed children, evaluated on the same clips), then
the Griffin-Lim floor and the ground truth from the first report: size and how many times
smaller than HiFT's fp32 weights, the scores against the ground truth with their 95 %
intervals, the no-reference predictors, and the scores against the parent where the report
has them (``parent=`` in ``train/evaluate.py``). A second table pairs each student with the
floor clip by clip: the mean difference of PESQ-wb and ESTOI with its 95 % interval, a firmer
test than whether the two means' intervals overlap, since both systems score the same clips.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from train.evaluation.report import read_report, summarise
from train.utils.tables import format_stat
from vocos_distill.errors import ConfigError

HIFT_PARAMS = 20_821_295  # Chatterbox's HiFT (docs/conformance.md; tests/test_tradeoff.py counts it)
HIFT_BYTES = 4 * HIFT_PARAMS


def student_bytes(report: dict[str, Any]) -> tuple[int, str]:
    """What the student weighs: an int8 file's own size; otherwise its parameters in fp32."""
    path = Path(report["checkpoint"]["path"])
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"{path}: the evaluated int8 file is gone; its size is part of the table")
        return path.stat().st_size, "int8"
    return 4 * report["checkpoint"]["params"], "fp32"


def _stat(stats: dict[str, Any] | None, metric: str, spec: str, interval: bool = False) -> str:
    stat = (stats or {}).get(metric)
    if not stat or stat.get("mean") is None or not math.isfinite(stat["mean"]):
        return "–"
    text = format(stat["mean"], spec)
    low, high = stat.get("ci95") or (None, None)
    if interval and low is not None and high is not None:
        text += f" [{format(low, spec)}, {format(high, spec)}]"
    return text


HEADER = (
    "| student | params | size | times smaller than HiFT | PESQ-wb | ESTOI | log-mel dB | speaker sim. "
    "| DNSMOS OVRL | DistillMOS | vs parent: PESQ-wb | log-mel dB |"
)


def row(name: str, report: dict[str, Any]) -> str:
    size, kind = student_bytes(report)
    summary = report["summary"]
    truth, alone, parent = summary.get("student_vs_audio"), summary.get("student"), summary.get("student_vs_parent")
    return (
        f"| {name} | {report['checkpoint']['params'] / 1e6:.2f} M | {size / 1e6:.1f} MB {kind} | "
        f"{HIFT_BYTES / size:.0f} | {_stat(truth, 'pesq_wb', '.2f', True)} | {_stat(truth, 'estoi', '.3f', True)} | "
        f"{_stat(truth, 'mel_distance_db', '.2f')} | {_stat(truth, 'speaker_similarity', '.3f')} | "
        f"{_stat(alone, 'dnsmos_ovrl', '.2f')} | {_stat(alone, 'distillmos', '.2f')} | "
        f"{_stat(parent, 'pesq_wb', '.2f')} | {_stat(parent, 'mel_distance_db', '.2f')} |"
    )


def reference_rows(report: dict[str, Any]) -> list[str]:
    """The floor and the ground truth, as the first report scored them."""
    summary = report["summary"]
    rows = []
    if "griffin_lim_vs_audio" in summary:
        floor, alone = summary["griffin_lim_vs_audio"], summary.get("griffin_lim")
        rows.append(
            f"| Griffin-Lim floor | – | – | – | {_stat(floor, 'pesq_wb', '.2f', True)} | "
            f"{_stat(floor, 'estoi', '.3f', True)} | {_stat(floor, 'mel_distance_db', '.2f')} | "
            f"{_stat(floor, 'speaker_similarity', '.3f')} | {_stat(alone, 'dnsmos_ovrl', '.2f')} | "
            f"{_stat(alone, 'distillmos', '.2f')} | – | – |"
        )
    if "audio" in summary:
        audio = summary["audio"]
        rows.append(
            f"| ground truth | – | – | – | – | – | – | – | {_stat(audio, 'dnsmos_ovrl', '.2f')} | "
            f"{_stat(audio, 'distillmos', '.2f')} | – | – |"
        )
    return rows


PAIRED_HEADER = "| student minus floor, clip by clip | PESQ-wb | ESTOI | clips where the student's PESQ-wb is higher |"


def floor_differences(report: dict[str, Any], metric: str) -> list[float]:
    """Per clip, the student's score against the ground truth minus the floor's, where both exist."""
    differences = []
    for utterance in report["utterances"]:
        scores = utterance["scores"]
        student = scores.get("student_vs_audio", {}).get(metric)
        floor = scores.get("griffin_lim_vs_audio", {}).get(metric)
        if student is not None and floor is not None and math.isfinite(student) and math.isfinite(floor):
            differences.append(student - floor)
    return differences


def paired_row(name: str, report: dict[str, Any]) -> str:
    pesq = floor_differences(report, "pesq_wb")
    ahead = f"{100 * sum(d > 0 for d in pesq) / len(pesq):.0f} % of {len(pesq)}" if pesq else "–"
    estoi = floor_differences(report, "estoi")
    return f"| {name} | {format_stat(summarise(pesq), '+.2f')} | {format_stat(summarise(estoi), '+.3f')} | {ahead} |"


def table(named: list[tuple[str, Path]]) -> str:
    """The Markdown table of ``(name, report.json)`` pairs; the reports must score the same clips."""
    if not named:
        raise ConfigError("give at least one NAME=REPORT pair")
    reports = [(name, read_report(path)) for name, path in named]
    first_name, first = reports[0]
    clips = [u["name"] for u in first["utterances"]]
    for name, report in reports[1:]:
        if [u["name"] for u in report["utterances"]] != clips:
            raise ConfigError(f"{name}: its report scores other clips than {first_name}'s; compare like with like")
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [row(name, report) for name, report in reports]
    lines += reference_rows(first)
    if any("griffin_lim_vs_audio" in r["summary"] for _, r in reports):
        lines += ["", PAIRED_HEADER, "|" + "---|" * (PAIRED_HEADER.count("|") - 1)]
        lines += [paired_row(name, report) for name, report in reports]
    return "\n".join(lines)
