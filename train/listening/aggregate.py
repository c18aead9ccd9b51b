"""Aggregate a listening test's answers into the report's ``listening`` section and its two gates.

* **MUSHRA** (ITU-R BS.1534-3): per condition, the mean rating with a 95 % Student-t interval over
  every (listener, trial) rating, after the recommendation's post-screening: a listener who rates
  the hidden reference below 90 in more than 15 % of their MUSHRA trials is excluded from every
  block, and the section names them and why.
* **A/B preference**: per pair, how often each side was chosen ("none" left out), with a
  two-sided exact binomial test against 50 %.
* **ACR** (5-point naturalness): MOS per condition with its interval.
* **Same/different speaker**: per condition, the share of trials answered correctly, and of
  same-speaker trials answered "same".

The two gates come from listener data only, never from a predictor: ``mos_degradation`` (each
student's MOS at most 0.2 below HiFT's, or the reference's when no teacher was rated) and
``ab_not_worse`` (listeners do not prefer HiFT over the student at p < 0.05, one-sided).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from train.evaluation.report import summarise
from train.listening.answers import Answer, read_answers

REFERENCE_FLOOR = 90.0  # BS.1534-3: the hidden reference rated below this ...
REFERENCE_SHARE = 0.15  # ... in more than this share of a listener's trials excludes them
MOS_DEGRADATION = 0.2  # the plan's gate: MOS at most this much below the teacher's
AB_ALPHA = 0.05


def mushra_ratings(answers: Sequence[Answer]) -> dict[str, list[float]]:
    """Every MUSHRA rating of ``answers``, by condition."""
    ratings: dict[str, list[float]] = defaultdict(list)
    for answer in answers:
        if answer.block == "mushra":
            for condition, rating in answer.body["ratings"].items():
                ratings[condition].append(float(rating))
    return ratings


def post_screening(conditions: Mapping[str, str], answers: Sequence[Answer]) -> dict[str, str]:
    """``listener -> why`` for each listener BS.1534's post-screening excludes."""
    reference = [c for c, role in conditions.items() if role == "reference"]
    trials: dict[str, list[float]] = defaultdict(list)
    for answer in answers:
        if answer.block == "mushra":
            trials[answer.listener] += [answer.body["ratings"][c] for c in reference if c in answer.body["ratings"]]
    excluded = {}
    for listener, ratings in sorted(trials.items()):
        low = sum(r < REFERENCE_FLOOR for r in ratings)
        if ratings and low / len(ratings) > REFERENCE_SHARE:
            excluded[listener] = (
                f"rated the hidden reference below {REFERENCE_FLOOR:g} in {low} of {len(ratings)} MUSHRA trials "
                f"({100 * low / len(ratings):.0f} % > {100 * REFERENCE_SHARE:.0f} %; ITU-R BS.1534-3 post-screening)"
            )
    return excluded


def _ab(answers: Sequence[Answer]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for answer in answers:
        pair = tuple(sorted(answer.body["pair"]))
        tally = counts.setdefault(pair, {pair[0]: 0, pair[1]: 0, "none": 0})
        tally[answer.body["choice"]] += 1
    rows = []
    for (a, b), tally in sorted(counts.items()):
        decided = tally[a] + tally[b]
        p = stats.binomtest(tally[a], decided, 0.5).pvalue if decided else None
        rows.append({"pair": [a, b], "chosen": {a: tally[a], b: tally[b]}, "no_preference": tally["none"],
                     "n": decided, "p_value": p})  # fmt: skip
    return rows


def _same_different(answers: Sequence[Answer]) -> dict[str, dict[str, Any]]:
    by_condition: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for answer in answers:
        by_condition[answer.body["condition"]].append(answer.body)
    out = {}
    for condition, bodies in sorted(by_condition.items()):
        same = [b for b in bodies if b["truth"] == "same"]
        out[condition] = {
            "n": len(bodies),
            "correct": sum(b["answer"] == b["truth"] for b in bodies) / len(bodies),
            "same_speaker_rate": sum(b["answer"] == "same" for b in same) / len(same) if same else None,
        }
    return out


def _mos_gate(conditions: Mapping[str, str], mos: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    baseline_role = "teacher" if any(conditions.get(c) == "teacher" for c in mos) else "reference"
    baseline = next((c for c in mos if conditions.get(c) == baseline_role), None)
    students = [c for c in mos if conditions.get(c) == "student"]
    gate = {"name": "mos_degradation", "from": "listener data", "against": baseline,
            "condition": f"MOS(student) >= MOS({baseline_role}) - {MOS_DEGRADATION}", "students": {}}  # fmt: skip
    if baseline is None or not students or mos[baseline]["mean"] is None:
        return {**gate, "status": "skipped", "reason": "no ACR ratings of a student and of HiFT or the reference"}
    for student in students:
        drop = None if mos[student]["mean"] is None else mos[baseline]["mean"] - mos[student]["mean"]
        gate["students"][student] = {"drop": drop, "status": "pass" if drop is not None and drop < MOS_DEGRADATION
                                     else "fail"}  # fmt: skip
    statuses = {s["status"] for s in gate["students"].values()}
    return {**gate, "status": "fail" if "fail" in statuses else "pass", "reason": None}


def _ab_gate(conditions: Mapping[str, str], ab: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    gate = {"name": "ab_not_worse", "from": "listener data",
            "condition": f"listeners do not prefer HiFT over the student (one-sided binomial p >= {AB_ALPHA})",
            "pairs": []}  # fmt: skip
    for row in ab:
        roles = {conditions[c]: c for c in row["pair"]}
        if set(roles) != {"teacher", "student"} or not row["n"]:
            continue
        hift, student = roles["teacher"], roles["student"]
        p = stats.binomtest(row["chosen"][hift], row["n"], 0.5, alternative="greater").pvalue
        gate["pairs"].append({"student": student, "teacher": hift, "prefer_teacher": row["chosen"][hift],
                              "n": row["n"], "p_value": p, "status": "fail" if p < AB_ALPHA else "pass"})  # fmt: skip
    if not gate["pairs"]:
        return {**gate, "status": "skipped", "reason": "no A/B answers between HiFT and a student"}
    failed = any(p["status"] == "fail" for p in gate["pairs"])
    return {**gate, "status": "fail" if failed else "pass", "reason": None}


def interval_half_widths(sd: float, listeners: Sequence[int], trials: int) -> list[dict[str, Any]]:
    """The 95 % interval's half-width for a condition's mean with each number of listeners, each
    rating ``trials`` trials, from a rating standard deviation ``sd`` (Student-t, ratings treated
    as independent, which a listener's own bias makes optimistic)."""
    return [{"listeners": n, "ratings": n * trials,
             "half_width": float(stats.t.ppf(0.975, n * trials - 1) * sd / math.sqrt(n * trials))}
            for n in listeners if n * trials > 1]  # fmt: skip


def aggregate(folder: str | Path) -> dict[str, Any]:
    """The ``listening`` section of an experiment folder's answers (see the module's docstring)."""
    conditions, answers = read_answers(folder)
    excluded = post_screening(conditions, answers)
    kept = [a for a in answers if a.listener not in excluded]
    mushra = mushra_ratings(kept)
    acr: dict[str, list[float]] = defaultdict(list)
    for answer in kept:
        if answer.block == "acr":
            acr[answer.body["condition"]].append(float(answer.body["score"]))
    mushra_summary = {c: summarise(v) for c, v in sorted(mushra.items())}
    mos = {c: summarise(v) for c, v in sorted(acr.items())}
    ab = _ab([a for a in kept if a.block == "ab"])
    spread = [stats.tstd(v) for v in mushra.values() if len(v) > 1]
    pages = defaultdict(int)
    for answer in kept:
        pages[answer.listener] += answer.block == "mushra"
    per_listener = max(pages.values(), default=0)
    return {
        "experiment": str(Path(folder).resolve()),
        "conditions": conditions,
        "listeners": sorted({a.listener for a in answers}),
        "excluded": [{"listener": who, "why": why} for who, why in excluded.items()],
        "trials": {block: sum(a.block == block for a in kept) for block in ("mushra", "ab", "acr", "same_different")},
        "mushra": mushra_summary,
        "ab": ab,
        "mos": mos,
        "same_different": _same_different([a for a in kept if a.block == "same_different"]),
        "gates": [_mos_gate(conditions, mos), _ab_gate(conditions, ab)],
        "interval_half_widths": interval_half_widths(
            sum(spread) / len(spread) if spread else 20.0, [5, 10, 20, 40], max(per_listener, 1)
        ),
    }


def box_plot(folder: str | Path, section: Mapping[str, Any], out: str | Path) -> Path:
    """A box plot of the kept MUSHRA ratings per condition (the ``listening`` section's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vocos_distill.files import atomic_write

    excluded = {e["listener"] for e in section["excluded"]}
    conditions, answers = read_answers(folder)
    ratings = mushra_ratings([a for a in answers if a.listener not in excluded])
    names = sorted(ratings, key=lambda c: -sum(ratings[c]) / len(ratings[c]))
    figure, axes = plt.subplots(figsize=(1.2 * max(len(names), 3) + 1, 3.5))
    axes.boxplot([ratings[c] for c in names], tick_labels=[f"{c}\n({conditions[c]})" for c in names])
    axes.set_ylim(0, 100)
    axes.set_ylabel("MUSHRA rating")
    kept = len(section["listeners"]) - len(excluded)
    axes.set_title(f"{kept} listener(s) after post-screening, {section['trials']['mushra']} trials")
    figure.tight_layout()
    out = Path(out)
    atomic_write(out, lambda f: figure.savefig(f, format="png", dpi=120))
    plt.close(figure)
    return out
