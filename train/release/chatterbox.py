"""A Vocos student inside Chatterbox TTS: a drop-in for ``s3gen.mel2wav``, and streaming.

Chatterbox (chatterbox-tts 0.1.7; ``ChatterboxTTS``, ``ChatterboxTurboTTS``,
``ChatterboxMultilingualTTS``, ``ChatterboxVC``) keeps its vocoder at ``model.s3gen.mel2wav``
and calls it as ``wav, source = mel2wav.inference(speech_feat=mel, cache_source=zeros(1, 1, 0))``
under inference mode, with ``mel`` a ``(1, 80, T)`` S3Gen log-mel in the S3Gen's dtype; it then
fades the first 960 samples in itself and discards ``source``. :class:`ChatterboxVocoder` is that
interface around a student; :func:`use_student` puts one in place (after the model is loaded:
Turbo loads its checkpoint strictly) and hands back the vocoder it replaced; with
``fallback=True`` a student that cannot be had, or that was released for another mel, leaves
HiFT in place with a warning that says why.

:class:`ChatterboxStream` decodes mels as they arrive in chunks through
:mod:`train.student.streaming` and applies S3Gen's fade to the stream's
first samples, so streamed speech equals the speech of ``s3gen.inference`` on the same mels.

What this needs at run time: torch and ``vocos`` (the fp32 weights in vocos' layout), plus
ONNX Runtime for the ONNX runtimes and huggingface_hub for a Hub id.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from train.s3gen.mel import MEL_SPEC
from train.student.streaming import stream_for
from train.utils.errors import ConfigError

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "torch", "torch-int8", "onnx", "int8")
CONFIG = "config.yaml"
FILES = {
    "torch": "pytorch_model.bin",
    "torch-int8": "pytorch_model.bin",
    "onnx": "model.onnx",
    "int8": "model.int8.onnx",
}
TRIM_SAMPLES = 960  # S3Gen's own fade-in: 20 ms of silence, then a 20 ms raised cosine
CHECKED = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max")


class VocoderUnavailableError(ConfigError):
    """The student cannot be loaded, or was released for a mel other than the S3Gen's."""


class VocoderFallbackWarning(UserWarning):
    """:func:`use_student` kept Chatterbox's own vocoder; the message says why."""


class ChatterboxVocoder(nn.Module):
    """What Chatterbox's S3Gen expects at ``mel2wav``, around a ``mel -> wav`` student.

    ``vocoder``: a student (:class:`~train.student.model.VocosStudent` in fp32, pruned or QAT
    form, a torchao int8 student, an :class:`~train.student.graph.OnnxVocoder`) or a
    ``vocos.Vocos`` (its ``decode`` is used).
    """

    def __init__(self, vocoder: nn.Module, source: str = "", runtime: str = "torch") -> None:
        super().__init__()
        self.vocoder = vocoder
        self.source = source
        self.runtime = runtime
        self.decodes_features = hasattr(vocoder, "feature_extractor")  # vocos.Vocos: mel -> wav is decode()
        backbone = getattr(vocoder, "backbone", None)
        self.n_mels = backbone.embed.in_channels if backbone is not None else vocoder.n_mels

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
        weight = next(self.vocoder.parameters(), None)
        device = weight.device if weight is not None else torch.device("cpu")
        mel = mel.to(device=device, dtype=torch.float32)
        wav = self.vocoder.decode(mel) if self.decodes_features else self.vocoder(mel)
        return wav.float().to(speech_device)

    @torch.inference_mode()
    def inference(self, speech_feat: Tensor, cache_source: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Chatterbox's call: ``(wav (B, T * 480) float32, source)``. The student has no NSF source:
        ``cache_source`` is not used and ``source`` comes back empty, ``(B, 1, 0)``. No fade here:
        S3Gen applies its own."""
        wav = self(speech_feat)
        return wav, wav.new_zeros(wav.shape[0], 1, 0)


class Int8FallbackWarning(UserWarning):
    """``runtime="auto"`` did not use a release's int8 graph on this machine; the message says why."""


class ReleaseFiles:
    """A release's ``config.yaml`` and its weight files, from a folder or the Hub; weights are
    fetched only when asked for (:meth:`get`)."""

    def __init__(self, source: str, local_files_only: bool) -> None:
        self.source, self.local_files_only = source, local_files_only
        folder = Path(source).expanduser()
        self.folder = folder if folder.is_dir() else None
        if self.folder is not None:
            self.config_path = folder / CONFIG
            if not self.config_path.is_file():
                raise VocoderUnavailableError(f"{folder} is not a release folder: it has no {CONFIG}")
        elif source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise VocoderUnavailableError(f"student {source!r}: no such folder or file, and not a Hub id (owner/name)")
        else:
            from train.utils.hub import fetch_file

            self.config_path = Path(fetch_file(source, CONFIG, local_files_only=local_files_only))
        try:
            self.config = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise VocoderUnavailableError(f"{self.config_path}: not a readable release config: {err}") from err
        if not isinstance(self.config, dict) or "backbone" not in self.config:
            raise VocoderUnavailableError(f"{self.config_path}: not a vocos config (no 'backbone' key)")
        self.errors: list[str] = []

    def get(self, runtime: str) -> Path | None:
        """The file of ``runtime``, or None when the release has none (the reason is kept)."""
        if self.folder is not None:
            path = self.folder / FILES[runtime]
            if not path.is_file():
                self.errors.append(f"{self.folder} has no {FILES[runtime]}")
            return path if path.is_file() else None
        from train.utils.hub import fetch_file

        try:
            return Path(fetch_file(self.source, FILES[runtime], local_files_only=self.local_files_only))
        except ConfigError as err:
            self.errors.append(str(err))
            return None

    def first(self, order: list[str]) -> tuple[str, Path]:
        for runtime in order:
            path = self.get(runtime)
            if path is not None:
                return runtime, path
        raise VocoderUnavailableError(
            f"student {self.source!r}: none of its weights could be had: {'; '.join(self.errors)}"
        )


def release_mel_spec(config: dict[str, Any], where: str) -> dict[str, Any]:
    """The mel a release was made for: its ``mel:`` block, else what its feature extractor says."""
    if isinstance(config.get("mel"), dict):
        return config["mel"]
    args = (config.get("feature_extractor") or {}).get("init_args") or {}
    if not args:
        raise VocoderUnavailableError(f"{where}: records neither a `mel:` block nor a feature extractor")
    return {
        "sample_rate": args.get("sample_rate"),
        "n_fft": args.get("n_fft"),
        "hop_length": args.get("hop_length"),
        "n_mels": args.get("n_mels"),
    }


def check_mel(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raise :class:`VocoderUnavailableError` naming each setting in which the mels differ."""
    differ = [
        f"{key} {found[key]} (the S3Gen's: {expected[key]})"
        for key in CHECKED
        if key in found and key in expected and found[key] is not None and float(found[key]) != float(expected[key])
    ]
    if differ:
        raise VocoderUnavailableError(f"{where} was made for another mel: {', '.join(differ)}")


def load_vocoder(
    source: str | Path | nn.Module,
    runtime: str = "auto",
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    mel_spec: dict[str, Any] | None = None,
) -> ChatterboxVocoder:
    """A :class:`ChatterboxVocoder` from a release folder, a Hub id, a student file or a module.

    ``runtime``: ``torch`` (the fp32 weights through ``vocos``), ``torch-int8`` (the same
    weights quantised by torchao to int8 with per-frame activations, as QAT trained; CPU),
    ``onnx`` / ``int8`` (the release's ONNX graphs through ONNX Runtime, CPU), or ``auto``:
    ``torch`` on CUDA, else the first of ``int8``, ``onnx``, ``torch`` that the release has.
    ``mel_spec``: the mel the release must have been made for (default: S3Gen's).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    device = torch.device(device)
    if isinstance(source, nn.Module):
        vocoder = source.to(device) if not hasattr(source, "session") else source
        return ChatterboxVocoder(vocoder.eval(), type(source).__name__, runtime)
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file():  # a student checkpoint or an ONNX graph of this project
        from train.student.model import load_student

        return ChatterboxVocoder(load_student(path, device), source, "onnx" if path.suffix == ".onnx" else "torch")
    if runtime == "auto" and device.type == "cuda":
        runtime = "torch"
    release = ReleaseFiles(source, local_files_only)
    check_mel(release_mel_spec(release.config, source), mel_spec or MEL_SPEC, f"student {source}")
    order = ["int8", "onnx", "torch"] if runtime == "auto" else [runtime]
    chosen, weights = release.first(order)
    if chosen == "int8":
        picked = _checked_int8(release, weights, runtime)
        if picked is not None:
            return ChatterboxVocoder(picked[1], source, picked[0])
        chosen, weights = release.first(order[1:])
    if chosen in ("onnx", "int8"):
        from train.student.graph import OnnxVocoder

        return ChatterboxVocoder(OnnxVocoder(weights).eval(), source, chosen)
    from vocos import Vocos

    config_path = release.config_path
    try:
        model = Vocos.from_hparams(str(config_path))
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    except Exception as err:  # a config vocos cannot build, or weights of another shape
        raise VocoderUnavailableError(f"student {source}: {weights.name} does not load through vocos: {err}") from err
    model = model.eval().requires_grad_(False)
    if chosen == "torch-int8":
        from train.student.quantized import int8_kernels  # torchao: imported only for this runtime

        model = int8_kernels(model)
        device = torch.device("cpu")
    return ChatterboxVocoder(model.to(device), source, chosen)


def _checked_int8(release: ReleaseFiles, weights: Path, runtime: str) -> tuple[str, nn.Module] | None:
    """``("int8", graph)`` once the release's int8 graph has passed its self-check on this machine
    (:mod:`train.student.int8_check`); ``("onnx", fp32 graph)`` where ``auto`` finds that graph
    faster here; None where the check failed and ``auto`` should take the next runtime (a warning
    says why). ``runtime="int8"`` raises on a failed check instead."""
    from train.student.graph import OnnxVocoder
    from train.student.int8_check import Int8MismatchError, speed_check

    try:
        int8 = OnnxVocoder(weights).eval()
    except Int8MismatchError as err:
        if runtime == "int8":
            raise
        warnings.warn(f"runtime='auto' is not using the int8 graph: {err}", Int8FallbackWarning, stacklevel=3)
        return None
    if runtime != "auto":
        return "int8", int8
    fp32_path = release.get("onnx")
    if fp32_path is None:
        return "int8", int8
    fp32 = OnnxVocoder(fp32_path).eval()
    speed = speed_check(int8, fp32)
    if speed["int8_s"] >= speed["fp32_s"]:
        log.info(
            "runtime='auto' takes the fp32 graph: int8 is not faster on %s (%.2f ms against %.2f ms on its probe)",
            int8.int8_check.cpu,
            1e3 * speed["int8_s"],
            1e3 * speed["fp32_s"],
        )
        return "onnx", fp32
    return "int8", int8


def s3gen_of(model: Any) -> nn.Module:
    """The S3Gen of a Chatterbox model (``ChatterboxTTS``, Turbo, multilingual, VC: ``.s3gen``),
    or ``model`` itself if it is one."""
    s3gen = model if hasattr(model, "mel2wav") else getattr(model, "s3gen", None)
    if s3gen is None or not hasattr(s3gen, "mel2wav"):
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


def use_student(
    model: Any,
    source: str | Path | nn.Module,
    *,
    fallback: bool = True,
    runtime: str = "auto",
    local_files_only: bool = False,
) -> nn.Module:
    """Put the student in place of a loaded Chatterbox model's vocoder; return the vocoder it had.

    ``model``: ``ChatterboxTTS`` / ``ChatterboxTurboTTS`` / ``ChatterboxMultilingualTTS`` /
    ``ChatterboxVC``, or an S3Gen. ``source``: a release folder, a Hub id, a student file or a
    module (see :func:`load_vocoder`); it runs on the S3Gen's device. With ``fallback=True``, a
    student that cannot be loaded or was made for another mel leaves the vocoder as it was and
    warns (:class:`VocoderFallbackWarning`) with the reason; ``fallback=False`` raises instead.
    Undo with ``s3gen.mel2wav = previous``.
    """
    s3gen = s3gen_of(model)
    previous = s3gen.mel2wav
    parameter = next(s3gen.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        vocoder = load_vocoder(source, runtime, device, local_files_only, s3gen_mel_spec(s3gen))
    except (ConfigError, OSError, RuntimeError, ValueError, ImportError) as err:
        if not fallback:
            raise
        reason = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"keeping Chatterbox's own vocoder ({type(previous).__name__}): the student {source} could not be used: "
            f"{reason}",
            VocoderFallbackWarning,
            stacklevel=2,
        )
        return previous
    s3gen.mel2wav = vocoder
    log.info("s3gen.mel2wav is now %s (was %s)", vocoder.source, type(previous).__name__)
    return previous


class ChatterboxStream:
    """Streamed S3Gen speech: flow mels in as they come, audio out, equal to what
    ``s3gen.inference`` makes of the whole mel (S3Gen's fade of the first 960 samples included).

    ``vocoder``: a :class:`ChatterboxVocoder`, a Chatterbox model or S3Gen with one in place, or
    a student. A PyTorch runtime streams with a state per layer
    (:class:`~train.student.streaming.StreamingVocoder`), an ONNX one through bounded windows
    (:class:`~train.student.streaming.WindowedStream`: fp32 equal to offline, int8 within its own
    tolerance). ``lookahead``: frames held back (default: the receptive field, exact).
    """

    def __init__(self, vocoder: Any, lookahead: int | None = None) -> None:
        if not isinstance(vocoder, nn.Module) or hasattr(vocoder, "mel2wav") or hasattr(vocoder, "s3gen"):
            vocoder = s3gen_of(vocoder).mel2wav
        model = vocoder.vocoder if isinstance(vocoder, ChatterboxVocoder) else vocoder
        self.stream = stream_for(model, lookahead)
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
