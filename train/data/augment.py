"""Augmenting training segments: speed (pitch and tempo together) and spectral tilt.

Both change the audio a segment's mel is then computed from, so they apply to audio targets
alone: a teacher's cached waveforms were made for the unchanged mels (:func:`refuse_teacher`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchaudio
from torch import Tensor

from train.data.sources import DataError
from train.s3gen.hift import HiFTGenerator
from train.s3gen.mel import S3GenMel
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE

SPEED_STEPS = 20  # speed factors are multiples of 1/20: resampling by k/20 is one short polyphase filter


def speed_perturbed(
    audio: Tensor, start: int, frames: int, factor: float, mel: S3GenMel, tilt_db: float = 0.0
) -> dict[str, Tensor]:
    """``frames`` frames of ``audio`` played ``factor`` times faster (pitch and tempo both scaled),
    from sample ``start`` (moved earlier if the faster segment would run past the end), and their
    S3Gen mel computed from the perturbed audio itself.

    ``tilt_db`` also tilts its spectrum (:func:`tilted`) before the mel is taken.

    The mel is taken from a longer span (two frames more on each side), so that none of its frames
    sees the reflection padding a segment's own edges would bring; beyond the utterance the span
    is padded with silence (the corpus trims its clips' edge silence).
    """
    steps = round(factor * SPEED_STEPS)
    margin = 2 * HOP_LENGTH
    wanted = frames * HOP_LENGTH + 2 * margin  # at 24 kHz, after resampling
    span = -(-wanted * steps // SPEED_STEPS) + steps  # source samples that give at least `wanted`
    segment = frames * HOP_LENGTH * steps // SPEED_STEPS  # the segment's own source samples
    first = min(start, max(0, audio.shape[-1] - segment)) - margin * steps // SPEED_STEPS
    source = audio[max(first, 0) : first + span]
    before = max(-first, 0)
    source = torch.nn.functional.pad(source, (before, span - before - source.shape[-1]))
    played = torchaudio.functional.resample(source, steps, SPEED_STEPS)[:wanted]
    if tilt_db:
        played = tilted(played, tilt_db)
    log_mel = mel(played.unsqueeze(0))[0, :, 2 : 2 + frames]
    return {"mel": log_mel, "audio": played[margin : margin + frames * HOP_LENGTH]}


TILT_HZ = 1000.0  # the shelf's corner: below it the voice's fundamental and first formant, above it the rest


def tilted(audio: Tensor, gain_db: float) -> Tensor:
    """``audio`` through a high shelf at :data:`TILT_HZ` of ``gain_db`` (a brighter or duller
    microphone), rescaled to its own RMS level, so only the spectrum's tilt changes."""
    # the RBJ cookbook's high shelf (slope 1); torchaudio's own biquads clamp their output to +-1
    a, w0 = 10 ** (gain_db / 40), 2 * math.pi * TILT_HZ / SAMPLE_RATE
    cos, alpha = math.cos(w0), math.sin(w0) / math.sqrt(2)
    root = 2 * math.sqrt(a) * alpha
    b = [a * (a + 1 + (a - 1) * cos + root), -2 * a * (a - 1 + (a + 1) * cos), a * (a + 1 + (a - 1) * cos - root)]
    den = [a + 1 - (a - 1) * cos + root, 2 * (a - 1 - (a + 1) * cos), a + 1 - (a - 1) * cos - root]
    shelved = torchaudio.functional.lfilter(
        audio, audio.new_tensor(den), audio.new_tensor(b), clamp=False, batching=False
    )
    level = audio.pow(2).mean().sqrt() / shelved.pow(2).mean().sqrt().clamp_min(1e-8)
    return shelved * level


def refuse_teacher(option: str, unchanged: str, teacher: HiFTGenerator | None) -> None:
    """A :class:`DataError` when ``option``, which changes the training audio, meets a teacher."""
    if teacher is not None:
        raise DataError(
            f"{option} needs audio targets alone: the teacher's waveforms are cached for the "
            f"{unchanged} mels (drop the teacher, e.g. `~teacher`, or set {option}=null)"
        )


def check_tilt(tilt_db: Sequence[float] | None, teacher: HiFTGenerator | None) -> tuple[float, float] | None:
    """``data.tilt_db`` as ``(low, high)``, or a :class:`DataError` naming what is wrong with it."""
    if not tilt_db:
        return None
    values = [float(v) for v in tilt_db]
    if len(values) != 2 or not -24.0 <= values[0] <= values[1] <= 24.0:
        raise DataError(f"data.tilt_db: {list(tilt_db)} is not [low, high] in dB with -24 <= low <= high <= 24")
    refuse_teacher("data.tilt_db", "untilted", teacher)
    return values[0], values[1]


def check_speed_factors(factors: Sequence[float] | None, teacher: HiFTGenerator | None) -> list[float]:
    """``data.speed_perturb`` as a list, or a :class:`DataError` naming what is wrong with it."""
    factors = [float(f) for f in factors or []]
    wrong = [f for f in factors if not 0.5 <= f <= 2.0 or abs(f * SPEED_STEPS - round(f * SPEED_STEPS)) > 1e-6]
    if wrong:
        raise DataError(f"data.speed_perturb: {wrong} are not multiples of 0.05 between 0.5 and 2")
    if factors:
        refuse_teacher("data.speed_perturb", "unperturbed", teacher)
    return factors
