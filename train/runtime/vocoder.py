"""One interface for every form of a student, and the student in PyTorch.

A :class:`Vocoder` turns an S3Gen log-mel ``(B, n_mels, T)`` into audio ``(B, T * hop_length)``
and says what callers need to know without asking which form it is: its mel bins, hop,
receptive field, device and dtype, and how it streams. Two forms implement it:
:class:`VocosStudent` (PyTorch: fp32, pruned, fake-quantised for QAT, torchao int8) and
:class:`train.runtime.onnx.OnnxVocoder` (an ONNX graph, fp32 or int8, on ONNX Runtime).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone
from vocos.modules import ConvNeXtBlock
from vocos.spectral_ops import ISTFT

from train.runtime.config import CONFIG_KEY, KERNEL, Field, StudentConfig, StudentConfigError, mel_filterbank
from train.runtime.errors import MissingFileError

if TYPE_CHECKING:
    from train.runtime.streaming import MelStream

STUDENT_FILES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
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


class LookaheadConv1d(nn.Conv1d):
    """A stride-1 ``nn.Conv1d`` zero-padded ``kernel - 1 - lookahead`` frames before its input
    and ``lookahead`` after, so output frame ``t`` sees input frames up to ``t + lookahead``
    (the stock "same" conv when ``lookahead`` is half the kernel). Its tensors are a Conv1d's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, lookahead: int, groups: int = 1) -> None:
        if not 0 <= lookahead < kernel_size:
            raise ValueError(f"a kernel-{kernel_size} conv can look 0..{kernel_size - 1} frames ahead; got {lookahead}")
        super().__init__(in_channels, out_channels, kernel_size, groups=groups)
        self.lookahead = lookahead

    @property
    def pads(self) -> tuple[int, int]:
        return self.kernel_size[0] - 1 - self.lookahead, self.lookahead

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


class LookaheadBackbone(VocosBackbone):
    """``vocos``' ``VocosBackbone`` whose convolutions (the input embedding, then each block's
    depthwise conv) look ``lookahead[i]`` frames ahead instead of 3 (:class:`LookaheadConv1d`):
    the same tensors, so a stock backbone's weights load into it. ``StudentConfig.lookahead_plan``
    gives the list; a release's ``config.yaml`` names this class with it."""

    def __init__(
        self,
        input_channels: int,
        dim: int,
        intermediate_dim: int,
        num_layers: int,
        lookahead: Sequence[int],
        layer_scale_init_value: float | None = None,
    ) -> None:
        super().__init__(input_channels, dim, intermediate_dim, num_layers, layer_scale_init_value)
        lookahead = [int(r) for r in lookahead]
        if len(lookahead) != num_layers + 1:
            raise StudentConfigError(
                f"LookaheadBackbone: lookahead needs one value per conv (the embedding and {num_layers} blocks: "
                f"{num_layers + 1}); got {len(lookahead)}"
            )
        self.embed = _lookahead_conv(self.embed, lookahead[0])
        for block, r in zip(self.convnext, lookahead[1:], strict=True):
            block.dwconv = _lookahead_conv(block.dwconv, r)


def _lookahead_conv(conv: nn.Conv1d, lookahead: int) -> LookaheadConv1d:
    (kernel,) = conv.kernel_size
    new = LookaheadConv1d(conv.in_channels, conv.out_channels, kernel, lookahead, groups=conv.groups)
    new.load_state_dict(conv.state_dict())  # the initialisation vocos gave the conv it replaces
    return new


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
    loader that applies it (:class:`VocosStudent`, ``train.runtime.load_release``). ``shift``:
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
            "which vocos' Vocos.decode does not pass: load it with train.runtime.load_release or load_student"
        )

    def prior(self, mel: Tensor) -> Tensor:
        return amplitude_prior(mel, self.inverse_mel)


class Vocoder(nn.Module):
    """``mel (B, n_mels, T) -> wav (B, T * hop_length)``, float32, whatever the form."""

    config: StudentConfig

    @property
    def n_mels(self) -> int:
        return self.config.input_channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def receptive_field(self) -> Field:
        return self.config.receptive_field

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def check_mel(self, mel: Tensor) -> None:
        if not isinstance(mel, Tensor) or mel.dim() != 3 or mel.shape[1] != self.n_mels:
            shape = tuple(mel.shape) if isinstance(mel, Tensor) else type(mel).__name__
            raise ValueError(f"the student expects a mel of shape (B, {self.n_mels}, T); got {shape}")

    def stream(self, lookahead: int | None = None) -> MelStream:
        """A stream of this vocoder (:mod:`train.runtime.streaming`): mel chunks in, audio out."""
        raise NotImplementedError


class VocosStudent(Vocoder):
    """``vocos``' ConvNeXt backbone and iSTFT head, shaped for S3Gen mels: with n_fft 1920, hop
    480 and "same" padding, T mel frames give exactly T * 480 samples. A plain ``nn.Module``."""

    def __init__(self, backbone: VocosBackbone, head: ISTFTHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.fake_quant: str | None = None  # set by QAT's prepare (train.student.quantized)

    @classmethod
    def build(cls, config: StudentConfig) -> VocosStudent:
        head = AmplitudePriorHead if config.amplitude_prior else ShiftedISTFTHead
        pads, shift = config.lookahead_plan()
        shape = (config.input_channels, config.dim, config.intermediate_dim, config.num_layers)
        student = cls(
            VocosBackbone(*shape) if config.lookahead is None else LookaheadBackbone(*shape, lookahead=pads),
            head(config.dim, config.n_fft, config.hop_length, padding="same", shift=shift),
        )
        student.fake_quant = config.fake_quant
        return student

    def prior(self, mel: Tensor) -> Tensor | None:
        """The amplitude prior of ``mel`` for :func:`polar`, or None for a stock head."""
        return self.head.prior(mel) if isinstance(self.head, AmplitudePriorHead) else None

    @property
    def config(self) -> StudentConfig:  # read off the layers, so pruning and QAT cannot leave it stale
        blocks = [block for block in self.backbone.convnext if isinstance(block, ConvNeXtBlock)]
        return StudentConfig(
            input_channels=self.backbone.embed.in_channels,
            dim=self.backbone.embed.out_channels,
            intermediate_dim=blocks[0].pwconv1.out_features if blocks else 3 * self.backbone.embed.out_channels,
            num_layers=len(self.backbone.convnext),
            n_fft=self.head.istft.n_fft,
            hop_length=self.head.istft.hop_length,
            fake_quant=self.fake_quant,
            amplitude_prior=isinstance(self.head, AmplitudePriorHead),
            lookahead=self.lookahead(),
        )

    def lookahead(self) -> int | None:
        """Frames of future mel the whole student needs, read off its layers (None: the stock
        symmetric padding); an arrangement :meth:`StudentConfig.lookahead_plan` would not make is refused."""
        blocks = [block for block in self.backbone.convnext if isinstance(block, ConvNeXtBlock)]
        convs = [self.backbone.embed] + [block.dwconv for block in blocks]
        pads = tuple(getattr(conv, "lookahead", KERNEL // 2) for conv in convs)
        shift = getattr(self.head.istft, "shift", 0)
        if not shift and not any(isinstance(conv, LookaheadConv1d) for conv in convs):
            return None
        istft = self.head.istft
        plan = StudentConfig(n_fft=istft.n_fft, hop_length=istft.hop_length, num_layers=len(convs) - 1)
        total = sum(pads) + plan.istft_right - shift
        if len(blocks) < len(self.backbone.convnext):  # a block stood in for while pruning measures its cost
            return total
        if plan.replace(lookahead=total).lookahead_plan() != (pads, shift) and total != plan.stock_field.right:
            raise StudentConfigError(
                f"this student's convs look {list(pads)} frames ahead with an overlap-add shift of {shift}: not "
                f"the arrangement StudentConfig(lookahead={total}) builds, so no config describes it"
            )
        return total

    @property
    def device(self) -> torch.device:
        return self.backbone.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed.weight.dtype

    def forward(self, mel: Tensor) -> Tensor:
        self.check_mel(mel)
        features = self.backbone(mel)
        # The iSTFT runs in float32 even under bf16 autocast: complex bf16 does not exist.
        with torch.autocast(device_type=mel.device.type, enabled=False):
            prior = self.prior(mel)
            if prior is None:
                return self.head(features.float())
            real, imag = polar(self.head.out(features.float()).transpose(1, 2), prior)
            return self.head.istft(torch.complex(real, imag))

    def stream(self, lookahead: int | None = None) -> MelStream:
        from train.runtime.streaming import StreamingVocoder

        return StreamingVocoder(self, lookahead)


class StudentFileError(StudentConfigError):
    """A file does not hold a student generator this project can rebuild."""


def read_student_file(path: str | Path, option: str | None = None) -> tuple[dict[str, Tensor], StudentConfig | None]:
    """A student file's generator tensors and, when it records one, its config; errors name
    ``option=path`` when an option gave the path.

    Reads a Lightning ``.ckpt`` (``generator.*`` keys; config under ``student_config``) or a bare
    generator state dict in ``.safetensors`` (config in the ``config`` metadata) / ``.pt`` /
    ``.pth`` / ``.bin``. Reading never runs code from the file (``weights_only``).
    """
    path = Path(path).expanduser()
    where = f"{option}={path}" if option else str(path)
    if path.suffix not in STUDENT_FILES:
        raise StudentFileError(f"{where}: expected one of {', '.join(STUDENT_FILES)}")
    if not path.is_file():
        raise MissingFileError(f"student checkpoint not found: {where}")
    record: Any = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
                metadata = f.metadata() or {}
            record = json.loads(metadata["config"]) if "config" in metadata else None
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable or not a checkpoint at all
        raise StudentFileError(f"{where}: cannot read a checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get(CONFIG_KEY), dict):
        record = state[CONFIG_KEY]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StudentFileError(f"{where}: expected a state dict, found {type(state).__name__}")
    generator = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")}
    state = generator or state
    if "backbone.embed.weight" not in state or "head.out.weight" not in state:
        raise StudentFileError(
            f"{where}: no Vocos student inside (expected 'generator.backbone.*' keys of a training checkpoint "
            f"or 'backbone.*' / 'head.*' keys; found {len(state)} keys such as {sorted(state)[:3]})"
        )
    config = None if record is None else StudentConfig.from_dict(dict(record), f"{path} (its student config)")
    return state, config


def student_of_state(path: str | Path, state: dict[str, Tensor], config: StudentConfig | None) -> VocosStudent:
    """A plain student holding ``state``, built as ``config`` says (else as the tensors' shapes say)."""
    if config is None:
        try:
            config = StudentConfig.of_state(state)
        except (ValueError, KeyError) as err:
            raise StudentFileError(f"{path}: cannot infer the student's shape: {err}") from err
    student = VocosStudent.build(config.replace(fake_quant=None))
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise StudentFileError(f"{path}: does not load into a student built as {config}: {err}") from err
    return student


def load_student(path: str | Path, device: str | torch.device = "cpu") -> Vocoder:
    """A student file as a :class:`Vocoder` in eval mode with gradients off: an ONNX graph
    (``.onnx``, fp32 or int8 with its self-check) or a plain student (``.ckpt``, ``.safetensors``,
    ``.pt``, ``.pth``, ``.bin``). A QAT checkpoint needs the training install
    (``train.student.load_student`` rebuilds it fake-quantised)."""
    path = Path(path).expanduser()
    if path.suffix == ".onnx":
        from train.runtime.onnx import OnnxVocoder

        return OnnxVocoder(path).eval()
    state, config = read_student_file(path)
    if config is not None and config.fake_quant:
        raise StudentFileError(
            f"{path}: a student trained fake-quantised ({config.fake_quant}); load it with "
            "train.student.load_student (the training install), or export it (train/export.py)"
        )
    return student_of_state(path, state, config).to(device).eval().requires_grad_(False)
