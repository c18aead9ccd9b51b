"""The S3Gen log-mel front-end, computed exactly as Chatterbox / CosyVoice do.

Facts (see ``docs/conformance.md``): 24 kHz, n_fft = win = 1920 (periodic
Hann), hop 480 (50 frames/s), reflect padding of (n_fft - hop) / 2 samples per side
and ``center=False``, magnitude ``sqrt(re^2 + im^2 + 1e-9)``, 80 Slaney mel filters
over 0-8 kHz with Slaney area normalisation, natural log of ``clamp(mel, 1e-5)``.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from vocos_distill.config import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, mel_filterbank  # what the runtime checks


class S3GenMel(nn.Module):
    """Waveform -> S3Gen log-mel.

    ``forward(wav, sample_rate)`` takes ``(L,)``, ``(B, L)`` or multi-channel
    ``(B, C, L)`` audio (channels are averaged) at any sample rate (resampled to
    24 kHz) and returns ``(B, 80, L24 // 480)`` where ``L24`` is the length at 24 kHz.
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        n_mels: int = N_MELS,
        f_min: float = 0.0,
        f_max: float = 8000.0,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.pad = (n_fft - hop_length) // 2
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        fbank = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
        self.register_buffer("fbank", fbank, persistent=False)  # (n_mels, F)

    def to_mono_24k(self, wav: Tensor, sample_rate: int) -> Tensor:
        """Validate audio and bring it to ``(B, L)`` float at ``self.sample_rate``."""
        if not torch.is_tensor(wav):
            raise TypeError(f"S3GenMel expects a torch.Tensor waveform, got {type(wav).__name__}")
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        elif wav.dim() == 3:
            wav = wav.mean(dim=1)
        elif wav.dim() != 2:
            raise ValueError(f"S3GenMel expects a waveform of shape (L,), (B, L) or (B, C, L); got {tuple(wav.shape)}")
        if wav.numel() == 0:
            raise ValueError(f"S3GenMel got an empty waveform (shape {tuple(wav.shape)})")
        if not torch.isfinite(wav).all():
            raise ValueError("S3GenMel got a waveform containing NaN or inf values")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        wav = wav.float()
        if sample_rate != self.sample_rate:
            wav = torchaudio.functional.resample(wav, sample_rate, self.sample_rate)
        if wav.shape[-1] <= self.pad:
            raise ValueError(
                f"waveform too short for the S3Gen mel: {wav.shape[-1]} samples at "
                f"{self.sample_rate} Hz, need more than {self.pad}"
            )
        return wav

    def forward(self, wav: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
        wav = self.to_mono_24k(wav, sample_rate)
        padded = torch.nn.functional.pad(wav.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            padded,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.window,
            center=False,
            onesided=True,
            return_complex=True,
        )  # (B, F, T)
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        mel = torch.matmul(self.fbank, magnitude)
        return torch.log(torch.clamp(mel, min=1e-5))
