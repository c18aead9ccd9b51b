"""Spectral reconstruction losses and distances; :class:`PhaseDerivativeLoss` is the one about phase."""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn

from train.s3gen.mel import S3GenMel


class MultiResolutionMelLoss(nn.Module):
    """Mean L1 distance between log-mels at several STFT resolutions (24 kHz audio)."""

    def __init__(
        self,
        sample_rate: int = 24_000,
        n_ffts: tuple[int, ...] = (512, 1024, 2048),
        n_mels: tuple[int, ...] = (40, 80, 128),
    ) -> None:
        super().__init__()
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=m, power=1.0, center=True
            )
            for n_fft, m in zip(n_ffts, n_mels, strict=True)
        )

    def forward(self, y_hat: Tensor, y: Tensor) -> Tensor:
        y_hat, y = y_hat.float(), y.float()
        loss = y_hat.new_zeros(())
        for mel in self.mels:
            loss = loss + (mel(y_hat).clamp(min=1e-5).log() - mel(y).clamp(min=1e-5).log()).abs().mean()
        return loss / len(self.mels)


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions."""

    def __init__(self, n_ffts: tuple[int, ...] = (512, 1024, 2048)) -> None:
        super().__init__()
        self.n_ffts = n_ffts
        for n_fft in n_ffts:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def magnitudes(self, y: Tensor, n_fft: int) -> Tensor:
        window = getattr(self, f"window_{n_fft}")
        spec = torch.stft(y.float(), n_fft, n_fft // 4, window=window, return_complex=True)
        return spec.abs().clamp(min=1e-5)

    def forward(self, y_hat: Tensor, y: Tensor) -> Tensor:
        loss = y_hat.new_zeros((), dtype=torch.float32)
        for n_fft in self.n_ffts:
            m_hat, m = self.magnitudes(y_hat, n_fft), self.magnitudes(y, n_fft)
            convergence = torch.linalg.norm(m - m_hat, dim=(-2, -1)) / torch.linalg.norm(m, dim=(-2, -1))
            loss = loss + convergence.mean() + (m.log() - m_hat.log()).abs().mean()
        return loss / len(self.n_ffts)


def phasors(spectrum: Tensor, floor: float) -> Tensor:
    """``spectrum / |spectrum|`` where a bin stands well above ``floor``, shrinking to 0 below it:
    a unit phasor whose gradient is bounded by ``1 / floor`` (an angle's is ``1 / |bin|``)."""
    return spectrum / (spectrum.real.square() + spectrum.imag.square() + floor**2).sqrt()


class PhaseDerivativeLoss(nn.Module):
    """Phase errors that a mel can determine: instantaneous frequency (phase advance from frame
    to frame) and group delay (phase step from bin to bin), as in APNet (Ai & Ling 2023),
    weighted by the target's magnitude so that silent bins, whose phase is noise, count for
    nothing. The absolute phase is left out: at a 20 ms hop a mel does not fix it.

    Each error ``d`` (the difference of the two signals' phase derivatives) costs ``1 - cos d``,
    computed from unit phasors (:func:`phasors`), rather than APNet's anti-wrapped ``|d|``: the
    same zero and the same ordering on ``[0, pi]``, but smooth, and with a gradient that stays
    bounded where the output is quiet. The angle's gradient grows as ``1 / |bin|`` and turned a
    pilot's weights to NaN where its output went near-silent (``tests/test_losses.py``).
    ``floor`` is the STFT magnitude (of a waveform in [-1, 1]) below which a bin's phase fades
    out: 1e-5, about -100 dB, below 16-bit quantisation noise.
    """

    def __init__(self, n_ffts: tuple[int, ...] = (512, 1024), floor: float = 1e-5) -> None:
        super().__init__()
        self.n_ffts, self.floor = n_ffts, floor
        for n_fft in n_ffts:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def forward(self, y_hat: Tensor, y: Tensor) -> Tensor:
        loss = y_hat.new_zeros((), dtype=torch.float32)
        for n_fft in self.n_ffts:
            window = getattr(self, f"window_{n_fft}")
            s_hat, s = (
                torch.stft(v.float(), n_fft, n_fft // 4, window=window, return_complex=True) for v in (y_hat, y)
            )
            weight = s.abs()
            weight = weight / weight.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-8)
            u_hat, u = phasors(s_hat, self.floor), phasors(s, self.floor)
            for dim, bins in ((-1, weight[..., 1:]), (-2, weight[..., 1:, :])):  # frequency, then delay
                step_hat, step = (
                    v.narrow(dim, 1, v.shape[dim] - 1) * v.narrow(dim, 0, v.shape[dim] - 1).conj() for v in (u_hat, u)
                )
                # Re(step_hat * conj(step)) = cos(d) where both are unit phasors
                error = 1 - (step_hat.real * step.real + step_hat.imag * step.imag)
                loss = loss + (bins * error).sum(dim=(-2, -1)).mean()
        return loss / len(self.n_ffts)


class S3GenMelDistance(nn.Module):
    """Mean absolute difference of S3Gen log-mels: the yardstick the student is judged by."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = S3GenMel()

    def forward(self, y_hat: Tensor, y: Tensor) -> Tensor:
        return (self.mel(y_hat.float()) - self.mel(y.float())).abs().mean()
