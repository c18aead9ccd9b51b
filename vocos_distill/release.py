"""A released student, from a folder or a Hub id, in the runtime that suits this machine.

A release (``train/export.py``) holds ``config.yaml`` and ``pytorch_model.bin`` in vocos' own
layout (``Vocos.from_pretrained`` loads it), ``model.onnx`` (fp32, the iSTFT in the graph) and
``model.int8.onnx`` (int8 with its probe). :func:`load_release` reads one of them as a
:class:`~vocos_distill.vocoder.Vocoder`, after checking that the release was made for the
mel it will be given.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from vocos import Vocos
from vocos.pretrained import instantiate_class

from vocos_distill.config import LEGACY_CLASS_PATHS, MEL_SPEC
from vocos_distill.errors import ConfigError
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
CHECKED = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max")


class VocoderUnavailableError(ConfigError):
    """The student cannot be loaded, or was released for a mel other than the S3Gen's."""


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


def vocos_model(config: dict[str, Any]) -> Vocos:
    """The ``Vocos`` a release's ``config.yaml`` describes, built as ``Vocos.from_hparams`` builds it;
    class paths of releases written by vocos-distill 0.1 (``train.runtime.vocoder.*``) are read as
    the classes' present names."""
    parts = {}
    for part in ("feature_extractor", "backbone", "head"):
        init = dict(config[part])
        init["class_path"] = LEGACY_CLASS_PATHS.get(init["class_path"], init["class_path"])
        parts[part] = instantiate_class(args=(), init=init)
    return Vocos(**parts)


def check_mel(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raise :class:`VocoderUnavailableError` naming each setting in which the mels differ."""
    differ = [
        f"{key} {found[key]} (the S3Gen's: {expected[key]})"
        for key in CHECKED
        if key in found and key in expected and found[key] is not None and float(found[key]) != float(expected[key])
    ]
    if differ:
        raise VocoderUnavailableError(f"{where} was made for another mel: {', '.join(differ)}")


def load_release(
    source: str | Path,
    runtime: str = "auto",
    device: str | torch.device = "cpu",
    local_files_only: bool = False,
    mel_spec: dict[str, Any] | None = None,
) -> tuple[str, Vocoder]:
    """``(runtime, vocoder)`` of a release folder or Hub id.

    ``runtime``: ``torch`` (the fp32 weights, read through ``vocos``' own loader), ``onnx`` /
    ``int8`` (the release's ONNX graphs through ONNX Runtime, CPU; int8 after its self-check),
    or ``auto``: ``torch`` on CUDA, else the first of ``int8``, ``onnx``, ``torch`` that the
    release has (int8 only where it passed its check and is faster here than fp32).
    ``mel_spec``: the mel the release must have been made for (default: S3Gen's).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    device = torch.device(device)
    source = str(source)
    if runtime == "auto" and device.type == "cuda":
        runtime = "torch"
    release = ReleaseFiles(source, local_files_only)
    check_mel(release_mel_spec(release.config, source), mel_spec or MEL_SPEC, f"student {source}")
    order = ["int8", "onnx", "torch"] if runtime == "auto" else [runtime]
    chosen, weights = release.first(order)
    if chosen == "int8":
        picked = _checked_int8(release, weights, runtime)
        if picked is not None:
            return picked
        chosen, weights = release.first(order[1:])
    if chosen != "torch":
        return chosen, OnnxVocoder(weights).eval()
    try:
        model = vocos_model(release.config)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    except Exception as err:  # a config vocos cannot build, or weights of another shape
        raise VocoderUnavailableError(f"student {source}: {weights.name} does not load through vocos: {err}") from err
    student = VocosStudent(model.backbone, model.head)  # decode() without the feature extractor
    return "torch", student.to(device).eval().requires_grad_(False)


def _checked_int8(release: ReleaseFiles, weights: Path, runtime: str) -> tuple[str, OnnxVocoder] | None:
    """``("int8", graph)`` once the release's int8 graph has passed its self-check on this machine
    (:mod:`vocos_distill.int8_check`); ``("onnx", fp32 graph)`` where ``auto`` finds that graph
    faster here; None where the check failed and ``auto`` should take the next runtime (a warning
    says why). ``runtime="int8"`` raises on a failed check instead."""
    try:
        int8 = OnnxVocoder(weights).eval()
    except Int8MismatchError as err:
        if runtime == "int8":
            raise
        warnings.warn(f"runtime='auto' is not using the int8 graph: {err}", Int8FallbackWarning, stacklevel=4)
        return None
    if runtime != "auto":
        return "int8", int8
    fp32_path = release.get("onnx")
    if fp32_path is None:
        return "int8", int8
    speed = speed_check(int8, fp32_path)
    if speed["int8_s"] >= speed["fp32_s"]:
        log.info(
            "runtime='auto' takes the fp32 graph: int8 is not faster on %s (%.2f ms against %.2f ms on its probe)",
            int8.int8_check.cpu,
            1e3 * speed["int8_s"],
            1e3 * speed["fp32_s"],
        )
        return "onnx", OnnxVocoder(fp32_path).eval()
    return "int8", int8
