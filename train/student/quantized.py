"""The student's quantised forms: fake-quantised for training, and the int8 runtime.

``prepare`` swaps every ``nn.Linear`` of the student (the ConvNeXt blocks' pointwise layers and
the head: 95 % of the weights at 256/768 x 6, most of the FLOPs) for torchao's
``FakeQuantizedLinear``: int8 weights, symmetric, one scale per output channel; int8
activations quantised on the fly, one scale and zero point per frame (torchao's QAT has no
symmetric per-token quantiser). The state dict keeps its keys, so a QAT checkpoint loads like
any other; the student's config records ``fake_quant: int8`` so that ``load_student`` rebuilds
it prepared. The embedding and depthwise convs stay fp32 (README, "Which int8 runtime": int8
convs were slower and cost SNR).

:class:`Int8Vocoder` runs the int8 artifact that ``train/quantize.py`` writes
(:func:`train.compress.int8.export_int8`): ONNX Runtime on the backbone and head up to the
complex spectrum, the iSTFT in PyTorch, with as many ONNX Runtime threads as
``torch.get_num_threads()`` says at the call.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torchao.quantization import Int8DynamicActivationIntxWeightConfig, MappingType, PerAxis, quantize_
from torchao.quantization.qat import QATConfig
from torchao.quantization.qat.linear import FakeQuantizedLinear
from vocos.spectral_ops import ISTFT

from train.utils.errors import ConfigError

log = logging.getLogger(__name__)
SCHEME = "int8"  # the one scheme: see the module docstring
DESCRIPTION = (
    "Linear layers int8: weights symmetric per output channel, activations dynamic per frame; "
    "embedding and depthwise convs and the iSTFT fp32"
)


def base_config() -> Int8DynamicActivationIntxWeightConfig:
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int8, weight_granularity=PerAxis(0), weight_mapping_type=MappingType.SYMMETRIC
    )


def is_prepared(model: nn.Module) -> bool:
    return any(isinstance(m, FakeQuantizedLinear) for m in model.modules())


def prepare(student: nn.Module) -> nn.Module:
    """Fake-quantise the student's Linear layers in place (idempotent); returns it."""
    if not is_prepared(student):
        quantize_(student, QATConfig(base_config(), step="prepare"))
    if hasattr(student, "config"):
        student.config = {**student.config, "fake_quant": SCHEME}
    return student


def strip(student: nn.Module) -> nn.Module:
    """A copy with the fake quantisers removed: plain fp32 Linear layers holding the trained
    weights, what an int8 runtime quantises."""
    plain = copy.deepcopy(student)
    for name, module in list(plain.named_modules()):
        if isinstance(module, FakeQuantizedLinear):
            parent, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, attr, module.to_linear())
    if hasattr(plain, "config"):
        plain.config = {k: v for k, v in plain.config.items() if k != "fake_quant"}
    return plain


SUFFIX = ".onnx"  # the int8 artifact


class Int8ArtifactError(ConfigError, ValueError):
    """An int8 artifact where a trainable checkpoint is needed, or an unreadable artifact."""


class Int8Vocoder(nn.Module):
    """``mel (B, 80, T) -> wav (B, T * hop)`` through an ONNX model written by
    :func:`train.compress.int8.export_int8` (``train/quantize.py``)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._load(self.path.read_bytes())

    def _load(self, data: bytes) -> None:
        self._bytes = data
        try:
            model = onnx.load_model_from_string(data)
            meta = {p.key: p.value for p in model.metadata_props}
            self.config = json.loads(meta["config"])
        except Exception as err:
            raise Int8ArtifactError(f"{self.path}: not an int8 student written by train/quantize.py ({err})") from err
        self.quantization = meta.get("quantization", "")
        self.num_parameters = sum(math.prod(t.dims) for t in model.graph.initializer)
        self.file_bytes = len(data)
        self.n_mels = self.config["input_channels"]
        self.hop_length = self.config["hop_length"]
        self.istft = ISTFT(self.config["n_fft"], self.hop_length, self.config["n_fft"], padding="same")
        self._sessions: dict[int, ort.InferenceSession] = {}

    def session(self) -> ort.InferenceSession:
        threads = torch.get_num_threads()
        if threads not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # a spinning worker would fight PyTorch's iSTFT for the cores between calls
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            self._sessions[threads] = ort.InferenceSession(self._bytes, options, providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def forward(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"the student expects a mel of shape (B, {self.n_mels}, T); got {tuple(mel.shape)}")
        real, imag = self.session().run(None, {"mel": mel.detach().float().cpu().numpy()})
        spectrum = torch.complex(torch.from_numpy(real), torch.from_numpy(imag))
        return self.istft(spectrum).to(mel.device)

    def __getstate__(self) -> dict[str, Any]:  # picklable (the memory benchmark runs it in a fresh process)
        state = {k: v for k, v in self.__dict__.items() if k != "_sessions"}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sessions = {}


def is_int8_artifact(path: str | Path) -> bool:
    return Path(path).suffix == SUFFIX
