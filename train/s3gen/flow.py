"""S3Gen's flow as Chatterbox runs it: the mels ``mel2wav`` is really fed, made by the recipe.

Chatterbox's own modules do the work (``chatterbox-tts``): the checkpoint that holds HiFT
(``s3gen.safetensors``, Turbo's ``s3gen_meanflow.safetensors``, the multilingual ``s3gen.pt``)
also holds the S3 speech tokenizer, the CAMPPlus speaker encoder and the flow. This module
loads them (:func:`load_s3gen`, naming what a file lacks), and makes a flow mel
teacher-forced from a recorded clip (:func:`teacher_forced`): the clip's own speech tokens,
a reference of the same speaker, ``S3Gen.flow_inference(..., finalize=True)`` at the model's
own step count, with seeded noise.

Alignment: S3Gen makes 2 mel frames per token and the tokenizer 25 tokens per second (640
samples at 16 kHz, 960 at 24 kHz). A clip is cut to whole tokens first (at most 39 ms of its
end dropped), so its audio is exactly ``2 * tokens * 480`` samples and frame ``i`` of the flow
mel covers the clip's samples ``480 i .. 480 (i + 1)``. Should the tokenizer ever return another
count, mel and audio are both cut to the shorter.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import Tensor

from train.s3gen.teacher import CheckpointError, read_checkpoint
from train.utils.devices import resolve_device
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.files import atomic_write

log = logging.getLogger(__name__)

TOKEN_RATE = 25  # S3 speech tokens per second
TOKENIZER_RATE = 16000
SAMPLES_PER_TOKEN = SAMPLE_RATE // TOKEN_RATE  # 960 at 24 kHz: two mel frames
MAX_REFERENCE_SECONDS = 10.0  # Chatterbox's DEC_COND_LEN; S3Gen warns above it


@dataclass(frozen=True)
class Family:
    """A Chatterbox model family: its S3Gen file, its flow, and the TTS class that speaks with it."""

    name: str
    filename: str
    repo_id: str
    steps: int  # CFM steps as Chatterbox runs the flow
    meanflow: bool
    tts: str  # module:class of the Chatterbox TTS whose T3 makes tokens from text
    voice: str  # the file of the T3 model beside the S3Gen file (for the text source)


FAMILIES = {
    "chatterbox": Family(
        "chatterbox", "s3gen.safetensors", "ResembleAI/chatterbox", 10, False, "chatterbox.tts:ChatterboxTTS",
        "t3_cfg.safetensors",
    ),
    "turbo": Family(
        "turbo", "s3gen_meanflow.safetensors", "ResembleAI/chatterbox-turbo", 2, True,
        "chatterbox.tts_turbo:ChatterboxTurboTTS", "t3_turbo_v1.safetensors",
    ),
    "multilingual": Family(
        "multilingual", "s3gen.pt", "ResembleAI/chatterbox", 10, False, "chatterbox.mtl_tts:ChatterboxMultilingualTTS",
        "t3_mtl23ls_v2.safetensors",
    ),
}  # fmt: skip

# What a checkpoint must hold besides HiFT (``mel2wav.``) for the flow to run
PARTS = {
    "tokenizer.": "the S3 speech tokenizer",
    "speaker_encoder.": "the CAMPPlus speaker encoder",
    "flow.": "the flow (encoder and CFM decoder)",
}
MEANFLOW_KEY = "flow.decoder.estimator.time_embed_mixer."  # only meanflow estimators have it
# Buffers Chatterbox rebuilds itself and its checkpoints leave out (``S3Token2Wav.ignore_state_dict_missing``)
REBUILT = ("tokenizer._mel_filters", "tokenizer.window")
FLOW_CONFIG = "flow_config"  # a stand-in's metadata: the small flow it holds (save_stand_in)


class FlowError(CheckpointError):
    """A checkpoint cannot run the flow, or the settings contradict it."""


def detect_family(state: Mapping[str, Tensor], path: str | Path) -> str:
    """``turbo`` for a meanflow estimator, ``multilingual`` for a torch ``.pt`` file, else ``chatterbox``."""
    if any(key.startswith(MEANFLOW_KEY) for key in state):
        return "turbo"
    return "multilingual" if Path(path).suffix in (".pt", ".pth", ".bin") else "chatterbox"


def check_family(
    state: Mapping[str, Tensor], path: str | Path, family: str, steps: int | None, option: str = "data.flow.family"
) -> Family:
    """The family a checkpoint is (``family="auto"``: as detected), refusing a contradiction:
    a declared family whose flow the file does not hold, or a step count not the family's own.
    ``option``: the setting that chose ``family``, as errors name it."""
    found = detect_family(state, path)
    if family == "auto":
        family = found
    if family not in FAMILIES:
        raise FlowError(f"{option}={family!r}: choose auto, {', '.join(FAMILIES)}")
    chosen = FAMILIES[family]
    if chosen.meanflow != FAMILIES[found].meanflow:
        has = "a meanflow" if FAMILIES[found].meanflow else "a CFM (not meanflow)"
        raise FlowError(
            f"{path} holds {has} flow, but {option}={family} runs "
            f"{'a meanflow' if chosen.meanflow else 'a CFM'} flow (set {option}={found} or auto)"
        )
    if steps is not None and steps != chosen.steps:
        raise FlowError(
            f"data.flow.steps={steps}: Chatterbox runs the {family} flow at {chosen.steps} steps, and the "
            f"student must learn the mels mel2wav is fed (leave data.flow.steps=null)"
        )
    return chosen


def check_parts(state: Mapping[str, Tensor], path: str | Path) -> None:
    """A :class:`FlowError` naming every part the flow needs that the file lacks."""
    missing = [what for prefix, what in PARTS.items() if not any(k.startswith(prefix) for k in state)]
    if missing:
        only_hift = all(k.startswith("mel2wav.") or "." not in k for k in state) or "conv_pre.bias" in state
        what = " (it holds HiFT alone)" if only_hift else ""
        raise FlowError(
            f"{path} has no {', no '.join(missing)}{what}: flow mels need the whole S3Gen checkpoint "
            "(s3gen.safetensors, s3gen_meanflow.safetensors or s3gen.pt as Chatterbox ships it)"
        )


def load_s3gen(
    path: str | Path,
    family: str = "auto",
    steps: int | None = None,
    device: str = "auto",
    option: str = "data.flow.family",
) -> Any:
    """Chatterbox's ``S3Gen`` with the checkpoint's weights, in eval mode, frozen; its
    ``family`` (a :class:`Family`) is set on it. Every tensor of the file must fit, as
    ``ChatterboxTurboTTS.from_local`` loads it (strictly, but for the buffers S3Gen rebuilds)."""
    from chatterbox.models.s3gen import S3Gen

    state, metadata = read_checkpoint(path)
    check_parts(state, path)
    chosen = check_family(state, path, family, steps, option)
    model = S3Gen(meanflow=chosen.meanflow)
    if FLOW_CONFIG in metadata:  # a stand-in with a small flow (save_stand_in(..., flow_width=N))
        from train.s3gen.flow_graph import small_flow  # here: only stand-ins need it

        try:
            model.flow = small_flow(chosen.meanflow, **json.loads(metadata[FLOW_CONFIG]))
        except (TypeError, ValueError) as err:
            raise FlowError(
                f"{path}: metadata {FLOW_CONFIG}={metadata[FLOW_CONFIG]!r} does not build a flow: {err}"
            ) from err
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of other shapes: name the first few
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        raise FlowError(
            f"{path} does not match Chatterbox's S3Gen ({chosen.name}): {'; '.join(lines[:3])}{more}"
        ) from None
    missing = [k for k in result.missing_keys if k not in REBUILT]
    if missing or result.unexpected_keys:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", result.unexpected_keys)) if keys]  # fmt: skip
        raise FlowError(f"{path} does not match Chatterbox's S3Gen ({chosen.name}); " + "; ".join(parts))
    model.to(resolve_device(device)).eval().requires_grad_(False)
    model.family = chosen
    return model


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators (the flow and T3 draw from them) and restore them after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def whole_tokens(audio: Tensor) -> Tensor:
    """24 kHz ``audio`` cut to a whole number of speech tokens (960 samples each)."""
    return audio[..., : audio.shape[-1] // SAMPLES_PER_TOKEN * SAMPLES_PER_TOKEN]


def speech_tokens(model: Any, audio: Tensor) -> Tensor:
    """The S3 tokenizer's tokens ``(1, N)`` of 24 kHz ``audio`` (resampled to 16 kHz as S3Gen does)."""
    audio16 = torchaudio.functional.resample(audio.reshape(1, -1).float(), SAMPLE_RATE, TOKENIZER_RATE)
    tokens, _ = model.tokenizer([audio16.to(model.device)])
    return tokens


def reference(model: Any, audio: Tensor) -> dict[str, Tensor]:
    """``S3Gen.embed_ref`` of a 24 kHz reference (at most :data:`MAX_REFERENCE_SECONDS`, cut to
    whole tokens so that its mel and tokens agree, as Chatterbox's own conditionals do)."""
    audio = whole_tokens(audio.reshape(-1)[: int(MAX_REFERENCE_SECONDS * SAMPLE_RATE)])
    with torch.inference_mode():
        return model.embed_ref(audio.unsqueeze(0).to(model.device), SAMPLE_RATE)


def flow_mel(model: Any, tokens: Tensor, ref: Mapping[str, Tensor], seed: int) -> Tensor:
    """``S3Gen.flow_inference`` of ``tokens`` at the family's steps, ``finalize=True``, seeded: ``(80, 2N)``."""
    with seeded(seed, model.device):
        mel = model.flow_inference(
            tokens.to(model.device), ref_dict=dict(ref), n_cfm_timesteps=model.family.steps, finalize=True
        )
    return mel[0].float().cpu()


def teacher_forced(model: Any, audio: Tensor, ref: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """The flow mel of a recorded clip (24 kHz, mono) from its own tokens: ``{"mel": (80, 2N),
    "audio": (2N * 480,), "tokens": (N,)}``, the audio being the clip cut to whole tokens."""
    audio = whole_tokens(audio.reshape(-1))
    if audio.numel() == 0:
        raise ValueError(f"shorter than one speech token ({SAMPLES_PER_TOKEN} samples at {SAMPLE_RATE} Hz)")
    tokens = speech_tokens(model, audio)
    mel = flow_mel(model, tokens, ref, seed)
    frames = min(mel.shape[-1], audio.shape[-1] // HOP_LENGTH)
    return {
        "mel": mel[:, :frames].contiguous(),
        "audio": audio[: frames * HOP_LENGTH].contiguous(),
        "tokens": tokens[0, : (frames + 1) // 2].cpu(),
    }


def save_stand_in(path: str | Path, meanflow: bool = False, seed: int = 0, flow_width: int | None = None) -> Path:
    """Write Chatterbox's S3Gen with random weights as its checkpoint is laid out (full size:
    what the flow and HiFT cost does not depend on the values), for cost figures and GPU checks.
    ``flow_width``: the flow made small (:func:`train.s3gen.flow_graph.small_flow`), recorded in
    the file's metadata (:data:`FLOW_CONFIG`) for :func:`load_s3gen`: a flow that exports and runs
    in seconds, for tests of what is built from it."""
    from chatterbox.models.s3gen import S3Gen
    from safetensors.torch import save

    metadata = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = S3Gen(meanflow=meanflow)
        if flow_width is not None:
            from train.s3gen.flow_graph import small_flow  # here: only small stand-ins need it

            model.flow = small_flow(meanflow, width=flow_width, seed=seed)
            metadata = {FLOW_CONFIG: json.dumps({"width": flow_width, "seed": seed})}
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in REBUILT}
    path = Path(path)
    if path.suffix == ".safetensors":
        atomic_write(path, lambda f: f.write(save(state, metadata)))
    else:  # the multilingual model's torch file (s3gen.pt)
        atomic_write(path, lambda f: torch.save({"state_dict": state, "metadata": metadata or {}}, f))
    return path
