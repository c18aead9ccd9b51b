"""``python train/tradeoff.py``: size against quality from evaluation reports."""

import pytest

from train import tradeoff as entry
from train.evaluation import report
from train.evaluation.tradeoff import HIFT_BYTES, HIFT_PARAMS, table
from train.s3gen.hift import HiFTGenerator


def write(path, checkpoint, params, pesq, names=("a.wav", "b.wav"), parent=None):
    """A schema-valid report of two clips scored against the ground truth (and a parent)."""
    utterances = []
    for i, name in enumerate(names):
        spread = {"estoi": 0.8 + 0.01 * i, "mel_distance_db": 1.3 + 0.1 * i}
        scores = {
            "student_vs_audio": {"pesq_wb": pesq + 0.1 * i, **spread},
            "griffin_lim_vs_audio": {"pesq_wb": 2.2 + 0.1 * i, **spread},
            "student": {"dnsmos_ovrl": 2.0, "distillmos": 1.7},
            "griffin_lim": {"dnsmos_ovrl": 1.8, "distillmos": 2.6},
            "audio": {"dnsmos_ovrl": 2.4, "distillmos": 3.2},
        }
        if parent is not None:
            scores["student_vs_parent"] = {"pesq_wb": parent, "mel_distance_db": 0.3}
        utterances.append({"name": name, "seconds": 1.0, "scored_seconds": 1.0, "windows": 1, "scores": scores})
    summary = report.summarise_groups(utterances)
    body = {
        "schema_version": report.SCHEMA_VERSION,
        "created": "2026-12-01T00:00:00+00:00",
        "checkpoint": {"path": str(checkpoint), "sha256": "0" * 64, "params": params, "config": {"dim": 8}},
        "parent": None,
        "teacher": {"status": "disabled", "reason": "~teacher", "weights_id": None, "seed": 0},
        "floor": {"kind": "griffin_lim", "n_iter": 64, "momentum": 0.99, "seed": 0},
        "data": {"sources": ["data"], "split": "val", "utterances": len(names), "seconds": 2.0, "skipped": []},
        "metrics": report.metric_definitions(),
        "scoring": {"window_seconds": 30.0, "max_windows": 4, "rule": "windows", "cache": None},
        "utterances": utterances,
        "summary": summary,
        "gates": [],
        "verdict": "pass",
        "cost": None,
        "files": {"summary": "summary.md", "plots": []},
    }
    return report.write_report(body, path)


def test_the_table_sizes_each_student_and_sets_it_beside_the_floor(tmp_path):
    onnx = tmp_path / "child.int8.onnx"
    onnx.write_bytes(b"\0" * 2_000_000)
    parent = write(tmp_path / "parent.json", tmp_path / "parent.ckpt", 3_000_000, 2.3)
    child = write(tmp_path / "child.json", onnx, 1_600_000, 2.2, parent=4.25)
    lines = table([("parent", parent), ("int8 child", child)]).splitlines()
    assert lines[0].startswith("| student | params | size |") and set(lines[1]) == {"|", "-"}
    assert lines[2].startswith(f"| parent | 3.00 M | 12.0 MB fp32 | {HIFT_BYTES / 12e6:.0f} | 2.35 [")
    assert lines[2].endswith("| – | – |")  # no parent comparison in the parent's own report
    assert lines[3].startswith(f"| int8 child | 1.60 M | 2.0 MB int8 | {HIFT_BYTES / 2e6:.0f} | 2.25 [")
    assert lines[3].endswith("| 4.25 | 0.30 |")
    assert lines[4].startswith("| Griffin-Lim floor | – | – | – | 2.25 [") and "| 1.80 | 2.60 |" in lines[4]
    assert lines[5].startswith("| ground truth |") and "| 2.40 | 3.20 |" in lines[5]
    # clip by clip against the floor: the parent is 0.1 ahead on each clip, the child level
    assert lines[6] == "" and lines[7].startswith("| student minus floor, clip by clip |")
    assert lines[9] == "| parent | +0.10 [+0.10, +0.10] | +0.000 [+0.000, +0.000] | 100 % of 2 |"
    assert lines[10] == "| int8 child | +0.00 [+0.00, +0.00] | +0.000 [+0.000, +0.000] | 0 % of 2 |"


def test_reports_of_other_clips_or_a_vanished_int8_file_are_refused(tmp_path, capsys):
    parent = write(tmp_path / "parent.json", tmp_path / "parent.ckpt", 3_000_000, 2.3)
    other = write(tmp_path / "other.json", tmp_path / "o.ckpt", 10, 2.0, names=("c.wav", "d.wav"))
    assert entry.main([f"parent={parent}", f"other={other}"]) == 2
    assert "other: its report scores other clips than parent's" in capsys.readouterr().err
    gone = write(tmp_path / "gone.json", tmp_path / "gone.int8.onnx", 10, 2.0)
    assert entry.main([f"gone={gone}"]) == 2
    assert "gone.int8.onnx: the evaluated int8 file is gone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        entry.main(["no-equals-sign"])


def test_hifts_size_is_the_architectures():
    assert HIFT_PARAMS == sum(p.numel() for p in HiFTGenerator().parameters())
