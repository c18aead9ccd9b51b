"""The content-keyed cache of mels and teacher waveforms, and what spares re-reading its sources.

Layout under the cache folder::

    mel/<k[:2]>/<k>.pt          {"mel": (80, T), "audio": (T * 480,) or None}
    teacher/<k[:2]>/<k>.pt      {"wav": (T * 480,)}
    manifests/<root hash>.json  source file -> (size, mtime, content key), one per source folder
    frames.json                 mel key -> T, so that splitting reads no entry

Entries are written atomically and never change once written (their key is a hash of what
they are made from), so any number of processes may share the folder. The two indexes are
caches of the cache: lost or stale, they are rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from vocos_distill.files import atomic_write, atomic_write_text, exclusive

log = logging.getLogger(__name__)


class TensorCache:
    """Dicts of tensors stored as ``<root>/<kind>/<key[:2]>/<key>.pt``, written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.pt"

    def __contains__(self, item: tuple[str, str]) -> bool:
        return self.path(*item).is_file()

    def load(self, kind: str, key: str, mmap: bool = False) -> dict[str, Tensor]:
        return torch.load(self.path(kind, key), map_location="cpu", weights_only=True, mmap=mmap)

    def save(self, kind: str, key: str, entry: dict[str, Tensor]) -> None:
        atomic_write(self.path(kind, key), lambda f: torch.save(entry, f))

    @contextlib.contextmanager
    def claim(self, kind: str, key: str, wait: bool) -> Iterator[bool]:
        """Hold the right to write one entry: yields ``False`` (without ``wait``) when another
        process holds it. The holder removes the lock file once the entry is written, while
        still holding it; whoever gets a lock must check again whether the entry exists."""
        lock = self.path(kind, key).with_suffix(".lock")
        with exclusive(lock, wait=wait) as acquired:
            yield acquired
            if acquired and (kind, key) in self:
                lock.unlink(missing_ok=True)


class SourceManifest:
    """What is known about one source folder's files: ``relative path -> [size, mtime_ns, key]``.

    A file whose size and modification time are unchanged keeps its content key without
    being read again. Stored as ``manifests/<hash of the folder's path>.json``.
    """

    def __init__(self, cache_root: str | Path, source: Path) -> None:
        name = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:16]
        self.path = Path(cache_root) / "manifests" / f"{name}.json"
        self.source = source
        self.entries: dict[str, list] = {}
        self.changed = False
        try:
            loaded = json.loads(self.path.read_text())
            if loaded.get("source") == str(source.resolve()):
                self.entries = loaded["files"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no manifest yet, or unreadable: every file is hashed once more

    @staticmethod
    def stamp(*paths: Path | None) -> list[int]:
        """Sizes and modification times of the files (None: a missing paired file)."""
        out = []
        for path in paths:
            stat = path.stat() if path is not None else None
            out += [stat.st_size, stat.st_mtime_ns] if stat else [-1, -1]
        return out

    def key(self, relative: str, stamp: list[int]) -> str | None:
        entry = self.entries.get(relative)
        return entry[-1] if entry is not None and entry[:-1] == stamp else None

    def record(self, relative: str, stamp: list[int], key: str) -> None:
        self.entries[relative] = [*stamp, key]
        self.changed = True

    def save(self, keep: set[str]) -> None:
        """Write it back (only the files seen this time) if anything changed."""
        if self.changed or set(self.entries) - keep:
            files = {k: v for k, v in self.entries.items() if k in keep}
            atomic_write_text(self.path, json.dumps({"source": str(self.source.resolve()), "files": files}))
            self.changed = False


class FrameIndex:
    """``mel key -> frame count`` for every cached mel, so that a split opens no entry."""

    def __init__(self, cache: TensorCache) -> None:
        self.cache = cache
        self.path = cache.root / "frames.json"
        try:
            self.frames: dict[str, int] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.frames = {}
        self.changed = False

    def __getitem__(self, key: str) -> int:
        if key not in self.frames:
            # mmap: only the entry's header is read, not its tensors
            self.frames[key] = int(self.cache.load("mel", key, mmap=True)["mel"].shape[-1])
            self.changed = True
        return self.frames[key]

    def save(self) -> None:
        if self.changed:
            atomic_write_text(self.path, json.dumps(self.frames))
            self.changed = False
