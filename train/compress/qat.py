"""``compress=qat``: quantization-aware training with torchao's QAT API. What is fake-quantised
and how: :mod:`train.student.quantized`."""

from __future__ import annotations

import logging

from lightning.pytorch import LightningModule, Trainer

from train.compress.stage import CompressionStage
from train.student.quantized import DESCRIPTION, is_prepared, prepare

log = logging.getLogger(__name__)


class QuantizationAware(CompressionStage):
    """``compress=qat``: fake-quantise the student before training starts (and before a resumed
    run's weights load, so they load into the same modules)."""

    next_stage = "python train/quantize.py checkpoint={last}"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not is_prepared(pl_module.generator):
            prepare(pl_module.generator)
            log.info("quantization-aware training: %s", DESCRIPTION)
