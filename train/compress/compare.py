"""Which int8 runtime to ship: the candidates timed on the same mels and checked against the
fake-quantised QAT model (what training saw) and its fp32 weights, for
``python train/quantize.py compare=true`` (the CPU is named beside the table).

Candidates: the QAT model itself (fake quantisation, eager); its fp32 weights; torchao's
converted model (the QAT ``convert`` step: exactly the trained numerics); torchao's int8
dynamic-activation kernels (``Int8DynamicActivationInt8WeightConfig``, asymmetric per-frame
activations as QAT used), eager and under ``torch.compile``; ONNX Runtime fp32 and int8
(:mod:`train.student.graph`, the iSTFT in the graph) in each of :data:`~train.student.graph.INT8_SCHEMES`,
and with the convs quantised too.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn
from torchao.quantization import quantize_
from torchao.quantization.qat import QATConfig

from train.student.graph import INT8_SCHEME, INT8_SCHEMES, export_onnx, overflow_risks
from train.student.quantized import base_config, int8_kernels, prepare, strip
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.int8_check import snr_db
from vocos_distill.onnx import OnnxVocoder
from vocos_distill.timing import threads, time_call

log = logging.getLogger(__name__)


def candidates(qat_student: nn.Module, folder: Path, compile: bool = True) -> list[tuple[str, Callable, str]]:
    """(name, mel -> wav callable, note) for every runtime, built from one QAT student."""
    fake = prepare(copy.deepcopy(qat_student)).eval()
    plain = strip(fake).eval()
    converted = copy.deepcopy(fake)
    quantize_(converted, QATConfig(base_config(), step="convert"))
    kernels = int8_kernels(copy.deepcopy(plain))
    rows = [
        ("QAT model, fake quantisation (eager)", fake, "the reference: what training saw"),
        ("fp32 weights (eager)", plain, "no quantisation"),
        ("torchao QAT convert (eager)", converted, "int8 weights, dequantised for an fp32 matmul"),
        ("torchao int8 kernels (eager)", kernels, "Int8DynamicActivationInt8WeightConfig, asymmetric activations"),
    ]
    if compile:
        compiled = torch.compile(kernels)
        rows.append(("torchao int8 kernels + torch.compile", compiled, "first call compiles"))
    fp32 = OnnxVocoder(export_onnx(plain, folder / "fp32.onnx"))
    rows.append(("ONNX Runtime fp32", fp32, f"{fp32.file_bytes:,} bytes"))
    for scheme in INT8_SCHEMES:
        graph = OnnxVocoder(
            export_onnx(fake, folder / f"int8-{scheme}.onnx", quantize=True, scheme=scheme), check=False
        )
        note = f"{graph.file_bytes:,} bytes; " + ("shipped" if scheme == INT8_SCHEME else "not shipped")
        risks = overflow_risks(onnx.load_model_from_string(graph._bytes))
        note += f"; {len(risks)} products can overflow int16 pairs (x86 without VNNI)" if risks else ""
        rows.append((f"ONNX Runtime int8 (Linear layers, {scheme})", graph, note))
    convs = OnnxVocoder(export_onnx(fake, folder / "int8-convs.onnx", quantize=True, op_types=None), check=False)
    rows.append((f"ONNX Runtime int8 (Linear layers + convs, {INT8_SCHEME})", convs, "convs quantised too"))
    return rows


def compare(
    qat_student: nn.Module, mels: Sequence[Tensor], timing_mel: Tensor, repeats: int = 5, compile: bool = True
) -> list[dict]:
    """One row per candidate: SNR against the fake-quantised model on ``mels`` (the lowest over
    them, and the mean), seconds per second of audio on ``timing_mel`` at 1 thread and at all
    threads, and for ``torch.compile`` the first call's time."""
    seconds = timing_mel.shape[-1] * HOP_LENGTH / SAMPLE_RATE
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        rows_in = candidates(qat_student, Path(tmp), compile)
        reference = [rows_in[0][1](m) for m in mels]
        fp32_reference = [rows_in[1][1](m) for m in mels]
        rows = []
        for name, model, note in rows_in:
            log.info("runtime candidate: %s", name)
            start = time.perf_counter()
            model(timing_mel)
            first_call = time.perf_counter() - start
            snrs = [snr_db(r, model(m)) for r, m in zip(reference, mels, strict=True)]
            row = {"runtime": name, "snr_min_db": min(snrs), "snr_mean_db": sum(snrs) / len(snrs)}
            row["snr_vs_fp32_db"] = min(snr_db(r, model(m)) for r, m in zip(fp32_reference, mels, strict=True))
            with threads(1):
                row["rtf_1_thread"] = time_call(lambda model=model: model(timing_mel), repeats) / seconds
            row["rtf_all_threads"] = time_call(lambda model=model: model(timing_mel), repeats) / seconds
            row["first_call_s"] = first_call
            row["note"] = note
            rows.append(row)
    return rows
