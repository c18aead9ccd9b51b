"""Data: audio folders and/or pre-computed S3Gen mels -> cached (mel, audio, teacher wav) -> segments.

``prepare_data`` computes every utterance's mel (and, given a teacher, its waveform with a
fixed seed) once and caches it under ``cache_dir``, keyed by content: the audio or mel
file's bytes, the mel settings, and the teacher weights' fingerprint. Each cache file is
written atomically, so an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from train.s3gen.hift import HiFTGenerator
from train.s3gen.mel import HOP_LENGTH, N_MELS, S3GenMel
from train.s3gen.teacher import synthesize
from train.utils.files import atomic_write

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MEL_SUFFIXES = (".npy", ".pt")
# Bump when the mel definition or the cached layout changes.
MEL_VERSION = "s3gen-mel-v1:sr24000:nfft1920:hop480:mels80:fmax8000"


class TensorCache:
    """Dicts of tensors stored as ``<root>/<kind>/<key[:2]>/<key>.pt``, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.pt"

    def __contains__(self, item: tuple[str, str]) -> bool:
        return self.path(*item).is_file()

    def load(self, kind: str, key: str) -> dict[str, Tensor]:
        return torch.load(self.path(kind, key), map_location="cpu", weights_only=True)

    def save(self, kind: str, key: str, entry: dict[str, Tensor]) -> None:
        atomic_write(self.path(kind, key), lambda f: torch.save(entry, f))


@dataclass(frozen=True)
class Utterance:
    """One source file. ``name`` is what messages show; ``key`` addresses its cached mel."""

    name: str
    path: Path
    key: str
    kind: str  # "audio" or "mel"
    paired_audio: Path | None = None

    @property
    def has_audio(self) -> bool:
        return self.kind == "audio" or self.paired_audio is not None


def file_digest(*paths: Path | None) -> str:
    digest = hashlib.sha256(MEL_VERSION.encode())
    for path in paths:
        digest.update(b"\0" if path is None else path.read_bytes())
    return digest.hexdigest()[:32]


def read_audio(path: Path) -> tuple[Tensor, int]:
    """Audio file -> ``(1, C, L)`` float tensor and its sample rate."""
    data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (L, C)
    return torch.from_numpy(data.T.copy()).unsqueeze(0), sample_rate


def read_mel(path: Path) -> Tensor:
    mel = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
    if not torch.is_tensor(mel) or mel.dim() != 2 or mel.shape[0] != N_MELS:
        shape = tuple(mel.shape) if hasattr(mel, "shape") else type(mel).__name__
        raise ValueError(f"expected a mel of shape ({N_MELS}, T), found {shape}")
    if not torch.isfinite(mel).all():
        raise ValueError("mel contains NaN or inf")
    return mel.float()


def find_files(root: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


class SegmentSampler(Sampler[int]):
    """Shuffles utterances every epoch and tags each draw with its epoch: index = epoch * n + utterance.

    The dataset seeds its random crop from the index, so an epoch's batches depend only on
    (seed, epoch): a run resumed at an epoch boundary sees the same data as an unbroken one.
    """

    def __init__(self, num_items: int, seed: int = 0) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        base = self.epoch * self.num_items
        self.epoch += 1  # fresh draws next time even if nobody calls set_epoch (e.g. under a wrapper)
        return iter([base + i for i in order])


class UtteranceDataset(Dataset):
    """Cached utterances as dicts of ``mel (80, T)``, ``audio (T * 480,)`` and/or ``teacher (T * 480,)``.

    With ``segment_frames`` set, returns a random frame-aligned segment seeded by the index
    (see :class:`SegmentSampler`); otherwise the first ``max_frames`` frames.
    """

    def __init__(
        self,
        cache: TensorCache,
        entries: list[tuple[Utterance, str | None]],
        segment_frames: int | None = None,
        max_frames: int | None = None,
        seed: int = 0,
    ) -> None:
        self.cache = cache
        self.entries = entries
        self.segment_frames = segment_frames
        self.max_frames = max_frames
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        utterance, teacher_key = self.entries[index % len(self.entries)]
        item = {k: v for k, v in self.cache.load("mel", utterance.key).items() if v is not None}
        if teacher_key is not None:
            item["teacher"] = self.cache.load("teacher", teacher_key)["wav"]
        frames = item["mel"].shape[-1]
        if self.segment_frames is not None:
            start = random.Random(f"{self.seed}:{index}").randint(0, frames - self.segment_frames)
            length = self.segment_frames
        else:
            start, length = 0, min(frames, self.max_frames or frames)
        out = {"mel": item["mel"][:, start : start + length]}
        for name in ("audio", "teacher"):
            if name in item:
                out[name] = item[name][start * HOP_LENGTH : (start + length) * HOP_LENGTH]
        return out


class VocoderDataModule(LightningDataModule):
    """Audio folders and/or a folder of S3Gen mels, cached, split, and served as segments.

    Args:
        audio_dirs: folders searched recursively for wav / flac / ogg / mp3.
        mel_dir: folder of pre-computed S3Gen mels (``.npy`` / ``.pt``, shape (80, T)), e.g.
            the flow model's outputs; ``paired_audio_dir`` may hold audio with the same
            relative names.
        cache_dir: where mels and teacher waveforms are cached.
        teacher: a loaded HiFT; when given, its waveform for every mel is a target.
        segment_frames: training segment length in mel frames (480 samples each).
        val_fraction: share of utterances held out for validation (at least one), chosen
            by a hash of each file's relative name, so the split never depends on order.
        val_max_frames: validation utterances are cut to this many frames.
    """

    def __init__(
        self,
        audio_dirs: Sequence[str] = (),
        mel_dir: str | None = None,
        paired_audio_dir: str | None = None,
        cache_dir: str = "checkpoints/cache",
        teacher: HiFTGenerator | None = None,
        teacher_seed: int = 0,
        segment_frames: int = 32,
        batch_size: int = 4,
        val_fraction: float = 0.2,
        val_max_frames: int = 250,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not audio_dirs and mel_dir is None:
            raise ValueError("data: set `data.audio_dirs` and/or `data.mel_dir`; both are empty")
        self.audio_dirs = [Path(d).expanduser() for d in audio_dirs]
        self.mel_dir = Path(mel_dir).expanduser() if mel_dir else None
        self.paired_audio_dir = Path(paired_audio_dir).expanduser() if paired_audio_dir else None
        for option, folder in [("data.audio_dirs", d) for d in self.audio_dirs] + [
            ("data.mel_dir", self.mel_dir),
            ("data.paired_audio_dir", self.paired_audio_dir),
        ]:
            if folder is not None and not folder.is_dir():
                raise FileNotFoundError(f"{option}: folder not found: {folder}")
        self.cache = TensorCache(cache_dir)
        self.teacher = teacher
        self.teacher_seed = teacher_seed
        self.segment_frames = segment_frames
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.val_max_frames = val_max_frames
        self.num_workers = num_workers
        self.seed = seed
        self.mel = S3GenMel()
        self.skipped: list[tuple[str, str]] = []
        self._utterances: list[Utterance] | None = None
        self.train_set: UtteranceDataset | None = None
        self.val_set: UtteranceDataset | None = None

    # -- discovery -----------------------------------------------------------------
    def utterances(self) -> list[Utterance]:
        """Source files with their content keys, found (and hashed) once per data module."""
        if self._utterances is None:
            self._utterances = self._discover()
        return self._utterances

    def _discover(self) -> list[Utterance]:
        found = []
        for root in self.audio_dirs:
            for path in find_files(root, AUDIO_SUFFIXES):
                found.append(Utterance(str(path.relative_to(root)), path, file_digest(path), "audio"))
        if self.mel_dir is not None:
            for path in find_files(self.mel_dir, MEL_SUFFIXES):
                rel = path.relative_to(self.mel_dir)
                audio = self._paired_audio(rel)
                found.append(Utterance(str(rel), path, file_digest(path, audio), "mel", audio))
        return found

    def _paired_audio(self, rel: Path) -> Path | None:
        if self.paired_audio_dir is None:
            return None
        for suffix in AUDIO_SUFFIXES:
            candidate = self.paired_audio_dir / rel.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        return None

    def teacher_key(self, utterance: Utterance) -> str | None:
        if self.teacher is None:
            return None
        weights = getattr(self.teacher, "weights_id", None)
        if weights is None:
            raise ValueError("data.teacher has no `weights_id`; load it with train.s3gen.teacher.load_teacher")
        return hashlib.sha256(f"{utterance.key}:{weights}:{self.teacher_seed}".encode()).hexdigest()[:32]

    # -- preparation ----------------------------------------------------------------
    def _compute_mel_entry(self, utterance: Utterance) -> dict[str, Tensor | None]:
        if utterance.kind == "audio":
            wav, sample_rate = read_audio(utterance.path)
            if wav.numel() == 0:
                raise ValueError("empty audio")
            wav = self.mel.to_mono_24k(wav, sample_rate)
            frames = wav.shape[-1] // HOP_LENGTH
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
        if frames < self.segment_frames:
            raise ValueError(f"{frames} frames, shorter than one training segment ({self.segment_frames})")
        return {"mel": mel.contiguous(), "audio": None if audio is None else audio.contiguous()}

    def prepare_data(self) -> None:
        """Compute and cache what is missing; warn about and count unusable files."""
        self.skipped = []
        usable = 0
        for utterance in self.utterances():
            try:
                if ("mel", utterance.key) not in self.cache:
                    self.cache.save("mel", utterance.key, self._compute_mel_entry(utterance))
                teacher_key = self.teacher_key(utterance)
                if teacher_key is not None and ("teacher", teacher_key) not in self.cache:
                    mel = self.cache.load("mel", utterance.key)["mel"]
                    wav = synthesize(self.teacher, mel.unsqueeze(0), seed=self.teacher_seed)[0]
                    self.cache.save("teacher", teacher_key, {"wav": wav.cpu()})
                if self.teacher is None and not utterance.has_audio:
                    raise ValueError("a mel without paired audio needs a teacher to give it a target")
                usable += 1
            except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
                self.skipped.append((utterance.name, str(err)))
                log.warning("skipping %s: %s", utterance.path, err)
        log.info("data: %d usable utterances, %d skipped", usable, len(self.skipped))
        if usable == 0:
            raise ValueError(
                f"data: no usable utterances in {self._describe_sources()} "
                f"({len(self.skipped)} skipped, see the warnings above)"
            )

    @property
    def sources(self) -> list[str]:
        """The folders read: audio folders, then the mel folder."""
        return [str(d) for d in self.audio_dirs] + ([str(self.mel_dir)] if self.mel_dir else [])

    def _describe_sources(self) -> str:
        return ", ".join(self.sources)

    # -- split and loaders ------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self.split()
        self.train_set = UtteranceDataset(self.cache, train, segment_frames=self.segment_frames, seed=self.seed)
        self.val_set = UtteranceDataset(self.cache, val or train[:1], max_frames=self.val_max_frames)

    def split(self) -> tuple[list[tuple[Utterance, str | None]], list[tuple[Utterance, str | None]]]:
        """Prepared ``(utterance, teacher cache key)`` entries as (train, validation)."""
        entries = []
        for utterance in self.utterances():
            teacher_key = self.teacher_key(utterance)
            ready = ("mel", utterance.key) in self.cache and (
                teacher_key is None or ("teacher", teacher_key) in self.cache
            )
            if ready and (teacher_key is not None or utterance.has_audio):
                entries.append((utterance, teacher_key))
        if not entries:
            raise ValueError(f"data: nothing prepared for {self._describe_sources()}; run prepare_data first")

        def bucket(utterance: Utterance) -> float:
            return int(hashlib.sha1(utterance.name.encode()).hexdigest()[:8], 16) / 16**8

        ranked = sorted(entries, key=lambda e: bucket(e[0]))
        n_val = max(1, sum(bucket(u) < self.val_fraction for u, _ in entries)) if len(entries) > 1 else 0
        val, train = ranked[:n_val], ranked[n_val:]
        log.info("data: %d training and %d validation utterances", len(train), len(val))
        return train, val

    def evaluation_set(self, split: str = "val", max_frames: int | None = None) -> UtteranceDataset:
        """Whole utterances (up to ``max_frames``) of the ``val``, ``train`` or ``all`` split, by name."""
        train, val = self.split()
        chosen = {"val": val, "train": train, "all": train + val}.get(split)
        if chosen is None:
            raise ValueError(f"split={split!r}: choose 'val', 'train' or 'all'")
        if not chosen:
            raise ValueError(f"split={split!r} is empty for {self._describe_sources()}")
        return UtteranceDataset(self.cache, sorted(chosen, key=lambda e: e[0].name), max_frames=max_frames)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=SegmentSampler(len(self.train_set), self.seed),
            num_workers=self.num_workers,
            drop_last=len(self.train_set) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, num_workers=self.num_workers)
