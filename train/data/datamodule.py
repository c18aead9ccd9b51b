"""The data module: audio folders and/or pre-computed S3Gen mels -> cached (mel, audio, teacher
wav) -> training segments and validation utterances.

It checks the data options, then composes the jobs that live in their own modules: discovery
and the split (:mod:`train.data.sources`), filling the cache (:mod:`train.data.fill`, keyed by
content: the source file's bytes, the mel settings, and the teacher's weights, dtype and seed),
augmentation (:mod:`train.data.augment`) and serving segments (:mod:`train.data.segments`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from train.data.audio import AUDIO_SUFFIXES, MEL_SUFFIXES
from train.data.augment import check_speed_factors, check_tilt
from train.data.cache import FrameIndex, TensorCache
from train.data.fill import CacheFiller, PrepareReport
from train.data.flow_mels import FlowMels
from train.data.segments import SegmentSampler, UtteranceDataset
from train.data.sources import Corpus, DataError, Entry, Utterance, check_flow, parse_sources, split
from train.data.speech import missing_hint
from train.s3gen.hift import HiFTGenerator
from vocos_distill.errors import MissingFileError
from vocos_distill.files import remove_stale_temporaries

log = logging.getLogger(__name__)


class VocoderDataModule(LightningDataModule):
    """Audio folders and/or a folder of S3Gen mels, cached, split, and served as segments.

    Args:
        audio_dirs: folders searched recursively for wav / flac / ogg / mp3.
        mel_source: what the student learns from (:func:`parse_sources`): ``audio`` (S3Gen's mel
            of each clip), ``flow`` (the flow's mel teacher-forced from each clip: what
            Chatterbox's vocoder is fed; the clip stays an aligned target), ``text`` (the flow's
            mel of T3's tokens for each line of ``flow.text_file``: teacher targets only), or a
            mix joined by ``+``: ``audio+flow`` (equal shares of training draws), ``audio:1+flow:3``.
            Validation holds each source's held-out entries.
        flow: how flow mels are made (:class:`train.data.flow_mels.FlowMels`; the configs' ``data.flow``).
        mel_dir: folder of pre-computed S3Gen mels (``.npy`` / ``.pt``, shape (80, T)), e.g.
            the flow model's outputs; ``paired_audio_dir`` may hold audio with the same
            relative names.
        cache_dir: where mels and teacher waveforms are cached (the configs: ``checkpoints/cache/``
            of the checkout, ``paths.cache_dir``).
        teacher: a loaded HiFT; when given, its waveform for every mel is a target.
        segment_frames: training segment length in mel frames (480 samples each); shorter
            utterances are left out of training (not of validation or evaluation).
        speed_perturb: speed factors (multiples of 0.05, e.g. ``[0.9, 1.0, 1.1]``): each training
            segment is played at one of them, pitch and tempo together, and its mel computed
            from the result; for audio targets (a teacher's cached waveforms cannot follow).
        tilt_db: ``[low, high]`` in dB: each training segment passes a high shelf at 1 kHz whose
            gain is drawn uniformly from that range, at its own level, and its mel is computed
            from the result (other microphones, brighter or duller); audio targets only.
        val_dirs: audio folders held out as a whole (e.g. other speakers): when set, they are the
            validation set and nothing else is; ``val_fraction`` is then unused.
        val_fraction, val_max_utterances: without ``val_dirs``, the held-out set is the utterances whose name hash
            falls below ``val_fraction``, at most ``val_max_utterances`` of them (lowest hashes
            first; at least one): the same set in every run over the same files. Only those
            leave the training set.
        val_max_frames: validation utterances are cut to this many frames.
        seed: the training segments' crops and order (the configs: the run's ``seed``, 1234).
        progress: show a progress bar while preparing.
    """

    def __init__(
        self,
        *,
        cache_dir: str,
        audio_dirs: Sequence[str] = (),
        mel_source: str = "audio",
        flow: FlowMels | None = None,
        mel_dir: str | None = None,
        paired_audio_dir: str | None = None,
        teacher: HiFTGenerator | None = None,
        teacher_seed: int = 0,
        segment_frames: int = 32,
        speed_perturb: Sequence[float] | None = None,
        tilt_db: Sequence[float] | None = None,
        batch_size: int = 4,
        val_dirs: Sequence[str] = (),
        val_fraction: float = 0.2,
        val_max_utterances: int | None = 100,
        val_max_frames: int = 250,
        num_workers: int = 0,
        seed: int = 1234,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.mel_sources = parse_sources(mel_source)
        if not audio_dirs and mel_dir is None and "text" not in self.mel_sources:
            raise DataError("data: set `data.audio_dirs` and/or `data.mel_dir`; both are empty")
        self.audio_dirs = [Path(d).expanduser() for d in audio_dirs]
        self.mel_dir = Path(mel_dir).expanduser() if mel_dir else None
        self.paired_audio_dir = Path(paired_audio_dir).expanduser() if paired_audio_dir else None
        self.val_dirs = [Path(d).expanduser() for d in val_dirs]
        overlap = sorted(
            f"{v} and {a}"
            for v in self.val_dirs
            for a in self.audio_dirs
            if v.resolve().is_relative_to(a.resolve()) or a.resolve().is_relative_to(v.resolve())
        )
        if overlap:
            raise DataError(
                f"data.val_dirs overlaps data.audio_dirs ({'; '.join(overlap)}): held-out audio would be trained on"
            )
        for option, folder in (
            [("data.audio_dirs", d) for d in self.audio_dirs]
            + [("data.val_dirs", d) for d in self.val_dirs]
            + [
                ("data.mel_dir", self.mel_dir),
                ("data.paired_audio_dir", self.paired_audio_dir),
            ]
        ):
            if folder is not None and not folder.is_dir():
                raise MissingFileError(f"{option}: folder not found: {folder}{missing_hint(folder)}")
        if val_max_utterances is not None and val_max_utterances < 1:
            raise DataError(f"data.val_max_utterances must be at least 1 or null, got {val_max_utterances}")
        self.cache = TensorCache(cache_dir)
        self.teacher = teacher
        self.teacher_seed = teacher_seed
        self.segment_frames = segment_frames
        self.speed_perturb = check_speed_factors(speed_perturb, teacher)
        self.tilt_db = check_tilt(tilt_db, teacher)
        self.flow = check_flow(self.mel_sources, flow, teacher, mel_dir, self.speed_perturb or self.tilt_db)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.val_max_utterances = val_max_utterances
        self.val_max_frames = val_max_frames
        self.num_workers = num_workers
        self.seed = seed
        self.progress = progress
        self.corpus = Corpus(self.cache, self.mel_sources, self.audio_dirs, self.val_dirs, self.mel_dir,
                             self.paired_audio_dir, self.flow, val_fraction)  # fmt: skip
        self.filler = CacheFiller(self.cache, self.flow, teacher, teacher_seed, progress)
        self.skipped: list[tuple[str, str]] = []
        self.train_set: UtteranceDataset | None = None
        self.val_set: UtteranceDataset | None = None

    # -- discovery and the cache (train.data.sources, train.data.fill) ---------------------
    def utterances(self) -> list[Utterance]:
        """Source files with their content keys, found once per data module (:class:`Corpus`)."""
        return self.corpus.utterances()

    def teacher_key(self, utterance: Utterance) -> str | None:
        return self.filler.teacher_key(utterance)

    def prepare(self, rank: int = 0, world_size: int = 1, device: torch.device | str | None = None) -> PrepareReport:
        """Compute and cache what is missing of this process's share (:meth:`CacheFiller.prepare`)."""
        report = self.filler.prepare(self.utterances(), rank, world_size, device)
        self.skipped = report.skipped
        return report

    def _distributed(self) -> tuple[int, int, torch.device | None]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return 0, 1, None
        return trainer.global_rank, trainer.world_size, trainer.strategy.root_device

    def prepare_data(self) -> None:
        """Lightning's hook (one process per node): remove what killed runs left, find and
        hash the sources once; with one process, prepare everything here, else each process
        prepares its own share in :meth:`setup`."""
        if self.cache.root.is_dir():
            remove_stale_temporaries(self.cache.root)
        self.utterances()
        if self._distributed()[1] == 1:
            report = self.prepare()
            if len(report.skipped) == report.assigned:
                raise DataError(self._nothing_usable())

    @property
    def sources(self) -> list[str]:
        """The folders read: audio folders, held-out audio folders, then the mel folder."""
        return self.corpus.sources

    def _describe_sources(self) -> str:
        return self.corpus.describe()

    def _nothing_usable(self) -> str:
        found = len(self.utterances())
        if not found:
            suffixes = ", ".join(AUDIO_SUFFIXES + MEL_SUFFIXES)
            return f"data: no usable utterances in {self._describe_sources()}: no {suffixes} files found"
        return (
            f"data: no usable utterances in {self._describe_sources()} "
            f"({len(self.skipped)} skipped of {found}, see the warnings above)"
        )

    # -- split and loaders ------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        rank, world_size, device = self._distributed()
        if world_size > 1:
            self.prepare(rank, world_size, device)
            self.trainer.strategy.barrier("prepared")
        train, val = self.split()
        train = self._long_enough(train)
        self.train_set = UtteranceDataset(
            self.cache,
            train,
            segment_frames=self.segment_frames,
            seed=self.seed,
            speed_factors=self.speed_perturb,
            tilt_db=self.tilt_db,
            drop_audio="text" in self.mel_sources,
        )
        self.val_set = UtteranceDataset(
            self.cache, val or train[:1], max_frames=self.val_max_frames, drop_audio="text" in self.mel_sources
        )

    def draw_weights(self) -> list[float] | None:
        """One weight per training utterance so that each mel source gets its share of draws
        (``data.mel_source``); ``None`` for a single source (a plain shuffle)."""
        present = {u.source for u, _ in self.train_set.entries}
        if len(self.mel_sources) == 1:
            return None
        missing = sorted(set(self.mel_sources) - present)
        if missing:
            raise DataError(f"data.mel_source mixes {', '.join(self.mel_sources)}, but no {', '.join(missing)} "
                            "utterance is long enough to train on")  # fmt: skip
        counts = {s: sum(u.source == s for u, _ in self.train_set.entries) for s in present}
        return [self.mel_sources[u.source] / counts[u.source] for u, _ in self.train_set.entries]

    def _long_enough(self, entries: list[Entry]) -> list[Entry]:
        """The entries that hold at least one training segment."""
        frames = FrameIndex(self.cache)
        kept = [e for e in entries if frames[e[0].key] >= self.segment_frames]
        try:
            frames.save()
        except OSError as err:
            log.warning("could not update %s: %s", frames.path, err)
        if len(kept) < len(entries):
            short = sorted(e[0].name for e in entries if e not in kept)
            log.info(
                "data: %d utterances shorter than data.segment_frames=%d left out of training: %s%s",
                len(short),
                self.segment_frames,
                ", ".join(short[:5]),
                " ..." if len(short) > 5 else "",
            )
        if not kept:
            longest = max((frames[e[0].key] for e in entries), default=0)
            raise DataError(
                f"data: no training utterance is at least data.segment_frames={self.segment_frames} frames long "
                f"(the longest has {longest}) in {self._describe_sources()}"
            )
        return kept

    def split(self) -> tuple[list[Entry], list[Entry]]:
        """Prepared ``(utterance, teacher cache key)`` entries as (train, validation), whatever their
        length (:func:`train.data.sources.split`)."""
        entries = []
        for utterance in self.utterances():
            teacher_key = self.teacher_key(utterance)
            ready = ("mel", utterance.key) in self.cache and (
                teacher_key is None or ("teacher", teacher_key) in self.cache
            )
            if ready and (teacher_key is not None or utterance.has_audio):
                entries.append((utterance, teacher_key))
        if not entries:
            raise DataError(self._nothing_usable())
        return split(entries, self.mel_sources, self.val_dirs, self.val_fraction, self.val_max_utterances)

    def evaluation_set(self, split: str = "val", max_frames: int | None = None) -> UtteranceDataset:
        """Whole utterances (up to ``max_frames``) of the ``val``, ``train`` or ``all`` split, by name."""
        train, val = self.split()
        chosen = {"val": val, "train": train, "all": train + val}.get(split)
        if chosen is None:
            raise DataError(f"split={split!r}: choose 'val', 'train' or 'all'")
        if not chosen:
            raise DataError(f"split={split!r} is empty for {self._describe_sources()}")
        return UtteranceDataset(self.cache, sorted(chosen, key=lambda e: e[0].name), max_frames=max_frames)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=SegmentSampler(len(self.train_set), self.seed, self.draw_weights()),
            num_workers=self.num_workers,
            drop_last=len(self.train_set) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, num_workers=self.num_workers)
