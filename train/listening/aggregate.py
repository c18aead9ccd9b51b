"""Aggregate a listening test's answers into the report's ``listening`` section and its two gates.

* **Screening**, stated in the section's ``screening`` and applied to every block: ITU-R
  BS.1534-3's post-screening (a listener who rates the hidden reference below 90 in more than
  15 % of their MUSHRA trials), the headphone check (a listener who did not pass it, where the
  experiment has one), and, with ``require_plays`` (the default), a listener who rated a MUSHRA
  condition without playing it. The section names each excluded listener and why.
* **MUSHRA** (ITU-R BS.1534-3): per condition, the mean rating with a 95 % Student-t interval over
  every (listener, trial) rating of the listeners kept.
* **A/B preference**: per pair, how often each side was chosen ("none" left out), with a
  two-sided exact binomial test against 50 %.
* **ACR** (5-point naturalness): MOS per condition with its interval.
* **Same/different speaker**: per condition, the share of trials answered correctly, of
  same-speaker pairs answered "same" and of two-speaker pairs answered "different".

The two gates come from listener data only, never from a predictor: ``mos_degradation`` (each
student's MOS at most 0.2 below HiFT's, or the reference's when no teacher was rated; a drop of
exactly 0.2 passes, within float rounding) and ``ab_not_worse`` (listeners do not prefer HiFT
over the student at p < 0.05, one-sided). Neither passes with fewer screened listeners than
:func:`needed_listeners` says: the number at which a MOS's 95 % interval is at most half the 0.2
margin wide on either side, from the ratings' spread (at least :data:`PRIOR_SD`) and the pages a
listener rates; below it a gate is ``insufficient``, which no verdict counts as a pass.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from train.evaluation.report import summarise
from train.listening.answers import EXPERIMENT, Answer, ListeningDataError, read_answers
from vocos_distill.files import atomic_write

REFERENCE_FLOOR = 90.0  # BS.1534-3: the hidden reference rated below this ...
REFERENCE_SHARE = 0.15  # ... in more than this share of a listener's trials excludes them
MOS_DEGRADATION = 0.2  # the plan's gate: MOS at most this much below the teacher's
TOLERANCE = 1e-9  # float rounding: 4.2 - 4.0 is 0.20000000000000018, which is a drop of 0.2
AB_ALPHA = 0.05
PRIOR_SD = 0.8  # the least ACR standard deviation the listener count is planned with (docs/evaluation.md)


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


def headphone_screening(experiment: Mapping[str, Any], answers: Sequence[Answer]) -> dict[str, str]:
    """``listener -> why`` for each listener who did not pass the experiment's headphone check."""
    if not experiment.get("blocks", {}).get("headphones"):
        return {}
    listeners = sorted({a.listener for a in answers})
    passed = {a.listener: a.body for a in answers if a.block == "headphones"}
    out = {}
    for listener in listeners:
        body = passed.get(listener)
        if body is None:
            out[listener] = "took no headphone check"
        elif not body["passed"]:
            out[listener] = (f"failed the headphone check ({body['correct']} of {body['trials']} correct; "
                             "Woods et al. 2017 antiphase test)")  # fmt: skip
    return out


def play_screening(answers: Sequence[Answer]) -> dict[str, str]:
    """``listener -> why`` for each listener who rated a MUSHRA condition they never played."""
    out = {}
    for answer in answers:
        if answer.block != "mushra" or answer.listener in out:
            continue
        plays = answer.body.get("plays") or {}
        unplayed = sorted(c for c in answer.body["ratings"] if plays.get(c, 0) < 1)
        if unplayed:
            out[answer.listener] = f"rated without playing {', '.join(unplayed)} on page {answer.page}"
    return out


def needed_listeners(sd: float, trials: int, margin: float = MOS_DEGRADATION) -> int:
    """The fewest listeners, each rating ``trials`` pages of a condition, for which the 95 % interval
    of its MOS is at most ``margin / 2`` either side, with ratings' SD ``sd`` (at least :data:`PRIOR_SD`)."""
    sd = max(sd, PRIOR_SD)
    for row in interval_half_widths(sd, range(1, 1001), max(trials, 1)):
        if row["half_width"] <= margin / 2:
            return row["listeners"]
    return 1000


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
        different = [b for b in bodies if b["truth"] == "different"]
        out[condition] = {
            "n": len(bodies),
            "correct": sum(b["answer"] == b["truth"] for b in bodies) / len(bodies),
            "same_speaker_rate": sum(b["answer"] == "same" for b in same) / len(same) if same else None,
            "different_speaker_rate": (
                sum(b["answer"] == "different" for b in different) / len(different) if different else None
            ),  # fmt: skip
        }
    return out


def _enough(status: str, kept: int, needed: int) -> tuple[str, str | None]:
    """A gate's status once the number of screened listeners is counted in."""
    if status == "pass" and kept < needed:
        return "insufficient", f"{kept} screened listener(s); a listening gate can pass from {needed}"
    return status, None


def _mos_gate(
    conditions: Mapping[str, str], mos: Mapping[str, Mapping[str, Any]], kept: int, needed: int
) -> dict[str, Any]:
    baseline_role = "teacher" if any(conditions.get(c) == "teacher" for c in mos) else "reference"
    baseline = next((c for c in mos if conditions.get(c) == baseline_role), None)
    students = [c for c in mos if conditions.get(c) == "student"]
    gate = {"name": "mos_degradation", "from": "listener data", "against": baseline, "listeners_needed": needed,
            "condition": f"MOS(student) >= MOS({baseline_role}) - {MOS_DEGRADATION}", "students": {}}  # fmt: skip
    if baseline is None or not students or mos[baseline]["mean"] is None:
        return {**gate, "status": "skipped", "reason": "no ACR ratings of a student and of HiFT or the reference"}
    for student in students:
        drop = None if mos[student]["mean"] is None else mos[baseline]["mean"] - mos[student]["mean"]
        passed = drop is not None and drop <= MOS_DEGRADATION + TOLERANCE
        status, reason = _enough("pass" if passed else "fail", kept, needed)
        gate["students"][student] = {"drop": drop, "status": status, "reason": reason}
    return {**gate, **_overall(gate["students"].values())}


def _overall(results: Any) -> dict[str, Any]:
    statuses = [r["status"] for r in results]
    status = "fail" if "fail" in statuses else "insufficient" if "insufficient" in statuses else "pass"
    reasons = sorted({r["reason"] for r in results if r.get("reason")})
    return {"status": status, "reason": "; ".join(reasons) or None}


def _ab_gate(conditions: Mapping[str, str], ab: Sequence[Mapping[str, Any]], kept: int, needed: int) -> dict[str, Any]:
    gate = {"name": "ab_not_worse", "from": "listener data", "listeners_needed": needed,
            "condition": f"listeners do not prefer HiFT over the student (one-sided binomial p >= {AB_ALPHA})",
            "pairs": []}  # fmt: skip
    for row in ab:
        roles = {conditions[c]: c for c in row["pair"]}
        if set(roles) != {"teacher", "student"} or not row["n"]:
            continue
        hift, student = roles["teacher"], roles["student"]
        p = stats.binomtest(row["chosen"][hift], row["n"], 0.5, alternative="greater").pvalue
        status, reason = _enough("fail" if p < AB_ALPHA else "pass", kept, needed)
        gate["pairs"].append({"student": student, "teacher": hift, "prefer_teacher": row["chosen"][hift],
                              "n": row["n"], "p_value": p, "status": status, "reason": reason})  # fmt: skip
    if not gate["pairs"]:
        return {**gate, "status": "skipped", "reason": "no A/B answers between HiFT and a student"}
    return {**gate, **_overall(gate["pairs"])}


def student_gates(section: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``student -> {gate name: status}``: each student's own results of the listening gates."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for gate in section["gates"]:
        for student, result in gate.get("students", {}).items():
            out[student][gate["name"]] = result["status"]
        for pair in gate.get("pairs", []):
            out[pair["student"]][gate["name"]] = pair["status"]
    return dict(out)


def interval_half_widths(sd: float, listeners: Sequence[int], trials: int) -> list[dict[str, Any]]:
    """The 95 % interval's half-width for a condition's mean with each number of listeners, each
    rating ``trials`` trials, from a rating standard deviation ``sd`` (Student-t, ratings treated
    as independent, which a listener's own bias makes optimistic)."""
    return [{"listeners": n, "ratings": n * trials,
             "half_width": float(stats.t.ppf(0.975, n * trials - 1) * sd / math.sqrt(n * trials))}
            for n in listeners if n * trials > 1]  # fmt: skip


def aggregate(folder: str | Path, require_plays: bool = True) -> dict[str, Any]:
    """The ``listening`` section of an experiment folder's answers (see the module's docstring)."""
    conditions, answers = read_answers(folder)
    experiment = json.loads((Path(folder) / EXPERIMENT).read_text())
    excluded: dict[str, str] = {}
    rules = [f"ITU-R BS.1534-3 post-screening: the hidden reference rated below {REFERENCE_FLOOR:g} in more than "
             f"{100 * REFERENCE_SHARE:.0f} % of a listener's MUSHRA trials"]  # fmt: skip
    screens = [post_screening(conditions, answers)]
    if experiment.get("blocks", {}).get("headphones"):
        rules.append("the headphone check (Woods et al. 2017): 5 of 6 correct")
        screens.append(headphone_screening(experiment, answers))
    if require_plays:
        rules.append("every MUSHRA condition played at least once before it was rated")
        screens.append(play_screening(answers))
    for screen in screens:
        for listener, why in screen.items():
            excluded[listener] = f"{excluded[listener]}; {why}" if listener in excluded else why
    kept = [a for a in answers if a.listener not in excluded]
    mushra = mushra_ratings(kept)
    acr: dict[str, list[float]] = defaultdict(list)
    for answer in kept:
        if answer.block == "acr":
            acr[answer.body["condition"]].append(float(answer.body["score"]))
    mushra_summary = {c: summarise(v) for c, v in sorted(mushra.items())}
    mos = {c: summarise(v) for c, v in sorted(acr.items())}
    ab = _ab([a for a in kept if a.block == "ab"])
    spread = [statistics.stdev(v) for v in mushra.values() if len(v) > 1]
    pages = defaultdict(int)
    for answer in kept:
        pages[answer.listener] += answer.block == "mushra"
    per_listener = max(pages.values(), default=0)
    screened = len({a.listener for a in kept})
    acr_pages = defaultdict(int)
    for answer in kept:
        if answer.block == "acr":
            acr_pages[(answer.listener, answer.body["condition"])] += 1
    acr_sd = [statistics.stdev(v) for v in acr.values() if len(v) > 1]
    needed = needed_listeners(max(acr_sd, default=0.0), max(acr_pages.values(), default=1))
    return {
        "experiment": str(Path(folder).resolve()),
        "conditions": conditions,
        "listeners": sorted({a.listener for a in answers}),
        "excluded": [{"listener": who, "why": why} for who, why in sorted(excluded.items())],
        "screening": rules,
        "trials": {block: sum(a.block == block for a in kept) for block in ("mushra", "ab", "acr", "same_different")},
        "mushra": mushra_summary,
        "ab": ab,
        "mos": mos,
        "same_different": _same_different([a for a in kept if a.block == "same_different"]),
        "gates": (gates := [_mos_gate(conditions, mos, screened, needed), _ab_gate(conditions, ab, screened, needed)]),
        "student_gates": student_gates({"gates": gates}),
        "interval_half_widths": interval_half_widths(
            sum(spread) / len(spread) if spread else 20.0, [5, 10, 20, 40], max(per_listener, 1)
        ),
    }


CSV_COLUMNS = ("listener", "page", "block", "trial", "condition", "value", "plays", "seconds")


def answers_csv(folder: str | Path) -> str:
    """Every answer of an experiment as CSV, a row per (page, condition): MUSHRA ratings, A/B
    choices, ACR scores, same/different answers, headphone checks (the experimenter's export)."""
    _, answers = read_answers(folder)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for a in answers:
        plays, seconds = a.body.get("plays") or {}, a.body.get("seconds", "")
        rows: list[tuple[str, Any]] = []
        if a.block == "mushra":
            rows = list(a.body["ratings"].items())
        elif a.block == "ab":
            rows = [(" vs ".join(a.body["pair"]), a.body["choice"])]
        elif a.block == "acr":
            rows = [(a.body["condition"], a.body["score"])]
        elif a.block == "same_different":
            rows = [(a.body["condition"], f"{a.body['answer']} (truth: {a.body['truth']})")]
        elif a.block == "headphones":
            rows = [("", f"{a.body['correct']} of {a.body['trials']} correct")]
        else:
            rows = [(c, "played") for c in plays]
        for condition, value in rows:
            writer.writerow([a.listener, a.page, a.block, a.trial, condition, value, plays.get(condition, ""), seconds])
    return out.getvalue()


def student_of_report(section: Mapping[str, Any], report: Mapping[str, Any], where: Path) -> str:
    """The experiment's condition that ``report`` evaluates, matched by the checkpoint's SHA-256
    (which each release's ``release.json`` records); a report of a checkpoint that is none of the
    experiment's students is refused, naming it."""
    experiment = json.loads((Path(section["experiment"]) / EXPERIMENT).read_text())
    sha = report["checkpoint"]["sha256"]
    matches = [c for c, v in experiment["conditions"].items() if sha in v.get("sha256", [])]
    if not matches:
        students = ", ".join(c for c, v in experiment["conditions"].items() if v["role"] == "student")
        raise ListeningDataError(
            f"{where}: evaluates {report['checkpoint']['path']} (sha256 {sha[:12]}), which is none of the "
            f"experiment's students ({students}; matched by the release.json of each release): nothing was written"
        )
    return matches[0]


def box_plot(folder: str | Path, section: Mapping[str, Any], out: str | Path) -> Path:
    """A box plot of the kept MUSHRA ratings per condition (the ``listening`` section's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
