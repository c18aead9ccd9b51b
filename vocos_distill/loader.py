"""A student file (a training checkpoint, a bare generator, an ONNX graph) as a :class:`Vocoder`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vocos_distill.config import CONFIG_KEY, StudentConfig, StudentConfigError
from vocos_distill.errors import MissingFileError
from vocos_distill.onnx import OnnxVocoder
from vocos_distill.student import VocosStudent
from vocos_distill.vocoder import Vocoder

STUDENT_FILES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


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
        return OnnxVocoder(path).eval()
    state, config = read_student_file(path)
    if config is not None and config.fake_quant:
        raise StudentFileError(
            f"{path}: a student trained fake-quantised ({config.fake_quant}); load it with "
            "train.student.load_student (the training install), or export it (train/export.py)"
        )
    return student_of_state(path, state, config).to(device).eval().requires_grad_(False)
