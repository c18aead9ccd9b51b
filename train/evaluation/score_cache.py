"""A content-addressed store of what the costly metrics found in one signal.

Every evaluation of a data set scores the same ground truth and the same Griffin-Lim floor
again; only the student's output is new. Their CREPE tracks, DNSMOS and DistillMOS scores,
speaker embeddings and the floor's paired scores are the most expensive part of a run, so
:class:`~train.evaluation.metrics.QualityMetrics` keeps them here, keyed by the SHA-256 of
the waveform's float32 samples. A student's output gets a new key, so it is always scored; an
identical signal is never scored twice, whichever checkpoint, run or process asks. The floor's
waveforms themselves (64 Griffin-Lim iterations, about as dear as scoring a signal) are kept
the same way, keyed by the mel they come from (``train/evaluate.py``).

Entries live in a folder named after a fingerprint of everything that could change a value:
the metric settings, the versions of the packages that compute them and :data:`VERSION`. A
change of any of them starts a new folder; nothing is invalidated in place. Each entry is one
small file written atomically, so worker processes can share the store, and an unreadable
entry is computed again (with a warning) and replaced.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vocos_distill.files import atomic_write, atomic_write_text

VERSION = 1  # raise when what an entry means changes
PACKAGES = ("torch", "torchaudio", "torchcrepe", "speechmos", "onnxruntime", "distillmos", "resemblyzer", "pesq",
            "pystoi")  # fmt: skip
ARRAY_KINDS = ("pitch", "speaker", "waveform")  # stored as .npz; the others as JSON


class ScoreCacheWarning(UserWarning):
    """An entry of the score cache could not be read; it is computed again."""


def signal_key(wav: Tensor) -> str:
    """The SHA-256 of a waveform's float32 samples (length included: the bytes are the samples)."""
    data = wav.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def fingerprint(settings: dict[str, Any]) -> dict[str, Any]:
    """Everything an entry's value depends on besides the signal itself."""
    return {"version": VERSION, "settings": settings, "packages": {p: _version(p) for p in PACKAGES}}


class ScoreCache:
    """``get_or_compute(kind, key, compute)``: the stored value of ``kind`` for the signal(s)
    ``key``, or ``compute()``'s, stored when ``keep(value)`` says so.

    Args:
        folder: the store's root; entries go under ``folder/<fingerprint hash>/``.
        settings: what the values depend on (JSON-serialisable), see :func:`fingerprint`.
    """

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.identity = fingerprint(settings)
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(folder).expanduser() / digest
        self.hits = self.misses = 0
        self._described = False

    def _path(self, kind: str, key: str) -> Path:
        suffix = ".npz" if kind in ARRAY_KINDS else ".json"
        return self.folder / key[:2] / f"{key}.{kind}{suffix}"

    def get_or_compute(
        self, kind: str, key: str, compute: Callable[[], Any], keep: Callable[[Any], bool] = lambda _: True
    ) -> Any:
        path = self._path(kind, key)
        if path.exists():
            try:
                value = self._read(kind, path)
            except Exception as err:  # a truncated or foreign file: score again and replace it
                warnings.warn(f"score cache entry {path} unreadable ({type(err).__name__}: {err}); "
                              "computing it again", ScoreCacheWarning, stacklevel=2)  # fmt: skip
            else:
                self.hits += 1
                return value
        self.misses += 1
        value = compute()
        if keep(value):
            self._write(kind, path, value)
        return value

    # -- files --------------------------------------------------------------------
    def _describe(self) -> None:
        """``fingerprint.json`` once per folder: what its entries were computed with."""
        if not self._described:
            path = self.folder / "fingerprint.json"
            if not path.exists():
                atomic_write_text(path, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")
            self._described = True

    def _write(self, kind: str, path: Path, value: Any) -> None:
        self._describe()
        if kind in ARRAY_KINDS:
            arrays = _to_arrays(kind, value)
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            atomic_write(path, lambda f: f.write(buffer.getvalue()))
        else:
            atomic_write_text(path, json.dumps(value))

    @staticmethod
    def _read(kind: str, path: Path) -> Any:
        if kind in ARRAY_KINDS:
            with np.load(path, allow_pickle=False) as data:
                return _from_arrays(kind, {name: data[name] for name in data.files})
        value = json.loads(path.read_text())
        if isinstance(value, dict):
            if not all(isinstance(v, (int, float)) for v in value.values()):
                raise ValueError("expected a mapping of metric names to numbers")
            return {k: float(v) for k, v in value.items()}
        if not isinstance(value, (int, float)):
            raise ValueError("expected a number")
        return float(value)


@dataclass(frozen=True)
class Pitch:
    """CREPE pitch track at 10 ms frames: F0 (Hz), periodicity (0 in silence) and voicing."""

    f0: np.ndarray
    periodicity: np.ndarray
    voiced: np.ndarray


def all_finite(scores: dict[str, float]) -> bool:
    """Keep only complete results: a NaN was a failure, whose warning a later run should repeat."""
    return all(math.isfinite(v) for v in scores.values())


def _to_arrays(kind: str, value: Any) -> dict[str, np.ndarray]:
    if kind == "pitch":
        return {"f0": value.f0, "periodicity": value.periodicity, "voiced": value.voiced}
    if kind == "waveform":
        return {"wav": value.detach().cpu().numpy()}
    return {"embedding": np.asarray(value)}


def _from_arrays(kind: str, arrays: dict[str, np.ndarray]) -> Any:
    if kind == "pitch":
        f0, periodicity, voiced = arrays["f0"], arrays["periodicity"], arrays["voiced"]
        if not (f0.shape == periodicity.shape == voiced.shape and voiced.dtype == np.bool_):
            raise ValueError("pitch arrays of different lengths or types")
        return Pitch(f0, periodicity, voiced)
    if kind == "waveform":
        return torch.from_numpy(arrays["wav"])
    return arrays["embedding"]
