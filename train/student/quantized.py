"""The student fake-quantised for quantization-aware training, and the int8 scheme.

``prepare`` swaps every ``nn.Linear`` of the student (the ConvNeXt blocks' pointwise layers and
the head: 95 % of the weights at 256/768 x 6, most of the FLOPs) for torchao's
``FakeQuantizedLinear``: int8 weights, symmetric, one scale per output channel; int8
activations quantised on the fly, one scale and zero point per frame (torchao's QAT has no
symmetric per-token quantiser). The state dict keeps its keys, so a QAT checkpoint loads like
any other; the student's config records ``fake_quant: int8`` so that ``load_student`` rebuilds
it prepared. The embedding and depthwise convs stay fp32 (README, "Which int8 runtime": int8
convs were slower and cost SNR).

The int8 runtime is the student's ONNX graph with these layers quantised
(:mod:`train.student.graph`, written by ``train/quantize.py``).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
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
    student.fake_quant = SCHEME
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
