"""What ``python train/bench.py`` prints: each benchmark's rows as tables, with the machine and
the ratios, and optionally as JSON. The measurements themselves are in the modules beside this
one, which stay light: some of them run in fresh processes that must import little."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from train.benchmarks.in_chatterbox import (
    GPU_KERNEL_S,
    GPU_SUSTAINED_TFLOPS,
    TOKENS_PER_SECOND,
    preparation_work,
    s3gen,
    s3gen_rows,
    t3_row,
)
from train.benchmarks.int8_schemes import FIDELITY, int8_scheme_graphs
from train.benchmarks.side_by_side import streaming_run
from train.benchmarks.throughput import train_throughput
from train.data.audio import corpus_mels
from train.data.prepare import prepare_throughput
from train.evaluation.cost import CostSettings, run, short_names
from train.evaluation.report import cost_table
from train.utils.tables import rows_table, table
from vocos_distill.files import atomic_write_text
from vocos_distill.int8_check import describe_cpu
from vocos_distill.timing import threads


def write_figures(path: Path | None, figures: Any) -> None:
    """The figures a benchmark printed, as JSON at ``path`` (written atomically), if one is given."""
    if path is not None:
        atomic_write_text(path, json.dumps(figures, indent=2))
        print(f"\nfigures written to {path}")


def inference_figures(
    settings: CostSettings,
    students: Sequence[str],
    int8_schemes: bool = False,
    corpus: Path = Path("data/corpus"),
    clips: int = 6,
) -> list[dict]:
    """Print the teacher's and each student's cost side by side (:func:`run`) with the ratios, and
    with ``int8_schemes`` every int8 scheme of each checkpoint's graph and its SNR; returns the rows."""
    with tempfile.TemporaryDirectory() as tmp:
        students, fidelity = list(students), {}
        if int8_schemes:
            students, fidelity = int8_scheme_graphs(students, Path(tmp), corpus, clips)
        rows = run(settings, students)
    cpu = describe_cpu()
    for row in rows:
        row["cpu"] = cpu
    print(f"Inference on {settings.seconds:g} s of audio; s/s = seconds of compute per second of audio (median)")
    print(f"CPU: {cpu}; {os.cpu_count()} cores")
    print(cost_table(rows))
    if fidelity:
        for row, path in zip(rows[1:], students, strict=True):
            row.update(fidelity.get(path, {}))
        print(f"\nEach graph against its checkpoint on {clips} clips of {corpus} (the lowest SNR)")
        print(rows_table([{k: r[k] for k in ("name", *FIDELITY)} for r in rows if "scheme" in r], "{:.1f}"))
    teacher = rows[0]
    for student in rows[1:]:
        ratios = [
            f"{teacher[k] / student[k]:.1f}x on {k[4:].replace('_', ' ')}"
            for k in ("rtf_cpu_1_thread", "rtf_cpu_all_threads", "rtf_cuda")
            if teacher[k] is not None and student[k] is not None
        ]
        chunk = next(k for k in student if k.startswith("first_chunk_") and k.endswith("_speedup"))
        print(
            f"{student['name']}: faster {', '.join(ratios)}; {teacher['bytes'] / student['bytes']:.1f}x smaller; "
            f"first chunk ({chunk.split('_')[2]} frames) {student[chunk]:.1f}x sooner"
        )
    return rows


def streaming_figures(
    students: Sequence[str], corpus: Path, clips: int, clip_seconds: float, chunk_frames: Sequence[int], repeats: int
) -> dict[str, Any]:
    """Print first-audio latency (HiFT and each student), then per student the look-ahead table
    and the seam comparison on ``clips`` clips of ``corpus`` (:func:`streaming_run`); returns the figures."""
    if not students:
        raise SystemExit("--streaming needs --students (trained checkpoints: the tables compare real audio)")
    mels = corpus_mels(corpus, clips, clip_seconds)
    with threads(1):
        result = streaming_run(students, mels, tuple(chunk_frames), repeats=repeats)
    print(f"First audio of a stream of C-frame chunks, CPU 1 thread, median of {repeats} (ms)")
    print("= look-ahead (mel frames that must exist past the chunk, 20 ms each) + compute of the first chunk")
    print(
        table(
            ["model", "how", "look-ahead"]
            + [f"C={c}: compute" for c in chunk_frames]
            + [f"C={c}: first audio" for c in chunk_frames],
            [
                [r["model"], r["how"], f"{r['lookahead_frames']} ({r['lookahead_ms']:.0f} ms)"]
                + [f"{r[f'compute_ms_{c}']:.1f}" for c in chunk_frames]
                + [f"{r[f'first_audio_ms_{c}']:.0f}" for c in chunk_frames]
                for r in result["first_audio"]
            ],
        )
    )
    print(f"\n{len(mels)} clips of {corpus} (<= {clip_seconds:g} s), streamed, against the student offline")
    for name, rows in result["lookahead"].items():
        print(f"\n{name}: chunks of 10 frames")
        print(
            table(
                ["look-ahead", "exact", "log-mel dB", "PESQ-wb", "max |diff|", "push ms", "latency ms"],
                [
                    [
                        f"{r['lookahead_frames']} ({r['lookahead_ms']:.0f} ms)",
                        "yes" if r["exact"] else "no",
                        f"{r['log_mel_db']:.3f}",
                        f"{r['pesq_wb']:.2f}",
                        f"{r['max_abs_diff']:.1e}",
                        f"{r['push_ms']:.2f}",
                        f"{r['latency_ms']:.0f}",
                    ]
                    for r in rows
                ],
            )
        )
    for name, rows in result["seams"].items():
        print(f"\n{name}: seams at the joins of 25-frame chunks. Seam dB: first-difference energy within 1 ms of")
        print("each join over the energy elsewhere; SNR: against offline audio within 8 frames (160 ms) of each join")
        print(
            table(
                ["method", "seam dB", "above offline", "SNR vs offline near joins dB"],
                [
                    [r["method"], f"{r['seam_db']:+.2f}", f"{r['seam_above_offline_db']:+.2f}"]
                    + [f"{r['snr_near_joins_db']:.1f}"]
                    for r in rows
                ],
            )
        )
    return {**result, "cpu": describe_cpu()}


COLUMNS = ["CFM steps", "vocoder", "flow s/s", "vocoder s/s", "S3Gen s/s", "vs HiFT", "vocoder share", "vocoder MB",
           "peak MB", "of which the call"]  # fmt: skip


def _cells(r: Mapping[str, Any]) -> list[str]:
    return [
        str(r["cfm_steps"]), r["vocoder"], f"{r['flow_s_per_s']:.3f}", f"{r['vocoder_s_per_s']:.4f}",
        f"{r['s3gen_s_per_s']:.3f}", f"{100 * r['s3gen_change']:+.1f} %", f"{100 * r['vocoder_share']:.1f} %",
        f"{r['vocoder_mb']:.1f}", "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
        "-" if r["call_mb"] is None else f"{r['call_mb']:.0f}",
    ]  # fmt: skip


def chatterbox_figures(
    students: Sequence[str], seconds: float, cfm_steps: Sequence[int], repeats: int, t3_seconds: float = 0.0
) -> dict[str, Any]:
    """Print the end-to-end table (:func:`s3gen_rows`) on the CPU (fp32) and on CUDA when there is one
    (fp32 and bf16), and T3's cost when ``t3_seconds``; returns the figures."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"Chatterbox's S3Gen (chatterbox-tts, random weights) on {seconds:g} s of speech tokens; CPU 1 thread")
    gpu = f"; CUDA: {torch.cuda.get_device_name()}" if len(devices) > 1 else ""
    print(f"CPU: {describe_cpu()}; {os.cpu_count()} cores{gpu}")
    print("s/s = seconds of compute per second of audio (median of --repeats); S3Gen = flow + vocoder")
    print("peak MB: a fresh process that loads only the vocoder and vocodes the flow's mel once (CUDA: allocated)")
    results: dict[str, Any] = {}
    named = dict(zip(short_names(students), students, strict=True))
    for device in devices:
        for dtype in [torch.float32] + ([torch.bfloat16] if device == "cuda" else []):
            label = f"{device}, {str(dtype).removeprefix('torch.')}"
            model = s3gen(device).to(dtype=dtype)
            with threads(1 if device == "cpu" else None):
                rows = s3gen_rows(model, named, seconds, tuple(cfm_steps), repeats)
            results[label] = rows
            print(f"\n{label}")
            print(table(COLUMNS, [_cells(r) for r in rows]))
            del model
    if t3_seconds:
        with threads(1):
            row = t3_row(t3_seconds)
        results["t3"] = row
        print(f"\nT3 ({row['params_m']:.0f} M parameters, random weights, CFG as Chatterbox runs it), CPU 1 thread: "
              f"{row['t3_s_per_s']:.2f} s per second of speech ({row['tokens']} tokens, "
              f"{TOKENS_PER_SECOND / row['t3_s_per_s']:.1f} tokens/s)")  # fmt: skip
    with threads(1):
        work = preparation_work(s3gen("cpu"), seconds=seconds, steps=max(cfm_steps))
    results["preparation_work"] = work
    print(f"\nFlow-mel preparation (tokenizer, reference, flow at {max(cfm_steps)} steps, HiFT) of a "
          f"{work['clip_seconds']:g} s clip: {work['gflop_per_audio_s']:.0f} GFLOP per second of audio, "
          f"{work['operators_per_clip']} operators; a GPU, ESTIMATED at {GPU_SUSTAINED_TFLOPS:g} TFLOP/s sustained "
          f"and {GPU_KERNEL_S * 1e6:g} us per operator: {work['gpu_estimate_s_per_audio_s']:.3f} s per second "
          "of audio (one process)")  # fmt: skip
    return {**results, "cpu": describe_cpu()}


def training_figures(overrides: list[str], steps: int, compare: list[str] = ()) -> list[dict]:
    """Print the training step's time with the real data pipeline, with the same batches in memory,
    and with each of ``compare`` (:func:`train_throughput`); returns the rows."""
    rows = train_throughput(overrides, steps, compare)
    print(f"Training ({' '.join(overrides)}, {torch.get_num_threads()} threads, median step)")
    print(rows_table(rows))
    real, memory, *compared = rows
    print(f"real data vs in-memory step time: {100 * (real['s_per_step'] / memory['s_per_step'] - 1):+.1f} %")
    for row in compared:
        print(f"{row['data']} vs in-memory step time: {100 * (row['s_per_step'] / memory['s_per_step'] - 1):+.1f} %")
    return rows


def preparation_figures(processes: list[int], mel_source: str = "audio") -> list[dict]:
    """Print ``train/prepare.py``'s throughput with each number of ``processes``; returns the rows."""
    rows = prepare_throughput(processes, mel_source=mel_source)
    print(f"Prepare stage (experiment=distill data.mel_source={mel_source} on the bundled corpus, stand-in "
          "checkpoint of Chatterbox's size, random weights)")  # fmt: skip
    print(rows_table(rows))
    return rows
