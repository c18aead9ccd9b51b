"""The evaluation report: per-utterance scores, summaries with 95 % intervals, quality gates,
the cost table; written as JSON (schema: ``train/evaluation/report_schema.json``) and as Markdown.

Scores are grouped by what was compared. Paired groups, ``<estimate>_vs_<reference>``:
``student_vs_teacher`` (distillation fidelity), ``student_vs_audio`` and ``teacher_vs_audio``
(against the ground truth), and with a ``parent`` (the fp32 student a compressed one was made
from) ``student_vs_parent`` and ``parent_vs_audio``; and ``griffin_lim_vs_audio``, the Griffin-Lim
floor from the same mels (:mod:`train.evaluation.griffin_lim`). No-reference groups:
``student``, ``teacher``, ``audio``, ``parent``, ``griffin_lim``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from scipy import stats

from train.evaluation.metrics import NO_REFERENCE, PAIRED, MetricInfo
from train.utils.tables import fmt, format_stat, table
from vocos_distill.files import atomic_write_text

SCHEMA_VERSION = 5  # 3: the parent comparison; 4: the Griffin-Lim floor, gates against another comparison;
# 5: speaker similarity and DistillMOS
SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
PAIRED_GROUPS = (
    "student_vs_teacher",
    "student_vs_audio",
    "teacher_vs_audio",
    "student_vs_parent",
    "parent_vs_audio",
    "griffin_lim_vs_audio",
)
SYSTEMS = ("student", "teacher", "audio", "parent", "griffin_lim")
GROUPS = PAIRED_GROUPS + SYSTEMS


def mel_words(data: Mapping[str, Any]) -> str:
    """Which mels a report's figures are of: ``flow mels (100 %)``; reports before the field: audio."""
    shares = data.get("mel_source") or {"audio": 1.0}
    names = {"audio": "mels of recordings", "flow": "flow mels teacher-forced from them", "text": "flow mels of text"}
    return ", ".join(f"{names.get(k, k)} ({v:.0%})" for k, v in shares.items())


def summarise(values: Iterable[float]) -> dict[str, Any]:
    """Mean and a 95 % Student-t interval of the finite values; ``nan`` counts the rest.

    Undefined figures (no values; an interval from one value) are ``None`` in the report.
    """
    values = list(values)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    mean = sum(finite) / n if n else None
    low = high = None
    if n > 1:
        sd = stats.tstd(finite)
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"mean": mean, "ci95": [low, high], "n": n, "nan": len(values) - n}


def summarise_groups(utterances: list[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``summary[group][metric]`` over every utterance that has the group."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for group in GROUPS:
        rows = [u["scores"][group] for u in utterances if group in u["scores"]]
        if rows:
            metrics = list(dict.fromkeys(m for row in rows for m in row))
            summary[group] = {m: summarise(row.get(m, math.nan) for row in rows) for m in metrics}
    return summary


def _metrics_of(group: str) -> dict[str, MetricInfo]:
    return PAIRED if group in PAIRED_GROUPS else NO_REFERENCE


def _mean(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], group: str, metric: str) -> tuple[Any, str | None]:
    """The mean of ``metric`` in ``group``, or ``None`` and why there is none."""
    stat = summary.get(group, {}).get(metric)
    if stat is None:
        return None, f"no {group} scores"
    if stat["mean"] is None:
        return None, f"{metric} is NaN on every utterance of {group}"
    return stat["mean"], None


@dataclass(frozen=True)
class Gate:
    """Pass when the mean of ``metric`` in ``comparison`` is above ``above`` / below ``below``:
    a number, or another comparison whose mean of the same metric is the bar (a baseline to
    beat, e.g. ``above: griffin_lim_vs_audio``)."""

    name: str
    metric: str
    comparison: str = "student_vs_teacher"
    above: float | str | None = None
    below: float | str | None = None

    def __post_init__(self) -> None:
        where = f"gates.{self.name}"
        if self.comparison not in GROUPS:
            raise ValueError(f"{where}.comparison={self.comparison!r}: choose one of {', '.join(GROUPS)}")
        if self.metric not in _metrics_of(self.comparison):
            known = ", ".join(_metrics_of(self.comparison))
            raise ValueError(f"{where}.metric={self.metric!r} is not a {self.comparison} metric: {known}")
        if (self.above is None) == (self.below is None):
            raise ValueError(f"{where}: set exactly one of `above` and `below`")
        key = "above" if self.above is not None else "below"
        if isinstance(self.bound, str):
            if self.bound not in GROUPS:
                raise ValueError(f"{where}.{key}={self.bound!r}: a number, or a comparison: {', '.join(GROUPS)}")
            if self.metric not in _metrics_of(self.bound):
                raise ValueError(f"{where}.{key}={self.bound!r} has no {self.metric} to compare with")

    @property
    def bound(self) -> float | str:
        return self.above if self.above is not None else self.below

    @property
    def condition(self) -> str:
        sign = ">" if self.above is not None else "<"
        return f"{sign} {self.bound}" if isinstance(self.bound, str) else f"{sign} {self.bound:g}"

    def check(self, summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
        value, missing = _mean(summary, self.comparison, self.metric)
        if isinstance(self.bound, str):
            threshold, threshold_missing = _mean(summary, self.bound, self.metric)
        else:
            threshold, threshold_missing = float(self.bound), None
        result = {
            "name": self.name,
            "metric": self.metric,
            "comparison": self.comparison,
            "condition": self.condition,
            "value": value,
            "threshold": threshold,
            "status": "skipped",
            "reason": missing or threshold_missing,
        }
        if result["reason"] is not None:
            return result
        passed = value > threshold if self.above is not None else value < threshold
        result["status"] = "pass" if passed else "fail"
        if not passed:
            bar = f"{self.bound} ({threshold:.3g})" if isinstance(self.bound, str) else f"{threshold:g}"
            side = "above" if self.above is not None else "below"
            result["reason"] = f"{self.comparison} {self.metric} {value:.3g} is not {side} {bar}"
        return result


def build_gates(config: Mapping[str, Mapping[str, Any]] | None) -> list[Gate]:
    """Gates from ``{name: {metric, comparison, above | below}}``; ``null`` entries are dropped."""
    gates = []
    for name, spec in (config or {}).items():
        if spec is None:
            continue
        unknown = set(spec) - {"metric", "comparison", "above", "below"}
        if unknown or "metric" not in spec:
            raise ValueError(f"gates.{name}: expected keys metric, comparison, above|below; got {sorted(spec)}")
        gates.append(Gate(name=name, **dict(spec)))
    return gates


def verdict(results: list[Mapping[str, Any]]) -> str:
    """``fail`` if any gate failed, ``incomplete`` if some could not be checked, else ``pass``."""
    statuses = {r["status"] for r in results}
    return "fail" if "fail" in statuses else "incomplete" if "skipped" in statuses or not results else "pass"


def metric_definitions() -> dict[str, dict[str, Any]]:
    return {
        name: {
            "unit": info.unit,
            "higher_is_better": info.higher_is_better,
            "sample_rate": info.sample_rate,
            "description": info.description,
        }
        for name, info in {**PAIRED, **NO_REFERENCE}.items()
    }


# -- reading and writing ------------------------------------------------------------------
def without_nan(obj: Any) -> Any:
    """NaN and inf become ``null``: strict JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [without_nan(v) for v in obj]
    return obj


def validate(report: Mapping[str, Any], source: str = "report") -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    try:
        jsonschema.validate(report, schema)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "top level"
        raise ValueError(
            f"{source}: not a schema-{SCHEMA_VERSION} evaluation report at {where}: {err.message}"
        ) from None


def write_report(report: Mapping[str, Any], path: Path) -> Path:
    """Validate, then write ``report.json`` atomically (NaN as ``null``)."""
    report = without_nan(report)
    validate(report, str(path))
    atomic_write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    """Load and validate a report written by :func:`write_report`."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read an evaluation report: {err}") from err
    validate(report, str(path))
    return report


# -- Markdown -------------------------------------------------------------------------------
def cost_table(rows: list[Mapping[str, Any]]) -> str:
    chunks = list(rows[0]["first_chunk_ms_cpu"]) if rows else []
    header = ["model", "params", "weights bytes", "s/s CPU 1 thread", "s/s CPU all threads", "s/s CUDA"]
    header += ["peak RSS MB (call +MB)", "CUDA peak MB"] + [f"first {n} frames, ms" for n in chunks]
    body = []
    for row in rows:
        latency = row["first_chunk_ms_cuda"] or row["first_chunk_ms_cpu"]
        cells = [row["model"], fmt(row["params"]), fmt(row["weights_bytes"])]
        cells += [fmt(row[k], 4) for k in ("rtf_cpu_1_thread", "rtf_cpu_all_threads", "rtf_cuda")]
        rss = fmt(row["peak_rss_mb"], 0) + (f" (+{row['peak_rss_increase_mb']:.0f})" if row["peak_rss_mb"] else "")
        cells += [rss, fmt(row["cuda_peak_allocated_mb"], 1)]
        cells += [fmt(latency.get(n), 1) for n in chunks]
        body.append(cells)
    return table(header, body)


def _floor_line(floor: Mapping[str, Any] | None) -> str:
    if not floor:
        return "none (evaluate.yaml: floor=null)"
    return (
        f"Griffin-Lim, {floor['n_iter']} iterations, from the same mels (`griffin_lim_vs_audio`): "
        "the non-neural baseline a vocoder must beat"
    )


def listening_lines(section: Mapping[str, Any] | None) -> list[str]:
    """The listening test in Markdown: its gates (from listener data) and its tables, or that
    there was none (predictors are no stand-in for listeners)."""
    if not section:
        return ["## Listening test", "", "No listening test yet: the gates above come from predictors and "
                "signal metrics; `train/listen.py aggregate` adds listeners' MOS and A/B gates."]  # fmt: skip
    kept = len(section["listeners"]) - len(section["excluded"])
    lines = ["## Listening test (gates from listener data)", "",
             f"{kept} of {len(section['listeners'])} listeners kept after ITU-R BS.1534 post-screening"
             + "".join(f"; excluded {e['listener']}: {e['why']}" for e in section["excluded"]), ""]  # fmt: skip
    lines.append(table(["gate (listener data)", "condition", "status"],
                       [[g["name"], g["condition"], g["status"] + (f" ({g['reason']})" if g["reason"] else "")]
                        for g in section["gates"]]))  # fmt: skip
    conditions = section["conditions"]
    rows = [[f"{c} ({conditions[c]})", format_stat(section["mushra"].get(c), ".1f", count=True),
             format_stat(section["mos"].get(c), ".2f", count=True)]
            for c in conditions if c in section["mushra"] or c in section["mos"]]  # fmt: skip
    lines += ["", table(["condition", "MUSHRA [95 %] (n)", "MOS [95 %] (n)"], rows)]
    for row in section["ab"]:
        a, b = row["pair"]
        p = "–" if row["p_value"] is None else f"{row['p_value']:.3g}"
        chosen = f"{row['chosen'][a]} vs {row['chosen'][b]} ({row['no_preference']} no preference)"
        lines.append(f"\nA/B {a} vs {b}: {chosen}, binomial p = {p}")
    students = section.get("student_gates") or {}
    if students:
        names = [g["name"] for g in section["gates"]]
        this = section.get("student")
        rows = [[s, *(students[s].get(n, "–") for n in names)] for s in students]
        lines += ["", "Each student's listening gates" + (f" (this report's: {this})" if this else "") + ":", "",
                  table(["student", *names], rows)]  # fmt: skip
    speakers = section.get("same_different") or {}
    if speakers:

        def rate(value: float | None) -> str:
            return "–" if value is None else f"{100 * value:.0f} %"

        rows = [[c, rate(v["correct"]), rate(v["same_speaker_rate"]), rate(v.get("different_speaker_rate")),
                 str(v["n"])] for c, v in speakers.items()]  # fmt: skip
        lines += ["", "Same/different speaker (two utterances: one speaker, or two):", "",
                  table(["condition", "correct", "one speaker: said same", "two speakers: said different", "pages"],
                        rows)]  # fmt: skip
    return lines


def to_markdown(report: Mapping[str, Any]) -> str:
    ckpt, data, teacher = report["checkpoint"], report["data"], report["teacher"]
    lines = [
        f"# Evaluation: {Path(ckpt['path']).name}",
        "",
        f"- checkpoint: `{ckpt['path']}` (sha256 {ckpt['sha256'][:12]}, {ckpt['params']:,} parameters)",
        f"- teacher: {teacher['status']}"
        + (f", weights {teacher['weights_id']}, seed {teacher['seed']}" if teacher["weights_id"] else "")
        + (f" ({teacher['reason']})" if teacher["reason"] else ""),
        f"- data: {', '.join(data['sources'])}, {mel_words(data)}, split `{data['split']}`: "
        f"{data['utterances']} utterances, {data['seconds']:.1f} s",
        f"- floor: {_floor_line(report.get('floor'))}",
        f"- verdict: **{report['verdict']}**",
        "",
        "## Gates",
        "",
    ]
    lines.append(
        table(
            ["gate", "metric", "comparison", "condition", "value", "bar", "status"],
            [
                [g["name"], g["metric"], g["comparison"], g["condition"], fmt(g["value"]), fmt(g["threshold"])]
                + [g["status"] + (f" ({g['reason']})" if g["reason"] else "")]
                for g in report["gates"]
            ],
        )
    )
    lines += ["", *listening_lines(report.get("listening"))]
    summary = report["summary"]
    paired = [g for g in PAIRED_GROUPS if g in summary]
    if paired:
        lines += ["", "## Quality: mean [95 % interval]", ""]
        rows = [
            [f"{m} ({PAIRED[m].unit})" if PAIRED[m].unit else m] + [format_stat(summary[g].get(m)) for g in paired]
            for m in PAIRED
            if any(m in summary[g] for g in paired)
        ]
        lines.append(table(["metric", *paired], rows))
    systems = [s for s in SYSTEMS if s in summary]
    if systems:
        lines += ["", "## Naturalness (no reference): mean [95 % interval]", ""]
        rows = [[m] + [format_stat(summary[s].get(m)) for s in systems] for m in NO_REFERENCE]
        lines.append(table(["metric", *systems], rows))
    if report["cost"]:
        cost = report["cost"]
        lines += [
            "",
            f"## Cost: {cost['audio_seconds']:.1f} s of audio, s/s = seconds of compute per second of audio",
            "",
            cost_table(cost["models"]),
            "",
            f"Device: {cost['device']}. First-chunk latency is compute time on "
            f"{'CUDA' if cost['models'][0]['first_chunk_ms_cuda'] else 'CPU (all threads)'}.",
        ]
    return "\n".join(lines) + "\n"
