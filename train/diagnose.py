"""Magnitude or phase? ``python -m train.diagnose CHECKPOINT 'AUDIO_GLOB' [--count 20]``.

Vocodes the S3Gen mel of every ``--step``-th file matching the glob (sorted), then prints the
mean S3Gen log-mel distance to the audio of the output and of its magnitude/phase swaps
(:mod:`train.evaluation.diagnose`).
"""

from __future__ import annotations

import argparse
import glob
import sys

import torch

from train.data.audio import read_audio
from train.evaluation.diagnose import SWAPS, swap_distances
from train.runtime.config import SAMPLE_RATE
from train.runtime.errors import ConfigError
from train.s3gen.mel import S3GenMel
from train.student.model import load_student


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a student (.ckpt, .safetensors)")
    parser.add_argument("audio", help="a glob of audio files, quoted, e.g. 'data/speech/heldout/*/*/*.flac'")
    parser.add_argument("--count", type=int, default=20, help="clips to use")
    parser.add_argument("--step", type=int, default=12, help="use every N-th file (sorted by path)")
    args = parser.parse_args(argv)
    files = sorted(glob.glob(args.audio))[:: args.step][: args.count]
    if not files:
        print(f"error: no file matches {args.audio!r}", file=sys.stderr)
        return 2
    try:
        student = load_student(args.checkpoint, "cpu")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mel = S3GenMel()
    totals = dict.fromkeys(SWAPS, 0.0)
    for path in files:
        audio, rate = read_audio(path)
        truth = mel.to_mono_24k(audio, rate)[0]
        with torch.inference_mode():
            wav = student(mel(truth))[0]
        for key, value in swap_distances(wav, truth, mel=mel).items():
            totals[key] += value / len(files)
    print(f"{len(files)} clips of {args.audio}, S3Gen log-mel distance to the audio ({SAMPLE_RATE} Hz):")
    for key, value in totals.items():
        print(f"  {key:32s} {value:5.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
