"""Serving cached utterances as training segments: the dataset and its epoch-seeded sampler."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from train.data.augment import speed_perturbed
from train.data.cache import TensorCache
from train.data.sources import Entry
from train.s3gen.mel import S3GenMel
from vocos_distill.config import HOP_LENGTH


class SegmentSampler(Sampler[int]):
    """Shuffles utterances every epoch and tags each draw with its epoch: index = epoch * n + utterance.

    The dataset seeds its random crop from the index, so an epoch's batches depend only on
    (seed, epoch): a run resumed at an epoch boundary sees the same data as an unbroken one.

    With ``weights`` (one per utterance), an epoch draws ``num_items`` utterances with
    replacement in those proportions (a mix of mel sources), seeded the same way.
    """

    def __init__(self, num_items: int, seed: int = 0, weights: Sequence[float] | None = None) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0
        self.weights = torch.tensor(weights, dtype=torch.float64) if weights is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, self.num_items, replacement=True, generator=generator).tolist()
        base = self.epoch * self.num_items
        self.epoch += 1  # fresh draws next time even if nobody calls set_epoch (e.g. under a wrapper)
        return iter([base + i for i in order])


class UtteranceDataset(Dataset):
    """Cached utterances as dicts of ``mel (80, T)``, ``audio (T * 480,)`` and/or ``teacher (T * 480,)``.

    With ``segment_frames`` set, returns a random frame-aligned segment seeded by the index
    (see :class:`SegmentSampler`); every entry must then be at least that long. Otherwise the
    first ``max_frames`` frames. With ``speed_factors`` too, each segment is played at one of
    them, drawn with the same seed (:func:`speed_perturbed`; audio targets only); with
    ``tilt_db`` (low, high), its spectrum is tilted by a gain drawn uniformly from that range
    (:func:`tilted`).
    """

    def __init__(
        self,
        cache: TensorCache,
        entries: list[Entry],
        segment_frames: int | None = None,
        max_frames: int | None = None,
        seed: int = 0,
        speed_factors: Sequence[float] | None = None,
        tilt_db: Sequence[float] | None = None,
        drop_audio: bool = False,
    ) -> None:
        self.cache = cache
        self.drop_audio = drop_audio  # a mix with mels from text: no item has audio, so batches agree
        self.entries = entries
        self.segment_frames = segment_frames
        self.max_frames = max_frames
        self.seed = seed
        self.speed_factors = list(speed_factors or [])
        self.tilt_db = tuple(tilt_db) if tilt_db else None
        self.mel = S3GenMel() if self.speed_factors or self.tilt_db else None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        utterance, teacher_key = self.entries[index % len(self.entries)]
        item = {k: v for k, v in self.cache.load("mel", utterance.key).items() if v is not None and k != "tokens"}
        if self.drop_audio:
            item.pop("audio", None)
        if teacher_key is not None:
            item["teacher"] = self.cache.load("teacher", teacher_key)["wav"]
        frames = item["mel"].shape[-1]
        if self.segment_frames is not None:
            draw = random.Random(f"{self.seed}:{index}")
            start = draw.randint(0, frames - self.segment_frames)
            length = self.segment_frames
            factor = draw.choice(self.speed_factors) if self.speed_factors else 1.0
            tilt = draw.uniform(*self.tilt_db) if self.tilt_db else 0.0
            if factor != 1.0 or tilt:
                return speed_perturbed(item["audio"], start * HOP_LENGTH, length, factor, self.mel, tilt)
        else:
            start, length = 0, min(frames, self.max_frames or frames)
        out = {"mel": item["mel"][:, start : start + length]}
        for name in ("audio", "teacher"):
            if name in item:
                out[name] = item[name][start * HOP_LENGTH : (start + length) * HOP_LENGTH]
        return out
