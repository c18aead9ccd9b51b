"""``train/evaluate.py`` end to end on a tiny student, a tiny teacher and two utterances."""

import csv
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import REPO, compose, tiny_config, wandb_logged, write_clips, write_s3gen_checkpoint

from train.evaluation.evaluate import evaluate, find_checkpoint
from train.evaluation.report import GROUPS, read_report
from train.s3gen.hift import HiFTGenerator
from train.student.model import build_student
from vocos_distill.hub import WeightsUnavailableError


@pytest.fixture
def workspace(tmp_path):
    """Two 1 s clips, a Chatterbox-layout teacher file, and a training checkpoint under checkpoints/."""
    torch.manual_seed(0)
    clips = write_clips(tmp_path / "clips", count=2, seconds=1.0)
    teacher = write_s3gen_checkpoint(tmp_path / "s3gen.safetensors", HiFTGenerator(**tiny_config()))
    student = build_student(dim=32, intermediate_dim=64, num_layers=1)
    ckpt = tmp_path / "checkpoints" / "runs" / "tiny" / "t0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"generator.{k}": v for k, v in student.state_dict().items()}}, ckpt)
    return {"clips": clips, "teacher": teacher, "ckpt": ckpt, "student": student}


def overrides(ws) -> list[str]:
    return [
        f"data.audio_dirs=[{ws['clips']}]",
        "data.segment_frames=8",
        "split=all",
        f"teacher.checkpoint={ws['teacher']}",
        "teacher.device=cpu",
        "device=cpu",
        "cost.seconds=0.5",
        "cost.repeats=1",
        "cost.chunk_frames=[5,10]",
        "cost.cuda=false",
        "progress_bar=false",
    ]


def leaves(node, path=()) -> dict[tuple, object]:
    """Every scalar of a nested report section, by its path."""
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in leaves(child, (*path, key)).items()}
    if isinstance(node, list):
        return {k: v for i, child in enumerate(node) for k, v in leaves(child, (*path, i)).items()}
    return {path: node}


def assert_same_scores(report, expected, rel: float) -> None:
    """The two reports' per-utterance scores and summaries agree, floats to ``rel``."""
    for section in ("utterances", "summary"):
        ours, theirs = leaves(report[section]), leaves(expected[section])
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            assert ours[key] == (pytest.approx(value, rel=rel) if isinstance(value, float) else value), key


@pytest.mark.slow
def test_evaluate_script_writes_report_summary_plots_and_logs(tmp_path, workspace):
    run = tmp_path / "run"
    cmd = [sys.executable, "train/evaluate.py", *overrides(workspace), f"paths.log_dir={tmp_path / 'checkpoints'}",
           "logger=csv", f"hydra.run.dir={run}", f"parent={workspace['ckpt']}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    report = read_report(run / "report.json")  # validates against the schema
    assert report["checkpoint"]["path"] == str(workspace["ckpt"])  # the default: newest under checkpoints/
    assert report["checkpoint"]["config"]["dim"] == 32
    assert report["teacher"]["status"] == "loaded" and report["teacher"]["weights_id"]
    assert [u["name"] for u in report["utterances"]] == ["clip0.wav", "clip1.wav"]
    assert report["data"]["utterances"] == 2 and report["data"]["seconds"] == pytest.approx(2.0, abs=0.05)
    for utterance in report["utterances"]:
        assert set(utterance["scores"]) == set(GROUPS)
        assert utterance["scores"]["student_vs_teacher"]["mel_distance_db"] > 0
        assert utterance["scores"]["student_vs_parent"]["mel_distance_db"] < 1e-3  # its own parent: the same
    assert report["parent"]["path"] == str(workspace["ckpt"]) and report["parent"]["config"]["dim"] == 32
    # an untrained student is far from both: the gates must say so
    gates = {g["name"]: g for g in report["gates"]}
    assert set(gates) == {
        "beats_floor_pesq",
        "beats_floor_estoi",
        "floor_dnsmos",
        "floor_distillmos",
        "mel_distance",
        "pesq",
        "stoi",
        "spectral_distance",
        "naturalness_drop",
    }
    assert gates["pesq"]["status"] == "fail" and gates["spectral_distance"]["status"] == "fail"
    assert report["verdict"] == "fail"
    # ... and that it does not beat the Griffin-Lim floor, the reason naming it and its figure
    assert report["floor"] == {"kind": "griffin_lim", "n_iter": 64, "momentum": 0.99, "seed": 0}
    floor_pesq = report["summary"]["griffin_lim_vs_audio"]["pesq_wb"]["mean"]
    assert floor_pesq > 1.5  # the floor itself is sound on real speech
    assert gates["beats_floor_pesq"]["status"] == "fail" and gates["beats_floor_pesq"]["threshold"] == floor_pesq
    assert f"is not above griffin_lim_vs_audio ({floor_pesq:.3g})" in gates["beats_floor_pesq"]["reason"]
    assert (
        gates["beats_floor_estoi"]["status"] == "fail"
        and "is not above griffin_lim_vs_audio" in (gates["beats_floor_estoi"]["reason"])
    )
    # the log-mel distance has an absolute bar (Griffin-Lim's magnitude is the mel's own inverse)
    assert gates["mel_distance"]["status"] == "fail" and gates["mel_distance"]["condition"] == "< 4"
    # both no-reference predictors ran for every system, and the speaker encoder for every pair
    for system in ("student", "teacher", "audio", "griffin_lim"):
        assert {"dnsmos_ovrl", "distillmos"} <= set(report["summary"][system])
    assert "speaker_similarity" in report["summary"]["student_vs_audio"]
    teacher_row, student_row = report["cost"]["models"]
    assert teacher_row["params"] == sum(
        p.numel() for p in HiFTGenerator(**tiny_config()).fold_weight_norm().parameters()
    )
    assert student_row["params"] == sum(p.numel() for p in workspace["student"].parameters())
    assert set(student_row["first_chunk_ms_cpu"]) == {"5", "10"}

    summary = (run / "summary.md").read_text()
    assert "| pesq | pesq_wb | student_vs_teacher | > 3.5 |" in summary and "## Cost" in summary
    assert "| beats_floor_pesq | pesq_wb | student_vs_audio | > griffin_lim_vs_audio |" in summary
    assert "floor: Griffin-Lim, 64 iterations" in summary
    assert sorted(report["files"]["plots"]) == ["plots/mel_0.png", "plots/mel_1.png", "plots/metrics.png"]
    assert all((run / p).stat().st_size > 10_000 for p in report["files"]["plots"])
    with open(next(run.rglob("metrics.csv"))) as f:
        logged = next(csv.DictReader(f))
    assert float(logged["eval/student_vs_teacher/pesq_wb"]) == pytest.approx(
        report["summary"]["student_vs_teacher"]["pesq_wb"]["mean"]
    )
    assert "evaluate: " not in done.stderr  # progress_bar=false


def test_without_hub_access_the_teacher_is_skipped_unless_required(tmp_path, workspace):
    offline = ["teacher.checkpoint=null", "teacher.local_files_only=true", f"teacher.cache_dir={tmp_path / 'hf'}"]
    args = [*overrides(workspace), *offline, "~logger", "cost=null", "metrics.naturalness=null", "plots.mel_examples=0"]
    cfg = compose([*args, f"checkpoint={workspace['ckpt']}"], tmp_path, "evaluate")
    report = evaluate(cfg)
    assert report["teacher"]["status"] == "unavailable" and "teacher.checkpoint=" in report["teacher"]["reason"]
    assert set(report["summary"]) == {"student_vs_audio", "griffin_lim_vs_audio"}
    # the teacher's gates cannot be checked; the floor's can, without the teacher
    assert {g["name"]: g["status"] for g in report["gates"]} == {
        "beats_floor_pesq": "fail",
        "beats_floor_estoi": "fail",
        "floor_dnsmos": "skipped",  # metrics.naturalness=null
        "floor_distillmos": "skipped",
        "mel_distance": "fail",
        "pesq": "skipped",
        "stoi": "skipped",
        "spectral_distance": "skipped",
        "naturalness_drop": "skipped",
    }
    assert report["verdict"] == "fail"
    assert report["cost"] is None
    with pytest.raises(WeightsUnavailableError, match="teacher.checkpoint="):
        evaluate(compose([*args, "require_teacher=true"], tmp_path, "evaluate"))


@pytest.mark.slow
def test_the_report_does_not_depend_on_how_many_processes_score_it(tmp_path, workspace):
    args = [*overrides(workspace), "~logger", "cost=null", "metrics.naturalness=null", "plots.mel_examples=1",
            f"checkpoint={workspace['ckpt']}"]  # fmt: skip
    here = evaluate(compose([*args, "workers=0"], tmp_path / "here", "evaluate"))
    pooled = evaluate(compose([*args, "workers=2"], tmp_path / "pooled", "evaluate"))
    assert [u["name"] for u in pooled["utterances"]] == [u["name"] for u in here["utterances"]]
    # equal to float32 rounding: torch and numpy sum in another order with another thread count
    assert_same_scores(pooled, here, rel=1e-5)
    with pytest.raises(ValueError, match="workers=-1: a whole number >= 0, or 'auto'"):
        evaluate(compose([*args, "workers=-1"], tmp_path / "bad", "evaluate"))


@pytest.mark.slow
def test_a_second_evaluation_reuses_the_score_cache_and_reports_the_same(tmp_path, workspace):
    args = [*overrides(workspace), "~logger", "cost=null", "plots.mel_examples=0", "workers=0",
            f"checkpoint={workspace['ckpt']}", "metrics.naturalness=[dnsmos]"]  # fmt: skip
    args.append(f"metrics.cache_dir={tmp_path / 'scores'}")  # shared by the runs (each has its own checkpoints/)
    uncached = evaluate(compose([*args, "metrics.cache_dir=null"], tmp_path / "uncached", "evaluate"))
    assert uncached["scoring"]["cache"] is None
    first = evaluate(compose(args, tmp_path / "first", "evaluate"))
    again = evaluate(compose(args, tmp_path / "again", "evaluate"))
    (hits, misses), (hits_again, misses_again) = ([r["scoring"]["cache"][k] for k in ("hits", "misses")]
                                                  for r in (first, again))  # fmt: skip
    # the same checkpoint: every signal of the second run is one the first scored; only what
    # failed there (NaN, e.g. too little speech in the tiny student's output) is scored again
    assert misses_again < misses / 2 and hits_again > hits
    # the floor's waveforms too, one per utterance, in their own folder (the floor's settings)
    assert len(list((tmp_path / "scores").rglob("*.waveform.npz"))) == len(first["utterances"])
    for report in (first, again):  # ESTOI itself differs in the 15th digit between two calls
        assert_same_scores(report, uncached, rel=1e-9)


def test_a_bad_local_teacher_file_is_an_error(tmp_path, workspace):
    cfg = compose([*overrides(workspace), f"teacher.checkpoint={tmp_path / 'nope.safetensors'}"], tmp_path, "evaluate")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        evaluate(cfg)


def test_checkpoint_discovery(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no student checkpoint \(\*\.ckpt\) under .*experiment=finetune"):
        find_checkpoint(None, tmp_path)
    older, newer = tmp_path / "a" / "step1.ckpt", tmp_path / "b" / "last.ckpt"
    for i, path in enumerate((older, newer)):
        path.parent.mkdir()
        path.write_bytes(b"x")
        os.utime(path, (time.time() + i, time.time() + i))
    assert find_checkpoint(None, tmp_path) == newer
    assert find_checkpoint(str(tmp_path / "a"), tmp_path) == older  # a folder: its newest
    assert find_checkpoint(str(older), tmp_path) == older
    with pytest.raises(FileNotFoundError, match=r"checkpoint=.*missing.ckpt: no such file"):
        find_checkpoint(str(tmp_path / "missing.ckpt"), tmp_path)
    best = newer.with_name("best-step00000002-mel_distance1.0.ckpt")  # what RunCheckpoints links
    os.link(newer, best)
    assert find_checkpoint(str(newer.parent), tmp_path) == newer


@pytest.mark.slow
def test_wandb_gets_figures_table_and_audio(tmp_path, workspace, wandb_offline):
    args = [*overrides(workspace), "logger=wandb", "cost=null", "plots.mel_examples=1"]
    evaluate(compose([*args, f"checkpoint={workspace['ckpt']}"], tmp_path, "evaluate"))
    runs = list((tmp_path / "run").rglob("offline-run-*"))
    assert len(runs) == 1
    keys = ("eval/student_vs_teacher/pesq_wb", "plots/metrics/_type", "eval/utterances/_type", "audio/0_audio/_type")
    logged = wandb_logged(next(runs[0].glob("run-*.wandb")), keys)
    assert logged["eval/student_vs_teacher/pesq_wb"] > 0
    assert logged["plots/metrics/_type"] == "image-file" and logged["plots/mel_0/_type"] == "image-file"
    assert logged["eval/utterances/_type"] == "table-file"
    assert {"audio/0_student/_type", "audio/0_teacher/_type", "audio/0_audio/_type"} <= set(logged)


# -- defect: a long file took 31 minutes and 4 GB (and PESQ alone crashed the process past ~2 min) ----
@pytest.mark.slow
def test_a_long_utterance_is_scored_on_a_bounded_number_of_windows(tmp_path, workspace):
    import soundfile as sf

    from train.evaluation.windows import windows

    long_dir = tmp_path / "long"
    long_dir.mkdir()
    speech, rate = sf.read(str(workspace["clips"] / "clip0.wav"), dtype="float32")
    sf.write(str(long_dir / "long.wav"), np.tile(speech, 130), rate)  # 130 s
    cfg = compose(
        [
            *[o for o in overrides(workspace) if not o.startswith(("data.audio_dirs", "teacher."))],
            f"data.audio_dirs=[{long_dir}]",
            "~teacher",
            "cost=null",
            "scoring.window_seconds=10",
            "scoring.max_windows=2",
            "floor=null",  # Griffin-Lim over all 130 s (27 s here) is not what this test is about
            "logger=csv",
            f"checkpoint={workspace['ckpt']}",
        ],
        tmp_path,
        config_name="evaluate",
    )
    result = evaluate(cfg)
    utterance = result["utterances"][0]
    assert utterance["seconds"] == pytest.approx(130, abs=0.02)
    assert utterance["windows"] == 2 and utterance["scored_seconds"] == pytest.approx(20, abs=0.02)
    assert result["scoring"]["window_seconds"] == 10 and result["scoring"]["max_windows"] == 2
    assert "window" in result["scoring"]["rule"]
    for metric in ("pesq_wb", "stoi", "mel_distance_db"):
        assert np.isfinite(utterance["scores"]["student_vs_audio"][metric]), metric
    # the windows: equal, frame-aligned, first and last kept when thinned
    spans = windows(130 * 24000, 10 * 24000, 2)
    assert spans[0][0] == 0 and spans[-1][1] == 130 * 24000 and len(spans) == 2
    assert all((b - a) % 480 == 0 or b == 130 * 24000 for a, b in spans)
    assert windows(5 * 24000, 10 * 24000, 2) == [(0, 5 * 24000)]
