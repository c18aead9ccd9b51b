"""The deployable half: load a released student, decode, stream, and drop it into Chatterbox.

Imports only torch, vocos, PyYAML, safetensors, huggingface_hub and, for the ONNX runtimes,
onnxruntime (``tests/test_layout.py`` holds it to that): what Chatterbox's own environment has.
"""

from train.runtime.chatterbox import ChatterboxStream, ChatterboxVocoder, load_vocoder, use_student
from train.runtime.config import Field, StudentConfig
from train.runtime.release import load_release
from train.runtime.vocoder import Vocoder, VocosStudent, load_student

__all__ = [
    "ChatterboxStream",
    "ChatterboxVocoder",
    "Field",
    "StudentConfig",
    "Vocoder",
    "VocosStudent",
    "load_release",
    "load_student",
    "load_vocoder",
    "use_student",
]
