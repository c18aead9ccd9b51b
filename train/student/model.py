"""The Vocos student: ``vocos``' ConvNeXt backbone and iSTFT head, shaped for S3Gen mels.

With n_fft 1920, hop 480 and "same" padding, T mel frames give exactly T * 480 samples,
the framing of the S3Gen mel and of HiFT's output.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone

from train.utils.errors import ConfigError, MissingFileError
from train.utils.hub import fetch_file

log = logging.getLogger(__name__)
INIT_HINT = (
    "Set `student.init_from=null` to train the student from scratch, or point `student.init_from=` at a "
    "local directory holding a Vocos `pytorch_model.bin`, a training .ckpt or an exported student .safetensors."
)
STUDENT_FILES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


class VocosStudent(nn.Module):
    """Mel ``(B, n_mels, T)`` -> waveform ``(B, T * hop_length)``. A plain ``nn.Module``."""

    def __init__(self, backbone: VocosBackbone, head: ISTFTHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.n_mels = backbone.embed.in_channels
        self.hop_length = head.istft.hop_length

    def forward(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"the student expects a mel of shape (B, {self.n_mels}, T); got {tuple(mel.shape)}")
        features = self.backbone(mel)
        # The iSTFT runs in float32 even under bf16 autocast: complex bf16 does not exist.
        with torch.autocast(device_type=mel.device.type, enabled=False):
            return self.head(features.float())


def build_student(
    input_channels: int = 80,
    dim: int = 512,
    intermediate_dim: int = 1536,
    num_layers: int = 8,
    n_fft: int = 1920,
    hop_length: int = 480,
    init_from: str | None = None,
    local_files_only: bool = False,
    fake_quant: str | None = None,
) -> VocosStudent:
    """Build the student, optionally warm-started.

    Args:
        init_from: a Hub repo id (e.g. ``charactr/vocos-mel-24khz``) or a local directory with
            ``pytorch_model.bin``: the ConvNeXt body is copied, the layers whose shapes differ
            are kept as initialised (:func:`warm_start`). Or a student of this project (a
            training ``.ckpt``, an exported ``.safetensors``): the parent of a compression
            stage, loaded whole, *in the parent's shape* (the shape arguments are ignored).
        fake_quant: ``"int8"`` builds the student prepared for quantization-aware training
            (:mod:`train.compress.qat`), as the checkpoints of a QAT run record.
    """
    if init_from and Path(init_from).expanduser().is_file():
        return student_from_file(init_from, option="student.init_from")
    student = VocosStudent(
        VocosBackbone(input_channels, dim, intermediate_dim, num_layers),
        ISTFTHead(dim, n_fft, hop_length, padding="same"),
    )
    student.config = {  # how to build it again (as HiFTGenerator.config)
        "input_channels": input_channels,
        "dim": dim,
        "intermediate_dim": intermediate_dim,
        "num_layers": num_layers,
        "n_fft": n_fft,
        "hop_length": hop_length,
    }
    if init_from:
        warm_start(student, load_vocos_state_dict(init_from, local_files_only), init_from)
    if fake_quant:
        from train.student.quantized import SCHEME, prepare  # here: torchao and ONNX are slow to import

        if fake_quant != SCHEME:
            raise StudentCheckpointError(f"fake_quant={fake_quant!r}: the only scheme is {SCHEME!r}")
        prepare(student)
    return student


def student_from_file(path: str | Path, option: str = "checkpoint") -> VocosStudent:
    """The student a file holds, built in the shape the file records (or its tensors show)."""
    from train.student.graph import OnnxArtifactError, is_onnx

    if is_onnx(path):
        raise OnnxArtifactError(
            f"{option}={path} is an ONNX student: it runs (load_student, train/evaluate.py, train.bench) but "
            "cannot be trained, quantised or exported again. Start from the checkpoint it was made from (its .ckpt)."
        )
    if Path(path).suffix not in STUDENT_FILES:
        raise StudentCheckpointError(f"{option}={path}: expected one of {', '.join(STUDENT_FILES)}")
    state, config = read_generator_state(path)
    if config is None:
        try:
            config = student_config(state)
        except ValueError as err:
            raise StudentCheckpointError(f"{option}={path}: cannot infer the student's shape: {err}") from err
        log.info("%s records no student config; inferred from its shapes: %s", path, config)
    student = build_student(**config)
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise StudentCheckpointError(f"{option}={path}: does not load into a student built as {config}: {err}") from err
    log.info("student from %s: %s", path, config)
    return student


def load_vocos_state_dict(source: str, local_files_only: bool = False) -> dict[str, Tensor]:
    """Read a Vocos ``pytorch_model.bin`` from a local directory or a Hub repo id."""
    path = Path(source).expanduser()
    if path.is_dir():
        weights = path / "pytorch_model.bin"
        if not weights.is_file():
            raise MissingFileError(f"no pytorch_model.bin in {path}. {INIT_HINT}")
    elif source.startswith((".", "/", "~")):
        raise MissingFileError(f"student.init_from={source!r}: no such file or directory. {INIT_HINT}")
    else:
        weights = fetch_file(source, "pytorch_model.bin", local_files_only=local_files_only, hint=INIT_HINT)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def warm_start(
    student: VocosStudent, state: dict[str, Tensor], source: str = "state dict"
) -> tuple[list[str], list[str]]:
    """Copy a Vocos checkpoint into the student, one module at a time; return (copied, kept-as-initialised).

    A module (``backbone.embed``, ``head.out``, ...) is copied only if all its tensors fit: a
    weight that does not fit leaves its bias as initialised too. The ConvNeXt body (every
    ``backbone.*`` module but the input embedding) must be copied whole, or it is an error;
    the modules that depend on the mel and iSTFT shapes (embedding, head) are re-initialised
    with a warning naming them.
    """
    own = student.state_dict()
    modules: dict[str, list[str]] = {}
    for key in own:
        modules.setdefault(key.rsplit(".", 1)[0], []).append(key)
    fits = {
        key: state[key]
        for keys in modules.values()
        if all(k in state and state[k].shape == own[k].shape for k in keys)
        for key in keys
    }
    body = [k for k in own if k.startswith("backbone.") and not k.startswith("backbone.embed.")]
    missing = [k for k in body if k not in fits]
    if missing:
        raise WarmStartError(
            f"student.init_from={source}: the backbone did not fit, so the warm start would copy "
            f"{len(fits)} of {len(own)} tensors; it did not fit at {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''} (student: {student.config}). Warm-start from a Vocos "
            "with the same dim, intermediate_dim and num_layers, or set `student.init_from=null`."
        )
    student.load_state_dict(fits, strict=False)
    copied = sorted(fits)
    kept = sorted(set(own) - set(fits))
    log.info("warm start from %s: copied %d tensors (the whole backbone body)", source, len(copied))
    if kept:
        log.warning(
            "warm start from %s: %d tensors kept as initialised (their shapes differ): %s",
            source,
            len(kept),
            ", ".join(sorted({k.rsplit(".", 1)[0] for k in kept})),
        )
    return copied, kept


class WarmStartError(ConfigError, ValueError):
    """A warm start would copy less than the student's backbone."""


class StudentCheckpointError(ConfigError, ValueError):
    """A file does not hold a student generator this project can rebuild."""


CONFIG_KEY = "student_config"  # where a training checkpoint keeps build_student's arguments


def read_generator_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The student's tensors and, when the file records it, its build config.

    Reads a Lightning ``.ckpt`` (``generator.*`` keys; config under ``student_config``) or a
    bare generator state dict in ``.safetensors`` (config in the ``config`` metadata) /
    ``.pt`` / ``.pth`` / ``.bin``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"student checkpoint not found: {path}")
    config = None
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
            config = json.loads(metadata["config"]) if "config" in metadata else None
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable or not a checkpoint at all
        raise StudentCheckpointError(f"{path}: cannot read a checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and isinstance(state.get(CONFIG_KEY), dict):
        config = state[CONFIG_KEY]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StudentCheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    generator = {k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")}
    state = generator or state
    if "backbone.embed.weight" not in state or "head.out.weight" not in state:
        raise StudentCheckpointError(
            f"{path}: no Vocos student inside (expected 'generator.backbone.*' keys of a training checkpoint "
            f"or 'backbone.*' / 'head.*' keys; found {len(state)} keys such as {sorted(state)[:3]})"
        )
    return state, config


def student_config(state: dict[str, Tensor]) -> dict[str, int]:
    """``build_student`` arguments read off a generator state dict's shapes: the fallback for
    files that do not record their config. The hop is not in any shape; Vocos's n_fft / 4 is
    assumed (480 for S3Gen's 1920)."""
    dim, input_channels, _ = state["backbone.embed.weight"].shape
    layers = sorted({int(m[1]) for k in state if (m := re.match(r"backbone\.convnext\.(\d+)\.", k))})
    widths = [state[f"backbone.convnext.{i}.pwconv1.weight"].shape[0] for i in layers]
    if len(set(widths)) > 1:
        raise ValueError(f"its blocks' intermediate widths differ ({widths}); a stock VocosBackbone has one width")
    n_fft = state["head.out.weight"].shape[0] - 2
    return {
        "input_channels": input_channels,
        "dim": dim,
        "intermediate_dim": widths[0] if widths else 3 * dim,
        "num_layers": len(layers),
        "n_fft": n_fft,
        "hop_length": n_fft // 4,
    }


def load_student(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained student from its checkpoint, in eval mode with gradients off.

    The architecture comes from the config the checkpoint records; files without one (bare
    state dicts from elsewhere) fall back to :func:`student_config`. A QAT checkpoint comes
    back fake-quantised, as it trained. An ONNX student (``.onnx``: ``train/quantize.py``'s int8,
    a release's ``model.onnx``) comes back as its runtime, :class:`train.student.graph.OnnxVocoder` (CPU).
    """
    from train.student.graph import OnnxVocoder, is_onnx

    if is_onnx(path):
        if not Path(path).is_file():
            raise MissingFileError(f"ONNX student not found: {path}")
        return OnnxVocoder(path).eval()
    return student_from_file(path).to(device).eval().requires_grad_(False)
