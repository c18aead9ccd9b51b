"""The Griffin-Lim floor: the simplest non-neural inversion of an S3Gen mel.

A student that scores below it against the ground truth has not learnt to be a vocoder.
The mel's filterbank is pseudo-inverted (least squares, negative magnitudes clipped to 0),
then torchaudio's Griffin-Lim finds a phase for that magnitude.

Framing: Griffin-Lim's STFT is centred (frame ``t`` is centred on sample ``t * hop``), while
the S3Gen mel pads ``(n_fft - hop) / 2`` samples and does not centre, so its frame ``t`` is
centred on ``t * hop + n_fft / 2 - (n_fft - hop) / 2`` = ``t * hop + 240``. The output is
delayed by that :attr:`GriffinLim.offset` so that it lines up with the audio the mel came
from (``tests/test_griffin_lim.py`` measures it on clicks and speech).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from train.s3gen.mel import S3GenMel
from vocos_distill.config import HOP_LENGTH


class GriffinLim(nn.Module):
    """``mel (B, 80, T) -> wav (B, T * 480)``, the same interface as a student."""

    def __init__(self, n_iter: int = 64, momentum: float = 0.99, seed: int | None = 0) -> None:
        super().__init__()
        mel = S3GenMel()
        self.n_fft, self.hop_length = mel.n_fft, mel.hop_length
        self.offset = self.n_fft // 2 - mel.pad
        self.register_buffer("inverse", torch.linalg.pinv(mel.fbank), persistent=False)  # (F, 80)
        # rand_init=False starts from zero phase: the same output on every call, no seed needed
        self.seed = seed
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            power=1.0,
            n_iter=n_iter,
            momentum=momentum,
            rand_init=seed is not None,
        )
        self.config = {"kind": "griffin_lim", "n_iter": n_iter, "momentum": momentum, "seed": seed}

    def magnitude(self, mel: Tensor) -> Tensor:
        """The least-squares linear magnitude ``(B, n_fft / 2 + 1, T)`` whose mel is ``mel``."""
        return (self.inverse @ mel.float().exp()).clamp(min=0)

    @torch.no_grad()
    def forward(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.inverse.shape[1]:
            raise ValueError(f"GriffinLim takes mels of shape (B, {self.inverse.shape[1]}, T); got {tuple(mel.shape)}")
        frames = mel.shape[-1]
        if self.seed is None:
            wav = self.griffin_lim(self.magnitude(mel))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                wav = self.griffin_lim(self.magnitude(mel))
        wav = nn.functional.pad(wav, (self.offset, 0))
        length = frames * HOP_LENGTH
        return nn.functional.pad(wav, (0, max(0, length - wav.shape[-1])))[..., :length]
