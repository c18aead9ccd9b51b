"""Inference cost of teacher and student side by side, for ``python -m train.bench``.

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

from train.evaluation.cost import CostSettings, compare, stand_in_teacher
from train.student.model import build_student, load_student
from vocos_distill.timing import frames_of, timing_mel


def short_names(paths: Sequence[str | Path]) -> list[str]:
    """The shortest path tails that tell the files apart, skipping run-folder plumbing:
    ``.../finetune-256x768x6-prune/<run>/checkpoints/last.ckpt`` -> ``finetune-256x768x6-prune/last.ckpt``."""
    parts = [[p for p in Path(path).parts if p != "checkpoints" and not p[:4].isdigit()] for path in paths]
    for depth in range(1, max(map(len, parts), default=1) + 1):
        names = ["/".join(p[-depth:][:1] + p[-1:]) if depth > 1 else p[-1] for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def run(settings: CostSettings | None = None, students: Sequence[str | Path] = ()) -> list[dict]:
    """Cost rows of the teacher and each student on one mel of ``settings.seconds``.

    ``students``: files :func:`~train.student.model.load_student` reads (a training ``.ckpt``,
    a pruned or QAT checkpoint, an exported ``.safetensors``, an int8 ``.onnx``), one row each;
    none: the stock-size student with random weights. Each row gets ``name``, ``bytes`` (the
    weights as they run: fp32 safetensors, or the ``.onnx`` file) and its speed-up over the
    teacher (``speedup_1_thread``, ``speedup_all_threads``).
    """
    settings = settings or CostSettings()
    chunk_frames = tuple(settings.chunk_frames)
    mel = timing_mel(frames_of(settings.seconds))
    models = [("teacher (HiFT)", stand_in_teacher(), "random")]
    if students:
        models += [
            (name, load_student(path), str(path)) for name, path in zip(short_names(students), students, strict=True)
        ]
    else:
        models.append(("student (Vocos)", build_student().eval().requires_grad_(False), "random"))
    rows = compare(models, mel, settings)["models"]
    teacher = rows[0]
    for row in rows:
        row["name"] = row["model"]
        row["bytes"] = row["weights_bytes"]
        row["rtf_1_thread"] = row["rtf_cpu_1_thread"]
        row["speedup_1_thread"] = teacher["rtf_cpu_1_thread"] / row["rtf_cpu_1_thread"]
        row["speedup_all_threads"] = teacher["rtf_cpu_all_threads"] / row["rtf_cpu_all_threads"]
        chunk = str(25 if 25 in chunk_frames else chunk_frames[0])
        row[f"first_chunk_{chunk}_speedup"] = teacher["first_chunk_ms_cpu"][chunk] / row["first_chunk_ms_cpu"][chunk]
    return rows


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
    from train.benchmarks.streaming import first_audio_rows, lookahead_rows, probe_lookahead, seam_rows
    from train.student.quantized import int8_kernels, is_prepared
    from vocos_distill.onnx import OnnxVocoder

    teacher = stand_in_teacher()
    hift_lookahead = max(probe_lookahead(teacher, seed=s, seeded_noise=True) for s in range(3))
    models = [("teacher (HiFT)", teacher, "window", hift_lookahead)]
    streamable = []
    for name, path in zip(short_names(students), students, strict=True):
        model = load_student(path)
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
