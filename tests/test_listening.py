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
STUDENT_SHA = "5" * 64  # the checkpoint the student condition's release was exported from


def experiment(tmp_path):
    folder = tmp_path / "experiment"
    folder.mkdir()
    conditions = {
        k: {"role": v, **({"sha256": [STUDENT_SHA]} if v == "student" else {})} for k, v in CONDITIONS.items()
    }
    (folder / "experiment.json").write_text(json.dumps({"conditions": conditions}))
    return folder


def scripted_listener(folder, name, reference_rating=100, prefer_hift=(True, False, False, False)):
    """Four trials of each block, as the serving pages submit them."""
    for trial in range(4):
        utterance = f"utt{trial}"
        plays = dict.fromkeys(GOOD, 1)
        write_answer(folder, name, f"mushra-{trial}", {"block": "mushra", "trial": utterance, "plays": plays,
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
    assert section["same_different"]["student"] == {"n": 4, "correct": 0.5, "same_speaker_rate": 1.0,
                                                    "different_speaker_rate": 0.0}  # fmt: skip
    gates = {g["name"]: g for g in section["gates"]}
    assert all(g["from"] == "listener data" for g in gates.values())
    assert gates["mos_degradation"]["status"] == "fail"  # 4.0 - 3.75 = 0.25: more than the plan's 0.2
    assert gates["mos_degradation"]["students"]["student"]["drop"] == pytest.approx(0.25)
    # no preference for HiFT, but one screened listener cannot pass a listening gate
    assert (
        gates["ab_not_worse"]["status"] == "insufficient" and gates["ab_not_worse"]["pairs"][0]["p_value"] == 1 - 1 / 16
    )
    assert "1 screened listener(s); a listening gate can pass from" in gates["ab_not_worse"]["reason"]


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
    report = minimal_report()
    report["checkpoint"]["sha256"] = STUDENT_SHA  # the report of the experiment's student
    report_path = write_report(report, tmp_path / "report.json")
    assert "No listening test yet" in to_markdown(read_report(report_path))
    assert "No listening test yet" in listening_section(read_report(report_path))
    done = subprocess.run([sys.executable, str(REPO / "train" / "listen.py"), "aggregate", str(folder),
                           "--report", str(report_path), "--csv", str(tmp_path / "answers.csv")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gate mos_degradation (from listener data): fail" in done.stdout
    assert "screening: ITU-R BS.1534-3 post-screening" in done.stdout
    report = read_report(report_path)  # still valid against the schema
    assert report["listening"]["mushra"]["student"]["mean"] == 78
    assert report["listening"]["student"] == "student"
    assert report["verdict"] == "fail"  # the student's listening gate failed: so does the report
    summary = (tmp_path / "summary.md").read_text()
    assert "## Listening test (gates from listener data)" in summary and "| mos_degradation |" in summary
    assert "| student | fail | insufficient |" in summary  # each student's own results
    assert "Same/different speaker" in summary and "| student | 50 % | 100 % | 0 % | 4 |" in summary
    assert "| ab_not_worse |" in listening_section(report) and (folder / "listening.png").stat().st_size > 1000
    assert "| student | fail | insufficient |" in listening_section(report)
    rows = (tmp_path / "answers.csv").read_text().splitlines()
    assert rows[0] == "listener,page,block,trial,condition,value,plays,seconds" and len(rows) == 1 + 4 * (5 + 1 + 2 + 1)


def test_a_report_of_another_checkpoint_is_refused(tmp_path):
    """Issue 38, 11: --report stamped the experiment's result on any report."""
    folder = experiment(tmp_path)
    scripted_listener(folder, "ann")
    report_path = write_report(minimal_report(), tmp_path / "report.json")  # sha256 0000...: no condition's
    before = report_path.read_bytes()
    done = subprocess.run([sys.executable, str(REPO / "train" / "listen.py"), "aggregate", str(folder),
                           "--report", str(report_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "none of the experiment's students" in done.stderr
    assert report_path.read_bytes() == before and not (folder / "listening.json").exists()


def test_the_gate_boundary_is_as_stated_and_too_few_listeners_cannot_pass(tmp_path):
    """Issue 38, 11: a drop of exactly 0.2 (4.2 vs 4.0: 0.20000000000000018) failed "at most 0.2"; and
    both gates passed on any number of listeners."""
    from train.evaluation.report import summarise
    from train.listening.aggregate import _mos_gate, needed_listeners

    mos = {"hift": summarise([4, 4, 4, 4, 5]), "student": summarise([4, 4, 4, 4, 4])}
    assert mos["hift"]["mean"] - mos["student"]["mean"] > 0.2
    roles = {"hift": "teacher", "student": "student"}
    assert _mos_gate(roles, mos, kept=30, needed=20)["status"] == "pass"
    assert _mos_gate(roles, {**mos, "student": summarise([4, 4, 4, 4, 3.99])}, 30, 20)["status"] == "fail"
    assert _mos_gate(roles, mos, kept=3, needed=20)["status"] == "insufficient"
    # the docs' arithmetic: SD 0.8, 12 pages a listener -> about 20 listeners for +-0.1
    assert 19 <= needed_listeners(0.8, 12) <= 22 and needed_listeners(0.1, 12) == needed_listeners(0.8, 12)
    assert needed_listeners(1.2, 12) > needed_listeners(0.8, 12)


def test_listeners_who_did_not_listen_are_excluded_with_the_rule_stated(tmp_path):
    """Issue 38, 8: nothing showed that anyone listened; answers without plays now screen a listener out."""
    folder = experiment(tmp_path)
    scripted_listener(folder, "ann")
    write_answer(folder, "eve", "mushra-0", {"block": "mushra", "trial": "utt0", "ratings": GOOD})  # no plays
    section = aggregate(folder)
    assert {e["listener"]: e["why"] for e in section["excluded"]} == {
        "eve": "rated without playing gl, hift, lp35, ref, student on page mushra-0"
    }
    assert "every MUSHRA condition played at least once before it was rated" in section["screening"]
    assert [e["listener"] for e in aggregate(folder, require_plays=False)["excluded"]] == []


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

    from train.release.listening_page import write_listening_page

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
    out = make_experiment(tmp_path / "exp", [first, second], utterances=2, seed=3, blocks=("mushra", "ab", "acr"))
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
    again = make_experiment(tmp_path / "again", [first, second], utterances=2, seed=3, blocks=("mushra", "ab", "acr"))
    assert json.loads((again / "experiment.json").read_text())["blocks"] == experiment["blocks"]
    before = (out / "experiment.json").read_bytes()
    with pytest.raises(ListeningDataError, match="exists"):
        make_experiment(out, [first], utterances=2)
    assert (out / "experiment.json").read_bytes() == before and not list(tmp_path.glob(".exp.partial-*"))
    # the answers to it aggregate with its own condition names
    ratings = {c: 100 if c == "reference" else 50 for c in roles}
    write_answer(out, "ann", "mushra-t00", {"block": "mushra", "trial": "t00", "ratings": ratings,
                                            "plays": dict.fromkeys(roles, 1)})  # fmt: skip
    assert aggregate(out)["mushra"]["vocos-int8-int8"]["mean"] == 50


def test_make_from_the_command_line_and_its_errors(tmp_path):
    release = fake_release(tmp_path / "release", student_gain=1.0)
    command = [sys.executable, str(REPO / "train" / "listen.py"), "make", str(tmp_path / "exp"), str(release)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 utterances, conditions reference, hift, release, griffin_lim, lp35" in done.stdout
    missing = subprocess.run([*command[:3], str(tmp_path / "other"), str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and f"{tmp_path}: no listen/ folder" in missing.stderr


def test_the_speaker_block_pairs_voices_not_sentences_and_is_balanced(tmp_path):
    """Issue 38, 5: a "same" page played the identical sentence, "different" was only assumed to be
    another speaker (all clips of a one-reader release were "different"), and conditions were not
    balanced. Now: "same" is two utterances of one speaker, "different" two speakers, from the
    release's speaker labels (listen/clips.json), the same pairs for every condition."""
    from train.listening.experiment import make_experiment

    release = fake_release(tmp_path / "student", student_gain=1.0, count=4)  # speaker0: 0, 2; speaker1: 1, 3
    labels = json.loads((release / "listen" / "clips.json").read_text())
    assert {n: v["speaker"] for n, v in labels.items()} == {"00": "speaker0", "01": "speaker1", "02": "speaker0",
                                                             "03": "speaker1"}  # fmt: skip
    out = make_experiment(tmp_path / "exp", [release], utterances=4, seed=0)
    experiment = json.loads((out / "experiment.json").read_text())
    speaker = {t["id"]: t["speaker"] for t in experiment["trials"]}
    pages = experiment["blocks"]["same_different"]
    by_condition: dict = {}
    for page in pages:
        assert page["trial"] != page["reference_trial"]  # never the same sentence
        assert (speaker[page["trial"]] == speaker[page["reference_trial"]]) == (page["truth"] == "same")
        assert "assumed" not in page
        by_condition.setdefault(page["condition"], []).append((page["reference_trial"], page["trial"], page["truth"]))
    assert set(by_condition) == {"reference", "hift", "student"}
    pairs = list(by_condition.values())
    assert all(sorted(p) == sorted(pairs[0]) for p in pairs)  # the same pairs for every condition
    truths = [t for *_, t in pairs[0]]
    assert truths.count("same") == truths.count("different") > 0
    (release / "listen" / "clips.json").unlink()  # a release exported before speakers were recorded
    with pytest.raises(ListeningDataError, match=r"no speaker label .*train/export.py .*--blocks mushra,ab,acr"):
        make_experiment(tmp_path / "unlabelled", [release], utterances=4)
    assert make_experiment(tmp_path / "without", [release], utterances=4, blocks=("mushra", "ab")).is_dir()


def test_releases_are_matched_by_content_not_clip_number(tmp_path):
    """Issue 38, 7: make paired releases by clip number: a release made from other clips was
    accepted, and a trial mixed one sentence's reference with another's student clip."""
    import shutil

    import soundfile as sf

    from train.listening.experiment import make_experiment

    first = fake_release(tmp_path / "first", student_gain=1.0, count=3)
    shuffled = tmp_path / "shuffled"  # the same utterances, numbered in another order
    shutil.copytree(first, shuffled)
    for name in ("audio", "teacher", "this-model-fp32"):
        a, b = shuffled / "listen" / f"00-{name}.wav", shuffled / "listen" / f"02-{name}.wav"
        a.rename(tmp_path / "swap.wav")
        b.rename(a)
        (tmp_path / "swap.wav").rename(b)
    for path in (shuffled / "listen").glob("*-this-model-fp32.wav"):  # this release's student: another gain
        wav, rate = sf.read(str(path), dtype="float32")
        sf.write(str(path), 0.5 * wav, rate, subtype="PCM_16")
    out = make_experiment(tmp_path / "exp", [first, shuffled], utterances=3, seed=0, blocks=("mushra",))
    experiment = json.loads((out / "experiment.json").read_text())
    for trial in experiment["trials"]:
        reference, _ = sf.read(str(out / trial["audio"]["reference"]), dtype="float32")
        other, _ = sf.read(str(out / trial["audio"]["shuffled"]), dtype="float32")
        assert abs(float((reference * other).sum() / ((reference**2).sum() * (other**2).sum()) ** 0.5)) > 0.99
    other = fake_release(tmp_path / "other", student_gain=1.0, count=3)
    for path in (other / "listen").glob("*-audio.wav"):  # other utterances: other ground truth
        wav, rate = sf.read(str(path), dtype="float32")
        sf.write(str(path), wav[::-1].copy(), rate, subtype="PCM_16")
    with pytest.raises(ListeningDataError, match="has none of the utterances of"):
        make_experiment(tmp_path / "mixed", [first, other], utterances=3, blocks=("mushra",))
