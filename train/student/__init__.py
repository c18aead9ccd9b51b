"""The student for training: building it, warm-starting it, its QAT form and its ONNX graph.

The student itself (:class:`vocos_distill.VocosStudent`) belongs to the runtime, and so does the
one way to load one, :func:`vocos_distill.from_pretrained`; importing this package lets it rebuild
a QAT checkpoint fake-quantised, as it trained.
"""

from train.student.model import build_student
from vocos_distill.loader import from_pretrained

__all__ = ["build_student", "from_pretrained"]
