"""A Vocos student inside Chatterbox TTS: a drop-in for ``s3gen.mel2wav``, and streaming.

Chatterbox (chatterbox-tts 0.1.7; ``ChatterboxTTS``, ``ChatterboxTurboTTS``,
``ChatterboxMultilingualTTS``, ``ChatterboxVC``) keeps its vocoder at ``model.s3gen.mel2wav``
and calls it as ``wav, source = mel2wav.inference(speech_feat=mel, cache_source=zeros(1, 1, 0))``
under inference mode, with ``mel`` a ``(1, 80, T)`` S3Gen log-mel in the S3Gen's dtype; it then
fades the first 960 samples in itself and discards ``source``. :class:`ChatterboxVocoder` is that
interface around a student; :func:`use_student` puts one in place (after the model is loaded:
Turbo loads its checkpoint strictly) and hands back Chatterbox's own vocoder, however often it
is called; :func:`restore_hift` puts that back. With ``fallback=True`` a student that cannot be
had, or that was released for another mel, leaves HiFT in place with one warning that says why.
What the caller wrote wrong (a runtime that does not exist, an argument of the wrong type)
raises whatever ``fallback`` says.

:class:`ChatterboxStream` decodes mels as they arrive in chunks through
:mod:`vocos_distill.streaming` and applies S3Gen's fade to the stream's
first samples, so streamed speech equals the speech of ``s3gen.inference`` on the same mels.

What this needs at run time: torch and ``vocos`` (the fp32 weights in vocos' layout), plus
ONNX Runtime for the ONNX runtimes and huggingface_hub for a Hub id: the runtime's own
dependencies, which Chatterbox's pins satisfy.
"""

from __future__ import annotations

import inspect
import logging
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from vocos import Vocos

from vocos_distill.config import MEL_SPEC
from vocos_distill.errors import ConfigError, VocoderFallbackWarning
from vocos_distill.loader import _from_file
from vocos_distill.onnx import OnnxVocoder
from vocos_distill.release import RUNTIMES, Loaded, open_release
from vocos_distill.student import VocosStudent
from vocos_distill.vocoder import MelStream, Vocoder

log = logging.getLogger(__name__)
TRIM_SAMPLES = 960  # S3Gen's own fade-in: 20 ms of silence, then a 20 ms raised cosine
# What the environment can get wrong, which fallback=True answers by keeping HiFT: no such release,
# offline and not cached, an unreadable or corrupt file, a mel mismatch, an int8 check failing
# (all ConfigError), the disk, a missing optional library. Not a caller's ValueError or TypeError.
ENVIRONMENT_ERRORS = (ConfigError, OSError, ImportError)
# S3Gen -> why use_student() kept its own vocoder (the warning's text), for ChatterboxStream to say
_FALLBACKS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
# S3Gen -> the vocoder it had before use_student() first replaced it (Chatterbox's HiFT): what every
# later call returns and restore_hift() puts back. Kept here, not on the student, so that HiFT's
# parameters never become the student's.
_ORIGINALS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


class ChatterboxVocoder(nn.Module):
    """What Chatterbox's S3Gen expects at ``mel2wav``, around a student in any of its forms
    (a :class:`~vocos_distill.vocoder.Vocoder`: PyTorch fp32, pruned, QAT or torchao int8, or an
    ONNX graph)."""

    def __init__(self, vocoder: Vocoder, source: str = "", runtime: str | None = None) -> None:
        super().__init__()
        self.vocoder = vocoder
        self.source = source
        self.runtime = runtime or vocoder.runtime
        self.n_mels = vocoder.n_mels

    def extra_repr(self) -> str:
        return f"source={self.source!r}, runtime={self.runtime!r}"

    def forward(self, mel: Tensor) -> Tensor:
        """``(B, n_mels, T)`` S3Gen log-mel in any float dtype -> ``(B, T * 480)`` float32 audio."""
        if not isinstance(mel, Tensor) or mel.dim() != 3 or mel.shape[1] != self.n_mels:
            shape = tuple(mel.shape) if isinstance(mel, Tensor) else type(mel).__name__
            raise ValueError(f"speech_feat must be an S3Gen log-mel (B, {self.n_mels}, frames); got {shape}")
        if mel.shape[-1] < 2:
            raise ValueError(
                f"speech_feat has {mel.shape[-1]} frame(s): S3Gen fades the first {TRIM_SAMPLES} samples in, "
                "which takes at least 2 frames of audio"
            )
        if not torch.isfinite(mel).all():
            raise ValueError("speech_feat holds NaN or inf values")
        speech_device = mel.device
        wav = self.vocoder(mel.to(device=self.vocoder.device, dtype=torch.float32))
        return wav.float().to(speech_device)

    @torch.inference_mode()
    def inference(self, speech_feat: Tensor, cache_source: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Chatterbox's call: ``(wav (B, T * 480) float32, source)``. The student has no NSF source:
        ``cache_source`` is not used and ``source`` comes back empty, ``(B, 1, 0)``. No fade here:
        S3Gen applies its own."""
        wav = self(speech_feat)
        return wav, wav.new_zeros(wav.shape[0], 1, 0)


def load_vocoder(
    source: str | Path | nn.Module,
    runtime: str = "auto",
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    mel_spec: dict[str, Any] | None = None,
) -> ChatterboxVocoder:
    """Deprecated: ``ChatterboxVocoder(vocos_distill.from_pretrained(source, ...))``, or
    :func:`use_student`, which puts it in place. A :class:`ChatterboxVocoder` from a release
    folder or Hub id, a student file, a :class:`~vocos_distill.vocoder.Vocoder` or a ``vocos.Vocos``."""
    warnings.warn("vocos_distill.load_vocoder is deprecated: use ChatterboxVocoder(vocos_distill.from_pretrained(...)) "
                  "or use_student", DeprecationWarning, stacklevel=2)  # fmt: skip
    vocoder, loaded = _open(source, runtime, device, local_files_only, mel_spec)
    if loaded is not None:
        loaded.warn(str(source), stacklevel=2)
    return vocoder


def _open(
    source: str | Path | nn.Module,
    runtime: str,
    device: str | torch.device,
    local_files_only: bool,
    mel_spec: dict[str, Any] | None,
) -> tuple[ChatterboxVocoder, Loaded | None]:
    device = torch.device(device)
    if isinstance(source, nn.Module):
        vocoder = as_vocoder(source).to(device).eval()
        kind = "onnx" if isinstance(vocoder, OnnxVocoder) else "torch"
        return ChatterboxVocoder(vocoder, type(source).__name__, kind), None
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file():  # a student checkpoint or an ONNX graph of this project
        vocoder = _from_file(path, device)
        return ChatterboxVocoder(vocoder, source, vocoder.runtime), None
    loaded = open_release(source, runtime, device, local_files_only, mel_spec)
    return ChatterboxVocoder(loaded.vocoder, source, loaded.runtime), loaded


def as_vocoder(module: nn.Module) -> Vocoder:
    """A :class:`Vocoder` as it is, a ``vocos.Vocos`` as the student its backbone and head make."""
    if isinstance(module, Vocoder):
        return module
    if isinstance(module, Vocos):
        return VocosStudent(module.backbone, module.head)
    raise TypeError(
        f"{type(module).__name__} is not a Vocos student: pass a release folder, a Hub id, a student file, "
        "a vocos_distill.Vocoder or a vocos.Vocos"
    )


def s3gen_of(model: Any) -> nn.Module:
    """The S3Gen of a Chatterbox model (``ChatterboxTTS``, Turbo, multilingual, VC: ``.s3gen``),
    or ``model`` itself if it is one."""
    s3gen = getattr(model, "s3gen", model)
    if not isinstance(getattr(s3gen, "mel2wav", None), nn.Module):
        raise TypeError(
            f"{type(model).__name__} has no S3Gen vocoder: pass a Chatterbox model (with .s3gen) or its S3Gen "
            "(with .mel2wav)"
        )
    return s3gen


def s3gen_mel_spec(s3gen: nn.Module) -> dict[str, Any]:
    """The mel settings the S3Gen computes its reference mels with (its ``mel_extractor``'s
    defaults); S3Gen's published settings where it does not say."""
    try:
        defaults = {
            k: p.default
            for k, p in inspect.signature(s3gen.mel_extractor).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
    except (AttributeError, TypeError, ValueError):
        return dict(MEL_SPEC)
    names = {
        "sampling_rate": "sample_rate",
        "n_fft": "n_fft",
        "win_size": "win_length",
        "hop_size": "hop_length",
        "num_mels": "n_mels",
        "fmin": "f_min",
        "fmax": "f_max",
    }
    spec = {ours: defaults[theirs] for theirs, ours in names.items() if theirs in defaults}
    return {**MEL_SPEC, **spec} if spec else dict(MEL_SPEC)


def check_arguments(source: Any, runtime: Any, **flags: Any) -> None:
    """Raise at once for what a caller of :func:`use_student` wrote wrong, naming the valid choices."""
    if not isinstance(source, str | Path | nn.Module):
        raise TypeError(
            "source must be a release folder or Hub id (str or Path), a student file, or a module (a "
            f"vocos_distill.Vocoder or a vocos.Vocos); got {type(source).__name__}"
        )
    if isinstance(source, nn.Module):
        as_vocoder(source)  # a module that is no student: a TypeError naming what is accepted
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {value!r}")


def use_student(
    model: Any,
    source: str | Path | nn.Module,
    *,
    fallback: bool = True,
    runtime: str = "auto",
    local_files_only: bool = False,
) -> nn.Module:
    """Put the student in place of a loaded Chatterbox model's vocoder; return Chatterbox's own.

    ``model``: ``ChatterboxTTS`` / ``ChatterboxTurboTTS`` / ``ChatterboxMultilingualTTS`` /
    ``ChatterboxVC``, or an S3Gen. ``source``: a release folder, a Hub id, a student file or a
    module (see :func:`load_vocoder`); it runs on the S3Gen's device.

    Called again on a model that already holds a student, it replaces that student and still
    returns the vocoder the model had before the first call (its HiFT), so
    ``s3gen.mel2wav = returned`` or :func:`restore_hift` always goes back to Chatterbox's own.

    With ``fallback=True``, a student the environment cannot give (no such release, offline and
    not cached, a corrupt file, made for another mel, an int8 graph failing its check here)
    puts Chatterbox's own vocoder in place (a student put there earlier included) and warns once
    (:class:`VocoderFallbackWarning`, at the caller's line) with the reason; ``fallback=False``
    raises instead and changes nothing. With ``runtime="auto"``, a form of the release that
    cannot be used is passed over for the next (int8 -> fp32 ONNX -> PyTorch), said in one
    warning too. A ``runtime`` that does not exist, arguments of the wrong type or a model
    without an S3Gen raise either way.
    """
    s3gen = s3gen_of(model)
    check_arguments(source, runtime, fallback=fallback, local_files_only=local_files_only)
    current = s3gen.mel2wav
    if isinstance(current, ChatterboxVocoder) and s3gen in _ORIGINALS:
        original = _ORIGINALS[s3gen]
    else:  # the model's own vocoder (or one the caller put there by hand): what "back" means
        original = current
    parameter = next(s3gen.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        vocoder, loaded = _open(source, runtime, device, local_files_only, s3gen_mel_spec(s3gen))
    except ENVIRONMENT_ERRORS as err:
        if not fallback:
            raise
        message = (
            f"keeping Chatterbox's own vocoder ({type(original).__name__}): the student {source} could not be used: "
            f"{type(err).__name__}: {err}"
        )
        s3gen.mel2wav = original
        _ORIGINALS.pop(s3gen, None)
        _FALLBACKS[s3gen] = message
        warnings.warn(message, VocoderFallbackWarning, stacklevel=2)
        return original
    _FALLBACKS.pop(s3gen, None)
    _ORIGINALS[s3gen] = original
    s3gen.mel2wav = vocoder
    log.info("s3gen.mel2wav is now %s (%s; Chatterbox's own: %s)", vocoder.source, vocoder.runtime,
             type(original).__name__)  # fmt: skip
    if loaded is not None:
        loaded.warn(str(source), stacklevel=2)
    return original


def restore_hift(model: Any) -> nn.Module | None:
    """Put back the vocoder :func:`use_student` first replaced (Chatterbox's HiFT); return the
    student taken out, or None when no student of :func:`use_student`'s was in place (nothing
    changes then)."""
    s3gen = s3gen_of(model)
    original = _ORIGINALS.pop(s3gen, None)
    if original is None:
        return None
    student, s3gen.mel2wav = s3gen.mel2wav, original
    _FALLBACKS.pop(s3gen, None)
    return student


class ChatterboxStream:
    """Streamed S3Gen speech: flow mels in as they come, audio out, equal to what
    ``s3gen.inference`` makes of the whole mel (S3Gen's fade of the first 960 samples included).

    ``vocoder``: a :class:`ChatterboxVocoder`, a Chatterbox model or S3Gen with one in place, or
    a student. A PyTorch runtime streams with a state per layer
    (:class:`~vocos_distill.streaming.StreamingVocoder`), an ONNX one through bounded windows
    (:class:`~vocos_distill.streaming.WindowedStream`: fp32 equal to offline, int8 within its own
    tolerance). ``lookahead``: frames held back (default: the receptive field, exact).
    """

    def __init__(self, vocoder: Any, lookahead: int | None = None) -> None:
        if isinstance(vocoder, ChatterboxVocoder):
            student = vocoder.vocoder
        elif isinstance(vocoder, nn.Module) and getattr(vocoder, "mel2wav", None) is None:
            student = as_vocoder(vocoder)
        else:  # a Chatterbox model or its S3Gen
            s3gen = s3gen_of(vocoder)
            mel2wav = s3gen.mel2wav
            if not isinstance(mel2wav, ChatterboxVocoder):
                if s3gen in _FALLBACKS:
                    raise TypeError(
                        f"no Vocos student to stream: use_student() kept {type(mel2wav).__name__} in place "
                        f"({_FALLBACKS[s3gen]})"
                    )
                raise TypeError(
                    f"s3gen.mel2wav is {type(mel2wav).__name__}, not a Vocos student: use_student() puts one in place"
                )
            student = mel2wav.vocoder
        self.stream: MelStream = student.stream(lookahead)
        fade = torch.zeros(TRIM_SAMPLES)
        half = TRIM_SAMPLES // 2
        fade[half:] = (torch.cos(torch.linspace(torch.pi, 0, half)) + 1) / 2  # as S3Gen's trim_fade
        self.fade = fade

    @property
    def lookahead(self) -> int:
        return self.stream.lookahead

    def _faded(self, wav: Tensor) -> Tensor:
        start = self.stream.samples_emitted - wav.shape[-1]
        if start < TRIM_SAMPLES and wav.numel():
            n = min(TRIM_SAMPLES - start, wav.shape[-1])
            wav = wav.clone()
            wav[..., :n] *= self.fade[start : start + n].to(wav.device)
        return wav

    def push(self, mel: Tensor) -> Tensor:
        """The next flow mels ``(B, 80, frames)``; returns the audio that is final so far."""
        return self._faded(self.stream.push(mel))

    def flush(self) -> Tensor:
        """End of the utterance: the rest of the audio."""
        return self._faded(self.stream.flush())

    def reset(self) -> None:
        self.stream.reset()
