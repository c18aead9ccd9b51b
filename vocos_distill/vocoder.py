"""One interface for every form of a student, and one for every stream.

A :class:`Vocoder` turns an S3Gen log-mel ``(B, n_mels, T)`` into audio ``(B, T * hop_length)``
and says what callers need to know without asking which form it is: its mel bins, hop,
receptive field, device and dtype, and how it streams. Two forms implement it:
:class:`vocos_distill.student.VocosStudent` (PyTorch: fp32, pruned, fake-quantised for QAT,
torchao int8) and :class:`vocos_distill.onnx.OnnxVocoder` (an ONNX graph, fp32 or int8, on ONNX
Runtime); :func:`vocos_distill.from_pretrained` reads either from a file or a release. A
:class:`MelStream` (:mod:`vocos_distill.streaming`) decodes mel chunks as they arrive.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vocos_distill.config import Field, StudentConfig


class Vocoder(nn.Module):
    """``mel (B, n_mels, T) -> wav (B, T * hop_length)``, float32, whatever the form."""

    config: StudentConfig

    @property
    def n_mels(self) -> int:
        return self.config.input_channels

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def receptive_field(self) -> Field:
        return self.config.receptive_field

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def runtime(self) -> str:
        """Which form it is: ``torch`` (PyTorch), ``onnx`` (an fp32 graph) or ``int8`` (an int8 graph)."""
        return "torch"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def check_mel(self, mel: Tensor) -> None:
        if not isinstance(mel, Tensor) or mel.dim() != 3 or mel.shape[1] != self.n_mels:
            shape = tuple(mel.shape) if isinstance(mel, Tensor) else type(mel).__name__
            raise ValueError(f"the student expects a mel of shape (B, {self.n_mels}, T); got {shape}")

    def stream(self, lookahead: int | None = None) -> MelStream:
        """A stream of this vocoder (:mod:`vocos_distill.streaming`): mel chunks in, audio out."""
        raise NotImplementedError


class StreamClosedError(RuntimeError):
    """``push`` after ``flush``: the stream has ended (``reset()`` starts a new one)."""


class StreamBusyError(RuntimeError):
    """A call on a stream while another thread's call on it is under way: a stream is one
    utterance, decoded in order, so it is used from one thread at a time (one stream per thread)."""


class MelStream:
    """What every stream shares: ``push(chunk)`` returns the audio that is final so far,
    ``flush()`` the rest; chunks are ``(B, n_mels, frames)`` with any number of frames (zero
    included), the batch size fixed by the first chunk; every call returns ``(B, samples)``
    (``B`` 1 for a stream that was given no chunk at all). A refused chunk (wrong shape, dtype
    or device, NaN or inf, another batch size) raises before anything changes, so the stream
    goes on as if it had not been offered. A chunk of floating-point values on any device with
    data is decoded on the vocoder's.

    ``lookahead``: mel frames held back before a frame's audio is emitted, ``0`` up to the right
    side of the receptive field; ``None`` (the default) is that right side, which makes the stream
    equal to offline decoding. Each frame fewer lowers the latency by 20 ms and makes the audio
    near each chunk's end approximate (decoded as if the utterance ended at the last frame pushed).

    A stream is one utterance decoded in order, used from one thread at a time: a call while
    another thread's call on the same stream is under way raises :class:`StreamBusyError`
    (and changes nothing). Give each thread its own stream."""

    def __init__(self, n_mels: int, hop: int, field: Field, lookahead: int | None) -> None:
        if lookahead is None:
            lookahead = field.right
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
            raise ValueError(f"lookahead must be a whole number of frames >= 0 (or None); got {lookahead!r}")
        if lookahead > field.right:
            raise ValueError(
                f"lookahead {lookahead} frames is more than this vocoder's receptive field looks ahead: choose "
                f"0..{field.right} frames (None: {field.right}, exact); more would only hold audio back"
            )
        self.n_mels, self.hop, self.field, self.lookahead = n_mels, hop, field, lookahead
        self.exact = lookahead >= field.right
        self._busy = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the stream; the next push starts a new utterance."""
        with self._exclusive("reset"):
            self._batch: int | None = None
            self._frames = 0  # mel frames pushed
            self._emitted = 0  # samples returned
            self._closed = False
            self._reset()

    def _exclusive(self, call: str) -> _Exclusive:
        return _Exclusive(self._busy, call)

    @property
    def samples_emitted(self) -> int:
        return self._emitted

    def push(self, mel: Tensor) -> Tensor:
        """Take the next mel frames; return the audio ``(B, samples)`` that is final so far."""
        with self._exclusive("push"):
            if self._closed:
                raise StreamClosedError("push() after flush(): this stream has ended; call reset() to start another")
            mel = self._check(mel)
            with torch.inference_mode():
                out = self._push(mel)  # computes without changing the stream, then commits
            self._batch = mel.shape[0]
            self._frames += mel.shape[-1]
            self._emitted += out.shape[-1]
            return out

    def flush(self) -> Tensor:
        """End the stream and return the rest of the audio ``(B, samples)``: in all, ``frames * hop``."""
        with self._exclusive("flush"):
            if self._closed:
                raise StreamClosedError("flush() after flush(): this stream has ended; call reset() to start another")
            self._closed = True
            if self._batch is None:  # nothing was pushed: no frames, no samples, a batch of one
                return torch.zeros(1, 0, device=self._device())
            with torch.inference_mode():
                out = self._flush()
            self._emitted += out.shape[-1]
            return out

    def decode(self, mel: Tensor, chunk_frames: int | Sequence[int]) -> Tensor:
        """Stream a whole mel: chunks of ``chunk_frames`` frames (or of these sizes in turn, the
        last chunk taking what is left), and return all the audio ``(B, frames * hop)``."""
        total = mel.shape[-1]
        if isinstance(chunk_frames, int):
            sizes = [chunk_frames] * math.ceil(total / max(chunk_frames, 1))
        else:
            sizes = list(chunk_frames)
        bounds = [0]
        for size in sizes:
            bounds.append(min(total, bounds[-1] + size))
        if bounds[-1] < total:
            bounds.append(total)
        self.reset()
        pieces = [self.push(mel[..., a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
        pieces.append(self.flush())
        return torch.cat([p.reshape(mel.shape[0], -1) for p in pieces], dim=-1)

    def _check(self, mel: Tensor) -> Tensor:
        if not isinstance(mel, Tensor):
            raise TypeError(f"a mel chunk must be a tensor (B, {self.n_mels}, frames); got {type(mel).__name__}")
        if not mel.dtype.is_floating_point:
            raise TypeError(
                f"a mel chunk must hold floating-point values (float16, bfloat16, float32 or float64); got {mel.dtype}"
            )
        if mel.device.type == "meta":
            raise ValueError("a mel chunk on the meta device holds no values: give it on the CPU or a GPU")
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(
                f"a mel chunk must be (B, {self.n_mels}, frames): this vocoder takes {self.n_mels} mel bins; "
                f"got shape {tuple(mel.shape)}"
            )
        if self._batch is not None and mel.shape[0] != self._batch:
            raise ValueError(f"this stream has batch size {self._batch}; got a chunk of {mel.shape[0]}")
        bad = (~torch.isfinite(mel)).sum().item()
        if bad:
            raise ValueError(f"the mel chunk has {bad} non-finite values (NaN or inf); nothing was decoded")
        return mel.to(device=self._device(), dtype=torch.float32)

    def _device(self) -> torch.device:
        return torch.device("cpu")

    def _reset(self) -> None:
        raise NotImplementedError

    def _push(self, mel: Tensor) -> Tensor:
        raise NotImplementedError

    def _flush(self) -> Tensor:
        raise NotImplementedError


class _Exclusive:
    """A stream's lock, taken without waiting: a second thread's call raises instead of interleaving."""

    def __init__(self, lock: threading.Lock, call: str) -> None:
        self.lock, self.call = lock, call

    def __enter__(self) -> None:
        if not self.lock.acquire(blocking=False):
            raise StreamBusyError(
                f"{self.call}() while another thread's call on this stream is under way: a stream is used from one "
                "thread at a time (give each thread its own stream)"
            )

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
