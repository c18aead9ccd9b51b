"""Where a vocoder's log-mel distance comes from: its magnitudes or its phase (``train/diagnose.py``).

Each clip is rebuilt from the STFT magnitude of one signal and the STFT phase of another
(n_fft 1920, hop 480, centred, Hann) and its S3Gen log-mel distance to the ground truth is
measured: the vocoder's own output; the true magnitude with the vocoder's phase (what its
phase alone costs); the vocoder's magnitude with the true phase (what its magnitudes alone
cost); the true magnitude with random phase (for scale).

:func:`band_swaps` asks in which band a vocoder's phase fails: its magnitude under the
Griffin-Lim floor's phase below a cut and its own above, and the other way round;
:func:`voicing_swaps` the same split by frames, voiced or not.

:func:`prior_variants` asks the same of a student with the amplitude prior by ear rather than
by log-mel distance: its output, the same phase under the prior's magnitude (the correction
left out), and the Griffin-Lim floor (the prior's magnitude with Griffin-Lim's phase), for
PESQ-wb, ESTOI and DistillMOS to score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from train.evaluation.metrics import DB_PER_NEPER, Analysis
from train.s3gen.mel import S3GenMel
from vocos_distill.config import HOP_LENGTH, N_FFT, SAMPLE_RATE
from vocos_distill.heads import polar

VARIANTS = ("vocoder", "prior magnitude + vocoder phase", "floor (prior magnitude + Griffin-Lim phase)")
SWAPS = ("vocoder", "true magnitude + vocoder phase", "vocoder magnitude + true phase", "true magnitude + random phase")


BAND_CUTS = (500, 1000, 2000, 4000)


def _stft(x: Tensor) -> Tensor:
    return torch.stft(x.float(), N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), return_complex=True)


def _rebuild(magnitude: Tensor, phase: Tensor, length: int) -> Tensor:
    """The signal of ``length`` samples whose STFT has this magnitude and phase (as :func:`_stft`)."""
    polar = torch.polar(magnitude, phase)
    return torch.istft(polar, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), length=length)


def band_swaps(estimate: Tensor, floor: Tensor, cuts: tuple[int, ...] = BAND_CUTS) -> dict[str, Tensor]:
    """``estimate`` (L,) rebuilt with the phase of ``floor`` (L,) below each cut (Hz) and its own
    above, then with its own below and the floor's above; every signal keeps ``estimate``'s
    magnitude (n_fft 1920, hop 480, as :func:`swap_distances`)."""
    n = min(estimate.shape[-1], floor.shape[-1])
    e, f = _stft(estimate[..., :n]), _stft(floor[..., :n])
    hz = torch.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE).unsqueeze(-1)
    signals = {}
    for cut in cuts:
        below = hz < cut
        signals[f"floor phase below {cut} Hz"] = _rebuild(e.abs(), torch.where(below, f.angle(), e.angle()), n)
        signals[f"vocoder phase below {cut} Hz"] = _rebuild(e.abs(), torch.where(below, e.angle(), f.angle()), n)
    return signals


def voicing_swaps(estimate: Tensor, floor: Tensor, voiced: Tensor) -> dict[str, Tensor]:
    """``estimate`` (L,) with the phase of ``floor`` (L,) in the unvoiced frames and its own in the
    voiced ones, then the other way round; ``voiced`` says which of the STFT frames (n_fft 1920,
    hop 480, centred: frame ``t`` at sample ``t * 480``) are. Both keep ``estimate``'s magnitude."""
    n = min(estimate.shape[-1], floor.shape[-1])
    e, f = _stft(estimate[..., :n]), _stft(floor[..., :n])
    if voiced.shape != e.shape[-1:]:
        raise ValueError(f"voiced: one flag per STFT frame, {e.shape[-1]}; got {tuple(voiced.shape)}")
    return {
        "floor phase in unvoiced frames": _rebuild(e.abs(), torch.where(voiced, e.angle(), f.angle()), n),
        "floor phase in voiced frames": _rebuild(e.abs(), torch.where(voiced, f.angle(), e.angle()), n),
    }


def swap_distances(estimate: Tensor, truth: Tensor, seed: int = 0, mel: S3GenMel | None = None) -> dict[str, float]:
    """S3Gen log-mel distance (dB) to ``truth`` (L,) of ``estimate`` (L,) and of the rebuilt signals."""
    n = min(estimate.shape[-1], truth.shape[-1])
    estimate, truth = estimate[..., :n].float(), truth[..., :n].float()
    e, t = _stft(estimate), _stft(truth)
    noise = 2 * torch.pi * torch.rand(t.shape, generator=torch.Generator().manual_seed(seed))
    signals = dict(
        zip(
            SWAPS,
            (estimate, _rebuild(t.abs(), e.angle(), n), _rebuild(e.abs(), t.angle(), n), _rebuild(t.abs(), noise, n)),
            strict=True,
        )
    )
    mel = mel or S3GenMel()
    reference = mel(truth)
    return {k: DB_PER_NEPER * float((mel(v) - reference).abs().mean()) for k, v in signals.items()}


def prior_variants(student: nn.Module, mel: Tensor, floor: nn.Module) -> dict[str, Tensor]:
    """:data:`VARIANTS` of ``mel`` (1, 80, T) for a student with the amplitude prior: each ``(T * hop,)``."""
    if student.prior(mel) is None:
        raise ValueError("prior variants need a student with the amplitude prior (student.amplitude_prior=true)")
    with torch.inference_mode():
        projection = student.head.out(student.backbone(mel)).transpose(1, 2)
        log_magnitude, phase = projection.chunk(2, dim=1)
        prior = student.prior(mel)
        plain = torch.cat([torch.zeros_like(log_magnitude), phase], dim=1)  # the correction left out
        outputs = (
            student.head.istft(torch.complex(*polar(projection, prior))),
            student.head.istft(torch.complex(*polar(plain, prior))),
            floor(mel),
        )
    return {name: wav[0] for name, wav in zip(VARIANTS, outputs, strict=True)}


def frame_voicing(reference: Analysis, samples: int) -> torch.Tensor:
    """The ground truth's CREPE voicing (10 ms) at the diagnosis' STFT frames (one per 480 samples,
    centred), each frame taking the 10 ms frame at its centre; past the track's end, unvoiced."""
    voiced = torch.from_numpy(reference.pitch.voiced)
    centres = torch.arange(samples // HOP_LENGTH + 1) * HOP_LENGTH * 100 // SAMPLE_RATE
    return torch.where(centres < len(voiced), voiced[centres.clamp(max=len(voiced) - 1)], False)
