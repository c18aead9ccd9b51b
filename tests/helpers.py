"""Shared test helpers: the conformance kit and checkpoints written in Chatterbox's layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from train.hift import HiFTGenerator

KIT = Path(__file__).parent / "fixtures" / "conformance"
SMALL_WEIGHTS = KIT / "hift_small_weights.safetensors"

# Keys that sit beside the vocoder in a real S3Gen checkpoint.
UNRELATED = {
    "flow.input_embedding.weight": torch.zeros(4, 2),
    "speaker_encoder.xvector.block1.weight": torch.zeros(3),
    "tokenizer._mel_filters": torch.zeros(2, 2),
}


def small_config() -> dict:
    """HiFTGenerator arguments of the reduced-width reference model, from the file's metadata."""
    with safe_open(str(SMALL_WEIGHTS), "pt") as f:
        return json.loads(f.metadata()["config"])


def tiny_config() -> dict:
    """An even smaller HiFT for fast end-to-end tests."""
    return {**small_config(), "base_channels": 16, "f0_predictor": {"in_channels": 80, "cond_channels": 16}}


def to_legacy_keys(state: dict) -> dict:
    """Rename parametrized weight-norm keys to the older weight_g / weight_v style."""
    return {
        k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): v
        for k, v in state.items()
    }


def write_s3gen_checkpoint(
    path: Path, model: HiFTGenerator, legacy_keys: bool = False, config_metadata: bool = True
) -> Path:
    """Write ``model`` as Chatterbox does: ``mel2wav.``-prefixed keys beside unrelated S3Gen keys."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if legacy_keys:
        state = to_legacy_keys(state)
    full = {**UNRELATED, **{f"mel2wav.{k}": v for k, v in state.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        metadata = {"config": json.dumps(model.config)} if config_metadata else None
        save_file(full, str(path), metadata=metadata)
    else:
        torch.save(full, path)
    return path
