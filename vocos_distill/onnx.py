"""A student's ONNX graph (``mel -> wav``, the iSTFT inside) run by ONNX Runtime on the CPU.

``train.student.graph.export_onnx`` writes such graphs (a release's ``model.onnx`` and
``model.int8.onnx``, ``train/quantize.py``'s int8); their metadata records the student's config,
the numerics and, for int8, the probe of :mod:`vocos_distill.int8_check`, which every int8 graph
runs on the machine it is loaded on before it decodes anything.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vocos_distill.config import StudentConfig
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import sha256_file
from vocos_distill.int8_check import (
    Int8Check,
    Int8MismatchError,
    machine_key,
    read_probe,
    recall,
    remember,
    self_check,
)
from vocos_distill.streaming import WindowedStream
from vocos_distill.timing import interleaved, timing_mel
from vocos_distill.vocoder import MelStream, Vocoder

if TYPE_CHECKING:  # imported where a graph runs: the PyTorch runtime never needs it
    import onnxruntime as ort

SUFFIX = ".onnx"


class OnnxArtifactError(ConfigError, ValueError):
    """An ONNX student where a trainable checkpoint is needed, or an unreadable ONNX file."""


def session(model: bytes | str | Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads that do not spin between calls
    (a spinning pool would fight PyTorch for the cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix == SUFFIX


class OnnxVocoder(Vocoder):
    """``mel (B, 80, T) -> wav (B, T * hop)`` through a student graph (CPU, ONNX Runtime), with as
    many threads as ``torch.get_num_threads()`` says at the call. An int8 graph runs its
    self-check first (``check=False`` skips it, to read its metadata only)."""

    def __init__(self, path: str | Path, check: bool = True) -> None:
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise MissingFileError(f"ONNX student not found: {self.path}")
        self._bytes = self.path.read_bytes()
        self._sessions: dict[int, ort.InferenceSession] = {}
        try:
            first = self.session()
            meta = dict(first.get_modelmeta().custom_metadata_map)
            record = json.loads(meta["config"])
        except Exception as err:
            raise OnnxArtifactError(
                f"{self.path}: not a student graph written by this project (train/quantize.py, train/export.py): {err}"
            ) from err
        self.config = StudentConfig.from_dict(record, f"{self.path} (its config metadata)")
        outputs = [o.name for o in first.get_outputs()]
        if outputs != ["wav"]:
            raise OnnxArtifactError(
                f"{self.path}: a graph with outputs {outputs}, not the waveform: written before the iSTFT moved into "
                "the graph. Write it again (python train/quantize.py checkpoint=<its .ckpt>, or train/export.py)."
            )
        self.metadata = meta
        self.quantization = meta.get("quantization", "fp32")
        self.file_bytes = len(self._bytes)
        self.int8_check: Int8Check | None = None
        if self.is_int8 and check:
            self.check()

    @property
    def is_int8(self) -> bool:
        return self.quantization != "fp32"

    @property
    def runtime(self) -> str:
        return "int8" if self.is_int8 else "onnx"

    @cached_property
    def sha256(self) -> str:
        """The graph file's SHA-256: what its self-check and speed check are remembered by."""
        return hashlib.sha256(self._bytes).hexdigest()

    def check(self) -> Int8Check:
        """Run (or recall) this int8 graph's self-check on this machine
        (:func:`vocos_distill.int8_check.self_check`); raises
        :class:`~vocos_distill.int8_check.Int8MismatchError` when it fails. Returns the result."""
        self.int8_check = self_check(self.path.name, self.sha256, self.metadata, self.path)
        if not self.int8_check.ok:
            raise Int8MismatchError(
                f"{self.path}: the int8 graph is wrong on this machine, {self.int8_check.cpu}: "
                f"{self.int8_check.reason}. Use its fp32 graph (runtime='onnx' or 'torch'), or write it again "
                "with this version (train/quantize.py or train/export.py), whose int8 cannot overflow."
            )
        return self.int8_check

    def session(self) -> ort.InferenceSession:
        threads = torch.get_num_threads()
        if threads not in self._sessions:
            self._sessions[threads] = session(self._bytes, threads)
        return self._sessions[threads]

    def forward(self, mel: Tensor) -> Tensor:
        self.check_mel(mel)
        (wav,) = self.session().run(None, {"mel": mel.detach().float().cpu().numpy()})
        return torch.from_numpy(wav).to(mel.device)

    def stream(self, lookahead: int | None = None) -> MelStream:
        return WindowedStream(self, lookahead)

    def __getstate__(self) -> dict[str, Any]:  # picklable (the memory benchmark runs it in a fresh process)
        return {k: v for k, v in self.__dict__.items() if k != "_sessions"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sessions = {}


def speed_check(int8: OnnxVocoder, fp32_path: Path, repeats: int = 5) -> dict[str, float]:
    """Seconds per call of an int8 ``OnnxVocoder`` and of the fp32 graph at ``fp32_path`` on 3 s
    of the int8 graph's probe mel (median of ``repeats`` after a warm-up), at the current thread
    count; cached per file pair, CPU, ONNX Runtime version and thread count (a cached answer
    loads no fp32 session)."""
    threads = torch.get_num_threads()
    key = f"speed:{int8.sha256}:{sha256_file(fp32_path)}:{machine_key()}:{threads}"
    known = recall(key)
    if known is not None:
        return known
    fp32 = OnnxVocoder(fp32_path)
    probe = read_probe(int8.metadata)
    mel = torch.from_numpy(probe.mel) if probe is not None else timing_mel(24, n_mels=int8.n_mels)
    mel = mel.repeat(1, 1, -(-150 // mel.shape[-1]))[..., :150]  # 3 s: long enough to time
    with torch.inference_mode():
        result = interleaved({"int8_s": lambda: int8(mel), "fp32_s": lambda: fp32(mel)}, repeats)
    remember(key, result)
    return result
