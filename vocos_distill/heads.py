"""The iSTFT heads a student may have beyond ``vocos``' own, and the overlap-add arithmetic they share.

``vocos.heads.ISTFTHead`` with "same" padding is the stock head. :class:`ShiftedISTFTHead` looks
fewer frames ahead (a student with a short look-ahead); :class:`AmplitudePriorHead` refines the
mel's least-squares magnitude instead of predicting it whole. Both keep the stock head's tensors,
and a release's ``config.yaml`` names them by class path, so ``vocos`` builds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from vocos.heads import ISTFTHead
from vocos.spectral_ops import ISTFT

from vocos_distill.config import mel_filterbank

MAX_MAGNITUDE = 1e2  # vocos' ISTFTHead clips exp(log-magnitude) here
# The window envelope is divided out where it is at least this: everywhere in "same" padding (0.75
# at its lowest, both ends), but a shifted head's first samples lie under its first window's edge
# alone, where the envelope falls to 0; below the floor the audio fades in instead of blowing up.
MIN_ENVELOPE = 0.1
MIN_PRIOR = 1e-5  # the S3Gen mel's own floor: where the prior is 0 (above 8 kHz), the head starts from it


def polar(x: Tensor, prior: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The head's arithmetic, as ``vocos.heads.ISTFTHead``: its projection ``(B, n_fft + 2, T)``
    -> the spectrum's real and imaginary parts ``(B, n_fft / 2 + 1, T)``. With an amplitude
    ``prior`` (a log-magnitude, :func:`amplitude_prior`) the projection's log-magnitude is added to it."""
    magnitude, phase = x.chunk(2, dim=1)
    if prior is not None:
        magnitude = magnitude + prior
    magnitude = torch.exp(magnitude).clip(max=MAX_MAGNITUDE)
    return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


def amplitude_prior(mel: Tensor, inverse: Tensor) -> Tensor:
    """The log of the least-squares magnitude whose mel is ``mel`` (FreeV, arXiv 2406.08196):
    ``inverse`` is the filterbank's pseudo-inverse ``(n_fft / 2 + 1, n_mels)``; a frame's prior
    depends on its own mel frame alone, so it adds nothing to the receptive field. It is the
    Griffin-Lim floor's magnitude, so a student with it learns mostly phase and a correction."""
    return (inverse @ mel.float().exp()).clamp(min=MIN_PRIOR).log()


def output_start(n_fft: int, hop: int, shift: int = 0) -> int:
    """Where output sample 0 lies in an overlap-add of frames: "same" padding's ``(n_fft - hop) / 2``,
    less a shifted head's ``shift`` hops (below 0: before the first window)."""
    return (n_fft - hop) // 2 - shift * hop


def same_output(signal: Tensor, envelope: Tensor, count: int, n_fft: int, hop: int, shift: int = 0) -> Tensor:
    """The ``count * hop`` output samples of the overlap-add ``signal`` ``(B, L)`` of ``count``
    frames (window envelope ``(1, L)``), divided by the envelope (:func:`normalise`); samples
    before the first window (a shifted head's) are 0."""
    start = output_start(n_fft, hop, shift)
    if start < 0:
        signal, envelope = F.pad(signal, (-start, 0)), F.pad(envelope, (-start, 0), value=1.0)
        start = 0
    end = start + count * hop
    return normalise(signal[:, start:end], envelope[:, start:end])


def normalise(signal: Tensor, envelope: Tensor) -> Tensor:
    """The overlap-add divided by its window envelope, which is floored at :data:`MIN_ENVELOPE`
    (only a shifted head's first samples are under it)."""
    return signal / envelope.clamp(min=MIN_ENVELOPE)


class ShiftedISTFT(ISTFT):
    """``vocos``' ISTFT with ``padding="same"`` whose output starts ``shift`` hops earlier in the
    overlap-add: spectral frame ``t`` then describes the audio of frame ``t + shift``, and the
    overlap-add looks ``shift`` frames less ahead. T frames still give T * hop samples; the first
    ``shift * hop - pad`` samples (if any), which no window covers, are zero."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, shift: int) -> None:
        super().__init__(n_fft, hop_length, win_length, padding="same")
        if shift < 0 or shift * hop_length > n_fft:
            raise ValueError(f"ShiftedISTFT: shift must be 0..{n_fft // hop_length} hops; got {shift}")
        self.shift = shift

    def forward(self, spec: Tensor) -> Tensor:
        frames = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * self.window[None, :, None]
        count = frames.shape[-1]
        size = (count - 1) * self.hop_length + self.win_length
        fold = {"output_size": (1, size), "kernel_size": (1, self.win_length), "stride": (1, self.hop_length)}
        signal = F.fold(frames, **fold)[:, 0, 0]
        envelope = F.fold(self.window.square()[None, :, None].expand(1, -1, count), **fold)[:, 0, 0]
        return same_output(signal, envelope, count, self.win_length, self.hop_length, self.shift)


def shift_istft(head: ISTFTHead, shift: int) -> None:
    """Give ``head`` a :class:`ShiftedISTFT` of ``shift`` frames (none for 0)."""
    if shift:
        istft = head.istft
        head.istft = ShiftedISTFT(istft.n_fft, istft.hop_length, istft.win_length, shift)


class ShiftedISTFTHead(ISTFTHead):
    """``vocos``' ``ISTFTHead`` with a :class:`ShiftedISTFT` (``shift`` frames): the stock head of
    a student that looks fewer frames ahead than the overlap-add's own 2. The same tensors."""

    def __init__(self, dim: int, n_fft: int, hop_length: int, padding: str = "same", shift: int = 0) -> None:
        super().__init__(dim, n_fft, hop_length, padding=padding)
        shift_istft(self, shift)


class AmplitudePriorHead(ISTFTHead):
    """``vocos``' ``ISTFTHead`` whose log-magnitude is a correction of the mel's least-squares
    magnitude (:func:`amplitude_prior`). The same tensors as the stock head; the pseudo-inverse
    is computed, not stored. It needs the mel as well as the features, which ``vocos``'
    ``Vocos.decode`` does not pass, so called as ``vocos`` calls a head it refuses, naming the
    loader that applies it (:class:`VocosStudent`, ``vocos_distill.load_release``). ``shift``:
    as :class:`ShiftedISTFTHead`."""

    def __init__(
        self, dim: int, n_fft: int, hop_length: int, padding: str = "same", n_mels: int = 80, shift: int = 0
    ) -> None:
        super().__init__(dim, n_fft, hop_length, padding=padding)
        inverse = torch.linalg.pinv(mel_filterbank(n_mels, n_fft).double()).float()
        self.register_buffer("inverse_mel", inverse, persistent=False)  # (n_fft / 2 + 1, n_mels)
        shift_istft(self, shift)

    def forward(self, x: Tensor) -> Tensor:
        raise TypeError(
            "this student's head refines the magnitude of the mel itself (amplitude_prior) and needs the mel, "
            "which vocos' Vocos.decode does not pass: load it with vocos_distill.from_pretrained"
        )

    def prior(self, mel: Tensor) -> Tensor:
        return amplitude_prior(mel, self.inverse_mel)
