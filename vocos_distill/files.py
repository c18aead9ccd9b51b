"""Writing files so that a crash never leaves a half-written one behind, nor a temporary forever.

A temporary is written beside its destination (same file system, so the final rename is
atomic) and named ``.<name>.<host>.<pid>.<random>.tmp``, so that a later start can tell a
temporary whose writer was killed from one still being written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

HOST = socket.gethostname()
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")
# A temporary from another machine is judged by age alone: nothing writes one for this long.
STALE_AFTER_S = 6 * 3600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``."""
    return path.with_name(f".{path.name}.{HOST.split('.')[0]}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, sync it, then rename it over
    ``path``. Readers see the old file or the new one, never a part; on error nothing changes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM  # exists, owned by someone else
    return True


def is_stale(path: Path, now: float | None = None) -> bool:
    """A temporary whose writer is gone: a dead process of this machine, or (another
    machine's, or of an unknown name) untouched for :data:`STALE_AFTER_S`."""
    match = TEMPORARY.match(path.name)
    if match and match["host"] == HOST.split(".")[0]:
        return not _running(int(match["pid"]))
    try:
        return (now or time.time()) - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the stale ``.*.tmp`` files under ``folder``; return what was removed."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file() and is_stale(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary files left by killed runs under %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def exclusive(path: str | Path, wait: bool = True) -> Iterator[bool]:
    """Hold an advisory lock on ``path`` (created if needed) for the block; yields whether it
    was acquired (always ``True`` with ``wait``). The kernel drops it when the holder dies, so
    a killed process never leaves it held."""
    import fcntl  # POSIX only: the runtime's other helpers run anywhere

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
