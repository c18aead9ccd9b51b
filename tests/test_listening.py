"""Listening-test answers: stored a page at a time, aggregated with BS.1534 post-screening into the
report's ``listening`` section, whose two gates come from listener data alone."""

import json
import subprocess
import sys

import pytest
from helpers import REPO
from test_report import minimal_report

from train.evaluation.report import read_report, to_markdown, write_report
from train.listening.aggregate import aggregate, interval_half_widths
from train.listening.answers import ListeningDataError, read_answers, write_answer
from train.release.card import listening_section

CONDITIONS = {"ref": "reference", "hift": "teacher", "student": "student", "gl": "floor", "lp35": "anchor"}
GOOD = {"ref": 100, "hift": 82, "student": 78, "gl": 40, "lp35": 20}


def experiment(tmp_path):
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "experiment.json").write_text(json.dumps({"conditions": {k: {"role": v} for k, v in CONDITIONS.items()}}))
    return folder


def scripted_listener(folder, name, reference_rating=100, prefer_hift=(True, False, False, False)):
    """Four trials of each block, as the serving pages submit them."""
    for trial in range(4):
        utterance = f"utt{trial}"
        write_answer(folder, name, f"mushra-{trial}", {"block": "mushra", "trial": utterance,
                                                       "ratings": {**GOOD, "ref": reference_rating}})  # fmt: skip
        choice = "hift" if prefer_hift[trial] else "student"
        write_answer(folder, name, f"ab-{trial}", {"block": "ab", "trial": utterance, "pair": ["student", "hift"],
                                                   "choice": choice})  # fmt: skip
        for condition, score in (("hift", 4), ("student", 4 if trial else 3)):
            write_answer(folder, name, f"acr-{trial}-{condition}",
                         {"block": "acr", "trial": utterance, "condition": condition, "score": score})  # fmt: skip
        truth = "same" if trial % 2 == 0 else "different"
        same = {"block": "same_different", "trial": utterance, "condition": "student", "truth": truth, "answer": "same"}
        write_answer(folder, name, f"sd-{trial}", same)


def test_aggregation_gives_the_scripted_means_and_post_screening_excludes_a_careless_listener(tmp_path):
    folder = experiment(tmp_path)
    scripted_listener(folder, "ann")
    scripted_listener(folder, "bob", reference_rating=20)  # rates the hidden reference at 20: excluded
    section = aggregate(folder)
    assert section["listeners"] == ["ann", "bob"]
    assert [e["listener"] for e in section["excluded"]] == ["bob"]
    assert "below 90 in 4 of 4 MUSHRA trials" in section["excluded"][0]["why"]
    assert {c: s["mean"] for c, s in section["mushra"].items()} == GOOD  # ann's ratings alone
    assert section["mushra"]["student"]["n"] == 4 and section["trials"]["mushra"] == 4
    assert section["mos"]["hift"]["mean"] == 4.0 and section["mos"]["student"]["mean"] == 3.75
    (ab,) = section["ab"]
    assert ab["chosen"] == {"hift": 1, "student": 3} and ab["p_value"] == pytest.approx(0.625)
    assert section["same_different"]["student"] == {"n": 4, "correct": 0.5, "same_speaker_rate": 1.0}
    gates = {g["name"]: g for g in section["gates"]}
    assert all(g["from"] == "listener data" for g in gates.values())
    assert gates["mos_degradation"]["status"] == "fail"  # 4.0 - 3.75 = 0.25: more than the plan's 0.2
    assert gates["mos_degradation"]["students"]["student"]["drop"] == pytest.approx(0.25)
    assert gates["ab_not_worse"]["status"] == "pass" and gates["ab_not_worse"]["pairs"][0]["p_value"] == 1 - 1 / 16


def test_listeners_who_prefer_hift_fail_the_ab_gate(tmp_path):
    folder = experiment(tmp_path)
    for name in ("ann", "cat", "dan"):
        scripted_listener(folder, name, prefer_hift=(True, True, True, True))
    gate = next(g for g in aggregate(folder)["gates"] if g["name"] == "ab_not_worse")
    assert gate["status"] == "fail" and gate["pairs"][0]["p_value"] == pytest.approx(0.5**12)


def test_a_corrupt_answer_file_is_named_and_nothing_is_changed(tmp_path):
    folder = experiment(tmp_path)
    scripted_listener(folder, "ann")
    scripted_listener(folder, "eve")
    before = {p: p.read_bytes() for p in (folder / "answers").rglob("*.json")}
    broken = folder / "answers" / "eve" / "mushra-2.json"
    broken.write_text(broken.read_text()[:30])  # a partial write from elsewhere
    with pytest.raises(ListeningDataError, match=f"{broken}: unreadable .*nothing was changed"):
        read_answers(folder)
    done = subprocess.run([sys.executable, str(REPO / "train" / "listen.py"), "aggregate", str(folder)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and str(broken) in done.stderr and "Traceback" not in done.stderr
    assert all(p.read_bytes() == b for p, b in before.items() if p != broken)
    assert not (folder / "listening.json").exists()


def test_answers_are_checked_when_written(tmp_path):
    folder = experiment(tmp_path)
    with pytest.raises(ListeningDataError, match="outside 0..100"):
        write_answer(folder, "ann", "p1", {"block": "mushra", "trial": "u", "ratings": {"ref": 101}})
    with pytest.raises(ListeningDataError, match="conditions not in experiment.json"):
        write_answer(folder, "ann", "p1", {"block": "acr", "trial": "u", "condition": "vocos", "score": 3})
    with pytest.raises(ListeningDataError, match="listener '../x'"):
        write_answer(folder, "../x", "p1", {"block": "acr", "trial": "u", "condition": "ref", "score": 3})
    assert not (folder / "answers").exists() or not list((folder / "answers").rglob("*.json"))


def test_the_report_and_the_card_carry_the_listening_gates_or_say_there_was_no_test(tmp_path):
    folder = experiment(tmp_path)
    scripted_listener(folder, "ann")
    report_path = write_report(minimal_report(), tmp_path / "report.json")
    assert "No listening test yet" in to_markdown(read_report(report_path))
    assert "No listening test yet" in listening_section(read_report(report_path))
    done = subprocess.run([sys.executable, str(REPO / "train" / "listen.py"), "aggregate", str(folder),
                           "--report", str(report_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gate mos_degradation (from listener data): fail" in done.stdout
    report = read_report(report_path)  # still valid against the schema
    assert report["listening"]["mushra"]["student"]["mean"] == 78
    summary = (tmp_path / "summary.md").read_text()
    assert "## Listening test (gates from listener data)" in summary and "| mos_degradation |" in summary
    assert "| ab_not_worse |" in listening_section(report) and (folder / "listening.png").stat().st_size > 1000


def test_interval_half_widths_shrink_with_listeners():
    rows = interval_half_widths(20.0, [5, 20], trials=10)
    assert rows[0]["ratings"] == 50 and rows[0]["half_width"] == pytest.approx(2.0096 * 20 / 50**0.5, rel=1e-3)
    assert rows[1]["half_width"] < rows[0]["half_width"] / 1.9


def fake_release(folder, student_gain, teacher=True, count=3, int8=False):
    """A release's listening page as train/export.py writes it (its own writer): per utterance the
    ground truth, HiFT's clip and the student's, stand-ins made from real speech."""
    import soundfile as sf
    import torch
    import torchaudio
    from helpers import CORPUS_CLIP

    from train.release.listen import write_listening_page

    audio, rate = sf.read(str(CORPUS_CLIP), dtype="float32")
    speech = torchaudio.functional.resample(torch.from_numpy(audio), rate, 24000)
    utterances = []
    for n in range(count):
        clip = speech[n * 24000 : (n + 1) * 24000]
        systems = {"audio": clip, **({"teacher": 0.7 * clip} if teacher else {})}
        systems["this model (fp32)"] = student_gain * clip
        if int8:
            systems["this model (int8)"] = 0.9 * student_gain * clip
        utterances.append((f"speaker{n % 2}/clip{n}.wav", systems))
    write_listening_page(folder, utterances, "stand-in release")
    return folder


def test_make_writes_a_loudness_matched_experiment_with_the_standard_anchors(tmp_path):
    import pyloudnorm
    import soundfile as sf
    import torch

    from train.listening.experiment import make_experiment

    first = fake_release(tmp_path / "vocos-fp32", student_gain=1.8)
    second = fake_release(tmp_path / "vocos-int8", student_gain=0.3, teacher=False, int8=True)
    out = make_experiment(tmp_path / "exp", [first, second], utterances=2, seed=3)
    experiment = json.loads((out / "experiment.json").read_text())
    roles = {c: v["role"] for c, v in experiment["conditions"].items()}
    assert roles == {"reference": "reference", "hift": "teacher", "vocos-fp32": "student", "vocos-int8-fp32": "student",
                     "vocos-int8-int8": "student", "griffin_lim": "floor", "lp35": "anchor"}  # fmt: skip
    assert len(experiment["trials"]) == 2 and len(experiment["blocks"]["mushra"]) == 2
    assert {tuple(p["pair"]) for p in experiment["blocks"]["ab"]} == {
        ("vocos-fp32", "hift"), ("vocos-int8-fp32", "hift"), ("vocos-int8-int8", "hift")
    }  # fmt: skip
    assert all(b["condition"] != "lp35" for b in experiment["blocks"]["acr"])
    meter = pyloudnorm.Meter(24000)
    for trial in experiment["trials"]:
        for condition, path in trial["audio"].items():
            wav, _ = sf.read(str(out / path), dtype="float64")
            if condition != "lp35":  # the anchor is matched too, but BS.1770 weights its missing highs
                assert meter.integrated_loudness(wav) == pytest.approx(-26.0, abs=0.5), (trial["id"], condition)
        anchor, _ = sf.read(str(out / trial["audio"]["lp35"]), dtype="float32")
        spectrum = torch.fft.rfft(torch.from_numpy(anchor)).abs().pow(2)
        above = spectrum[torch.fft.rfftfreq(anchor.size, 1 / 24000) > 3600].sum() / spectrum.sum()
        assert above < 1e-4
    again = make_experiment(tmp_path / "again", [first, second], utterances=2, seed=3)
    assert json.loads((again / "experiment.json").read_text())["blocks"] == experiment["blocks"]
    before = (out / "experiment.json").read_bytes()
    with pytest.raises(ListeningDataError, match="exists"):
        make_experiment(out, [first], utterances=2)
    assert (out / "experiment.json").read_bytes() == before and not list(tmp_path.glob(".exp.partial-*"))
    # the answers to it aggregate with its own condition names
    ratings = {c: 100 if c == "reference" else 50 for c in roles}
    write_answer(out, "ann", "mushra-t00", {"block": "mushra", "trial": "t00", "ratings": ratings})
    assert aggregate(out)["mushra"]["vocos-int8-int8"]["mean"] == 50


def test_make_from_the_command_line_and_its_errors(tmp_path):
    release = fake_release(tmp_path / "release", student_gain=1.0)
    command = [sys.executable, str(REPO / "train" / "listen.py"), "make", str(tmp_path / "exp"), str(release)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 utterances, conditions reference, hift, release, griffin_lim, lp35" in done.stdout
    missing = subprocess.run([*command[:3], str(tmp_path / "other"), str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and f"{tmp_path}: no listen/ folder" in missing.stderr
