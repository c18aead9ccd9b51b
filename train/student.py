"""The Vocos student: ``vocos``' ConvNeXt backbone and iSTFT head, shaped for S3Gen mels.

With n_fft 1920, hop 480 and "same" padding, T mel frames give exactly T * 480 samples,
the framing of the S3Gen mel and of HiFT's output.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone

from train.hub import fetch_file

log = logging.getLogger(__name__)
INIT_HINT = (
    "Set `student.init_from=null` to train the student from scratch, or point `student.init_from=` at a "
    "local directory holding a Vocos `pytorch_model.bin`."
)


class VocosStudent(nn.Module):
    """Mel ``(B, n_mels, T)`` -> waveform ``(B, T * hop_length)``. A plain ``nn.Module``."""

    def __init__(self, backbone: VocosBackbone, head: ISTFTHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.n_mels = backbone.embed.in_channels
        self.hop_length = head.istft.hop_length

    def forward(self, mel: Tensor) -> Tensor:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"the student expects a mel of shape (B, {self.n_mels}, T); got {tuple(mel.shape)}")
        features = self.backbone(mel)
        # The iSTFT runs in float32 even under bf16 autocast: complex bf16 does not exist.
        with torch.autocast(device_type=mel.device.type, enabled=False):
            return self.head(features.float())


def build_student(
    input_channels: int = 80,
    dim: int = 512,
    intermediate_dim: int = 1536,
    num_layers: int = 8,
    n_fft: int = 1920,
    hop_length: int = 480,
    init_from: str | None = None,
    local_files_only: bool = False,
) -> VocosStudent:
    """Build the student, optionally warm-started from a Vocos checkpoint.

    Args:
        init_from: a Hub repo id (e.g. ``charactr/vocos-mel-24khz``) or a local directory
            with ``pytorch_model.bin``; every tensor whose shape fits is copied.
    """
    student = VocosStudent(
        VocosBackbone(input_channels, dim, intermediate_dim, num_layers),
        ISTFTHead(dim, n_fft, hop_length, padding="same"),
    )
    if init_from:
        warm_start(student, load_vocos_state_dict(init_from, local_files_only))
    return student


def load_vocos_state_dict(source: str, local_files_only: bool = False) -> dict[str, Tensor]:
    """Read a Vocos ``pytorch_model.bin`` from a local directory or a Hub repo id."""
    path = Path(source).expanduser()
    if path.is_dir():
        weights = path / "pytorch_model.bin"
        if not weights.is_file():
            raise FileNotFoundError(f"no pytorch_model.bin in {path}. {INIT_HINT}")
    elif path.exists() or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"student.init_from={source!r} is not a directory. {INIT_HINT}")
    else:
        weights = fetch_file(source, "pytorch_model.bin", local_files_only=local_files_only, hint=INIT_HINT)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def warm_start(student: VocosStudent, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``state`` whose name and shape fit; return (copied, kept-as-initialised)."""
    own = student.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    student.load_state_dict(fits, strict=False)
    copied = sorted(fits)
    reinitialised = sorted(set(own) - set(fits))
    log.info("warm start: copied %d tensors: %s", len(copied), ", ".join(copied))
    log.info(
        "warm start: %d tensors re-initialised (shape or name differs): %s",
        len(reinitialised),
        ", ".join(reinitialised),
    )
    return copied, reinitialised
