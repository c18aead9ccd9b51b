"""The Vocos student: building it, warm-starting it, and loading a trained one."""

from train.student.model import VocosStudent, build_student, load_student

__all__ = ["VocosStudent", "build_student", "load_student"]
