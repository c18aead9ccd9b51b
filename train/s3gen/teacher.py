"""Load Chatterbox's HiFT vocoder from its own checkpoints and run it as a frozen teacher.

Chatterbox keeps the vocoder inside the S3Gen checkpoint under the prefix ``mel2wav.``:
``s3gen.safetensors`` (repo ``ResembleAI/chatterbox``), Turbo's
``s3gen_meanflow.safetensors`` and the multilingual ``s3gen.pt`` (a plain state dict).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from train.s3gen.hift import HiFTGenerator
from train.utils.devices import resolve_device
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import atomic_write
from vocos_distill.hub import fetch_file

PREFIX = "mel2wav."
LOCAL_HINT = (
    "Point `teacher.checkpoint=/path/to/s3gen.safetensors` (or s3gen_meanflow.safetensors / s3gen.pt) "
    "at a local copy of Chatterbox's checkpoint."
)
_LEGACY_WEIGHT_NORM = re.compile(r"\.weight_([gv])$")


class CheckpointError(ConfigError, ValueError):
    """A checkpoint does not hold a HiFT state dict of the expected layout."""


def read_checkpoint(path: str | Path, mmap: bool = False) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a ``.safetensors`` or torch (``.pt``/``.pth``/``.bin``) file -> (tensors, metadata);
    ``mmap``: a torch file's tensors are mapped, not read (for its keys and shapes alone)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"teacher checkpoint not found: {path}. {LOCAL_HINT}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    metadata: dict[str, str] = {}
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        found = state.get("metadata")  # {"state_dict": ..., "metadata": {str: str}}: a stand-in's, as in .safetensors
        metadata = {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state), metadata


def hift_state_dict(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Pick the vocoder's tensors out of an S3Gen state dict.

    Takes the ``mel2wav.``-prefixed keys (or, if there are none, treats the whole dict as a
    bare HiFT state dict) and renames legacy ``weight_g``/``weight_v`` weight-norm keys to
    ``parametrizations.weight.original0``/``original1``.
    """
    picked = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not picked:
        if "conv_pre.bias" not in state:
            raise CheckpointError(f"{source}: no '{PREFIX}' keys and no bare HiFT keys found ({len(state)} keys)")
        picked = dict(state)
    return {
        _LEGACY_WEIGHT_NORM.sub(lambda m: ".parametrizations.weight.original" + ("0" if m[1] == "g" else "1"), k): v
        for k, v in picked.items()
    }


def load_hift_weights(model: HiFTGenerator, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load strictly; list every missing, unexpected or misshapen key in the error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
            if keys
        ]
        raise CheckpointError(f"{source} does not match the HiFT layout; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_teacher(
    checkpoint: str | Path | None = None,
    repo_id: str = "ResembleAI/chatterbox",
    filename: str = "s3gen.safetensors",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    config: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    fold_weight_norm: bool = True,
) -> HiFTGenerator:
    """Build HiFT from a local checkpoint or a Hub repo, frozen and in eval mode.

    Args:
        checkpoint: local S3Gen file; when ``None`` the file ``filename`` of ``repo_id`` is
            downloaded (only that file), honouring the HF cache and ``HF_HUB_OFFLINE``.
        config: HiFTGenerator arguments; default: the file's ``config`` metadata if it has
            one, else Chatterbox's configuration.
        device: ``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when available).
        dtype: ``float32`` or ``bfloat16`` (the STFT stages always run in float32).
        fold_weight_norm: fold weight norm into plain weights for faster inference.
    """
    if checkpoint is None:
        path = fetch_file(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            hint=LOCAL_HINT,
        )
    else:
        path = Path(checkpoint).expanduser()
    state, metadata = read_checkpoint(path)
    if config is None and "config" in metadata:
        config = json.loads(metadata["config"])
    try:
        model = HiFTGenerator(**dict(config or {}))
    except TypeError as err:
        raise CheckpointError(f"bad HiFT config for {path}: {err}") from err
    state = hift_state_dict(state, str(path))
    load_hift_weights(model, state, str(path))
    if fold_weight_norm:
        model.fold_weight_norm()
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model.to(device=resolve_device(device), dtype=dtype).eval().requires_grad_(False)
    model.weights_id = weights_fingerprint(state)  # cache key for anything derived from these weights
    return model


def weights_fingerprint(state: Mapping[str, Tensor]) -> str:
    """Content hash of a state dict (keys, dtypes, shapes and values), 16 hex digits."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def synthesize(teacher: HiFTGenerator, mel: Tensor, seed: int = 0) -> Tensor:
    """Teacher waveform ``(B, T * 480)`` for mel ``(B, 80, T)``, reproducible for a seed."""
    device = next(teacher.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    wav, _ = teacher.inference(mel.to(device), generator=generator)
    return wav.float().clone()


def save_teacher(model: HiFTGenerator, path: str | Path) -> Path:
    """Write HiFT as Chatterbox keeps it: ``mel2wav.``-prefixed keys (weight norm not folded) in a
    ``.safetensors`` file, with the model's arguments as ``config`` metadata. For stand-in teachers
    (random weights at Chatterbox's size cost what the real one does) and tests."""
    path = Path(path)
    state = {f"{PREFIX}{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state, metadata={"config": json.dumps(model.config)})))
    return path
