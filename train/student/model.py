"""Building the student for training: from settings, warm-started from a Vocos, or from a
parent checkpoint; and loading any student file, QAT checkpoints included.

The student itself, :class:`~vocos_distill.student.VocosStudent`, and its config live in the
runtime (:mod:`vocos_distill`), which the training code imports, never the other way round.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vocos_distill.config import StudentConfig
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.hub import fetch_file
from vocos_distill.loader import StudentFileError, read_student_file, register_fake_quantiser, student_of_state
from vocos_distill.onnx import OnnxArtifactError, is_onnx
from vocos_distill.student import VocosStudent

log = logging.getLogger(__name__)
INIT_HINT = (
    "Set `student.init_from=null` to train the student from scratch, or point `student.init_from=` at a "
    "local directory holding a Vocos `pytorch_model.bin`, a training .ckpt or an exported student .safetensors."
)


def build_student(init_from: str | None = None, local_files_only: bool = False, **shape: Any) -> VocosStudent:
    """Build the student, optionally warm-started.

    Args:
        shape: the student's build settings, :class:`~vocos_distill.config.StudentConfig`'s fields
            (``dim``, ``intermediate_dim``, ``num_layers``, ``fake_quant``, ``amplitude_prior``,
            ``lookahead``, ...; its defaults for the rest): the one place they are defined.
        init_from: a Hub repo id (e.g. ``charactr/vocos-mel-24khz``) or a local directory with
            ``pytorch_model.bin``: the ConvNeXt body is copied, the layers whose shapes differ
            are kept as initialised (:func:`warm_start`). Or a student of this project (a
            training ``.ckpt``, an exported ``.safetensors``): the parent of a compression
            stage, loaded whole, *in the parent's shape* (the shape settings are ignored).

    ``fake_quant`` (a scheme of ``train.student.quantized.SCHEMES``) builds the student prepared for
    quantization-aware training (:mod:`train.compress.qat`), as the checkpoints of a QAT run record.
    ``amplitude_prior``: the
    head refines the mel's least-squares magnitude (:func:`vocos_distill.heads.amplitude_prior`);
    its log-magnitude rows start at zero unless warm-started, so the untrained student already has
    the floor's magnitude. ``lookahead``: from a student file it is the stage ``compress=lookahead``
    that applies it (:mod:`train.compress.lookahead`), after the parent is copied.
    """
    if init_from and Path(init_from).expanduser().is_file():
        return student_from_file(init_from, option="student.init_from")
    config = StudentConfig.from_dict(shape, "student settings")
    student = VocosStudent.build(config.replace(fake_quant=None))
    if config.amplitude_prior:
        with torch.no_grad():  # residual log-magnitude 0: the prior itself
            student.head.out.weight[: config.n_fft // 2 + 1].zero_()
            student.head.out.bias[: config.n_fft // 2 + 1].zero_()
    if init_from:
        warm_start(student, load_vocos_state_dict(init_from, local_files_only), init_from)
    if config.fake_quant:
        fake_quantise(student, config.fake_quant, "student settings")
    return student


def fake_quantise(student: VocosStudent, scheme: str, where: str) -> None:
    """Prepare ``student`` for QAT as ``scheme`` says; a scheme that does not exist is an error naming ``where``."""
    from train.student.quantized import SCHEMES, prepare  # here: torchao and ONNX are slow to import

    if scheme not in SCHEMES:
        raise StudentFileError(f"{where}: fake_quant={scheme!r}: choose one of {', '.join(SCHEMES)}")
    prepare(student, scheme)


def student_from_file(path: str | Path, option: str = "checkpoint") -> VocosStudent:
    """The student a file holds, built in the shape the file records (or its tensors show),
    fake-quantised again if it trained so."""
    if is_onnx(path):
        raise OnnxArtifactError(
            f"{option}={path} is an ONNX student: it runs (vocos_distill.from_pretrained, train/evaluate.py, "
            "train/bench.py) but cannot be trained, quantised or exported again. Start from the checkpoint it was "
            "made from (its .ckpt)."
        )
    state, config = read_student_file(path, option)
    if config is None:
        log.info("%s records no student config; its shapes say how to build it", path)
    student = student_of_state(path, state, config)
    if config is not None and config.fake_quant:
        fake_quantise(student, config.fake_quant, str(path))
    log.info("student from %s: %s", path, student.config)
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


register_fake_quantiser(fake_quantise)  # vocos_distill.from_pretrained rebuilds QAT checkpoints with it
