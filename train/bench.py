"""Cost benchmark: ``python -m train.bench [--students A [B ...]] [--json FILE] [--seconds 10] [--train-steps 20]``.

Teacher and student side by side in one run, on the same mel (inference cost), then the
training step with the real data pipeline and with the same batches in memory. See
:mod:`train.evaluation.benchmark`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from train.data.preparation import prepare_throughput
from train.evaluation.benchmark import run
from train.evaluation.report import cost_table, rows_table
from train.training.throughput import train_throughput


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
    if not args.no_inference:
        rows = run(args.seconds, args.repeats, tuple(args.chunk_frames), args.students)
        print(f"Inference on {args.seconds:g} s of audio; s/s = seconds of compute per second of audio (median)")
        print(cost_table(rows))
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
            from train.utils.files import atomic_write_text

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


if __name__ == "__main__":
    main()
