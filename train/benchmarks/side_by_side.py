"""Inference cost of teacher and student side by side, for ``python train/bench.py``.

Parameters, weight-file bytes, seconds of compute per second of audio on this CPU (1 thread
and all threads) and on CUDA when there is one, peak memory, first-chunk latency
(:func:`train.evaluation.cost.profile`). Both models carry random weights at their full
sizes (cost does not depend on the values); ``train/evaluate.py`` reports the same table
for a trained checkpoint. Timings on shared machines are noisy: compare the rows of one
run, quote ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from train.benchmarks.stream_figures import first_audio_rows, lookahead_rows, probe_lookahead, seam_rows
from train.evaluation.cost import short_names, stand_in_teacher
from train.student import from_pretrained
from vocos_distill.onnx import OnnxVocoder


def streaming_run(
    students: Sequence[str | Path],
    clips: Sequence[Tensor],
    chunk_frames: tuple[int, ...] = (10, 25, 50),
    lookaheads: tuple[int | None, ...] = (0, 2, 4, 8, 16, None),
    lookahead_chunk: int = 10,
    seam_chunk: int = 25,
    repeats: int = 5,
    short_lookahead: int | None = 8,
) -> dict:
    """The streaming figures, in one run: first-audio latency of HiFT (its measured look-ahead,
    run on a window) and of each student (streamed at its exact look-ahead, and at ``short_lookahead``
    frames where that is shorter; a QAT checkpoint on torchao's int8 kernels, an ONNX graph through windows); then, per
    student, the look-ahead table and the seam comparison on ``clips`` (S3Gen mels ``(80, T)``)."""
    # torchao is slow to import: only where a student is int8
    from train.student.quantized import int8_kernels, is_prepared

    teacher = stand_in_teacher()
    hift_lookahead = max(probe_lookahead(teacher, seed=s, seeded_noise=True) for s in range(3))
    models = [("teacher (HiFT)", teacher, "window", hift_lookahead)]
    streamable = []
    for name, path in zip(short_names(students), students, strict=True):
        model = from_pretrained(path)
        if isinstance(model, OnnxVocoder):
            name = f"{name} (ONNX Runtime, windows)"
        elif is_prepared(model):
            model = int8_kernels(model).eval()
            name = f"{name} (torchao int8)"
        models.append((name, model, "stream", model.receptive_field.right))
        if short_lookahead is not None and short_lookahead < model.receptive_field.right:
            models.append((name, model, "stream", short_lookahead))
        streamable.append((name, model))
    return {
        "first_audio": first_audio_rows(models, chunk_frames, repeats),
        "lookahead": {name: lookahead_rows(m, clips, lookaheads, lookahead_chunk) for name, m in streamable},
        "seams": {name: seam_rows(m, clips, seam_chunk) for name, m in streamable},
        "hift_lookahead_frames": hift_lookahead,
    }
