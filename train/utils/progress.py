"""Progress that suits where it is written: a live bar on a terminal, and in a log file, a SLURM
log or CI's output, one plain line every ``log_interval_s`` seconds (and at the end), never a
redraw per item."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # seconds between two progress lines in a log


class _Lines:
    """A stream that turns tqdm's carriage-return redraws into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(*, file: TextIO | None = None, log_interval_s: float = LOG_INTERVAL_S, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar (``kwargs`` are tqdm's) on ``file`` (standard error by default)."""
    stream = file if file is not None else sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    if interactive:
        return tqdm(file=stream, dynamic_ncols=True, mininterval=0.5, **kwargs)
    return tqdm(file=_Lines(stream), ncols=100, mininterval=log_interval_s, maxinterval=log_interval_s, **kwargs)
