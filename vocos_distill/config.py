"""What a student is: the S3Gen mel it takes, its build settings, and its receptive field.

:class:`StudentConfig` is the one description of a student's shape. Every file that holds a
student records it (a training checkpoint under ``student_config``, an exported
``.safetensors`` or ONNX graph in its ``config`` metadata, a release's ``config.yaml`` in vocos'
own layout): :meth:`StudentConfig.to_dict` and :meth:`StudentConfig.vocos_yaml` write it,
:meth:`StudentConfig.from_dict` reads it back (``vocos`` itself reads a release's ``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vocos_distill.errors import ConfigError

SAMPLE_RATE = 24_000
HOP_LENGTH = 480
N_FFT = 1920
N_MELS = 80
FRAME_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE
# The S3Gen mel, as a release records it (config.yaml's `mel:` block) and the Chatterbox drop-in checks it
MEL_SPEC = {
    "kind": "s3gen",
    "sample_rate": SAMPLE_RATE,
    "n_fft": N_FFT,
    "win_length": N_FFT,
    "hop_length": HOP_LENGTH,
    "n_mels": N_MELS,
    "f_min": 0.0,
    "f_max": 8000.0,
    "mel_scale": "slaney",
    "norm": "slaney",
    "log": "natural log of max(mel, 1e-5) of the magnitude sqrt(re^2 + im^2 + 1e-9)",
}
LOG_MEL_RANGE = (-11.5, 2.0)  # S3Gen log-mel values: the floor ln(1e-5) up to loud speech (plots' colour scale)
KERNEL = 7  # VocosBackbone's input embedding and depthwise convs: kernel 7, "same" zero padding
CONFIG_KEY = "student_config"  # where a training checkpoint keeps the student's config
PRIOR_HEAD = "vocos_distill.heads.AmplitudePriorHead"  # a release's head class with the amplitude prior
SHIFTED_HEAD = "vocos_distill.heads.ShiftedISTFTHead"  # the stock head whose overlap-add looks fewer frames ahead
LOOKAHEAD_BACKBONE = "vocos_distill.backbone.LookaheadBackbone"  # convs padded left-heavy: a look-ahead budget
# Where releases written by vocos-distill 0.1 (whose runtime was the `train.runtime` package) name the same classes
LEGACY_CLASS_PATHS = {
    "train.runtime.vocoder.AmplitudePriorHead": PRIOR_HEAD,
    "train.runtime.vocoder.ShiftedISTFTHead": SHIFTED_HEAD,
    "train.runtime.vocoder.LookaheadBackbone": LOOKAHEAD_BACKBONE,
}


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    f_min: float = MEL_SPEC["f_min"],
    f_max: float = MEL_SPEC["f_max"],
) -> Tensor:
    """The S3Gen mel's filters ``(n_mels, n_fft / 2 + 1)``: Slaney scale and area norm, 0-8 kHz."""
    import torchaudio  # here: vocos needs it, but most processes that load a student never build one

    fbank = torchaudio.functional.melscale_fbanks(
        n_freqs=n_fft // 2 + 1,
        f_min=f_min,
        f_max=f_max,
        n_mels=n_mels,
        sample_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return fbank.T.contiguous()


class StudentConfigError(ConfigError, ValueError):
    """A file or option does not describe a student this project can build."""


@dataclass(frozen=True)
class Field:
    """How many mel frames either side of a frame its audio depends on."""

    left: int
    right: int
    frame_ms: float = FRAME_MS

    @property
    def right_ms(self) -> float:
        return self.right * self.frame_ms


@dataclass(frozen=True)
class StudentConfig:
    """A Vocos student's build settings: ``VocosBackbone(input_channels, dim, intermediate_dim,
    num_layers)`` and ``ISTFTHead(dim, n_fft, hop_length, padding="same")``; ``fake_quant`` names
    the QAT scheme of a student trained fake-quantised (``"int8"``), else None;
    ``amplitude_prior`` makes the head's log-magnitude a correction of the mel's least-squares
    magnitude (:func:`vocos_distill.heads.amplitude_prior`) rather than the whole of it: the
    same tensors, other arithmetic. ``lookahead`` (mel frames, ``None``: the stock student's
    receptive field, 3 frames a convolution plus the overlap-add's 2) bounds how far ahead the
    whole student looks: :meth:`lookahead_plan` says how each convolution and the overlap-add
    share it. The same tensors again; only the padding and the overlap-add's alignment change."""

    input_channels: int = N_MELS
    dim: int = 512
    intermediate_dim: int = 1536
    num_layers: int = 8
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    fake_quant: str | None = None
    amplitude_prior: bool = False
    lookahead: int | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "amplitude_prior":
                if not isinstance(value, bool):
                    raise StudentConfigError(f"student config: amplitude_prior must be true or false; got {value!r}")
            elif field.name == "lookahead" and value is None:
                continue
            elif field.name != "fake_quant" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise StudentConfigError(f"student config: {field.name} must be a whole number >= 0; got {value!r}")
        if self.n_fft % 2 or self.hop_length <= 0 or self.n_fft % self.hop_length:
            raise StudentConfigError(
                f"student config: n_fft {self.n_fft} must be even and a whole number of hops ({self.hop_length})"
            )
        stock = self.stock_field.right
        if self.lookahead is not None and self.lookahead > stock:
            raise StudentConfigError(
                f"student config: lookahead {self.lookahead} is more than this shape's own receptive field looks "
                f"ahead ({stock} frames for {self.num_layers} blocks); use 0..{stock}, or null for the stock student"
            )
        if self.lookahead == stock:  # the stock student itself: plain vocos builds it
            object.__setattr__(self, "lookahead", None)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "student config") -> StudentConfig:
        """From a mapping (a file's record, an option); unknown keys are an error naming them."""
        if not isinstance(values, dict):
            raise StudentConfigError(f"{where}: expected a mapping of build settings, found {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise StudentConfigError(f"{where}: unknown student settings {unknown}; known: {sorted(names)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """What files record (``fake_quant`` and ``amplitude_prior`` only when set)."""
        values = dataclasses.asdict(self)
        if values["fake_quant"] is None:
            del values["fake_quant"]
        if not values["amplitude_prior"]:
            del values["amplitude_prior"]
        if values["lookahead"] is None:
            del values["lookahead"]
        return values

    def replace(self, **changes: Any) -> StudentConfig:
        return dataclasses.replace(self, **changes)

    @property
    def istft_right(self) -> int:
        """Frames ahead of a frame whose windows cover its samples in the "same" overlap-add (2 for
        n_fft 1920, hop 480): a frame's samples sit at padded positions ``f * hop + pad`` to
        ``+ hop - 1``; frame ``g`` covers ``g * hop`` to ``+ n_fft - 1``."""
        pad = (self.n_fft - self.hop_length) // 2
        return (pad + self.hop_length - 1) // self.hop_length

    @property
    def stock_field(self) -> Field:
        """The receptive field of the stock shape: each kernel-7 conv (the embedding and one per
        block) adds 3 frames either side, the overlap-add ``istft_right`` frames ahead and as many
        behind. 29 frames (580 ms) for 8 blocks, 23 for 6."""
        backbone = (KERNEL // 2) * (self.num_layers + 1)
        pad = (self.n_fft - self.hop_length) // 2
        left = -((pad - self.n_fft) // self.hop_length + 1)
        return Field(backbone + left, backbone + self.istft_right, 1000.0 * self.hop_length / SAMPLE_RATE)

    def lookahead_plan(self) -> tuple[tuple[int, ...], int]:
        """How the look-ahead is shared: each conv's frames of right padding (embedding first; its
        left padding is the rest of ``kernel - 1``) and the overlap-add's shift in frames.

        The overlap-add keeps its own ``istft_right`` frames while the budget allows; the rest
        goes to the convolutions, the earliest first, so the input embedding sees the most of the
        future and later layers carry it. Below ``istft_right`` the overlap-add is shifted: each
        spectral frame then describes the audio ``shift`` frames after its own mel frame."""
        convs = self.num_layers + 1
        if self.lookahead is None:
            return (KERNEL // 2,) * convs, 0
        head = min(self.lookahead, self.istft_right)
        budget, pads = self.lookahead - head, []
        for _ in range(convs):
            pads.append(min(KERNEL // 2, budget))
            budget -= pads[-1]
        return tuple(pads), self.istft_right - head

    @property
    def receptive_field(self) -> Field:
        """Mel frames either side of a frame that its audio depends on: the stock field
        (:attr:`stock_field`), or with a ``lookahead`` that many ahead and the rest of the span behind."""
        stock = self.stock_field
        if self.lookahead is None:
            return stock
        return Field(stock.left + stock.right - self.lookahead, self.lookahead, stock.frame_ms)

    @classmethod
    def of_state(cls, state: dict[str, Tensor]) -> StudentConfig:
        """Read off a generator state dict's shapes, for files that record no config. The hop is
        in no shape: Vocos's n_fft / 4 is assumed (480 for S3Gen's 1920)."""
        dim, input_channels, _ = state["backbone.embed.weight"].shape
        layers = sorted({int(m[1]) for k in state if (m := re.match(r"backbone\.convnext\.(\d+)\.", k))})
        widths = [state[f"backbone.convnext.{i}.pwconv1.weight"].shape[0] for i in layers]
        if len(set(widths)) > 1:
            raise StudentConfigError(f"its blocks' intermediate widths differ ({widths}); a VocosBackbone has one")
        n_fft = state["head.out.weight"].shape[0] - 2
        return cls(input_channels, dim, widths[0] if widths else 3 * dim, len(layers), n_fft, n_fft // 4)

    def vocos_yaml(self) -> dict[str, Any]:
        """A release's ``config.yaml``: vocos' own layout (``Vocos.from_hparams`` builds it), plus
        the ``mel:`` block that says which mels ``decode`` must be given. A student with a
        ``lookahead`` names this project's backbone (and, below 2 frames, head) classes, which
        ``vocos`` builds when ``vocos_distill`` is importable."""
        pads, shift = self.lookahead_plan()
        head = PRIOR_HEAD if self.amplitude_prior else SHIFTED_HEAD if shift else "vocos.heads.ISTFTHead"
        return {
            "feature_extractor": {
                "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
                "init_args": {
                    "sample_rate": SAMPLE_RATE,
                    "n_fft": self.n_fft,
                    "hop_length": self.hop_length,
                    "n_mels": self.input_channels,
                    "padding": "same",
                },
            },
            "backbone": {
                "class_path": "vocos.models.VocosBackbone" if self.lookahead is None else LOOKAHEAD_BACKBONE,
                "init_args": {
                    "input_channels": self.input_channels,
                    "dim": self.dim,
                    "intermediate_dim": self.intermediate_dim,
                    "num_layers": self.num_layers,
                    **({} if self.lookahead is None else {"lookahead": list(pads)}),
                },
            },
            "head": {
                # a head with the amplitude prior needs the mel too: vocos builds it, and it says how to load it
                "class_path": head,
                "init_args": {
                    "dim": self.dim,
                    "n_fft": self.n_fft,
                    "hop_length": self.hop_length,
                    "padding": "same",
                    **({"shift": shift} if shift else {}),
                },
            },
            "mel": MEL_SPEC,
        }
