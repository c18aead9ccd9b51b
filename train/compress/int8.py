"""The int8 runtime: ONNX Runtime on the student's spectral part, the iSTFT in PyTorch.

:func:`export_int8` writes one ``.onnx`` file: the backbone and the head's linear layer,
magnitude and phase (``exp``, clip, ``cos``, ``sin``) exported from PyTorch, then every MatMul
quantised to int8 by ONNX Runtime's dynamic quantisation (weights symmetric per output channel,
activations per call). The iSTFT stays outside the graph, in PyTorch: ONNX has no inverse STFT
operator (the release puts a real-valued one inside). The student's build config and the
quantisation scheme go into the model's metadata.

:class:`train.student.quantized.Int8Vocoder` runs it as a ``mel -> wav`` module. Why this
runtime: ``python train/quantize.py checkpoint=... compare=true`` times the candidates
(torchao eager, torchao + ``torch.compile``, ONNX Runtime) and checks each against the
fake-quantised QAT model; README has the table.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import Tensor, nn

from train.student.quantized import DESCRIPTION, strip
from train.utils.files import atomic_write

log = logging.getLogger(__name__)


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


QUANTIZED_OPS = ("MatMul", "Gemm")  # the Linear layers; the convs stay fp32 (README: "Which int8 runtime")


def export_int8(
    student: nn.Module, path: str | Path, quantize: bool = True, op_types: tuple[str, ...] | None = QUANTIZED_OPS
) -> Path:
    """Write ``student`` (fake-quantised or plain) as an int8 ONNX model at ``path``, atomically.

    ``quantize=False`` writes the fp32 graph; ``op_types=None`` quantises every op ONNX Runtime
    can (the convs too). Both for comparisons.
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
                op_types_to_quantize=list(op_types) if op_types else None,
            )
        model = onnx.load(str(final))
    scheme = (DESCRIPTION if op_types == QUANTIZED_OPS else f"int8 ops: {op_types or 'all'}") if quantize else "fp32"
    for key, value in (("config", json.dumps(config)), ("quantization", scheme)):
        model.metadata_props.add(key=key, value=value)
    return atomic_write(path, lambda f: f.write(model.SerializeToString()))
