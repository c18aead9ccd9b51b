"""Cost benchmark: ``python -m train.bench [--students A [B ...]] [--json FILE] [--seconds 10] [--train-steps 20]``.

Teacher and student side by side in one run, on the same mel (inference cost), then the
training step with the real data pipeline and with the same batches in memory. See
:mod:`train.benchmarks.side_by_side`. ``--streaming``: first audio, look-ahead and seams
(:mod:`train.benchmarks.streaming`); ``--chatterbox``: what the swap buys inside Chatterbox's
own S3Gen (:mod:`train.benchmarks.chatterbox`).
"""

from __future__ import annotations

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from train.benchmarks.side_by_side import run
from train.benchmarks.throughput import train_throughput
from train.data.prepare import prepare_throughput
from train.evaluation.report import cost_table, rows_table
from vocos_distill.int8_check import describe_cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length to vocode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--chunk-frames", type=int, nargs="+", default=[10, 25, 50], help="streaming chunk sizes")
    parser.add_argument("--no-inference", action="store_true", help="skip the teacher-vs-student inference cost")
    parser.add_argument(
        "--students",
        nargs="+",
        default=[],
        help="student files, a row each beside the teacher (.ckpt, pruned/QAT .ckpt, .safetensors, int8 .onnx); "
        "default: the stock-size student with random weights",
    )
    parser.add_argument("--json", type=Path, help="also write the inference rows here (one object per row)")
    parser.add_argument(
        "--int8-schemes",
        action="store_true",
        help="for each --students checkpoint, also write and time its fp32 ONNX graph and its int8 graph in every "
        "int8 scheme (train.student.graph.INT8_SCHEMES), with each graph's SNR against the checkpoint on --corpus",
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="streaming figures instead of the cost table: first-audio latency (HiFT and --students), and per "
        "student the look-ahead table and the seam comparison on --corpus",
    )
    parser.add_argument(
        "--chatterbox",
        action="store_true",
        help="the end-to-end table instead: Chatterbox's own S3Gen (random weights) at each --cfm-steps, its flow "
        "and its vocoder (HiFT, then each of --students: files or release folders) per second of audio",
    )
    parser.add_argument("--cfm-steps", type=int, nargs="+", default=[10, 2], help="S3Gen flow steps (--chatterbox)")
    parser.add_argument(
        "--t3-seconds", type=float, default=0.0, help="--chatterbox: also time T3 making this much speech (0: skip)"
    )
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="audio for the streaming tables")
    parser.add_argument("--clips", type=int, default=6, help="clips of --corpus used (sorted by path)")
    parser.add_argument("--clip-seconds", type=float, default=6.0, help="each clip cut to this length")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps (0: skip)")
    parser.add_argument(
        "--train-config", nargs="*", default=["experiment=finetune"], help="Hydra overrides of the training run"
    )
    parser.add_argument(
        "--train-compare",
        nargs="*",
        default=[],
        help="overrides timed on the same in-memory batches against the base, e.g. module.freeze_discriminators=false",
    )
    parser.add_argument(
        "--prepare-processes",
        type=int,
        nargs="*",
        default=[],
        help="time train/prepare.py (experiment=distill, stand-in teacher) with these numbers of processes",
    )
    args = parser.parse_args(argv)
    if args.streaming:
        streaming(args)
        return
    if args.chatterbox:
        chatterbox(args)
        return
    if not args.no_inference:
        with tempfile.TemporaryDirectory() as tmp:
            students, fidelity = list(args.students), {}
            if args.int8_schemes:
                students, fidelity = int8_scheme_graphs(args.students, Path(tmp), args.corpus, args.clips)
            rows = run(args.seconds, args.repeats, tuple(args.chunk_frames), students)
        cpu = describe_cpu()
        for row in rows:
            row["cpu"] = cpu
        print(f"Inference on {args.seconds:g} s of audio; s/s = seconds of compute per second of audio (median)")
        print(f"CPU: {cpu}; {os.cpu_count()} cores")
        print(cost_table(rows))
        if fidelity:
            for row, path in zip(rows[1:], students, strict=True):
                row.update(fidelity.get(path, {}))
            print(f"\nEach graph against its checkpoint on {args.clips} clips of {args.corpus} (the lowest SNR)")
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
        if args.json:
            from vocos_distill.files import atomic_write_text

            atomic_write_text(args.json, json.dumps(rows, indent=2))
            print(f"rows written to {args.json}")
    if args.train_steps:
        train_rows = train_throughput(args.train_config, args.train_steps, args.train_compare)
        print(f"Training ({' '.join(args.train_config)}, {torch.get_num_threads()} threads, median step)")
        print(rows_table(train_rows))
        real, memory, *compared = train_rows
        print(f"real data vs in-memory step time: {100 * (real['s_per_step'] / memory['s_per_step'] - 1):+.1f} %")
        for row in compared:
            print(
                f"{row['data']} vs in-memory step time: {100 * (row['s_per_step'] / memory['s_per_step'] - 1):+.1f} %"
            )
    if args.prepare_processes:
        prepare_rows = prepare_throughput(args.prepare_processes)
        print("Prepare stage (experiment=distill on the bundled corpus, stand-in teacher of Chatterbox's size)")
        print(rows_table(prepare_rows))


FIDELITY = ("scheme", "snr_vs_model_db", "snr_vs_fp32_db", "ms_per_s_interleaved")
ROUNDS = 15  # interleaved timing rounds of the graphs of one checkpoint


def int8_scheme_graphs(
    checkpoints: list[str], folder: Path, corpus: Path, clips: int
) -> tuple[list[str], dict[str, dict[str, object]]]:
    """Each checkpoint, then its fp32 ONNX graph and an int8 graph per scheme, written under
    ``folder``; and each graph's lowest SNR against the checkpoint's fake-quantised model (QAT)
    and its fp32 weights on ``clips`` clips of ``corpus``."""
    from safetensors.torch import save_file

    from train.data.audio import corpus_mels
    from train.evaluation.metrics import snr_db
    from train.student.graph import INT8_SCHEME, INT8_SCHEMES, export_onnx, probe_windows
    from train.student.model import load_student
    from train.student.quantized import strip
    from vocos_distill.onnx import OnnxVocoder

    mels = [m.unsqueeze(0) for m in corpus_mels(corpus, clips, 6.0)]
    candidates = probe_windows(mels)
    files, fidelity = [], {}
    for index, checkpoint in enumerate(checkpoints):
        files.append(checkpoint)
        if Path(checkpoint).suffix == ".onnx":
            continue
        model = load_student(checkpoint)
        plain = strip(model)
        own = folder / str(index)
        own.mkdir()
        pytorch = own / "fp32.safetensors"  # the checkpoint's weights without fake quantisation
        save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(pytorch),
                  metadata={"config": json.dumps(plain.config.to_dict())})  # fmt: skip
        files.append(str(pytorch))
        graphs = {"fp32": export_onnx(plain, own / "fp32.onnx")}
        for scheme in INT8_SCHEMES:
            graphs[scheme] = export_onnx(model, own / f"int8-{scheme}.onnx", quantize=True, scheme=scheme,
                                         probe=candidates)  # fmt: skip
        loaded = {scheme: OnnxVocoder(path, check=False) for scheme, path in graphs.items()}
        with torch.inference_mode():
            references = [(model(m), plain(m)) for m in mels]
            for scheme, path in graphs.items():
                outputs = [loaded[scheme](m) for m in mels]
                fidelity[str(path)] = {
                    "scheme": scheme + (" (shipped)" if scheme == INT8_SCHEME else ""),
                    "snr_vs_model_db": min(snr_db(r, o) for (r, _), o in zip(references, outputs, strict=True)),
                    "snr_vs_fp32_db": min(snr_db(p, o) for (_, p), o in zip(references, outputs, strict=True)),
                }
                files.append(str(path))
        for scheme, ms in interleaved_ms_per_s(loaded).items():
            fidelity[str(graphs[scheme])]["ms_per_s_interleaved"] = ms
    return files, fidelity


def interleaved_ms_per_s(graphs: dict[str, torch.nn.Module], seconds: float = 10.0) -> dict[str, float]:
    """Milliseconds of compute per second of audio, 1 thread, median of :data:`ROUNDS` rounds that
    run every graph once in turn on the same mel: a burst of load on a shared machine falls on all
    of them, so their order is steadier than in separate timings."""
    from vocos_distill.timing import frames_of, interleaved, threads, timing_mel

    mel = timing_mel(frames_of(seconds))
    with threads(1), torch.inference_mode():
        medians = interleaved({name: (lambda graph=graph: graph(mel)) for name, graph in graphs.items()}, ROUNDS)
    return {name: 1e3 * median / seconds for name, median in medians.items()}


def streaming(args: argparse.Namespace) -> None:
    from train.benchmarks.side_by_side import streaming_run
    from train.data.audio import corpus_mels
    from train.evaluation.report import table

    if not args.students:
        raise SystemExit("--streaming needs --students (trained checkpoints: the tables compare real audio)")
    clips = corpus_mels(args.corpus, args.clips, args.clip_seconds)
    from vocos_distill.timing import threads

    with threads(1):
        result = streaming_run(args.students, clips, tuple(args.chunk_frames), repeats=args.repeats)
    sizes = args.chunk_frames
    print(f"First audio of a stream of C-frame chunks, CPU 1 thread, median of {args.repeats} (ms)")
    print("= look-ahead (mel frames that must exist past the chunk, 20 ms each) + compute of the first chunk")
    print(
        table(
            ["model", "how", "look-ahead"]
            + [f"C={c}: compute" for c in sizes]
            + [f"C={c}: first audio" for c in sizes],
            [
                [r["model"], r["how"], f"{r['lookahead_frames']} ({r['lookahead_ms']:.0f} ms)"]
                + [f"{r[f'compute_ms_{c}']:.1f}" for c in sizes]
                + [f"{r[f'first_audio_ms_{c}']:.0f}" for c in sizes]
                for r in result["first_audio"]
            ],
        )
    )
    print(f"\n{len(clips)} clips of {args.corpus} (<= {args.clip_seconds:g} s), streamed, against the student offline")
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
    if args.json:
        from vocos_distill.files import atomic_write_text

        atomic_write_text(args.json, json.dumps({**result, "cpu": describe_cpu()}, indent=2))
        print(f"\nfigures written to {args.json}")


def chatterbox(args: argparse.Namespace) -> None:
    from train.benchmarks.chatterbox import s3gen, s3gen_rows, t3_row
    from train.benchmarks.side_by_side import short_names
    from train.evaluation.report import table
    from vocos_distill.timing import threads

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"Chatterbox's S3Gen (chatterbox-tts, random weights) on {args.seconds:g} s of speech tokens; CPU 1 thread")
    gpu = f"; CUDA: {torch.cuda.get_device_name()}" if len(devices) > 1 else ""
    print(f"CPU: {describe_cpu()}; {os.cpu_count()} cores{gpu}")
    print("s/s = seconds of compute per second of audio (median of --repeats); S3Gen = flow + vocoder")
    print("peak MB: a fresh process that loads only the vocoder and vocodes the flow's mel once (CUDA: allocated)")
    results = {}
    for device in devices:
        for dtype in [torch.float32] + ([torch.bfloat16] if device == "cuda" else []):
            label = f"{device}, {str(dtype).removeprefix('torch.')}"
            model = s3gen(device).to(dtype=dtype)
            students = dict(zip(short_names(args.students), args.students, strict=True))
            with threads(1 if device == "cpu" else None):
                rows = s3gen_rows(model, students, args.seconds, tuple(args.cfm_steps), args.repeats)
            results[label] = rows
            print(f"\n{label}")
            print(
                table(
                    [
                        "CFM steps",
                        "vocoder",
                        "flow s/s",
                        "vocoder s/s",
                        "S3Gen s/s",
                        "vs HiFT",
                        "vocoder share",
                        "vocoder MB",
                        "peak MB",
                        "of which the call",
                    ],  # fmt: skip
                    [
                        [
                            str(r["cfm_steps"]),
                            r["vocoder"],
                            f"{r['flow_s_per_s']:.3f}",
                            f"{r['vocoder_s_per_s']:.4f}",
                            f"{r['s3gen_s_per_s']:.3f}",
                            f"{100 * r['s3gen_change']:+.1f} %",
                            f"{100 * r['vocoder_share']:.1f} %",
                            f"{r['vocoder_mb']:.1f}",
                            "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
                            "-" if r["call_mb"] is None else f"{r['call_mb']:.0f}",
                        ]  # fmt: skip
                        for r in rows
                    ],
                )
            )
            del model
    if args.t3_seconds:
        with threads(1):
            row = t3_row(args.t3_seconds)
        results["t3"] = row
        print(f"\nT3 ({row['params_m']:.0f} M parameters, random weights, CFG as Chatterbox runs it), CPU 1 thread: "
              f"{row['t3_s_per_s']:.2f} s per second of speech ({row['tokens']} tokens)")  # fmt: skip
    if args.json:
        from vocos_distill.files import atomic_write_text

        atomic_write_text(args.json, json.dumps({**results, "cpu": describe_cpu()}, indent=2))
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
