"""``train/quantize.py``: a QAT student -> its int8 runtime, checked before it is written."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from train.compress.compare import compare
from train.data.held_out import held_out_items
from train.student.graph import Int8GraphError, write_int8_graph
from train.student.model import student_from_file
from train.student.quantized import is_prepared
from train.utils.tables import rows_table
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.errors import ConfigError
from vocos_distill.files import atomic_write_text, sha256_file
from vocos_distill.int8_check import describe_cpu

log = logging.getLogger(__name__)


class QuantizationError(ConfigError, ValueError):
    """The int8 runtime does not reproduce the QAT model well enough to ship."""


def quantize(cfg: DictConfig) -> dict[str, Any]:
    """Write the int8 runtime of ``cfg.checkpoint`` if it matches the fake-quantised model at
    ``min_snr_db`` or better on every validation mel; optionally compare all runtimes."""
    checkpoint = Path(cfg.checkpoint).expanduser()
    student = student_from_file(checkpoint, option="checkpoint").eval().requires_grad_(False)
    if not is_prepared(student):
        log.warning(
            "%s is not a QAT checkpoint: quantising a student that never trained with int8 rounding", checkpoint
        )
    output = Path(cfg.output).expanduser() if cfg.get("output") else checkpoint.with_suffix(".int8.onnx")
    mels = [item["mel"].unsqueeze(0) for _, item in held_out_items(cfg.data, cfg.max_utterances, cfg.get("max_frames"))]
    source = {"source": checkpoint.name, "source_sha256": sha256_file(checkpoint)}
    try:
        snrs = write_int8_graph(student, output, mels, cfg.min_snr_db, metadata=source)
    except Int8GraphError as err:
        raise QuantizationError(
            f"the int8 runtime reproduces {checkpoint} at only {err.worst_db:.1f} dB SNR "
            f"(min_snr_db={cfg.min_snr_db}); nothing written to {output}. Measured on {describe_cpu()}. "
            "Train longer with compress=qat, or lower min_snr_db knowingly."
        ) from None
    worst = min(snrs)
    data = output.read_bytes()
    log.info(
        "int8 runtime vs the model as trained (fake-quantised if QAT), %d validation mels: SNR min %.1f, mean %.1f dB "
        "on %s",
        len(mels),
        worst,
        sum(snrs) / len(snrs),
        describe_cpu(),
    )
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "output": str(output),
        "bytes": len(data),
        "snr_min_db": worst,
        "snr_mean_db": sum(snrs) / len(snrs),
        "utterances": len(mels),
        "cpu": describe_cpu(),
    }
    log.info("int8 student: %s (%s bytes)", output, f"{len(data):,}")
    if cfg.compare:
        frames = round(cfg.compare_seconds * SAMPLE_RATE / HOP_LENGTH)
        timing = torch.cat(mels, dim=-1).repeat(1, 1, frames // sum(m.shape[-1] for m in mels) + 1)[..., :frames]
        rows = compare(student, mels, timing, compile=cfg.compare_compile)
        result["runtimes"] = rows
        out = Path(cfg.paths.output_dir)
        atomic_write_text(out / "runtimes.json", json.dumps(rows, indent=2))
        print(
            f"Runtimes on {cfg.compare_seconds:g} s of validation mels (s/s: seconds per second of audio, median); "
            f"SNR against the fake-quantised QAT model and against its fp32 weights on {len(mels)} validation mels "
            f"(the lowest); {describe_cpu()}"
        )
        print(rows_table(rows, "{:.4g}"))
    return result
