"""Cost benchmark: ``python -m train.bench [--seconds 10] [--repeats 3] [--train-steps 20]``.

Teacher and student side by side in one run, on the same mel (inference cost), then the
training step with the real data pipeline and with the same batches in memory. See
:mod:`train.evaluation.benchmark`.
"""

from __future__ import annotations

import argparse

import torch

from train.data.preparation import prepare_throughput
from train.evaluation.benchmark import run
from train.evaluation.report import cost_table, table
from train.training.throughput import train_throughput


def format_rows(rows: list[dict]) -> str:
    return table(
        list(rows[0]), [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length to vocode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--chunk-frames", type=int, nargs="+", default=[10, 25, 50], help="streaming chunk sizes")
    parser.add_argument("--no-inference", action="store_true", help="skip the teacher-vs-student inference cost")
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
        rows = run(args.seconds, args.repeats, tuple(args.chunk_frames))
        print(f"Inference on {args.seconds:g} s of audio; s/s = seconds of compute per second of audio (median)")
        print(cost_table(rows))
        teacher, student = rows[0], rows[-1]
        for key in ("rtf_cpu_1_thread", "rtf_cpu_all_threads", "rtf_cuda"):
            if teacher[key] is not None:
                print(f"student speed-up, {key[4:].replace('_', ' ')}: {teacher[key] / student[key]:.1f}x")
        print(f"student size: {teacher['weights_bytes'] / student['weights_bytes']:.1f}x smaller")
    if args.train_steps:
        train_rows = train_throughput(args.train_config, args.train_steps, args.train_compare)
        print(f"Training ({' '.join(args.train_config)}, {torch.get_num_threads()} threads, median step)")
        print(format_rows(train_rows))
        real, memory, *compared = train_rows
        print(f"real data vs in-memory step time: {100 * (real['s_per_step'] / memory['s_per_step'] - 1):+.1f} %")
        for row in compared:
            print(
                f"{row['data']} vs in-memory step time: {100 * (row['s_per_step'] / memory['s_per_step'] - 1):+.1f} %"
            )
    if args.prepare_processes:
        prepare_rows = prepare_throughput(args.prepare_processes)
        print("Prepare stage (experiment=distill on the bundled corpus, stand-in teacher of Chatterbox's size)")
        print(format_rows(prepare_rows))


if __name__ == "__main__":
    main()
