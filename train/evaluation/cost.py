"""What a vocoder costs to run: size, speed, memory and streaming latency, measured on one mel.

Any ``mel (B, 80, T) -> wav (B, T * 480)`` module works; ``train/evaluate.py`` and
``train/bench.py`` profile the teacher and the student side by side on the same input.
Timings on shared machines are noisy: compare rows of one run and quote ratios.
"""

from __future__ import annotations

import gc
import logging
import math
import multiprocessing
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from train.s3gen.hift import HiFTGenerator
from train.student import build_student, from_pretrained
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.onnx import OnnxVocoder
from vocos_distill.timing import frames_of, threads, time_call, timing_mel

MIB = 2**20
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostSettings:
    """How cost is measured, the same wherever it is (``train/evaluate.py`` and ``train/export.py``:
    their ``cost:`` node; ``python train/bench.py``: its options).

    ``seconds``: mel length timed; ``repeats``: timed runs per setting (the median is kept);
    ``chunk_frames``: chunk sizes whose first audio is timed; ``cuda``: time CUDA too (None: when
    there is a GPU)."""

    seconds: float = 10.0
    repeats: int = 3
    chunk_frames: tuple[int, ...] = (10, 25, 50)
    cuda: bool | None = None


def weights_bytes(model: nn.Module) -> int:
    """Size of the model's state dict written as one ``.safetensors`` file (as it runs)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file(state, str(path))
        return path.stat().st_size


def runtime_bytes(model: nn.Module) -> int:
    """The bytes a vocoder runs from: an ONNX student's file, else its state dict (:func:`weights_bytes`)."""
    return model.file_bytes if isinstance(model, OnnxVocoder) else weights_bytes(model)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)  # the int8 runtime holds none: it runs on the CPU
    return parameter.device if parameter is not None else torch.device("cpu")


def count_parameters(model: nn.Module) -> int:
    """Parameters of a PyTorch model, or the weights an ONNX graph holds (its initializers, the
    iSTFT's constants among them)."""
    if isinstance(model, OnnxVocoder):
        import onnx

        return sum(math.prod(t.dims) for t in onnx.load(str(model.path), load_external_data=False).graph.initializer)
    return sum(p.numel() for p in model.parameters())


def seconds_per_second(model: nn.Module, mel: Tensor, repeats: int = 3) -> float:
    """Seconds of compute per second of audio (the real-time factor) on the model's device."""
    device = _device_of(model)
    mel = mel.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode():
        elapsed = time_call(lambda: model(mel), repeats, sync)
    return elapsed / (mel.shape[-1] * HOP_LENGTH / SAMPLE_RATE)


def first_chunk_ms(model: nn.Module, mel: Tensor, frames: Sequence[int], repeats: int = 3) -> dict[str, float]:
    """Compute time (ms) to vocode the first chunk of each size: the latency a streaming
    caller adds on top of waiting for those frames (``frames * 20`` ms of audio)."""
    device = _device_of(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    out = {}
    with torch.inference_mode():
        for n in frames:
            chunk = mel[..., :n].to(device)
            out[str(n)] = 1000 * time_call(lambda chunk=chunk: model(chunk), repeats, sync)
    return out


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _measure_rss_in_this_process(model_path: str, mel_path: str) -> tuple[float, float]:
    """(peak RSS in MiB, its increase over the RSS before the call) for one call of a saved model."""
    model = torch.load(model_path, weights_only=False)
    mel = torch.load(mel_path)
    gc.collect()
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    with torch.inference_mode():
        model(mel)
    peak = _proc_status_kib("VmHWM")
    return peak / 1024, (peak - before) / 1024


def peak_rss_mb(model: nn.Module, mel: Tensor) -> tuple[float, float] | tuple[None, None]:
    """Peak resident memory of a fresh process that loads ``model`` and vocodes ``mel`` once
    (torch, weights and activations), and how much of it the call itself added.

    A fresh process, because in a long-lived one freed pages stay resident and later calls
    reuse them. Linux only (``/proc/self/status``); ``(None, None)`` elsewhere.
    """
    if not sys.platform.startswith("linux"):
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        model_path, mel_path = Path(tmp) / "model.pt", Path(tmp) / "mel.pt"
        torch.save(model, model_path)
        torch.save(mel.cpu(), mel_path)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_measure_rss_in_this_process, (str(model_path), str(mel_path)))


def cuda_peak_mb(model: nn.Module, mel: Tensor) -> float:
    """Peak CUDA memory allocated during one call, weights included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        model(mel.cuda())
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / MIB


def profile(
    model: nn.Module,
    mel: Tensor,
    chunk_frames: Sequence[int] = CostSettings.chunk_frames,
    repeats: int = CostSettings.repeats,
    cuda: bool | None = CostSettings.cuda,
) -> dict:
    """Every cost figure of one model on one mel ``(1, 80, T)``; CUDA figures are ``None``
    without a GPU (``cuda=None``: use one when present)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    cuda = cuda and next(model.parameters(), None) is not None  # an exported CPU runtime has no CUDA path
    home = _device_of(model)
    model.to("cpu")
    row = {
        "params": count_parameters(model),
        "weights_bytes": runtime_bytes(model),
        "cpu_threads": torch.get_num_threads(),
    }
    with threads(1):
        row["rtf_cpu_1_thread"] = seconds_per_second(model, mel, repeats)
    row["rtf_cpu_all_threads"] = seconds_per_second(model, mel, repeats)
    row["peak_rss_mb"], row["peak_rss_increase_mb"] = peak_rss_mb(model, mel)
    row["first_chunk_ms_cpu"] = first_chunk_ms(model, mel, chunk_frames, repeats)
    row.update(rtf_cuda=None, cuda_peak_allocated_mb=None, first_chunk_ms_cuda=None)
    if cuda:
        model.to("cuda")
        row["rtf_cuda"] = seconds_per_second(model, mel, repeats)
        row["cuda_peak_allocated_mb"] = cuda_peak_mb(model, mel)
        row["first_chunk_ms_cuda"] = first_chunk_ms(model, mel, chunk_frames, repeats)
        torch.cuda.empty_cache()
    model.to(home)
    return row


def stand_in_teacher() -> HiFTGenerator:
    """Chatterbox's HiFT architecture with random weights, folded as it runs: its cost without
    its weights (cost does not depend on weight values)."""
    return HiFTGenerator().fold_weight_norm().eval().requires_grad_(False)


def compare(models: Sequence[tuple[str, nn.Module, str]], mel: Tensor, settings: CostSettings | None = None) -> dict:
    """:func:`profile` each ``(name, model, where its weights came from)`` on the same mel."""
    settings = settings or CostSettings()
    chunk_frames, repeats, cuda = tuple(settings.chunk_frames), settings.repeats, settings.cuda
    rows = []
    for name, model, weights in models:
        log.info("cost of %s: speed on 1 and all threads, memory in a fresh process, first chunks", name)
        parameter = next(model.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        rows.append({"model": name, "weights": weights, **profile(model, mel.to(dtype), chunk_frames, repeats, cuda)})
    device = f"CPU, {torch.get_num_threads()} threads"
    if torch.cuda.is_available() and cuda is not False:
        device += f"; CUDA: {torch.cuda.get_device_name()}"
    return {
        "device": device,
        "audio_seconds": mel.shape[-1] * HOP_LENGTH / SAMPLE_RATE,
        "chunk_frames": list(chunk_frames),
        "models": rows,
    }


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
    """Cost rows of the teacher and each student on one mel of ``settings.seconds`` (the
    benchmark's table, and a release's, which ``train/export.py`` measures at export).

    ``students``: files :func:`vocos_distill.from_pretrained` reads (a training ``.ckpt``,
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
            (name, from_pretrained(path), str(path)) for name, path in zip(short_names(students), students, strict=True)
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
