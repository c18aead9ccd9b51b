"""Cost benchmark: ``python train/bench.py [--students A [B ...]] [--json FILE] [--seconds 10] [--train-steps 20]``.

Teacher and student side by side in one run, on the same mel (inference cost), then the
training step with the real data pipeline and with the same batches in memory. See
:mod:`train.benchmarks.side_by_side`. ``--streaming``: first audio, look-ahead and seams
(:mod:`train.benchmarks.stream_figures`); ``--chatterbox``: what the swap buys inside Chatterbox's
own S3Gen (:mod:`train.benchmarks.in_chatterbox`); ``--conditional-decoder``: the ONNX conditional
decoder with HiFT and with the student (:mod:`train.benchmarks.decoder_figures`).
"""

from __future__ import annotations

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import argparse
from pathlib import Path

from train.benchmarks.figures import (
    chatterbox_figures,
    inference_figures,
    preparation_figures,
    streaming_figures,
    training_figures,
    write_figures,
)
from train.evaluation.cost import CostSettings

COST = CostSettings()  # the defaults of --seconds, --repeats, --chunk-frames: those of every cost measurement


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=COST.seconds, help="audio length to vocode")
    parser.add_argument("--repeats", type=int, default=COST.repeats, help="timed runs per setting (median)")
    parser.add_argument("--chunk-frames", type=int, nargs="+", default=list(COST.chunk_frames), help="chunk sizes")
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
    parser.add_argument(
        "--conditional-decoder",
        action="store_true",
        help="the ONNX conditional decoder table instead: S3Gen's flow + HiFT against flow + the student (fp32, "
        "int8: --students' first QAT checkpoint, or a random 256x768x6 one) for each of --families, at each "
        "--reference-seconds before --speech-seconds of speech, one thread",
    )
    parser.add_argument("--families", nargs="+", default=["chatterbox", "turbo"], help="--conditional-decoder")
    parser.add_argument("--reference-seconds", type=float, nargs="+", default=[3.0, 10.0], help="--conditional-decoder")
    parser.add_argument("--speech-seconds", type=float, default=5.0, help="--conditional-decoder: new speech")
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
    parser.add_argument(
        "--prepare-source",
        default="audio",
        help="--prepare-processes: the data.mel_source prepared (audio, flow, text, or a mix such as audio+flow)",
    )
    args = parser.parse_args(argv)
    if args.streaming:
        figures = streaming_figures(args.students, args.corpus, args.clips, args.clip_seconds, args.chunk_frames,
                                    args.repeats)  # fmt: skip
        write_figures(args.json, figures)
        return
    if args.conditional_decoder:
        from train.benchmarks.decoder_figures import decoder_figures  # here: it imports chatterbox-tts

        write_figures(args.json, decoder_figures(args.families, args.reference_seconds, args.speech_seconds,
                                                 args.repeats, args.students))  # fmt: skip
        return
    if args.chatterbox:
        write_figures(args.json, chatterbox_figures(args.students, args.seconds, args.cfm_steps, args.repeats,
                                                    args.t3_seconds))  # fmt: skip
        return
    if not args.no_inference:
        settings = CostSettings(args.seconds, args.repeats, tuple(args.chunk_frames))
        rows = inference_figures(settings, args.students, args.int8_schemes, args.corpus, args.clips)
        write_figures(args.json, rows)
    if args.train_steps:
        training_figures(args.train_config, args.train_steps, args.train_compare)
    if args.prepare_processes:
        preparation_figures(args.prepare_processes, args.prepare_source)


if __name__ == "__main__":
    main()
