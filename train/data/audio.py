"""Reading the audio and mel files a corpus holds, and the S3Gen mels of real speech for benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from train.s3gen.mel import S3GenMel
from vocos_distill.config import N_MELS
from vocos_distill.errors import MissingFileError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MEL_SUFFIXES = (".npy", ".pt")


def read_audio(path: Path) -> tuple[Tensor, int]:
    """Audio file -> ``(1, C, L)`` float tensor and its sample rate."""
    data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (L, C)
    return torch.from_numpy(data.T.copy()).unsqueeze(0), sample_rate


def read_mel(path: Path) -> Tensor:
    mel = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
    if not torch.is_tensor(mel) or mel.dim() != 2 or mel.shape[0] != N_MELS:
        shape = tuple(mel.shape) if torch.is_tensor(mel) else type(mel).__name__
        raise ValueError(f"expected a mel of shape ({N_MELS}, T), found {shape}")
    if not torch.isfinite(mel).all():
        raise ValueError("mel contains NaN or inf")
    return mel.float()


def find_files(root: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def corpus_mels(root: str | Path, count: int, seconds: float) -> list[Tensor]:
    """S3Gen mels ``(80, T)`` of the first ``count`` audio files under ``root`` (sorted by path),
    each cut to ``seconds``: real speech for benchmarks that need it."""
    root = Path(root)
    files = find_files(root, AUDIO_SUFFIXES)[: int(count)]
    if not files:
        raise MissingFileError(f"no audio ({', '.join(AUDIO_SUFFIXES)}) under {root}")
    mel = S3GenMel()
    out = []
    for path in files:
        audio, rate = read_audio(path)
        with torch.no_grad():
            out.append(mel(audio[..., : int(seconds * rate)], rate)[0])
    return out
