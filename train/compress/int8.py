"""The int8 runtime: ONNX Runtime on the student's spectral part, the iSTFT in PyTorch.

:func:`export_int8` writes one ``.onnx`` file: the backbone and the head's linear layer,
magnitude and phase (``exp``, clip, ``cos``, ``sin``) exported from PyTorch, then every MatMul
quantised to int8 by ONNX Runtime's dynamic quantisation (weights symmetric per output channel,
activations per call). The iSTFT stays outside the graph, in PyTorch: ONNX has no inverse STFT
operator (the release puts a real-valued one inside). The student's build config and the
quantisation scheme go into the model's metadata.

:class:`Int8Vocoder` runs it as a ``mel -> wav`` module, with as many ONNX Runtime threads as
``torch.get_num_threads()`` says at the call (so the cost benchmark's thread settings apply).
Why this runtime: ``python train/quantize.py checkpoint=... compare=true`` times the candidates
(torchao eager, torchao + ``torch.compile``, ONNX Runtime) and checks each against the
fake-quantised QAT model; README has the table.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import Tensor, nn
from vocos.spectral_ops import ISTFT

from train.compress.qat import DESCRIPTION, strip
from train.utils.errors import ConfigError
from train.utils.files import atomic_write

log = logging.getLogger(__name__)
SUFFIX = ".onnx"


class Int8ArtifactError(ConfigError, ValueError):
    """An int8 artifact where a trainable checkpoint is needed, or an unreadable artifact."""


class _Spectral(nn.Module):
    """mel -> (real, imaginary) spectrum: the student without its iSTFT (real-valued, exportable)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.backbone = student.backbone
        self.out = student.head.out

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        x = self.out(self.backbone(mel)).transpose(1, 2)
        magnitude, phase = x.chunk(2, dim=1)
        magnitude = torch.exp(magnitude).clip(max=1e2)  # as vocos' ISTFTHead
        return magnitude * torch.cos(phase), magnitude * torch.sin(phase)


def export_int8(student: nn.Module, path: str | Path, quantize: bool = True) -> Path:
    """Write ``student`` (fake-quantised or plain) as an int8 ONNX model at ``path``, atomically.

    ``quantize=False`` writes the fp32 graph (for comparisons).
    """
    plain = strip(student).cpu().eval()
    config = dict(plain.config)
    mel = torch.randn(1, config["input_channels"], 50)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        torch.onnx.export(
            _Spectral(plain),
            (mel,),
            str(fp32),
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic time axis
            input_names=["mel"],
            output_names=["real", "imag"],
            dynamic_axes={
                "mel": {0: "batch", 2: "frames"},
                "real": {0: "batch", 2: "frames"},
                "imag": {0: "batch", 2: "frames"},
            },
            opset_version=17,
        )
        final = fp32
        if quantize:
            final = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                str(fp32),
                str(final),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        model = onnx.load(str(final))
    scheme = DESCRIPTION if quantize else "fp32"
    for key, value in (("config", json.dumps(config)), ("quantization", scheme)):
        model.metadata_props.add(key=key, value=value)
    return atomic_write(path, lambda f: f.write(model.SerializeToString()))


class Int8Vocoder(nn.Module):
    """``mel (B, 80, T) -> wav (B, T * hop)`` through an ONNX model written by :func:`export_int8`."""

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
        self.num_parameters = sum(
            int(torch.tensor(list(t.dims)).prod()) if t.dims else 1 for t in model.graph.initializer
        )
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
