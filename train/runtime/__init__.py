"""The deployable half: load a released student, decode, stream, and drop it into Chatterbox.

Imports only torch, vocos, PyYAML, safetensors, huggingface_hub and, for the ONNX runtimes,
onnxruntime (``tests/test_layout.py`` holds it to that): what Chatterbox's own environment has.
The names below load on first use, so that ``train.runtime.errors`` and the like import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ChatterboxStream": "chatterbox",
    "ChatterboxVocoder": "chatterbox",
    "load_vocoder": "chatterbox",
    "use_student": "chatterbox",
    "Field": "config",
    "StudentConfig": "config",
    "load_release": "release",
    "Vocoder": "vocoder",
    "VocosStudent": "vocoder",
    "load_student": "vocoder",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'train.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"train.runtime.{_WHERE[name]}"), name)
