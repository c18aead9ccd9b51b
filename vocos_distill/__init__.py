"""vocos-distill's runtime: load a released Vocos student, decode S3Gen mels, stream, and put it in
place of Chatterbox's HiFT (``s3gen.mel2wav``).

Imports only torch, vocos, PyYAML, safetensors, huggingface_hub and, for the ONNX runtimes,
onnxruntime (``tests/test_layout.py`` holds it to that): what Chatterbox's own environment has.
The training code (``train/`` in the repository) imports this package, never the other way round.
The names below load on first use, so that ``vocos_distill.errors`` and the like import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"  # written into every release (release.json, the model card)
HOMEPAGE = "https://github.com/vocos-distill/vocos-distill"
# This runtime alone, into an existing environment (Chatterbox's own: it moves none of its pins)
INSTALL = f'pip install "vocos-distill @ git+{HOMEPAGE}@v{__version__}"'

_WHERE = {
    "ChatterboxStream": "chatterbox",
    "ChatterboxVocoder": "chatterbox",
    "load_vocoder": "chatterbox",
    "restore_hift": "chatterbox",
    "use_student": "chatterbox",
    # what a user catches or filters: errors (ConfigError and its kinds) and the fallback warnings
    "ConfigError": "errors",
    "Int8FallbackWarning": "errors",
    "VocoderFallbackWarning": "errors",
    "VocoderUnavailableError": "errors",
    "Int8MismatchError": "int8_check",
    "StreamBusyError": "vocoder",
    "StreamClosedError": "vocoder",
    "Field": "config",
    "StudentConfig": "config",
    "RUNTIMES": "release",
    "load_release": "release",
    "from_pretrained": "loader",
    "load_student": "loader",
    "MelStream": "vocoder",
    "Vocoder": "vocoder",
    "VocosStudent": "student",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'vocos_distill' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vocos_distill.{_WHERE[name]}"), name)
