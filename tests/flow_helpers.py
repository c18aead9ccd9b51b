"""Chatterbox checkpoints with random weights, written with the real key layout, for the flow tests.

``train.s3gen.flow.save_stand_in`` writes S3Gen at full size (264 M parameters: the flow's cost
and layout are the real ones); ``chatterbox_folder`` adds what ``ChatterboxTTS.from_local`` reads
besides it (the voice encoder, T3 and a tokenizer.json), T3 reduced to one Llama layer (shrunk
through Chatterbox's own config table) so that a test can voice text in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

# T3's width stays 1024 (its perceiver resampler is built at that size); one Llama layer, a narrow MLP
TINY_LLAMA = {"intermediate_size": 256, "num_hidden_layers": 1}


def keys_only_file(path: Path, prefixes: tuple[str, ...], extra: tuple[str, ...] = ()) -> Path:
    """A small ``.safetensors`` whose key names are S3Gen's parts (one tiny tensor each): enough
    for everything that reads only a checkpoint's keys (family, parts, cache keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{p}x": torch.zeros(1) for p in prefixes} | {k: torch.zeros(1) for k in extra}, str(path))
    return path


def tokenizer_json(path: Path) -> Path:
    """A character-level tokenizer in the layout ``EnTokenizer`` reads (its special tokens included)."""
    from tokenizers import Tokenizer, models

    specials = ["[STOP]", "[UNK]", "[SPACE]", "[START]"]
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-")
    vocab = {token: i for i, token in enumerate(specials + chars)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(path))
    return path


def shrink_t3(monkeypatch) -> None:
    """T3 with one Llama layer (Chatterbox's own T3, its config table patched for the test)."""
    from chatterbox.models.t3 import llama_configs

    monkeypatch.setitem(llama_configs.LLAMA_CONFIGS, "Llama_520M",
                        {**llama_configs.LLAMA_CONFIGS["Llama_520M"], **TINY_LLAMA})  # fmt: skip


def chatterbox_folder(folder: Path, s3gen: Path) -> Path:
    """``ChatterboxTTS.from_local``'s folder: ``s3gen`` (linked), ``ve.safetensors``,
    ``t3_cfg.safetensors`` (T3 as :func:`shrink_t3` makes it: call that first) and ``tokenizer.json``."""
    from chatterbox.models.t3 import T3
    from chatterbox.models.voice_encoder import VoiceEncoder

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s3gen.safetensors").symlink_to(s3gen)
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in VoiceEncoder().state_dict().items()}, str(folder / "ve.safetensors"))
    save_file({k: v.contiguous() for k, v in T3().state_dict().items()}, str(folder / "t3_cfg.safetensors"))
    tokenizer_json(folder / "tokenizer.json")
    return folder
