"""Magnitude or phase? ``python train/diagnose.py CKPT 'AUDIO_GLOB' [--count 20] [--scores] [--bands] [--voicing]``.

Vocodes the S3Gen mel of every ``--step``-th file matching the glob (sorted), then prints the
mean S3Gen log-mel distance to the audio of the output and of its magnitude/phase swaps
(:mod:`train.evaluation.diagnose`). ``--scores`` (a student with the amplitude prior): also
PESQ-wb, ESTOI and DistillMOS of its output, of its phase under the prior's magnitude alone,
and of the Griffin-Lim floor, each the mean over the clips. ``--bands``: PESQ-wb of the output
with the floor's phase below each of 0.5, 1, 2 and 4 kHz and its own above, and the other way
round (:func:`~train.evaluation.diagnose.band_swaps`): where its phase fails; ``--voicing``: the
same with the floor's phase in the frames the ground truth's CREPE track calls unvoiced, then
voiced (:func:`~train.evaluation.diagnose.voicing_swaps`).
"""

from __future__ import annotations

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import argparse
import glob
import sys

import numpy as np
import torch

from train.data.audio import read_audio
from train.evaluation.diagnose import (
    SWAPS,
    VARIANTS,
    band_swaps,
    frame_voicing,
    prior_variants,
    swap_distances,
    voicing_swaps,
)
from train.evaluation.griffin_lim import GriffinLim
from train.evaluation.metrics import QualityMetrics, pesq_wb, stoi
from train.s3gen.mel import S3GenMel
from train.student import from_pretrained
from vocos_distill.config import SAMPLE_RATE
from vocos_distill.errors import ConfigError

PAIRED = (("PESQ-wb", pesq_wb), ("ESTOI", lambda e, r: stoi(e, r, extended=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a student (.ckpt, .safetensors)")
    parser.add_argument("audio", help="a glob of audio files, quoted, e.g. 'data/speech/heldout/*/*/*.flac'")
    parser.add_argument("--count", type=int, default=20, help="clips to use")
    parser.add_argument("--step", type=int, default=12, help="use every N-th file (sorted by path)")
    parser.add_argument(
        "--scores", action="store_true", help="PESQ-wb, ESTOI, DistillMOS: output, no correction, floor (prior only)"
    )
    parser.add_argument("--bands", action="store_true", help="PESQ-wb with the floor's phase below / above each cut")
    parser.add_argument("--voicing", action="store_true", help="PESQ-wb with the floor's phase in (un)voiced frames")
    args = parser.parse_args(argv)
    files = sorted(glob.glob(args.audio))[:: args.step][: args.count]
    if not files:
        print(f"error: no file matches {args.audio!r}", file=sys.stderr)
        return 2
    try:
        student = from_pretrained(args.checkpoint, device="cpu")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.scores and not student.config.amplitude_prior:
        print("error: --scores needs a student with the amplitude prior", file=sys.stderr)
        return 2
    mel = S3GenMel()
    totals = dict.fromkeys(SWAPS, 0.0)
    scores: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    metrics, floor = (
        (QualityMetrics(naturalness=("distillmos",) if args.scores else (), speaker=None), GriffinLim())
        if args.scores or args.bands or args.voicing
        else (None, None)
    )
    bands: dict[str, list[float]] = {}
    for path in files:
        audio, rate = read_audio(path)
        truth = mel.to_mono_24k(audio, rate)[0]
        log_mel = mel(truth)
        with torch.inference_mode():
            wav = student(log_mel)[0]
        for key, value in swap_distances(wav, truth, mel=mel).items():
            totals[key] += value / len(files)
        if metrics is None:
            continue
        reference = metrics.analyse(truth)
        if args.scores:
            variants = prior_variants(student, log_mel, floor)
            for name, signal in variants.items():
                estimate, ref = metrics.align(metrics.analyse(signal), reference)
                paired = [metrics.safely(m, path, lambda f=f, e=estimate, r=ref: f(e, r)) for m, f in PAIRED]
                scores[name].append((*paired, metrics.safely("DistillMOS", path, lambda e=estimate: e.distillmos)))
        if not (args.bands or args.voicing):
            continue
        with torch.inference_mode():  # the floor of --scores' variants, or computed here once
            signals = {"vocoder": wav, "floor": variants[VARIANTS[-1]] if args.scores else floor(log_mel)[0]}
        if args.bands:
            signals.update(band_swaps(wav, signals["floor"]))
        if args.voicing:
            signals.update(voicing_swaps(wav, signals["floor"], frame_voicing(reference, wav.shape[-1])))
        for name, signal in signals.items():
            estimate, ref = metrics.align(metrics.analyse(signal), reference)
            bands.setdefault(name, []).append(metrics.safely("PESQ-wb", path, lambda e=estimate, r=ref: pesq_wb(e, r)))
    print(f"{len(files)} clips of {args.audio}, S3Gen log-mel distance to the audio ({SAMPLE_RATE} Hz):")
    for key, value in totals.items():
        print(f"  {key:32s} {value:5.2f} dB")
    if bands:
        print("\nWhere the phase fails: PESQ-wb, the vocoder's magnitude under a mix of phases:")
        for name, values in bands.items():
            print(f"  {name:45s} PESQ-wb {float(np.nanmean(values)):.2f}")
    if args.scores:
        print("\nBy ear (mean over the clips each metric scores):")
        for name, rows in scores.items():
            pesq, estoi, distillmos = (float(np.nanmean(column)) for column in zip(*rows, strict=True))
            print(f"  {name:45s} PESQ-wb {pesq:.2f}  ESTOI {estoi:.3f}  DistillMOS {distillmos:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
