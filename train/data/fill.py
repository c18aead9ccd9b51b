"""Filling the cache: each utterance's mel (and, given a teacher, its waveform) computed once.

The work is sharded: with ``N`` processes each prepares a disjoint share of the utterances,
balanced by bytes (:func:`shard`), on its own device, so no process waits on another for longer
than its own share. Processes that prepare the same entries at once (two runs on one cache) do
each entry once: an entry is claimed before it is computed (:meth:`TensorCache.claim`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from torch import Tensor

from train.data.audio import read_audio, read_mel
from train.data.cache import TensorCache
from train.data.flow_mels import FlowMels
from train.data.sources import Utterance
from train.s3gen.hift import HiFTGenerator
from train.s3gen.mel import S3GenMel
from train.s3gen.teacher import synthesize
from train.utils.progress import progress
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass
class PrepareReport:
    """What one process's :meth:`CacheFiller.prepare` did."""

    rank: int = 0
    world_size: int = 1
    assigned: int = 0
    computed_mels: int = 0
    computed_teacher: int = 0
    already_cached: int = 0
    audio_seconds: float = 0.0  # of the entries this process computed
    wall_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    prepared_keys: list[str] = field(default_factory=list)  # mel keys of the utterances this process computed


def shard(utterances: Sequence[Utterance], rank: int, world_size: int) -> list[Utterance]:
    """This process's share: largest files first, each to the least-loaded process, so every
    share has about the same bytes. The same for every process that sees the same files."""
    loads = [0] * world_size
    mine = []
    for utterance in sorted(utterances, key=lambda u: (-u.bytes, u.name)):
        owner = min(range(world_size), key=lambda r: (loads[r], r))
        loads[owner] += max(1, utterance.bytes)
        if owner == rank:
            mine.append(utterance)
    return sorted(mine, key=lambda u: u.name)


class CacheFiller:
    """Computes and caches the entries of utterances: ``mel`` and ``audio`` (or the flow's mel and
    the clip, or T3's tokens and the flow's mel), and the teacher's waveform when there is a teacher."""

    def __init__(
        self,
        cache: TensorCache,
        flow: FlowMels | None = None,
        teacher: HiFTGenerator | None = None,
        teacher_seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.cache, self.flow, self.teacher, self.teacher_seed, self.progress = (
            cache,
            flow,
            teacher,
            teacher_seed,
            progress,
        )
        self.mel = S3GenMel()

    def teacher_key(self, utterance: Utterance) -> str | None:
        """Cache key of the teacher's waveform: the mel's key, the teacher's weights and dtype, the seed."""
        if self.teacher is None:
            return None
        weights = getattr(self.teacher, "weights_id", None)
        if weights is None:
            raise ValueError("data.teacher has no `weights_id`; load it with train.s3gen.teacher.load_teacher")
        dtype = str(next(self.teacher.parameters()).dtype).removeprefix("torch.")
        return hashlib.sha256(f"{utterance.key}:{weights}:{dtype}:{self.teacher_seed}".encode()).hexdigest()[:32]

    def read_24k(self, path: Path) -> Tensor:
        wav, sample_rate = read_audio(path)
        if wav.numel() == 0:
            raise ValueError("empty audio")
        return self.mel.to_mono_24k(wav, sample_rate)[0]

    def _compute_mel_entry(self, utterance: Utterance) -> dict[str, Tensor | None]:
        if utterance.kind == "flow":
            clip = self.read_24k(utterance.path)
            try:
                ref = self.read_24k(utterance.reference)
            except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
                raise ValueError(f"its reference {utterance.reference}: {err}") from None
            return self.flow.teacher_forced(clip, ref, utterance.name, str(utterance.reference))
        if utterance.kind == "text":
            if ("tokens", utterance.tokens_key) in self.cache:
                tokens = self.cache.load("tokens", utterance.tokens_key)["tokens"]
            else:
                tokens = self.flow.text_tokens(utterance.line, utterance.reference)
                self.cache.save("tokens", utterance.tokens_key, {"tokens": tokens})
            mel = self.flow.text_mel(tokens, utterance.reference)
            return {"mel": mel.contiguous(), "audio": None, "tokens": tokens}
        if utterance.kind == "audio":
            wav, sample_rate = read_audio(utterance.path)
            if wav.numel() == 0:
                raise ValueError("empty audio")
            wav = self.mel.to_mono_24k(wav, sample_rate)
            frames = wav.shape[-1] // HOP_LENGTH
            if frames < 1:
                raise ValueError(f"shorter than one mel frame ({HOP_LENGTH} samples at {SAMPLE_RATE} Hz)")
            audio = wav[0, : frames * HOP_LENGTH]
            mel = self.mel(audio.unsqueeze(0))[0]
        else:
            mel = read_mel(utterance.path)
            frames, audio = mel.shape[-1], None
            if utterance.paired_audio is not None:
                wav, sample_rate = read_audio(utterance.paired_audio)
                wav = self.mel.to_mono_24k(wav, sample_rate)[0]
                audio = torch.nn.functional.pad(wav, (0, max(0, frames * HOP_LENGTH - wav.shape[-1])))
                audio = audio[: frames * HOP_LENGTH]
        return {"mel": mel.contiguous(), "audio": None if audio is None else audio.contiguous()}

    def prepare(
        self,
        utterances: Sequence[Utterance],
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> PrepareReport:
        """Compute and cache what is missing of this process's share of ``utterances``; warn about
        and record unusable files.

        Entries another process is writing at the same moment are left to it and checked
        again at the end of the share.
        """
        if self.teacher is not None and device is not None:
            self.teacher.to(device)
        started = time.perf_counter()
        mine = shard(utterances, rank, world_size)
        report = PrepareReport(rank=rank, world_size=world_size, assigned=len(mine))
        bar = progress(
            total=len(mine),
            desc=f"prepare {rank + 1}/{world_size}" if world_size > 1 else "prepare",
            unit="utt",
            disable=not self.progress,
            position=rank,
        )
        pending = list(mine)
        counted: set[str] = set()  # mel keys already in report.prepared_keys
        for wait in (False, True):  # first pass: skip what others hold; second: wait for it
            deferred = []
            for utterance in pending:
                try:
                    if self._prepare_one(utterance, wait, report, counted):
                        bar.update(1)
                        rate = report.audio_seconds / (time.perf_counter() - started)
                        bar.set_postfix(audio_s_per_s=f"{rate:.1f}", refresh=False)
                    else:
                        deferred.append(utterance)
                except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
                    report.skipped.append((utterance.name, str(err)))
                    log.warning("skipping %s: %s", utterance.path, err)
                    bar.update(1)
            pending = deferred
        bar.close()
        report.wall_seconds = time.perf_counter() - started
        log.info(
            "data: share %d/%d: %d utterances computed (%.1f s of audio in %.1f s), %d cached already, %d skipped",
            rank + 1,
            world_size,
            len(report.prepared_keys),
            report.audio_seconds,
            report.wall_seconds,
            report.already_cached,
            len(report.skipped),
        )
        return report

    def _prepare_one(self, utterance: Utterance, wait: bool, report: PrepareReport, counted: set[str]) -> bool:
        """Make sure one utterance's entries exist; ``False`` if another process holds one of them."""
        teacher_key = self.teacher_key(utterance)
        if self.teacher is None and not utterance.has_audio:
            raise ValueError("a mel without paired audio needs a teacher to give it a target")
        cached = ("mel", utterance.key) in self.cache and (
            teacher_key is None or ("teacher", teacher_key) in self.cache
        )
        if cached:
            report.already_cached += 1
            return True
        if ("mel", utterance.key) not in self.cache:
            with self.cache.claim("mel", utterance.key, wait) as mine:
                if not mine:
                    return False
                if ("mel", utterance.key) not in self.cache:
                    entry = self._compute_mel_entry(utterance)
                    self.cache.save("mel", utterance.key, entry)
                    report.computed_mels += 1
                    self._count(utterance, entry["mel"], report, counted)
        if teacher_key is not None and ("teacher", teacher_key) not in self.cache:
            with self.cache.claim("teacher", teacher_key, wait) as mine:
                if not mine:
                    return False
                if ("teacher", teacher_key) not in self.cache:
                    mel = self.cache.load("mel", utterance.key)["mel"]
                    wav = synthesize(self.teacher, mel.unsqueeze(0), seed=self.teacher_seed)[0]
                    self.cache.save("teacher", teacher_key, {"wav": wav.cpu()})
                    report.computed_teacher += 1
                    self._count(utterance, mel, report, counted)
        return True

    @staticmethod
    def _count(utterance: Utterance, mel: Tensor, report: PrepareReport, counted: set[str]) -> None:
        """Record an utterance this process computed something for, once."""
        if utterance.key not in counted:
            counted.add(utterance.key)
            report.prepared_keys.append(utterance.key)
            report.audio_seconds += mel.shape[-1] * HOP_LENGTH / SAMPLE_RATE
