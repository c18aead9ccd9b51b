"""Inference cost of teacher and student side by side, for ``python -m train.bench``.

Parameters, weight-file bytes, seconds of compute per second of audio on this CPU (1 thread
and all threads) and on CUDA when there is one, peak memory, first-chunk latency
(:func:`train.evaluation.cost.profile`). Both models carry random weights at their full
sizes (cost does not depend on the values); ``train/evaluate.py`` reports the same table
for a trained checkpoint. Timings on shared machines are noisy: compare the rows of one
run, quote ratios.
"""

from __future__ import annotations

import torch

from train.evaluation.cost import compare, stand_in_teacher
from train.s3gen.mel import HOP_LENGTH, SAMPLE_RATE
from train.student.model import build_student


def run(seconds: float = 10.0, repeats: int = 3, chunk_frames: tuple[int, ...] = (10, 25, 50)) -> list[dict]:
    """Cost rows of the teacher and the student, both at full size with random weights, on one mel."""
    torch.manual_seed(0)
    mel = torch.randn(1, 80, int(seconds * SAMPLE_RATE / HOP_LENGTH)) - 5.0
    models = [
        ("teacher (HiFT)", stand_in_teacher(), "random"),
        ("student (Vocos)", build_student().eval().requires_grad_(False), "random"),
    ]
    return compare(models, mel, chunk_frames, repeats)["models"]
