"""``compress=qat``: quantization-aware training with torchao's QAT API. What is fake-quantised
and how: :mod:`train.student.quantized`."""

from __future__ import annotations

import logging

from lightning.pytorch import LightningModule, Trainer

from train.compress.stage import CompressionStage
from train.student.quantized import SCHEME, SCHEMES, is_prepared, prepare

log = logging.getLogger(__name__)


class QuantizationAware(CompressionStage):
    """``compress=qat``: fake-quantise the student as ``scheme`` says (:data:`SCHEMES`) before
    training starts (and before a resumed run's weights load, so they load into the same modules)."""

    next_stage = "python train/quantize.py checkpoint={last}"

    def __init__(self, scheme: str = SCHEME) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"compress.scheme={scheme!r}: choose one of {', '.join(SCHEMES)}")
        self.scheme = scheme

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not is_prepared(pl_module.generator):
            prepare(pl_module.generator, self.scheme)
            log.info("quantization-aware training: %s", SCHEMES[self.scheme])
