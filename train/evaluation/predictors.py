"""The models the no-reference metrics and speaker similarity run, each loaded once per process:
DNSMOS (``speechmos``), DistillMOS and resemblyzer's speaker encoder, all with their weights inside
their wheels, so they run offline."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from vocos_distill.onnx import session


@functools.cache
def distillmos_model() -> Any:
    """DistillMOS (variant 7, its weights in the ``distillmos`` wheel), on the CPU, in eval mode."""
    import contextlib
    import io

    import distillmos

    with contextlib.redirect_stdout(io.StringIO()):  # it prints where it loaded its weights from
        return distillmos.ConvTransformerSQAModel().eval()


@functools.cache
def speaker_encoder() -> Any:
    """resemblyzer's speaker encoder (its weights in the wheel), on the CPU."""
    from resemblyzer import VoiceEncoder

    return VoiceEncoder("cpu", verbose=False)


@functools.cache
def _dnsmos_model(threads: int) -> Any:
    from speechmos import dnsmos

    folder = Path(dnsmos.__file__).parent / "dnsmos_models"
    model = object.__new__(dnsmos.DNSMOS)  # speechmos' model, its sessions as the vocoders' own:
    # `threads` threads that do not spin
    model.onnx_sess = session(folder / "sig_bak_ovr.onnx", threads)
    model.p808_onnx_sess = session(folder / "model_v8.onnx", threads)
    return model


def dnsmos_model() -> Any:
    """speechmos' DNSMOS (``speechmos.dnsmos.run`` without its sessions' defaults: every core,
    spinning between calls), with as many threads as ``torch.get_num_threads()`` says."""
    return _dnsmos_model(torch.get_num_threads())
