"""Quantization-aware training with torchao's QAT API.

``prepare`` swaps every ``nn.Linear`` of the student (the ConvNeXt blocks' pointwise layers and
the head: about 96 % of its weights and 85 % of its FLOPs) for torchao's ``FakeQuantizedLinear``:
int8 weights, symmetric, one scale per output channel; int8 activations quantised on the fly,
one scale and zero point per frame (token). Training then sees the rounding the int8 runtime
will apply (:mod:`train.compress.int8`). The state dict keeps its keys, so checkpoints of a QAT
run load like any other; the student's config records ``fake_quant: int8`` so that
``load_student`` rebuilds it prepared.

The embedding conv and the depthwise convs stay fp32: ONNX Runtime's int8 ``ConvInteger``
made the 256/768 x 6 student 2x slower than leaving them fp32 (46 vs 22.5 ms per 10 s of audio,
one thread) and cost 3 dB of SNR (``python train/quantize.py ... compare=true`` measures it).
torchao's QAT has no symmetric per-token activation quantiser yet, hence asymmetric.
"""

from __future__ import annotations

import copy
import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torchao.quantization import Int8DynamicActivationIntxWeightConfig, MappingType, PerAxis, quantize_
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


class QuantizationAware(Callback):
    """``compress=qat``: fake-quantise the student before training starts (and before a resumed
    run's weights load, so they load into the same modules)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not is_prepared(pl_module.generator):
            prepare(pl_module.generator)
            log.info("quantization-aware training: %s", DESCRIPTION)
