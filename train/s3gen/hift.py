"""HiFT, Chatterbox's vocoder (HiFi-GAN + neural source filter + iSTFT), written from
the architecture facts in ``docs/conformance.md``.

The module's state dict has exactly the keys and shapes of the ``mel2wav.`` part of
Chatterbox's ``s3gen.safetensors`` when built with the default arguments, and it
keeps Chatterbox's calling convention ``inference(speech_feat, cache_source) ->
(wav, source)``. Shapes: mel ``(B, 80, T)``, f0 ``(B, T)``, source ``(B, 1, T * 480)``,
wav ``(B, T * 480)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.parametrize import is_parametrized, remove_parametrizations


class Snake(nn.Module):
    """Snake activation ``x + sin^2(alpha x) / (alpha + 1e-9)`` with one alpha per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        alpha = self.alpha.unsqueeze(0).unsqueeze(-1)
        return x + torch.sin(x * alpha).pow(2) / (alpha + 1e-9)


class ResBlock(nn.Module):
    """Dilated residual block: per dilation, Snake -> conv(d) -> Snake -> conv(1), added back."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for conv1, conv2, act1, act2 in zip(
            self.convs1, self.convs2, self.activations1, self.activations2, strict=True
        ):
            x = x + conv2(act2(conv1(act1(x))))
        return x


class F0Predictor(nn.Module):
    """Mel ``(B, in_channels, T)`` -> f0 in Hz ``(B, T)``: five weight-normed convs with ELU, then a linear."""

    def __init__(self, in_channels: int = 80, cond_channels: int = 512, num_layers: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(weight_norm(nn.Conv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1)))
            layers.append(nn.ELU())
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, 1)

    def forward(self, mel: Tensor) -> Tensor:
        h = self.condnet(mel).transpose(1, 2)
        return self.classifier(h).squeeze(-1).abs()


class SourceModule(nn.Module):
    """Harmonic-plus-noise excitation from a sample-rate f0 track.

    ``forward(f0)`` with f0 ``(B, 1, L)`` in Hz returns the merged source ``(B, 1, L)``.
    The draw is random by design (initial phases and noise); pass ``generator`` or seed
    torch's global generator to reproduce it.
    """

    def __init__(
        self,
        sampling_rate: int,
        nb_harmonics: int,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 10.0,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.register_buffer(
            "harmonics", torch.arange(1, nb_harmonics + 2, dtype=torch.float32).view(1, -1, 1), persistent=False
        )
        self.l_linear = nn.Linear(nb_harmonics + 1, 1)

    @torch.no_grad()
    def sine_waves(self, f0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """f0 ``(B, 1, L)`` -> (harmonics + noise ``(B, H, L)``, voiced mask ``(B, 1, L)``)."""
        f0 = f0.float()
        cycles = f0 * self.harmonics / self.sampling_rate  # (B, H, L)
        theta = 2 * math.pi * (torch.cumsum(cycles, dim=-1) % 1)
        draw_on = generator.device if generator is not None else f0.device
        phase = torch.rand(cycles.shape[0], cycles.shape[1], 1, generator=generator, device=draw_on).to(f0.device)
        phase = (phase * 2 - 1) * math.pi
        phase[:, 0] = 0.0  # the fundamental starts at phase 0
        sines = self.sine_amp * torch.sin(theta + phase)
        voiced = (f0 > self.voiced_threshold).float()
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.sine_amp / 3
        noise = torch.randn(sines.shape, generator=generator, device=draw_on).to(f0.device)
        return sines * voiced + noise_amp * noise, voiced

    def forward(self, f0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        sines, _ = self.sine_waves(f0, generator)
        weight = self.l_linear.weight.float()
        bias = self.l_linear.bias.float()
        merged = torch.tanh(F.linear(sines.transpose(1, 2), weight, bias)).transpose(1, 2)
        return merged.to(self.l_linear.weight.dtype)


class HiFTGenerator(nn.Module):
    """HiFT vocoder. Default arguments are Chatterbox's configuration (20,821,295 parameters)."""

    def __init__(
        self,
        in_channels: int = 80,
        base_channels: int = 512,
        nb_harmonics: int = 8,
        sampling_rate: int = 24000,
        nsf_alpha: float = 0.1,
        nsf_sigma: float = 0.003,
        nsf_voiced_threshold: float = 10,
        upsample_rates: list[int] = (8, 5, 3),
        upsample_kernel_sizes: list[int] = (16, 11, 7),
        istft_params: dict[str, int] | None = None,
        resblock_kernel_sizes: list[int] = (3, 7, 11),
        resblock_dilation_sizes: list[list[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        source_resblock_kernel_sizes: list[int] = (7, 7, 11),
        source_resblock_dilation_sizes: list[list[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        lrelu_slope: float = 0.1,
        audio_limit: float = 0.99,
        f0_predictor: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        istft_params = dict(istft_params or {"n_fft": 16, "hop_len": 4})
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "base_channels": base_channels,
            "nb_harmonics": nb_harmonics,
            "sampling_rate": sampling_rate,
            "nsf_alpha": nsf_alpha,
            "nsf_sigma": nsf_sigma,
            "nsf_voiced_threshold": nsf_voiced_threshold,
            "upsample_rates": list(upsample_rates),
            "upsample_kernel_sizes": list(upsample_kernel_sizes),
            "istft_params": istft_params,
            "resblock_kernel_sizes": list(resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in resblock_dilation_sizes],
            "source_resblock_kernel_sizes": list(source_resblock_kernel_sizes),
            "source_resblock_dilation_sizes": [list(d) for d in source_resblock_dilation_sizes],
            "lrelu_slope": lrelu_slope,
            "audio_limit": audio_limit,
            "f0_predictor": dict(f0_predictor or {"in_channels": in_channels, "cond_channels": base_channels}),
        }
        self.in_channels = in_channels
        self.sampling_rate = sampling_rate
        self.lrelu_slope = lrelu_slope
        self.audio_limit = audio_limit
        self.n_fft = istft_params["n_fft"]
        self.istft_hop = istft_params["hop_len"]
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upsample_factor = math.prod(upsample_rates) * self.istft_hop  # samples per mel frame
        stft_channels = self.n_fft + 2

        self.m_source = SourceModule(sampling_rate, nb_harmonics, nsf_alpha, nsf_sigma, nsf_voiced_threshold)
        self.conv_pre = weight_norm(nn.Conv1d(in_channels, base_channels, 7, padding=3))
        self.ups = nn.ModuleList(
            weight_norm(
                nn.ConvTranspose1d(base_channels // 2**i, base_channels // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            )
            for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True))
        )

        # The source branch meets stage i at that stage's time resolution: its STFT frames
        # (one per istft_hop samples) are downsampled by the product of the later stages' rates.
        later_rates = [math.prod(upsample_rates[i + 1 :]) for i in range(self.num_upsamples)]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (rate, k, d) in enumerate(
            zip(later_rates, source_resblock_kernel_sizes, source_resblock_dilation_sizes, strict=True)
        ):
            ch = base_channels // 2 ** (i + 1)
            if rate == 1:
                self.source_downs.append(nn.Conv1d(stft_channels, ch, 1))
            else:
                self.source_downs.append(nn.Conv1d(stft_channels, ch, rate * 2, rate, padding=rate // 2))
            self.source_resblocks.append(ResBlock(ch, k, list(d)))

        self.resblocks = nn.ModuleList(
            ResBlock(base_channels // 2 ** (i + 1), k, list(d))
            for i in range(self.num_upsamples)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True)
        )
        self.conv_post = weight_norm(nn.Conv1d(base_channels // 2**self.num_upsamples, stft_channels, 7, padding=3))
        self.reflection_pad = nn.ReflectionPad1d((1, 0))
        self.register_buffer("stft_window", torch.hann_window(self.n_fft, periodic=True), persistent=False)
        self.f0_predictor = F0Predictor(**self.config["f0_predictor"])

    # -- STFT helpers: always in float32 (torch.stft has no bf16 kernels) ---------------
    def _stft(self, x: Tensor) -> Tensor:
        """(B, L) -> real and imaginary parts stacked on channels, (B, n_fft + 2, frames)."""
        spec = torch.stft(
            x.float(), self.n_fft, self.istft_hop, self.n_fft, window=self.stft_window, return_complex=True
        )
        return torch.cat([spec.real, spec.imag], dim=1)

    def _istft(self, magnitude: Tensor, phase: Tensor) -> Tensor:
        magnitude = torch.clip(magnitude.float(), max=1e2)
        phase = phase.float()
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, self.n_fft, self.istft_hop, self.n_fft, window=self.stft_window)

    def check_mel(self, mel: Tensor) -> None:
        if mel.dim() != 3 or mel.shape[1] != self.in_channels:
            raise ValueError(f"HiFT expects a mel of shape (B, {self.in_channels}, T); got {tuple(mel.shape)}")
        if mel.shape[-1] == 0:
            raise ValueError("HiFT got a mel with 0 frames")
        if not torch.isfinite(mel).all():
            raise ValueError("HiFT got a mel containing NaN or inf values")

    def decode(self, x: Tensor, s: Tensor) -> Tensor:
        """Mel ``(B, 80, T)`` and source ``(B, 1, T * 480)`` -> waveform ``(B, T * 480)``."""
        s_stft = self._stft(s.squeeze(1)).to(x.dtype)
        x = self.conv_pre(x)
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, self.lrelu_slope)
            x = self.ups[i](x)
            if i == self.num_upsamples - 1:
                x = self.reflection_pad(x)
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        x = self.conv_post(F.leaky_relu(x, 0.01))
        half = self.n_fft // 2 + 1
        wav = self._istft(torch.exp(x[:, :half]), torch.sin(x[:, half:]))
        return torch.clamp(wav, -self.audio_limit, self.audio_limit)

    def source(self, mel: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mel ``(B, 80, T)`` -> NSF source ``(B, 1, T * 480)`` (one random draw)."""
        f0 = self.f0_predictor(mel)
        f0 = f0.float().repeat_interleave(self.upsample_factor, dim=-1).unsqueeze(1)  # nearest-neighbour
        return self.m_source(f0, generator)

    @torch.inference_mode()
    def inference(
        self, speech_feat: Tensor, cache_source: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Chatterbox's call: mel ``(B, 80, T)`` -> (wav ``(B, T * 480)``, source ``(B, 1, T * 480)``).

        The first samples of a non-empty ``cache_source`` replace the new source's start,
        which keeps streaming chunks continuous.
        """
        self.check_mel(speech_feat)
        speech_feat = speech_feat.to(self.conv_pre.bias.dtype)
        s = self.source(speech_feat, generator)
        if cache_source is not None and cache_source.shape[-1] != 0:
            s[:, :, : cache_source.shape[-1]] = cache_source
        return self.decode(x=speech_feat, s=s), s

    def forward(self, mel: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.inference(mel, generator=generator)[0]

    def fold_weight_norm(self) -> HiFTGenerator:
        """Replace every weight-norm parametrization by its plain weight (inference only)."""
        for module in self.modules():
            if is_parametrized(module, "weight"):
                remove_parametrizations(module, "weight", leave_parametrized=True)
                # weight_norm also left a load hook that maps weight_g/weight_v keys onto the
                # parametrization; with that gone it is stale (and a local function: unpicklable).
                for key, hook in list(module._load_state_dict_pre_hooks.items()):
                    if getattr(getattr(hook, "hook", hook), "__name__", "") == "_weight_norm_compat_hook":
                        del module._load_state_dict_pre_hooks[key]
        return self
