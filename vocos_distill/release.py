"""A released student, from a folder or a Hub id, in the runtime that suits this machine.

A release (``train/export.py``) holds ``config.yaml`` and ``pytorch_model.bin`` in vocos' own
layout (``Vocos.from_pretrained`` loads it), ``model.onnx`` (fp32, the iSTFT in the graph) and
``model.int8.onnx`` (int8 with its probe). :func:`vocos_distill.from_pretrained` reads one of them as a
:class:`~vocos_distill.vocoder.Vocoder`, after checking that the release was made for the
mel it will be given.

What the environment gets wrong (a missing, truncated or corrupt file, a Hub that does not
answer, a release for another mel, an int8 graph wrong on this CPU) raises
:class:`VocoderUnavailableError` (a :class:`~vocos_distill.errors.ConfigError`) naming the file
or setting; with ``runtime="auto"`` a form that cannot be used is passed over for the next
(int8 -> fp32 ONNX -> PyTorch) and one :class:`VocoderFallbackWarning` says which form was
taken and why the others were not. What the caller wrote wrong (a runtime that does not exist)
raises ``ValueError`` at once.

The mel rule: a release's ``mel:`` block must state every setting of :data:`MEL_SPEC` (this
project's releases always have), and each must equal the S3Gen's: numbers as numbers, the
rest (``kind``, ``mel_scale``, ``norm``, ``log``) exactly. A release with no ``mel:`` block is a
plain vocos release, judged by what its ``MelSpectrogramFeatures`` computes (HTK scale, no
norm, up to Nyquist, log of max(mel, 1e-7)): another mel than S3Gen's, whatever its hop.
The weights' own settings (the head's ``n_fft`` and ``hop_length``, the backbone's input
channels, or an ONNX graph's recorded config) must agree with that mel too.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from vocos import Vocos
from vocos.pretrained import instantiate_class

from vocos_distill.config import (
    LEGACY_CLASS_PATHS,
    LOOKAHEAD_BACKBONE,
    MEL_SPEC,
    PRIOR_HEAD,
    SHIFTED_HEAD,
    StudentConfig,
)
from vocos_distill.errors import ConfigError, Int8FallbackWarning, VocoderFallbackWarning, VocoderUnavailableError
from vocos_distill.hub import fetch_file
from vocos_distill.int8_check import Int8MismatchError
from vocos_distill.onnx import OnnxVocoder, speed_check
from vocos_distill.student import VocosStudent
from vocos_distill.vocoder import Vocoder

log = logging.getLogger(__name__)
RUNTIMES = ("auto", "torch", "onnx", "int8")
CONFIG = "config.yaml"
WEIGHTS = "pytorch_model.bin"
FILES = {"torch": WEIGHTS, "onnx": "model.onnx", "int8": "model.int8.onnx"}
FORMS = {"int8": "the int8 ONNX graph", "onnx": "the fp32 ONNX graph", "torch": "the PyTorch weights"}
NUMERIC = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max")
# The classes a release's config.yaml may name: vocos builds what a class path says, so a path
# outside this list (a release from the Hub is data, not code) is refused, never imported.
CLASSES = {
    "feature_extractor": ("vocos.feature_extractors.MelSpectrogramFeatures",),
    "backbone": ("vocos.models.VocosBackbone", LOOKAHEAD_BACKBONE, *LEGACY_CLASS_PATHS),
    "head": ("vocos.heads.ISTFTHead", PRIOR_HEAD, SHIFTED_HEAD, *LEGACY_CLASS_PATHS),
}
ERRORS = (ConfigError, OSError, ImportError)  # what the environment gets wrong (see the module docstring)


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
        elif folder.is_file():
            raise VocoderUnavailableError(
                f"{folder} is a file, not a release folder (load_vocoder takes student files)"
            )
        elif source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise VocoderUnavailableError(f"student {source!r}: no such folder or file, and not a Hub id (owner/name)")
        else:
            try:  # owner/name: a Hub id, or a folder that is not there; the error says both
                self.config_path = Path(fetch_file(source, CONFIG, local_files_only=local_files_only))
            except ConfigError as err:
                raise VocoderUnavailableError(
                    f"student {source!r}: no folder {source} here ({Path.cwd()}), and as a Hub id: {err}"
                ) from err
        try:
            self.config = yaml.safe_load(self.config_path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise VocoderUnavailableError(f"{self.config_path}: not a readable release config: {err}") from err
        if not isinstance(self.config, dict) or "backbone" not in self.config:
            raise VocoderUnavailableError(f"{self.config_path}: not a vocos config (no 'backbone' key)")

    def get(self, runtime: str) -> Path:
        """The file of ``runtime``; a :class:`VocoderUnavailableError` naming it when it cannot be had."""
        if self.folder is not None:
            path = self.folder / FILES[runtime]
            if not path.is_file():
                raise VocoderUnavailableError(f"{self.folder} has no {FILES[runtime]}")
            return path
        try:
            return Path(fetch_file(self.source, FILES[runtime], local_files_only=self.local_files_only))
        except ConfigError as err:
            raise VocoderUnavailableError(str(err)) from err


def _number(value: Any, name: str, where: Path | str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VocoderUnavailableError(f"{where}: {name} is {value!r}, not a number")
    return float(value)


def release_mel_spec(config: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """The mel a release was made for (see the module docstring): its ``mel:`` block, else what
    its vocos feature extractor computes."""
    if "mel" in config:
        mel = config["mel"]
        if not isinstance(mel, dict):
            raise VocoderUnavailableError(f"{where}: mel is {mel!r}, not a mapping of the mel's settings")
        missing = [key for key in MEL_SPEC if key not in mel]
        if missing:
            raise VocoderUnavailableError(
                f"{where}: its mel: block does not say its {', '.join(missing)} (a release states every setting "
                f"of the mel it was made for: {', '.join(MEL_SPEC)})"
            )
        for key in NUMERIC:
            _number(mel[key], f"mel.{key}", where)
        return mel
    extractor = config.get("feature_extractor")
    if not isinstance(extractor, dict) or not isinstance(extractor.get("init_args"), dict):
        raise VocoderUnavailableError(f"{where}: records neither a `mel:` block nor a feature extractor")
    if extractor.get("class_path") not in CLASSES["feature_extractor"]:
        raise VocoderUnavailableError(
            f"{where}: no `mel:` block, and its feature extractor {extractor.get('class_path')!r} makes no S3Gen mel"
        )
    args = extractor["init_args"]
    values = {}
    for key, default in (("sample_rate", 24_000), ("n_fft", 1024), ("hop_length", 256), ("n_mels", 100)):
        values[key] = _number(args.get(key, default), f"feature_extractor.init_args.{key}", where)
    return {  # vocos.feature_extractors.MelSpectrogramFeatures: torchaudio's MelSpectrogram defaults, power 1
        "kind": "vocos",
        **values,
        "win_length": values["n_fft"],
        "f_min": 0.0,
        "f_max": values["sample_rate"] / 2,
        "mel_scale": "htk",
        "norm": None,
        "log": "natural log of max(mel, 1e-7) of the magnitude (vocos' safe_log)",
    }


def check_mel(found: dict[str, Any], expected: dict[str, Any], where: Path | str) -> None:
    """Raise :class:`VocoderUnavailableError` naming each setting in which the mels differ
    (``found``: :func:`release_mel_spec`'s; ``expected``: the S3Gen's, :data:`MEL_SPEC` where it
    does not say)."""
    differ = []
    for key in MEL_SPEC:
        got, want = found.get(key), expected.get(key, MEL_SPEC[key])
        same = _number(got, f"mel.{key}", where) == float(want) if key in NUMERIC else got == want
        if not same:
            differ.append(
                f"{key} {got:g} (the S3Gen's: {want:g})" if key in NUMERIC else f"{key} {got} (the S3Gen's: {want})"
            )
    if differ:
        raise VocoderUnavailableError(f"{where}: made for another mel: {', '.join(differ)}")


def check_shape(config: StudentConfig, mel: dict[str, Any], where: str) -> None:
    """The weights' own settings against the mel they are given: bins in, FFT and hop out."""
    differ = [
        f"{name} {got} (its mel's: {mel[key]:g})"
        for name, key, got in (
            ("input_channels", "n_mels", config.input_channels),
            ("n_fft", "n_fft", config.n_fft),
            ("hop_length", "hop_length", config.hop_length),
        )
        if float(got) != float(mel[key])
    ]
    if differ:
        raise VocoderUnavailableError(f"{where}: made for another mel than its config.yaml's: {', '.join(differ)}")


def vocos_model(config: dict[str, Any], where: Path | str = CONFIG) -> Vocos:
    """The ``Vocos`` a release's ``config.yaml`` describes, built as ``Vocos.from_hparams`` builds it
    from the classes it may name (:data:`CLASSES`); class paths of releases written by
    vocos-distill 0.1 (``train.runtime.vocoder.*``) are read as the classes' present names."""
    parts = {}
    for part, allowed in CLASSES.items():
        init = config.get(part)
        if not isinstance(init, dict) or not isinstance(init.get("init_args", {}), dict):
            raise VocoderUnavailableError(f"{where}: {part} is {init!r}, not a class_path and its init_args")
        if init.get("class_path") not in allowed:
            raise VocoderUnavailableError(
                f"{where}: {part}.class_path {init.get('class_path')!r} is not a class a release may name "
                f"({', '.join(allowed)})"
            )
        init = {**init, "class_path": LEGACY_CLASS_PATHS.get(init["class_path"], init["class_path"])}
        try:
            parts[part] = instantiate_class(args=(), init=init)
        except Exception as err:  # settings of the wrong type or name: vocos' constructors say which
            raise VocoderUnavailableError(
                f"{where}: {part}.init_args do not build it: {type(err).__name__}: {err}"
            ) from err
    return Vocos(**parts)


def _torch_student(release: ReleaseFiles, weights: Path, mel: dict[str, Any], device: torch.device) -> Vocoder:
    config = release.config
    head, backbone = config.get("head"), config.get("backbone")
    for part, node, key, name in (("head", head, "n_fft", "n_fft"), ("head", head, "hop_length", "hop_length"),
                                  ("backbone", backbone, "input_channels", "n_mels")):  # fmt: skip
        args = node.get("init_args") if isinstance(node, dict) else None
        if isinstance(args, dict) and key in args:
            got = _number(args[key], f"{part}.init_args.{key}", release.config_path)
            if got != float(mel[name]):
                raise VocoderUnavailableError(
                    f"{release.config_path}: made for another mel than its mel: block says: "
                    f"{part}.init_args.{key} {args[key]} (the mel's {name}: {mel[name]:g})"
                )
    model = vocos_model(config, release.config_path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as err:  # an unreadable file, or weights of another shape
        raise VocoderUnavailableError(f"{weights}: does not load through vocos: {type(err).__name__}: {err}") from err
    return VocosStudent(model.backbone, model.head).to(device).eval().requires_grad_(False)


def _smoke(vocoder: Vocoder, where: Path) -> None:
    """A few frames through a form just loaded: it runs and gives finite audio of the right length."""
    mel = torch.full((1, vocoder.n_mels, 4), -5.0)
    try:
        with torch.inference_mode():
            wav = vocoder(mel.to(vocoder.device))
    except Exception as err:  # a graph that loads but does not run
        raise VocoderUnavailableError(f"{where}: does not decode a mel: {type(err).__name__}: {err}") from err
    if tuple(wav.shape) != (1, 4 * vocoder.hop_length) or not bool(torch.isfinite(wav).all()):
        raise VocoderUnavailableError(f"{where}: decodes 4 frames to {tuple(wav.shape)} samples, not finite audio")


@dataclass
class Loaded:
    """What :func:`open_release` found: the form taken, and why any form before it was not."""

    runtime: str
    vocoder: Vocoder
    passed_over: list[str] = field(default_factory=list)
    int8_refused: bool = False  # the int8 graph was passed over because its self-check failed here

    def warn(self, source: str, stacklevel: int) -> None:
        """The one warning of a fall-through, at the frame ``stacklevel`` above the caller (as
        ``warnings.warn``); nothing when the first choice was taken."""
        if not self.passed_over:
            return
        message = (
            f"student {source}: runtime='auto' is using runtime '{self.runtime}' ({FILES[self.runtime]}, "
            f"{FORMS[self.runtime]}): {'; '.join(self.passed_over)}"
        )
        category = Int8FallbackWarning if self.int8_refused else VocoderFallbackWarning
        warnings.warn(message, category, stacklevel=stacklevel + 1)


def open_release(
    source: str | Path,
    runtime: str = "auto",
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    mel_spec: dict[str, Any] | None = None,
) -> Loaded:
    """:func:`load_release` without its warning: the caller gives it (at its own caller's line)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    device = torch.device(device)
    source = str(source)
    auto = runtime == "auto"
    if auto and device.type == "cuda":
        runtime = "torch"
    release = ReleaseFiles(source, local_files_only)
    mel = release_mel_spec(release.config, release.config_path)
    check_mel(mel, mel_spec or MEL_SPEC, release.config_path)
    order = ["int8", "onnx", "torch"] if runtime == "auto" else [runtime]
    passed_over: list[str] = []
    int8_refused = False
    for form in order:
        try:
            vocoder = _open_form(release, form, mel, device, auto, passed_over)
        except Int8MismatchError as err:
            if runtime == "int8":
                raise
            passed_over.append(f"not using the int8 graph: {err}")
            int8_refused = True
        except ERRORS as err:
            if not auto:
                raise
            passed_over.append(f"{FILES[form]} could not be used: {err}")
        else:
            if isinstance(vocoder, tuple):  # the int8 graph found not faster here: the fp32 graph
                form, vocoder = vocoder
            return Loaded(form, vocoder, passed_over, int8_refused)
    raise VocoderUnavailableError(f"student {source}: no form of it could be used: {'; '.join(passed_over)}")


def _open_form(
    release: ReleaseFiles, form: str, mel: dict[str, Any], device: torch.device, auto: bool, notes: list[str]
) -> Vocoder | tuple[str, Vocoder]:
    path = release.get(form)  # once: for a Hub id, each get is a download or a cache look-up
    if form == "torch":
        vocoder = _torch_student(release, path, mel, device)
        _smoke(vocoder, path)
        return vocoder
    vocoder = OnnxVocoder(path).eval()  # an int8 graph runs its self-check here
    check_shape(vocoder.config, mel, f"{path} (its config metadata)")
    if vocoder.is_int8 != (form == "int8"):
        raise VocoderUnavailableError(f"{path}: holds a {vocoder.quantization} graph, not {FORMS[form]}")
    _smoke(vocoder, path)
    if form != "int8" or not auto:
        return vocoder
    return _faster(release, vocoder, notes)


def _faster(release: ReleaseFiles, int8: OnnxVocoder, notes: list[str]) -> OnnxVocoder | tuple[str, OnnxVocoder]:
    """The int8 graph, or ``("onnx", fp32 graph)`` where that is faster on this machine."""
    try:
        fp32_path = release.get("onnx")
        speed = speed_check(int8, fp32_path)
        fp32 = OnnxVocoder(fp32_path).eval() if speed["int8_s"] >= speed["fp32_s"] else None
    except ERRORS as err:  # the fp32 graph is broken: int8 has passed its own check, so it is used untimed
        notes.append(f"{FILES['onnx']} could not be used to time int8 against fp32: {err}")
        return int8
    if fp32 is None:
        return int8
    log.info(
        "runtime='auto' takes the fp32 graph: int8 is not faster on %s (%.2f ms against %.2f ms on its probe)",
        int8.int8_check.cpu,
        1e3 * speed["int8_s"],
        1e3 * speed["fp32_s"],
    )
    return "onnx", fp32


def load_release(
    source: str | Path,
    runtime: str = "auto",
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    mel_spec: dict[str, Any] | None = None,
) -> tuple[str, Vocoder]:
    """Deprecated (release cards written by vocos-distill 0.2 call it): ``(runtime, vocoder)`` of a
    release folder or Hub id. Use :func:`vocos_distill.from_pretrained`, whose vocoder says its
    ``runtime``.

    ``runtime``: ``torch`` (the fp32 weights, read through ``vocos``' own classes), ``onnx`` /
    ``int8`` (the release's ONNX graphs through ONNX Runtime, CPU; int8 after its self-check),
    or ``auto``: ``torch`` on CUDA, else the first of ``int8``, ``onnx``, ``torch`` that can be
    used here (int8 only where it passed its check and is faster here than fp32); a form passed
    over is said in one :class:`VocoderFallbackWarning`. ``mel_spec``: the mel the release must
    have been made for (default: S3Gen's).
    """
    warnings.warn("vocos_distill.load_release is deprecated: use vocos_distill.from_pretrained (vocoder.runtime "
                  "says the form)", DeprecationWarning, stacklevel=2)  # fmt: skip
    loaded = open_release(source, runtime, device, local_files_only, mel_spec)
    loaded.warn(str(source), stacklevel=2)
    return loaded.runtime, loaded.vocoder
