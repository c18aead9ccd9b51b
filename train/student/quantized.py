"""The student fake-quantised for quantization-aware training, and the int8 scheme.

``prepare`` swaps every ``nn.Linear`` of the student (the ConvNeXt blocks' pointwise layers and
the head: 95 % of the weights at 256/768 x 6, most of the FLOPs) for torchao's
``FakeQuantizedLinear``: int8 weights, symmetric, one scale per output channel; int8
activations quantised on the fly, one scale and zero point per frame (torchao's QAT has no
symmetric per-token quantiser). The state dict keeps its keys, so a QAT checkpoint loads like
any other; the student's config records ``fake_quant: int8`` so that ``vocos_distill.from_pretrained`` rebuilds
it prepared. The embedding and depthwise convs stay fp32 (README, "Which int8 runtime": int8
convs were slower and cost SNR).

The int8 runtime is the student's ONNX graph with these layers quantised
(:mod:`train.student.graph`, written by ``train/quantize.py``).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    MappingType,
    PerAxis,
    quantize_,
)
from torchao.quantization.qat import QATConfig
from torchao.quantization.qat.linear import FakeQuantizedLinear

log = logging.getLogger(__name__)
# How a QAT student's Linear layers are fake-quantised (its config's ``fake_quant`` names one):
SCHEMES = {
    # torchao's int8: 8-bit weights ([-128, 127], scale absmax / 127.5), activations per frame
    "int8": "Linear layers int8: weights symmetric per output channel (8-bit), activations dynamic per frame; "
    "embedding and depthwise convs and the iSTFT fp32",
    # the int8 runtime's own arithmetic (ONNX Runtime's dynamic quantisation, train.student.graph)
    "int8-runtime": "Linear layers as the int8 runtime computes them: weights symmetric per output channel on its "
    "7-bit grid ([-64, 64], scale absmax / 64), activations uint8 with one scale per utterance; embedding and "
    "depthwise convs and the iSTFT fp32",
}
SCHEME = "int8-runtime"  # what compress=qat trains (docs/results/compression.md: the int8 gate)
DESCRIPTION = SCHEMES[SCHEME]
RUNTIME_WEIGHT_LEVELS = 64  # ONNX Runtime's reduce_range int8 weights: [-64, 64] (graph.INT8_SCHEMES, u8s8-7bit)


class RuntimeWeightGrid(nn.Module):
    """Fake-quantise a Linear weight ``(out, in)`` onto the int8 runtime's grid: per output channel,
    symmetric, ``[-64, 64]`` with scale ``absmax / 64``, as ONNX Runtime's ``quantize_dynamic``
    (``reduce_range``) quantises it; gradients pass straight through."""

    def forward(self, weight: Tensor) -> Tensor:
        scale = weight.detach().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / RUNTIME_WEIGHT_LEVELS
        grid = torch.clamp(torch.round(weight / scale), -RUNTIME_WEIGHT_LEVELS, RUNTIME_WEIGHT_LEVELS) * scale
        return weight + (grid - weight).detach()


class PerCallActivations(nn.Module):
    """Fake-quantise activations ``(B, ..., features)`` as ONNX Runtime's ``DynamicQuantizeLinear``
    does at each call: uint8, asymmetric, one scale and zero point over the whole tensor of one
    utterance (each batch item alone: the runtime decodes one utterance a call); gradients pass
    straight through."""

    def forward(self, x: Tensor) -> Tensor:
        flat = x.detach().reshape(x.shape[0], -1)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        low, high = flat.amin(dim=1).clamp(max=0).view(shape), flat.amax(dim=1).clamp(min=0).view(shape)
        scale = ((high - low) / 255).clamp(min=1e-12)
        zero = torch.clamp(torch.round(-low / scale), 0, 255)
        fake = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
        return x + (fake - x).detach()


def base_config() -> Int8DynamicActivationIntxWeightConfig:
    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int8, weight_granularity=PerAxis(0), weight_mapping_type=MappingType.SYMMETRIC
    )


def is_prepared(model: nn.Module) -> bool:
    return any(isinstance(m, FakeQuantizedLinear) for m in model.modules())


def prepare(student: nn.Module, scheme: str = SCHEME) -> nn.Module:
    """Fake-quantise the student's Linear layers in place as ``scheme`` (:data:`SCHEMES`) says
    (idempotent); returns it."""
    if scheme not in SCHEMES:
        raise ValueError(f"fake_quant={scheme!r}: choose one of {', '.join(SCHEMES)}")
    if not is_prepared(student):
        quantize_(student, QATConfig(base_config(), step="prepare"))
        if scheme == "int8-runtime":  # torchao's QAT layers, with the runtime's arithmetic in them
            for module in student.modules():
                if isinstance(module, FakeQuantizedLinear):
                    module.weight_fake_quantizer = RuntimeWeightGrid()
                    module.activation_fake_quantizer = PerCallActivations()
    student.fake_quant = scheme
    return student


def strip(student: nn.Module) -> nn.Module:
    """A copy with the fake quantisers removed: plain fp32 Linear layers holding the trained
    weights, what an int8 runtime quantises."""
    plain = copy.deepcopy(student)
    for name, module in list(plain.named_modules()):
        if isinstance(module, FakeQuantizedLinear):
            parent, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent) if parent else plain, attr, module.to_linear())
    plain.fake_quant = None
    return plain


def int8_kernels(model: nn.Module) -> nn.Module:
    """``model`` (fp32, or QAT: its fake quantisers are stripped first) with its Linear layers on
    torchao's int8 kernels, in place where it is fp32: int8 weights per output channel,
    activations quantised per frame (asymmetric) as QAT trained. Runs in PyTorch, so it streams
    (:mod:`vocos_distill.streaming`); CPU."""
    if is_prepared(model):
        model = strip(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.ASYMMETRIC))
    return model
