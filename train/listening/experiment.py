"""Make a listening experiment from releases' clips: ``python train/listen.py make OUT RELEASE ...``.

Each release's ``listen/`` folder (:mod:`train.release.listen`) holds, per utterance, the ground
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

Blocks: a MUSHRA page per utterance; an A/B page per utterance (each student against HiFT, or
against the reference without HiFT); an ACR (naturalness, 1-5) page per utterance and condition
that is not an anchor; a same/different-speaker page per utterance and student (the student's
clip against the reference of the same utterance, or of another one; which utterances share a
speaker is not known from a release's clips, so "different" pairs another utterance and is marked
``assumed``). The order of pages and of conditions within a page is drawn per listener when the
test is served, from a seed of the listener's name. The folder (``experiment.json``, ``audio/``,
``instructions.html``) is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import Tensor

from train.evaluation.griffin_lim import GriffinLim
from train.listening.answers import EXPERIMENT, ListeningDataError
from train.s3gen.mel import S3GenMel
from vocos_distill.config import SAMPLE_RATE

TARGET_LUFS = -26.0
ANCHOR_HZ = 3500.0
PEAK = 0.98
_CLIP = re.compile(r"^(\d+)-([a-z0-9-]+)\.wav$")
NOT_STUDENTS = ("audio", "teacher")


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


def make_experiment(out: str | Path, releases: Sequence[str | Path], utterances: int = 8, seed: int = 0) -> Path:
    """Write the experiment folder ``out`` (see the module's docstring); refuses to replace one."""
    out = Path(out)
    if out.exists():
        raise ListeningDataError(f"{out} exists: choose another folder (an experiment's answers are never replaced)")
    releases = [Path(r) for r in releases]
    if not releases:
        raise ListeningDataError("name at least one release folder")
    clips = [release_clips(r) for r in releases]
    common = sorted(set.intersection(*(set(c) for c in clips)))
    if not common:
        raise ListeningDataError(f"the releases {', '.join(map(str, releases))} share no utterance in listen/")
    chosen = sorted(random.Random(seed).sample(common, min(utterances, len(common))))
    students: dict[str, tuple[dict[str, dict[str, Path]], str]] = {}  # condition -> (clips, form)
    for release, found in zip(releases, clips, strict=True):
        forms = sorted({f for u in common for f in found[u]} - set(NOT_STUDENTS))
        for form in forms:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "-", release.name) + ("" if len(forms) == 1 else f"-{form}")
            if name in students:
                raise ListeningDataError(f"two releases are both named {release.name}: their students would share "
                                         "a condition name")  # fmt: skip
            students[name] = (found, form)
    has_teacher = all("teacher" in clips[0][u] for u in chosen)
    roles = {"reference": "reference", **({"hift": "teacher"} if has_teacher else {}),
             **dict.fromkeys(students, "student"), "griffin_lim": "floor", "lp35": "anchor"}  # fmt: skip
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "audio").mkdir(parents=True)
    floor, mel = GriffinLim(), S3GenMel()
    trials, matching = [], {}
    try:
        for index, utterance in enumerate(chosen):
            trial = f"t{index:02d}"
            read = {name: torch.from_numpy(sf.read(str(path), dtype="float32")[0]) for name, path in
                    (("reference", clips[0][utterance]["audio"]),
                     *((("hift", clips[0][utterance]["teacher"]),) if has_teacher else ()),
                     *((s, found[utterance][form]) for s, (found, form) in students.items()))}  # fmt: skip
            reference = read["reference"]
            read["griffin_lim"] = floor(mel(reference.unsqueeze(0)))[0, : reference.shape[-1]]
            read["lp35"] = low_anchor(reference)
            matched, matching[trial] = loudness_matched(read)
            files = {}
            for name, wav in matched.items():
                # an opaque name: the page's audio addresses must not say which condition is which
                blind = hashlib.sha1(f"{seed}:{trial}:{name}".encode()).hexdigest()[:12]
                path = staging / "audio" / f"{blind}.wav"
                sf.write(str(path), wav.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
                files[name] = f"audio/{path.name}"
            trials.append({"id": trial, "utterance": utterance, "source": str(clips[0][utterance]["audio"]),
                           "audio": files})  # fmt: skip
        baseline = "hift" if has_teacher else "reference"
        draw = random.Random(seed + 1)
        blocks: dict[str, list[dict[str, Any]]] = {
            "mushra": [{"trial": t["id"]} for t in trials],
            "ab": [{"trial": t["id"], "pair": [s, baseline]} for t in trials for s in students],
            "acr": [{"trial": t["id"], "condition": c} for t in trials for c, r in roles.items() if r != "anchor"],
            "same_different": [],
        }
        for t in trials:
            for student in students:
                other = draw.choice([u for u in trials if u["id"] != t["id"]] or [t])
                same = other is t or draw.random() < 0.5
                blocks["same_different"].append({"trial": t["id"], "condition": student, "reference_trial":
                                                 t["id"] if same else other["id"],
                                                 "truth": "same" if same else "different",
                                                 "assumed": not same})  # fmt: skip
        experiment = {"conditions": {c: {"role": r} for c, r in roles.items()}, "trials": trials, "blocks": blocks,
                      "seed": seed, "loudness": matching, "releases": [str(r) for r in releases]}  # fmt: skip
        (staging / EXPERIMENT).write_text(json.dumps(experiment, indent=1))
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
<li><b>MUSHRA</b>: every sample of a page is the same sentence. One of them is the hidden reference:
rate it 100. Rate each other sample 0-100 for how close it sounds to the reference.</li>
<li><b>A/B</b>: which of the two sounds better? Choose "no preference" only if you cannot tell.</li>
<li><b>Naturalness</b>: rate one sample from 1 (bad) to 5 (excellent).</li>
<li><b>Same speaker?</b>: do the two samples come from the same person?</li>
</ul>
<p>Each page is saved when you submit it: you can close the page and come back later.</p>
"""
