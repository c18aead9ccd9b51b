"""Make a listening experiment from releases' clips: ``python train/listen.py make OUT RELEASE ...``.

Each release's ``listen/`` folder (:mod:`train.release.listening_page`) holds, per utterance, the ground
truth (``NN-audio.wav``), HiFT's waveform when a teacher was there (``NN-teacher.wav``) and each
form of the release's student (``NN-this-model-fp32.wav``, ``NN-this-model-int8.wav``). For
``utterances`` of them (a seeded choice), the conditions are:

* ``reference``: the ground truth, the hidden reference of every MUSHRA trial;
* ``hift``: HiFT, when the first release has its clips;
* one student per release and form, named by the release's folder and the form (``<release>-int8``);
* ``griffin_lim``: the Griffin-Lim floor on the reference's S3Gen mel;
* ``lp35``: the reference low-passed at 3.5 kHz, ITU-R BS.1534's standard low anchor (every FFT
  bin above 3.5 kHz set to zero).

Loudness: every clip is set to -26 LUFS (ITU-R BS.1770 integrated loudness, ``pyloudnorm``);
a clip too short for its 400 ms blocks gets the reference's RMS level instead. A trial whose
loudest sample would then clip is scaled down as a whole, so its conditions stay matched.

Releases are matched by content, not position: an utterance is the same in two releases when its
ground truth's samples are (their SHA-256), and a student's clip must be as long as it. The
utterances are drawn seeded, in turn from each speaker, so every speaker is heard.

Blocks (``blocks``, all by default):

* ``headphones``: Woods et al. (2017)'s antiphase test, before anything else: six trials of three
  200 Hz tones, one 6 dB quieter, one with its channels in antiphase (which sounds quieter over
  loudspeakers, not over headphones); a listener must find the quietest in 5 of 6.
* ``mushra``: a page per utterance, ITU-R BS.1534: the labelled reference, and every condition
  (the hidden reference and the anchors among them) in unlabelled slots; the first is shown first
  as a familiarisation page that plays every condition before any rating.
* ``ab``: a page per utterance and student, against HiFT (or the reference without HiFT).
* ``acr``: naturalness 1-5, a page per utterance and condition that is not an anchor.
* ``same_different``: is the voice in a condition's clip that of another clip? "Same" pairs two
  *different* utterances of one speaker, "different" two speakers, the same pairs for every
  condition (the reference, HiFT and each student), as many of each. It needs the speaker labels
  a release's ``listen/clips.json`` gives (``train/export.py`` writes them).

A secret is drawn for the experiment (``.secret``, never served): the server names each stimulus
by it, per listener and page, so nothing a page shows says which condition is which, and no name
can be computed from the experiment's public inputs. The folder is written under a temporary
name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import Tensor

from train.evaluation.griffin_lim import GriffinLim
from train.listening.answers import BLOCKS, EXPERIMENT, SECRET, ListeningDataError
from train.s3gen.mel import S3GenMel
from vocos_distill.config import SAMPLE_RATE

TARGET_LUFS = -26.0
ANCHOR_HZ = 3500.0
PEAK = 0.98
_CLIP = re.compile(r"^(\d+)-([a-z0-9-]+)\.wav$")
NOT_STUDENTS = ("audio", "teacher")
LABELS = "clips.json"  # a release's listen/clips.json: utterance name and speaker of each clip number
HEADPHONE_TRIALS = 6
HEADPHONE_PASS = 5  # Woods et al. (2017): 5 of 6 correct
LENGTH_TOLERANCE = 2 * 480  # samples a student's clip may differ from its reference (two hops)


def release_clips(release: Path) -> dict[str, dict[str, Path]]:
    """``utterance number -> {system: wav}`` of a release's ``listen/`` folder; a student form's
    system is its slug less ``this-model-`` (``fp32``, ``int8``)."""
    folder = release / "listen"
    if not folder.is_dir():
        raise ListeningDataError(f"{release}: no listen/ folder (a release written by train/export.py has one)")
    clips: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.glob("*.wav")):
        match = _CLIP.match(path.name)
        if match:
            clips.setdefault(match[1], {})[match[2].removeprefix("this-model-")] = path
    usable = {k: v for k, v in clips.items() if "audio" in v and set(v) - set(NOT_STUDENTS)}
    if not usable:
        raise ListeningDataError(f"{folder}: no NN-audio.wav with a student's clip of the same utterance")
    return usable


def low_anchor(audio: Tensor, cutoff: float = ANCHOR_HZ) -> Tensor:
    """``audio`` with every FFT bin above ``cutoff`` set to zero (the whole clip as one frame)."""
    spectrum = torch.fft.rfft(audio.double())
    freqs = torch.fft.rfftfreq(audio.shape[-1], 1 / SAMPLE_RATE)
    spectrum[freqs > cutoff] = 0
    return torch.fft.irfft(spectrum, n=audio.shape[-1]).float()


def loudness_matched(clips: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every clip at :data:`TARGET_LUFS` (or the reference's RMS when too short to measure),
    the trial scaled down together if a peak would pass :data:`PEAK`; and how each was matched."""
    import pyloudnorm

    meter = pyloudnorm.Meter(SAMPLE_RATE)
    out, how = {}, {}
    reference_rms = None
    for name, wav in clips.items():
        x = wav.double().numpy()
        loudness = meter.integrated_loudness(x) if len(x) >= int(0.4 * SAMPLE_RATE) else float("-inf")
        if loudness > -70:
            out[name] = torch.from_numpy(pyloudnorm.normalize.loudness(x, loudness, TARGET_LUFS)).float()
            how[name] = f"{TARGET_LUFS:g} LUFS"
        else:
            reference_rms = reference_rms or float(clips["reference"].pow(2).mean().sqrt())
            rms = float(wav.pow(2).mean().sqrt())
            out[name] = wav * (reference_rms / rms if rms > 0 else 1.0)
            how[name] = "reference RMS (too short or too quiet for BS.1770)"
    peak = max(float(w.abs().max()) for w in out.values())
    if peak > PEAK:
        out = {k: v * (PEAK / peak) for k, v in out.items()}
    return out, how


def release_labels(release: Path) -> dict[str, dict[str, str]]:
    """``clip number -> {"utterance", "speaker"}`` from a release's ``listen/clips.json``, or {}."""
    path = release / "listen" / LABELS
    if not path.is_file():
        return {}
    try:
        labels = json.loads(path.read_text())
        return {str(k): {"utterance": str(v["utterance"]), "speaker": str(v.get("speaker") or "")}
                for k, v in labels.items()}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ListeningDataError(f"{path}: not a listing of clips ({type(err).__name__}: {err})") from None


def content_key(path: Path) -> str:
    """What identifies an utterance across releases: the SHA-256 of its ground truth's samples."""
    samples, _ = sf.read(str(path), dtype="int16")
    return hashlib.sha256(samples.tobytes()).hexdigest()


def provenance(release: Path) -> dict[str, Any]:
    """What a release says it was made from (``release.json``): the checkpoint's and every file's
    SHA-256, so that a report can be matched to the condition it evaluates."""
    try:
        manifest = json.loads((release / "release.json").read_text())
        shas = [manifest["source"]["sha256"], *(f["sha256"] for f in manifest.get("files", {}).values())]
    except (OSError, ValueError, KeyError, TypeError):
        shas = []
    return {"release": str(release.resolve()), "sha256": sorted(set(shas))}


def choose(common: dict[str, str], speakers: dict[str, str], count: int, seed: int) -> list[str]:
    """``count`` content keys, seeded, taken in turn from each speaker (unlabelled clips count as one)."""
    draw = random.Random(seed)
    by_speaker: dict[str, list[str]] = {}
    for key in sorted(common, key=lambda k: common[k]):
        by_speaker.setdefault(speakers.get(key, ""), []).append(key)
    for keys in by_speaker.values():
        draw.shuffle(keys)
    order = sorted(by_speaker)
    draw.shuffle(order)
    chosen: list[str] = []
    while len(chosen) < min(count, len(common)):
        for speaker in order:
            if by_speaker[speaker] and len(chosen) < count:
                chosen.append(by_speaker[speaker].pop())
    return sorted(chosen, key=lambda k: common[k])


def speaker_pairs(trials: list[dict[str, Any]], seed: int) -> list[tuple[str, str, str]]:
    """``(voice trial, sample trial, truth)``: as many "same" pairs (two utterances of one speaker) as
    "different" ones (two speakers), at most one of each per trial."""
    draw = random.Random(seed + 2)
    same, different = [], []
    for a in trials:
        for b in trials:
            if a["id"] != b["id"]:
                (same if a["speaker"] == b["speaker"] else different).append((a["id"], b["id"]))
    draw.shuffle(same)
    draw.shuffle(different)
    count = min(len(same), len(different), len(trials))
    return [(a, b, "same") for a, b in same[:count]] + [(a, b, "different") for a, b in different[:count]]


def headphone_tones(quietest: int, antiphase: int) -> Tensor:
    """A headphone-check trial (Woods et al. 2017): three 1 s, 200 Hz tones 0.5 s apart, stereo;
    tone ``quietest`` 6 dB down, tone ``antiphase`` with its right channel inverted."""
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    ramp = torch.clamp(torch.minimum(t, 1 - t) / 0.1, max=1.0)  # 100 ms raised ramps: no clicks
    tone = 0.3 * torch.sin(2 * math.pi * 200 * t) * (0.5 - 0.5 * torch.cos(math.pi * ramp))
    gap = torch.zeros(2, SAMPLE_RATE // 2)
    parts = []
    for index in range(3):
        gain = 10 ** (-6 / 20) if index == quietest else 1.0
        pair = torch.stack([tone, -tone if index == antiphase else tone]) * gain
        parts += [pair, gap] if index < 2 else [pair]
    return torch.cat(parts, dim=-1)


def make_experiment(
    out: str | Path,
    releases: Sequence[str | Path],
    utterances: int = 8,
    seed: int = 0,
    blocks: Sequence[str] = BLOCKS,
) -> Path:
    """Write the experiment folder ``out`` (see the module's docstring); refuses to replace one."""
    out = Path(out)
    if out.exists():
        raise ListeningDataError(f"{out} exists: choose another folder (an experiment's answers are never replaced)")
    unknown = sorted(set(blocks) - set(BLOCKS))
    if unknown or not blocks:
        raise ListeningDataError(f"blocks {unknown or '(none)'}: choose among {', '.join(BLOCKS)}")
    releases = [Path(r) for r in releases]
    if not releases:
        raise ListeningDataError("name at least one release folder")
    clips = [release_clips(r) for r in releases]
    by_content = [{content_key(found[n]["audio"]): n for n in found} for found in clips]
    common = set(by_content[0])
    for release, contents in zip(releases[1:], by_content[1:], strict=True):
        if not set(contents) & common:
            raise ListeningDataError(
                f"{release}/listen has none of the utterances of {releases[0]}/listen (matched by the ground truth's "
                "samples): its clips are of other utterances; export both releases from the same data"
            )
        common &= set(contents)
    labels = release_labels(releases[0])
    speakers = {k: labels.get(n, {}).get("speaker", "") for k, n in by_content[0].items()}
    if "same_different" in blocks:
        unlabelled = [by_content[0][k] for k in sorted(common) if not speakers[k]]
        if unlabelled:
            raise ListeningDataError(
                f"{releases[0]}/listen: no speaker label for clip(s) {', '.join(sorted(unlabelled))} ({LABELS}): the "
                "same/different block needs them. Export the release again (train/export.py writes them, the clip's "
                "folder being its speaker), or leave the block out: --blocks mushra,ab,acr"
            )
    chosen = choose({k: by_content[0][k] for k in common}, speakers, utterances, seed)
    students: dict[str, tuple[int, str]] = {}  # condition -> (release index, form)
    for index, (release, found) in enumerate(zip(releases, clips, strict=True)):
        forms = sorted({f for k in chosen for f in found[by_content[index][k]]} - set(NOT_STUDENTS))
        for form in forms:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", release.name) + ("" if len(forms) == 1 else f"-{form}")
            if name in students:
                raise ListeningDataError(f"two releases are both named {release.name}: their students would share "
                                         "a condition name")  # fmt: skip
            students[name] = (index, form)
    first = [clips[0][by_content[0][k]] for k in chosen]
    has_teacher = all("teacher" in c for c in first)
    roles = {"reference": "reference", **({"hift": "teacher"} if has_teacher else {}),
             **dict.fromkeys(students, "student"), "griffin_lim": "floor", "lp35": "anchor"}  # fmt: skip
    conditions = {c: {"role": r} for c, r in roles.items()}
    for name, (index, _) in students.items():
        conditions[name].update(provenance(releases[index]))
    if has_teacher:
        conditions["hift"]["release"] = str(releases[0].resolve())
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "audio").mkdir(parents=True)
    floor, mel = GriffinLim(), S3GenMel()
    trials, matching = [], {}
    try:
        for index, key in enumerate(chosen):
            trial, own = f"t{index:02d}", first[index]
            paths = {"reference": own["audio"], **({"hift": own["teacher"]} if has_teacher else {})}
            for name, (r, form) in students.items():
                path = clips[r][by_content[r][key]].get(form)
                if path is None:
                    raise ListeningDataError(f"{releases[r]}/listen: no {form} clip of {own['audio'].name}'s utterance")
                paths[name] = path
            read = {name: torch.from_numpy(sf.read(str(path), dtype="float32")[0]) for name, path in paths.items()}
            reference = read["reference"]
            for name, wav in read.items():
                if abs(wav.shape[-1] - reference.shape[-1]) > LENGTH_TOLERANCE:
                    raise ListeningDataError(
                        f"{paths[name]} is {wav.shape[-1] / SAMPLE_RATE:.2f} s, its ground truth {own['audio']} "
                        f"{reference.shape[-1] / SAMPLE_RATE:.2f} s: not the same utterance's clip"
                    )
            read = {name: wav[: reference.shape[-1]] for name, wav in read.items()}
            read["griffin_lim"] = floor(mel(reference.unsqueeze(0)))[0, : reference.shape[-1]]
            read["lp35"] = low_anchor(reference)
            matched, matching[trial] = loudness_matched(read)
            files = {}
            for name, wav in matched.items():
                path = staging / "audio" / f"{secrets.token_hex(8)}.wav"  # names say nothing, and are never served
                sf.write(str(path), wav.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
                files[name] = f"audio/{path.name}"
            number = by_content[0][key]
            trials.append({"id": trial, "utterance": labels.get(number, {}).get("utterance", own["audio"].name),
                           "speaker": speakers[key], "content": key, "source": str(own["audio"]),
                           "audio": files})  # fmt: skip
        experiment_blocks: dict[str, list[dict[str, Any]]] = {}
        if "headphones" in blocks:
            draw = random.Random(seed + 3)
            headphones = []
            for number in range(HEADPHONE_TRIALS):
                quietest, antiphase = draw.sample(range(3), 2)
                path = staging / "audio" / f"{secrets.token_hex(8)}.wav"
                sf.write(str(path), headphone_tones(quietest, antiphase).T.numpy(), SAMPLE_RATE, subtype="PCM_16")
                headphones.append({"id": f"h{number}", "audio": f"audio/{path.name}", "quietest": quietest + 1})
            experiment_blocks["headphones"] = [{"trials": headphones, "pass": HEADPHONE_PASS}]
        baseline = "hift" if has_teacher else "reference"
        if "mushra" in blocks:
            experiment_blocks["mushra"] = [{"trial": t["id"]} for t in trials]
        if "ab" in blocks:
            experiment_blocks["ab"] = [{"trial": t["id"], "pair": [s, baseline]} for t in trials for s in students]
        if "acr" in blocks:
            experiment_blocks["acr"] = [{"trial": t["id"], "condition": c} for t in trials
                                        for c, r in roles.items() if r != "anchor"]  # fmt: skip
        if "same_different" in blocks:
            pairs = speaker_pairs(trials, seed)
            if not any(truth == "same" for *_, truth in pairs):
                found = sorted({t["speaker"] for t in trials})
                raise ListeningDataError(
                    f"the same/different block needs two utterances of one speaker and two speakers among the "
                    f"{len(trials)} utterances drawn (speakers: {', '.join(found)}): draw more (--utterances), "
                    "or leave the block out: --blocks mushra,ab,acr"
                )
            heard = ["reference", *(["hift"] if has_teacher else []), *students]
            experiment_blocks["same_different"] = [
                {"trial": sample, "condition": c, "reference_trial": voice, "truth": truth}
                for c in heard
                for voice, sample, truth in pairs
            ]
        experiment = {"conditions": conditions, "trials": trials, "blocks": experiment_blocks,
                      "seed": seed, "loudness": matching, "releases": [str(r) for r in releases]}  # fmt: skip
        (staging / EXPERIMENT).write_text(json.dumps(experiment, indent=1))
        secret = staging / SECRET
        secret.touch(mode=0o600)
        secret.write_text(secrets.token_hex(32))
        (staging / "instructions.html").write_text(INSTRUCTIONS)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


INSTRUCTIONS = """<!doctype html><meta charset="utf-8"><title>Listening test</title>
<h1>Listening test</h1>
<p>Use headphones in a quiet room, at one comfortable volume for the whole test.</p>
<ul>
<li><b>Headphone check</b>: three tones; pick the quietest. Over loudspeakers this is hard.</li>
<li><b>MUSHRA</b>: every sample of a page is the same sentence as the labelled reference. Play the
reference and each sample (switching keeps the position; set a loop to compare one passage), then
rate each sample 0-100 for how close it sounds to the reference. One sample is the reference itself,
hidden: rate it 100.</li>
<li><b>A/B</b>: which of the two sounds better? Choose "no preference" only if you cannot tell.</li>
<li><b>Naturalness</b>: rate one sample from 1 (bad) to 5 (excellent).</li>
<li><b>Same speaker?</b>: the two samples say different things; do they come from the same person?</li>
</ul>
<p>Each page is saved when you submit it: you can close the page and come back later.</p>
"""
