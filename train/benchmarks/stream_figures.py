"""Streaming measured: look-ahead against quality, seams at chunk joins, first-audio latency.

- :func:`lookahead_rows`: streamed audio at several look-aheads against the same student's
  offline audio (log-mel distance, PESQ-wb), with the latency each look-ahead costs.
- :func:`overlap_fade`: what community streaming does instead (CosyVoice's HiFT path, and
  Chatterbox forks after it): decode each chunk with a few frames of the previous chunk's mel
  in front, cross-fade the overlap, hold the last frames' audio back for the next fade.
- :func:`seam_db`: energy of the signal's first difference within a span around each chunk
  join, against the energy elsewhere, in dB (clicks and discontinuities raise it).
- :func:`first_audio_rows`: the wait for the first audio of a stream of C-frame chunks:
  the model's look-ahead (mel frames that must exist past the chunk before its audio is
  final; 20 ms of audio each) plus the compute to produce that first chunk's audio.
- :func:`probe_lookahead`: a model's look-ahead measured by changing one mel frame and
  finding the earliest sample that moves (for HiFT, whose field is not a sum of kernels).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from train.evaluation.metrics import MetricError, QualityMetrics, mel_distance_db, pesq_wb
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.int8_check import snr_db
from vocos_distill.timing import time_call, timing_mel

log = logging.getLogger(__name__)
FRAME_MS = 1000.0 * HOP_LENGTH / SAMPLE_RATE


def overlap_fade(model: Callable[[Tensor], Tensor], mel: Tensor, chunk_frames: int, overlap: int = 8) -> Tensor:
    """Chunked decoding with overlap and cross-fade, no look-ahead (the usual approach).

    Chunk ``k`` is decoded together with the last ``overlap`` mel frames before it; the audio
    of those frames is cross-faded (Hann halves, which sum to one) with the audio the previous
    chunk held back for them; the audio of a chunk's last ``overlap`` frames is held back.
    """
    span = overlap * HOP_LENGTH
    window = torch.hann_window(2 * span, periodic=True)
    fade_in, fade_out = window[:span], window[span:]
    pieces, held, total = [], None, mel.shape[-1]
    with torch.inference_mode():
        for start in range(0, total, chunk_frames):
            end = min(total, start + chunk_frames)
            context = max(0, start - overlap)
            wav = model(mel[..., context:end]).float()
            if held is not None:
                n = min(held.shape[-1], wav.shape[-1])
                wav = wav.clone()
                wav[..., :n] = wav[..., :n] * fade_in[:n] + held[..., :n] * fade_out[:n]
            if end < total:
                keep = min(span, wav.shape[-1])
                pieces.append(wav[..., : wav.shape[-1] - keep])
                held = wav[..., wav.shape[-1] - keep :]
            else:
                pieces.append(wav)
    return torch.cat(pieces, dim=-1)


def seam_db(wav: Tensor, joins: Sequence[int], span: int) -> float:
    """``10 log10`` of the mean squared first difference within ``span`` samples either side of
    each join, over its mean elsewhere. About 0 dB for a signal with no seams."""
    diff = wav.reshape(-1).diff().pow(2)
    near = torch.zeros_like(diff, dtype=torch.bool)
    for join in joins:
        near[max(0, join - span) : join + span] = True
    if not near.any() or near.all():
        raise ValueError("seam_db needs joins inside the signal and samples away from them")
    return float(10 * torch.log10(diff[near].mean() / diff[~near].mean().clamp_min(1e-20)))


def lookahead_rows(
    student: nn.Module,
    mels: Sequence[Tensor],
    lookaheads: Sequence[int | None] = (0, 2, 4, 8, 16, None),
    chunk_frames: int = 10,
    metrics: QualityMetrics | None = None,
    repeats: int = 3,
) -> list[dict]:
    """For each look-ahead (``None``: the full field; one past it counts as the field, each once),
    stream every mel in ``chunk_frames``-frame chunks and compare with the student's offline
    audio: the mean log-mel distance (dB) and PESQ-wb, the largest sample difference, and the
    latency (look-ahead + the median compute of one push, 1 thread as the caller set)."""
    metrics = metrics or QualityMetrics(naturalness=None, speaker=None)
    field = student.receptive_field
    with torch.inference_mode():
        offline = [student(mel.unsqueeze(0) if mel.dim() == 2 else mel).reshape(-1) for mel in mels]
    references = [metrics.analyse(wav) for wav in offline]
    rows = []
    # each look-ahead once, none past the field (the stream is exact from there on)
    for frames in sorted({field.right if la is None else min(la, field.right) for la in lookaheads}):
        stream = student.stream(frames)
        distances, pesqs, worst = [], [], 0.0
        for mel, reference, wav in zip(mels, references, offline, strict=True):
            mel = mel.unsqueeze(0) if mel.dim() == 2 else mel
            streamed = stream.decode(mel, chunk_frames).reshape(-1)
            worst = max(worst, float((streamed - wav).abs().max()))
            estimate = metrics.analyse(streamed)
            distances.append(mel_distance_db(estimate, reference))
            try:
                pesqs.append(pesq_wb(estimate, reference))
            except MetricError as err:
                log.warning("PESQ skipped for one clip: %s", err)
        push = _push_ms(student, mels[0], frames, chunk_frames, repeats)
        rows.append(
            {
                "lookahead_frames": frames,
                "lookahead_ms": frames * FRAME_MS,
                "exact": frames >= field.right,
                "log_mel_db": statistics.fmean(distances),
                "pesq_wb": statistics.fmean(pesqs) if pesqs else math.nan,
                "max_abs_diff": worst,
                "push_ms": push,
                "latency_ms": frames * FRAME_MS + push,
            }
        )
    return rows


def _push_ms(student: nn.Module, mel: Tensor, lookahead: int, chunk_frames: int, repeats: int) -> float:
    """Median time of one push of ``chunk_frames`` frames into a stream well under way."""
    mel = mel.unsqueeze(0) if mel.dim() == 2 else mel
    warm = min(mel.shape[-1] - chunk_frames, 2 * student.receptive_field.right)
    times = []
    for _ in range(max(1, repeats) + 1):  # the first is a warm-up
        stream = student.stream(lookahead)
        stream.push(mel[..., :warm])
        start = time.perf_counter()
        stream.push(mel[..., warm : warm + chunk_frames])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def probe_lookahead(model: Callable[..., Tensor], frames: int = 96, seed: int = 0, seeded_noise: bool = False) -> int:
    """Mel frames a model's audio waits for: change frame ``t`` of a random mel and find the
    earliest output sample that changes. ``seeded_noise``: pass the model the same
    ``generator=`` each call (HiFT's NSF source is random)."""
    mel = timing_mel(frames, seed)
    t = frames // 2
    changed = mel.clone()
    changed[..., t] += 3.0

    def run(x: Tensor) -> Tensor:
        extra = {"generator": torch.Generator().manual_seed(seed)} if seeded_noise else {}
        with torch.inference_mode():
            return model(x, **extra).reshape(-1)

    moved = ((run(changed) - run(mel)).abs() > 0).nonzero()
    if moved.numel() == 0:
        raise ValueError("changing a mel frame changed no sample: cannot measure the look-ahead")
    return t - int(moved.min()) // HOP_LENGTH


def first_audio_rows(
    models: Sequence[tuple[str, nn.Module, str, int]],
    chunk_frames: Sequence[int] = (10, 25, 50),
    repeats: int = 5,
) -> list[dict]:
    """``(name, model, how, look-ahead)`` each: ``how`` is ``"stream"`` (a fresh stream,
    :meth:`~vocos_distill.vocoder.Vocoder.stream`, pushed the first ``C + look-ahead`` frames) or
    ``"window"`` (the model run on the first ``C + look-ahead`` frames, as for HiFT).
    Returns per chunk size the compute (ms) and the first audio (look-ahead ms + compute)."""
    mel = timing_mel(max(chunk_frames) + 64)
    rows = []
    for name, model, how, lookahead in models:
        row = {"model": name, "how": how, "lookahead_frames": lookahead, "lookahead_ms": lookahead * FRAME_MS}
        for c in chunk_frames:
            first = mel[..., : c + lookahead]
            if how == "stream":

                def call(first=first, model=model, lookahead=lookahead, c=c):
                    out = model.stream(lookahead).push(first)
                    assert out.shape[-1] == c * HOP_LENGTH

            else:

                def call(first=first, model=model):
                    with torch.inference_mode():
                        model(first)

            compute = 1000 * time_call(call, repeats)
            row[f"compute_ms_{c}"] = compute
            row[f"first_audio_ms_{c}"] = lookahead * FRAME_MS + compute
        rows.append(row)
    return rows


def seam_rows(
    student: nn.Module,
    mels: Sequence[Tensor],
    chunk_frames: int = 25,
    overlap: int = 8,
    seam_span: int = 24,
) -> list[dict]:
    """The seam metric and the distance from offline audio on the same chunks, for: offline
    decoding (the reference: no chunks, the same spans), the stream (exact field),
    :func:`overlap_fade` (``overlap`` frames, no look-ahead), and chunks decoded alone and
    concatenated. The seam metric looks ``seam_span`` samples either side of each join (1 ms:
    where a click is); the SNR against offline audio, the cross-fade's span either side."""
    span = overlap * HOP_LENGTH
    methods: dict[str, Callable[[Tensor], Tensor]] = {
        "offline (no chunks)": lambda mel: student(mel),
        "streaming at the full field (this project)": lambda mel: student.stream().decode(mel, chunk_frames),
        f"overlap-and-fade ({overlap} frames)": lambda mel: overlap_fade(student, mel, chunk_frames, overlap),
        "chunks decoded alone, concatenated": lambda mel: overlap_fade(student, mel, chunk_frames, 0),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for mel in mels:
        mel = mel.unsqueeze(0) if mel.dim() == 2 else mel
        joins = [k * chunk_frames * HOP_LENGTH for k in range(1, math.ceil(mel.shape[-1] / chunk_frames))]
        near = torch.zeros(mel.shape[-1] * HOP_LENGTH, dtype=torch.bool)
        for join in joins:
            near[max(0, join - span) : join + span] = True
        with torch.inference_mode():
            outputs = {name: method(mel) for name, method in methods.items()}
        offline = outputs["offline (no chunks)"]
        for name, wav in outputs.items():
            results[name].append((seam_db(wav, joins, seam_span), snr_db(offline[..., near], wav[..., near])))
    reference = statistics.fmean(v[0] for v in results["offline (no chunks)"])
    rows = []
    for name, values in results.items():
        seam = statistics.fmean(v[0] for v in values)
        rows.append(
            {
                "method": name,
                "seam_db": seam,
                "seam_above_offline_db": seam - reference,
                "snr_near_joins_db": statistics.fmean(min(v[1], 200.0) for v in values),
            }
        )
    return rows
