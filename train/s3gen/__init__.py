"""The Chatterbox side, which must equal Chatterbox's own code: the S3Gen mel, HiFT, and loading HiFT."""

from train.s3gen.hift import HiFTGenerator
from train.s3gen.mel import S3GenMel
from train.s3gen.teacher import load_teacher, synthesize
from vocos_distill.config import HOP_LENGTH, N_MELS, SAMPLE_RATE

__all__ = ["HOP_LENGTH", "N_MELS", "SAMPLE_RATE", "HiFTGenerator", "S3GenMel", "load_teacher", "synthesize"]
