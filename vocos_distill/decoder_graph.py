"""Run a ``conditional_decoder.onnx`` written by ``train/export.py conditional_decoder=true``:
speech tokens + speaker -> waveform, as the ONNX Chatterbox pipelines call it.

Those pipelines call the graph themselves; this class is for Python users who want what the
rest of this package gives: inputs checked before ONNX Runtime sees them (each error names the
input at fault), and the int8 graph's self-check with a fall-back to fp32 that says why. The
int8 check runs the probe that the student's ``model.int8.onnx`` carried on the student's part
of the fused graph, cut out by its tensor names (:data:`STUDENT_INPUT`, :data:`STUDENT_OUTPUT`):
the same weights and kernels that decode. That cut needs the ``onnx`` package (Chatterbox's
environment has it: ``s3tokenizer`` requires it), imported only then.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vocos_distill.errors import ConfigError, Int8FallbackWarning, MissingFileError
from vocos_distill.files import sha256_file
from vocos_distill.int8_check import Int8MismatchError, self_check
from vocos_distill.onnx import session

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort

DECODER_FILES = {"fp32": "conditional_decoder.onnx", "int8": "conditional_decoder_int8.onnx"}
DECODER_KEY = "conditional_decoder"  # the metadata entry that says how the graph was made
INPUTS = ("speech_tokens", "speaker_embeddings", "speaker_features")
OUTPUT = "waveform"
STUDENT_INPUT = "mel"  # the flow's mel, the student's input inside the fused graph
STUDENT_OUTPUT = "student/wav"  # the student's waveform, before the fade
FADE_SAMPLES = 960  # S3Token2Wav.trim_fade: 480 samples of silence, then 480 of raised-cosine fade-in
SPEAKER_DIM, N_MELS = 192, 80


def chatterbox_fade() -> torch.Tensor:
    """Chatterbox's ``trim_fade`` ``(960,)``, computed as ``S3Token2Wav.__init__`` computes it."""
    half = FADE_SAMPLES // 2
    fade = torch.zeros(2 * half)
    fade[half:] = (torch.cos(torch.linspace(torch.pi, 0, half)) + 1) / 2
    return fade


class DecoderInputError(ConfigError, ValueError):
    """An input the conditional decoder cannot take; the message names it."""


def check_inputs(tokens: Any, embeddings: Any, features: Any, vocab_size: int) -> dict[str, np.ndarray]:
    """The contract's inputs as ONNX Runtime takes them, or a :class:`DecoderInputError` naming
    the input at fault: ``speech_tokens`` integer ``(B, N)`` with ids in ``0 .. vocab_size - 1``,
    ``speaker_embeddings`` ``(B, 192)``, ``speaker_features`` ``(B, frames, 80)`` with fewer frames
    than ``2 * N`` (the reference's mel covers its own tokens only), all finite."""
    import numpy as np

    def array(value: Any) -> np.ndarray:
        return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

    tokens, embeddings, features = array(tokens), array(embeddings), array(features)
    if tokens.dtype == np.bool_ or not np.issubdtype(tokens.dtype, np.integer):
        raise DecoderInputError(f"speech_tokens is {tokens.dtype}: the graph takes int64 token ids")
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise DecoderInputError(f"speech_tokens has shape {tokens.shape}: expected (batch, num_speech_tokens)")
    bad = np.flatnonzero((tokens < 0) | (tokens >= vocab_size))
    if bad.size:
        row, col = np.unravel_index(bad[0], tokens.shape)
        raise DecoderInputError(
            f"speech_tokens[{row}, {col}] is {tokens[row, col]}: ids must lie in 0..{vocab_size - 1} "
            f"({bad.size} out of range; drop the start/stop tokens {vocab_size} and above before decoding)"
        )
    batch = tokens.shape[0]
    for name, value, shape in (
        ("speaker_embeddings", embeddings, (batch, SPEAKER_DIM)),
        ("speaker_features", features, (batch, None, N_MELS)),
    ):
        if not np.issubdtype(value.dtype, np.floating):
            raise DecoderInputError(f"{name} is {value.dtype}: the graph takes float32")
        if value.ndim != len(shape) or any(
            want not in (None, got) for got, want in zip(value.shape, shape, strict=False)
        ):
            expected = "(" + ", ".join("frames" if d is None else str(d) for d in shape) + ")"
            raise DecoderInputError(f"{name} has shape {value.shape}: expected {expected}")
        if not np.isfinite(value).all():
            raise DecoderInputError(f"{name} holds NaN or infinite values")
    if features.shape[1] >= 2 * tokens.shape[1]:
        raise DecoderInputError(
            f"speaker_features has {features.shape[1]} frames, speech_tokens {tokens.shape[1]} tokens (2 frames each): "
            "the reference's mel must be shorter than the mel of all the tokens (the reference's, then the new ones)"
        )
    return {
        "speech_tokens": tokens.astype(np.int64),
        "speaker_embeddings": embeddings.astype(np.float32),
        "speaker_features": features.astype(np.float32),
    }


def student_part(path: Path) -> bytes:
    """The student's part of a fused decoder graph (``mel -> wav``), as a graph of its own."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(path))
    part = Extractor(model).extract_model([STUDENT_INPUT], [STUDENT_OUTPUT])
    part.graph.output[0].name = "wav"
    for node in part.graph.node:
        node.output[:] = ["wav" if name == STUDENT_OUTPUT else name for name in node.output]
    del part.metadata_props[:]
    return part.SerializeToString()


class ConditionalDecoder:
    """A conditional decoder graph under ONNX Runtime (CPU).

    ``path``: a ``.onnx`` file, or a folder holding :data:`DECODER_FILES`. ``runtime``: ``"int8"``
    or ``"fp32"`` (that file, or an error), or ``"auto"``: the int8 graph where it loads and passes
    its self-check here, else the fp32 one with an :class:`~vocos_distill.errors.Int8FallbackWarning`
    saying why. ``decoder(speech_tokens, speaker_embeddings, speaker_features)`` returns the
    waveform ``(B, samples)`` as a numpy array; ``noise`` feeds the test variant's fourth input."""

    def __init__(self, path: str | Path, runtime: str = "auto", threads: int = 1) -> None:
        if runtime not in ("auto", "int8", "fp32"):
            raise ConfigError(f"runtime={runtime!r}: choose auto, int8 or fp32")
        path = Path(path).expanduser()
        if path.is_dir():
            candidates = ["int8", "fp32"] if runtime == "auto" else [runtime]
            found = [path / DECODER_FILES[kind] for kind in candidates if (path / DECODER_FILES[kind]).is_file()]
            if not found:
                names = " or ".join(DECODER_FILES[kind] for kind in candidates)
                raise MissingFileError(
                    f"{path}: no {names} (write it with python train/export.py ... conditional_decoder=true)"
                )
        elif path.is_file():
            found = [path]
        else:
            raise MissingFileError(f"conditional decoder not found: {path}")
        self.threads = threads
        for i, candidate in enumerate(found):
            try:
                self._open(candidate)
                if runtime != "auto" and self.is_int8 != (runtime == "int8"):
                    kind = "an int8" if self.is_int8 else "an fp32"
                    raise ConfigError(f"{candidate}: {kind} decoder, not the runtime={runtime!r} asked for")
                if self.is_int8:
                    self.int8_check = self.check()
                break
            except ConfigError as err:  # a broken file, an int8 graph wrong here (Int8MismatchError)
                if runtime != "auto" or i == len(found) - 1:
                    raise
                # under auto only the int8 graph has a file after it: the fall-back is always from int8
                warnings.warn(f"{err}; using {found[i + 1].name} instead", Int8FallbackWarning, stacklevel=2)

    def _open(self, path: Path) -> None:
        self.path = path
        try:
            self.session: ort.InferenceSession = session(path, self.threads)
            self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
            self.record = json.loads(self.metadata[DECODER_KEY])
        except Exception as err:
            raise ConfigError(f"{path}: not a conditional decoder written by this project: {err}") from err
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.is_int8 = self.metadata.get("quantization", "fp32") != "fp32"
        self.int8_check = None

    def check(self):  # -> Int8Check
        """The int8 graph's self-check on this machine (its probe, on its student part); raises
        :class:`~vocos_distill.int8_check.Int8MismatchError` when it fails."""
        digest = sha256_file(self.path)  # in blocks: a full-size graph is about 480 MB
        with tempfile.TemporaryDirectory() as tmp:
            part = Path(tmp) / f"{self.path.stem}.student.onnx"
            part.write_bytes(student_part(self.path))
            result = self_check(self.path.name, digest, self.metadata, part)
        if not result.ok:
            raise Int8MismatchError(
                f"{self.path}: the int8 decoder is wrong on this machine, {result.cpu}: {result.reason}"
            )
        return result

    @property
    def vocab_size(self) -> int:
        return int(self.record["vocab_size"])

    def __call__(
        self, speech_tokens: Any, speaker_embeddings: Any, speaker_features: Any, noise: Any = None
    ) -> np.ndarray:
        feeds = check_inputs(speech_tokens, speaker_embeddings, speaker_features, self.vocab_size)
        if ("noise" in self.inputs) != (noise is not None):
            raise DecoderInputError(
                f"{self.path.name} {'takes' if 'noise' in self.inputs else 'draws its own'} noise: "
                f"{'pass noise=(batch, 80, 2 * num_speech_tokens)' if noise is None else 'leave noise out'}"
            )
        if noise is not None:
            feeds["noise"] = (noise.detach().cpu().numpy() if isinstance(noise, torch.Tensor) else noise).astype(
                "float32"
            )
        (waveform,) = self.session.run([OUTPUT], feeds)
        return waveform
