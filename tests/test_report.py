"""Summaries, quality gates and the report's fixed schema."""

import json
import math
from pathlib import Path

import pytest

from train.evaluation import report
from train.evaluation.report import Gate, build_gates, read_report, summarise, verdict, write_report


def test_summary_is_mean_and_student_t_interval_of_the_finite_values():
    stat = summarise([1.0, 2.0, 3.0, math.nan])
    assert stat["mean"] == 2.0 and stat["n"] == 3 and stat["nan"] == 1
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert stat["ci95"] == pytest.approx([2.0 - half, 2.0 + half], rel=1e-5)
    assert summarise([5.0])["ci95"] == [None, None]
    assert summarise([math.nan])["mean"] is None


SUMMARY = {
    "student_vs_teacher": {
        "pesq_wb": summarise([3.6, 3.8]),
        "stoi": summarise([0.80, 0.84]),
        "mel_distance_db": summarise([math.nan, math.nan]),
    }
}


def test_gates_pass_fail_and_skip():
    assert Gate("pesq", "pesq_wb", above=3.5).check(SUMMARY)["status"] == "pass"
    assert Gate("pesq", "pesq_wb", above=3.8).check(SUMMARY)["status"] == "fail"  # mean 3.7
    assert Gate("stoi", "stoi", above=0.85).check(SUMMARY)["status"] == "fail"
    assert Gate("stoi", "stoi", below=0.85).check(SUMMARY)["status"] == "pass"
    all_nan = Gate("spectral", "mel_distance_db", below=5.0).check(SUMMARY)
    assert all_nan["status"] == "skipped" and "NaN on every utterance" in all_nan["reason"]
    missing = Gate("truth", "pesq_wb", comparison="student_vs_audio", above=3.0).check(SUMMARY)
    assert missing["status"] == "skipped" and missing["reason"] == "no student_vs_audio scores"


def test_a_gate_against_another_comparison_beats_a_baseline_or_says_by_how_much():
    summary = {
        "student_vs_audio": {"pesq_wb": summarise([2.5, 2.7]), "mel_distance_db": summarise([1.5, 1.7])},
        "griffin_lim_vs_audio": {"pesq_wb": summarise([2.2, 2.4]), "mel_distance_db": summarise([1.1, 1.3])},
    }
    pesq = Gate("floor_pesq", "pesq_wb", "student_vs_audio", above="griffin_lim_vs_audio").check(summary)
    assert pesq["status"] == "pass" and pesq["threshold"] == pytest.approx(2.3) and pesq["value"] == pytest.approx(2.6)
    assert pesq["condition"] == "> griffin_lim_vs_audio" and pesq["reason"] is None
    mel = Gate("floor_mel", "mel_distance_db", "student_vs_audio", below="griffin_lim_vs_audio").check(summary)
    assert mel["status"] == "fail"
    assert mel["reason"] == "student_vs_audio mel_distance_db 1.6 is not below griffin_lim_vs_audio (1.2)"
    no_floor = Gate("f", "pesq_wb", "student_vs_audio", above="griffin_lim_vs_audio").check(
        {"student_vs_audio": summary["student_vs_audio"]}
    )
    assert no_floor["status"] == "skipped" and no_floor["reason"] == "no griffin_lim_vs_audio scores"
    with pytest.raises(ValueError, match=r"gates\.f\.above='hifi_gan': a number, or a comparison"):
        Gate("f", "pesq_wb", "student_vs_audio", above="hifi_gan")
    with pytest.raises(ValueError, match=r"gates\.f\.above='griffin_lim' has no pesq_wb to compare with"):
        Gate("f", "pesq_wb", "student_vs_audio", above="griffin_lim")


def test_verdict():
    def result(*statuses):
        return [{"status": s} for s in statuses]

    assert verdict(result("pass", "pass")) == "pass"
    assert verdict(result("pass", "fail", "skipped")) == "fail"
    assert verdict(result("pass", "skipped")) == "incomplete"
    assert verdict([]) == "incomplete"


def test_gates_from_config_and_their_errors():
    gates = build_gates({"pesq": {"metric": "pesq_wb", "above": 3.5}, "dropped": None})
    assert gates == [Gate("pesq", "pesq_wb", "student_vs_teacher", above=3.5)]
    with pytest.raises(ValueError, match=r"gates\.x\.metric='mos' is not a student_vs_teacher metric"):
        build_gates({"x": {"metric": "mos", "above": 1}})
    with pytest.raises(ValueError, match=r"gates\.x: set exactly one of `above` and `below`"):
        build_gates({"x": {"metric": "stoi", "above": 1, "below": 2}})
    with pytest.raises(ValueError, match=r"gates\.x\.comparison='student_vs_hift'"):
        build_gates({"x": {"metric": "stoi", "comparison": "student_vs_hift", "above": 1}})
    with pytest.raises(ValueError, match=r"gates\.x: expected keys.*'abov'"):
        build_gates({"x": {"metric": "stoi", "abov": 1}})
    assert (
        build_gates({"nat": {"metric": "dnsmos_ovrl", "comparison": "student", "above": 3}})[0].metric == "dnsmos_ovrl"
    )


def minimal_report() -> dict:
    utterances = [
        {
            "name": "a.wav",
            "seconds": 1.0,
            "scored_seconds": 1.0,
            "windows": 1,
            "scores": {"student_vs_teacher": {"pesq_wb": 3.6, "stoi": math.nan}},
        },
        {
            "name": "b.wav",
            "seconds": 2.0,
            "scored_seconds": 2.0,
            "windows": 1,
            "scores": {"student_vs_teacher": {"pesq_wb": 3.8, "stoi": 0.9}},
        },
    ]
    summary = report.summarise_groups(utterances)
    gates = [g.check(summary) for g in build_gates({"pesq": {"metric": "pesq_wb", "above": 3.5}})]
    return {
        "schema_version": report.SCHEMA_VERSION,
        "created": "2026-11-24T00:00:00+00:00",
        "checkpoint": {"path": "x.ckpt", "sha256": "0" * 64, "params": 10, "config": {"dim": 8}},
        "teacher": {"status": "loaded", "reason": None, "weights_id": "abc", "seed": 0},
        "floor": {"kind": "griffin_lim", "n_iter": 64, "momentum": 0.99, "seed": 0},
        "data": {"sources": ["data/corpus"], "split": "val", "utterances": 2, "seconds": 3.0, "skipped": []},
        "metrics": report.metric_definitions(),
        "scoring": {"window_seconds": 30.0, "max_windows": 4, "rule": "windows"},
        "utterances": utterances,
        "summary": summary,
        "gates": gates,
        "verdict": verdict(gates),
        "cost": None,
        "files": {"summary": "summary.md", "plots": []},
    }


def test_report_round_trips_through_json_with_nan_as_null(tmp_path):
    path = write_report(minimal_report(), tmp_path / "report.json")
    back = read_report(path)
    assert back["utterances"][0]["scores"]["student_vs_teacher"]["stoi"] is None
    assert back["summary"]["student_vs_teacher"]["stoi"] == {"mean": 0.9, "ci95": [None, None], "n": 1, "nan": 1}
    assert back["gates"][0]["status"] == "pass" and back["verdict"] == "pass"
    assert list(back) == list(minimal_report())  # key order is part of the format
    markdown = report.to_markdown(back)
    assert "| pesq | pesq_wb | student_vs_teacher | > 3.5 | 3.700 | 3.500 | pass |" in markdown
    assert "- teacher: loaded, weights abc, seed 0" in markdown
    assert "| pesq_wb (MOS-LQO) | 3.700 [2.429, 4.971] |" in markdown  # mean [95 % interval]
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda r: r.pop("verdict"), "top level"),
        (lambda r: r["teacher"].update(status="maybe"), "teacher/status"),
        (lambda r: r["utterances"][0]["scores"].update(student_vs_hift={}), "utterances/0/scores"),
        (lambda r: r["summary"]["student_vs_teacher"]["pesq_wb"].pop("ci95"), "summary/student_vs_teacher/pesq_wb"),
        (lambda r: r.update(extra=1), "top level"),
    ],
)
def test_reports_off_the_schema_are_rejected_with_the_place(tmp_path, change, where):
    bad = minimal_report()
    change(bad)
    schema = f"schema-{report.SCHEMA_VERSION}"
    with pytest.raises(ValueError, match=f"report.json: not a {schema} evaluation report at {where}"):
        write_report(bad, tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()
    (tmp_path / "report.json").write_text(json.dumps(report.without_nan(bad)))
    with pytest.raises(ValueError, match=f"not a schema-{report.SCHEMA_VERSION}"):
        read_report(tmp_path / "report.json")


def test_the_schema_names_every_metric_the_code_can_report():
    """Four places in the schema list the metric names; each must be the code's list, or a report
    with a new metric is refused after a whole evaluation has run."""
    import json

    from train.evaluation.metrics import NO_REFERENCE, PAIRED

    schema = json.loads((Path(report.__file__).parent / "report_schema.json").read_text())
    lists = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "enum" and isinstance(value, list) and "pesq_wb" in value:
                    lists.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert len(lists) == 4 and all(sorted(names) == sorted([*PAIRED, *NO_REFERENCE]) for names in lists)
