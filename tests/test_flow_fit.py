"""``fit.py`` trains on each mel source and on a mix; ``evaluate.py`` says which mels it judged."""

import pytest
import torch
from flow_helpers import chatterbox_folder, shrink_t3
from helpers import TINY_STUDENT, compose, write_clips

from train.evaluation.report import read_report
from train.s3gen.flow import save_stand_in
from train.training.fit import fit


@pytest.fixture(scope="module")
def chatterbox(tmp_path_factory):
    """Chatterbox's S3Gen (full size, random weights) and a folder ``from_local`` reads (T3 reduced)."""
    folder = tmp_path_factory.mktemp("chatterbox")
    s3gen = save_stand_in(folder / "weights" / "s3gen.safetensors")
    with pytest.MonkeyPatch.context() as patch:
        shrink_t3(patch)
        chatterbox_folder(folder / "tts", s3gen)
    return folder / "tts" / "s3gen.safetensors"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_clips(root / "alice", count=3, seconds=0.6)
    write_clips(root / "bob", count=2, seconds=0.6)
    text = root.parent / f"{root.name}-lines.txt"
    text.write_text("One short line.\nAnd another one.\nA third.\n")
    return root, text


def run(tmp_path, chatterbox, corpus, *overrides):
    root, text = corpus
    teacher = [] if "~teacher" in overrides else [f"teacher.checkpoint={chatterbox}", "teacher.device=cpu"]
    cfg = compose(
        [
            "experiment=tiny",
            *TINY_STUDENT,
            f"data.audio_dirs=[{root}]",
            "data.val_dirs=[]",
            *teacher,
            f"data.flow.checkpoint={chatterbox}",
            f"data.flow.text_file={text}",
            "data.flow.max_tokens=15",
            "data.flow.device=cpu",
            f"paths.cache_dir={chatterbox.parent.parent / 'cache'}",  # one cache for every run of the module
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            *overrides,
        ],
        tmp_path,
    )
    return cfg, fit(cfg)


@pytest.mark.parametrize(
    "source, targets",
    [("flow", ["~teacher", "module.target_weights={teacher:0,audio:1}"]), ("text", []), ("audio:1+flow:1+text:2", [])],
)
def test_fit_trains_on_each_mel_source_and_on_a_mix(tmp_path, chatterbox, corpus, source, targets, monkeypatch):
    shrink_t3(monkeypatch)
    _, metrics = run(tmp_path, chatterbox, corpus, f"data.mel_source={source}", *targets)
    final = metrics["final"]
    target = "audio" if targets else "teacher"
    assert final[f"val/mel_distance_{target}"] > 0 and torch.isfinite(torch.tensor(final["train/loss_g"]))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_evaluate_on_flow_mels_reports_the_source_and_both_references(tmp_path, chatterbox, corpus, monkeypatch):
    from train.evaluation.evaluate import evaluate

    shrink_t3(monkeypatch)
    cfg, _ = run(tmp_path / "train", chatterbox, corpus, "data.mel_source=flow")
    root, text = corpus
    evaluation = compose(
        [
            f"checkpoint={cfg.paths.output_dir}/checkpoints/last.ckpt",
            f"data.audio_dirs=[{root}]",
            "data.mel_source=flow",
            f"teacher.checkpoint={chatterbox}",
            "teacher.device=cpu",
            "data.flow.device=cpu",
            f"paths.cache_dir={chatterbox.parent.parent / 'cache'}",
            "split=all",
            "device=cpu",
            "cost.seconds=0.5",
            "cost.repeats=1",
            "cost.chunk_frames=[5]",
            "cost.cuda=false",
            "progress_bar=false",
            "logger=csv",
        ],
        tmp_path / "eval",
        config_name="evaluate",
    )
    evaluate(evaluation)
    report = read_report(tmp_path / "eval" / "run" / "report.json")
    assert report["data"]["mel_source"] == {"flow": 1.0}
    assert all(u["name"].startswith("flow:") for u in report["utterances"]) and len(report["utterances"]) == 5
    scores = report["utterances"][0]["scores"]
    assert "student_vs_teacher" in scores and "student_vs_audio" in scores and "teacher_vs_audio" in scores
    assert "flow mels teacher-forced from them (100%)" in (tmp_path / "eval" / "run" / "summary.md").read_text()
