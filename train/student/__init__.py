"""The student for training: building it, warm-starting it, its QAT form and its ONNX graph.

The student itself (:class:`vocos_distill.VocosStudent`) belongs to the runtime.
"""

from train.student.model import build_student, load_student

__all__ = ["build_student", "load_student"]
