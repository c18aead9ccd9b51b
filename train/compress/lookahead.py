"""A student that looks fewer mel frames ahead, distilled from a non-causal parent.

``compress=lookahead student.lookahead=L`` starts from a trained student (the stock student
looks 3 frames ahead in each of its convolutions, 23 frames for 6 blocks) and makes it need at
most ``L`` frames of future mel (:meth:`~vocos_distill.config.StudentConfig.lookahead_plan`):
each convolution is padded left-heavy instead of symmetrically, and below 2 frames the
overlap-add is shifted too. The tensors keep their shapes, so pruning, QAT, int8, ONNX, the
release and the drop-in all apply to the result, and streaming at look-ahead ``L`` is exact.

:func:`with_lookahead` keeps each kernel tap at the time offset it had: a tap that looked
``k`` frames back still does, the taps beyond the new look-ahead are dropped, and the taps
that now reach further back start at zero. So the converted student computes the parent's
function less what it saw of the future, and the parent's outputs (the stage's target) teach
it the rest.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from vocos.spectral_ops import ISTFT

from train.compress.stage import CompressionError, CompressionStage
from vocos_distill.backbone import LookaheadConv1d
from vocos_distill.heads import ShiftedISTFT, shift_istft
from vocos_distill.student import VocosStudent

log = logging.getLogger(__name__)


def _realigned(conv: nn.Conv1d, lookahead: int) -> LookaheadConv1d:
    """``conv`` as a :class:`LookaheadConv1d` looking ``lookahead`` frames ahead, each tap at the
    time offset it had (``conv``'s own look-ahead is its right padding)."""
    (kernel,) = conv.kernel_size
    before = conv.lookahead if isinstance(conv, LookaheadConv1d) else conv.padding[0]
    new = LookaheadConv1d(conv.in_channels, conv.out_channels, kernel, lookahead, groups=conv.groups)
    new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    shift = before - lookahead  # new tap j + shift is old tap j
    with torch.no_grad():
        new.weight.zero_()
        if shift >= 0:
            new.weight[..., shift:] = conv.weight[..., : kernel - shift]
        else:
            new.weight[..., : kernel + shift] = conv.weight[..., -shift:]
        new.bias.copy_(conv.bias)
    return new


def with_lookahead(student: VocosStudent, frames: int) -> VocosStudent:
    """Make ``student`` (in place, and returned) need at most ``frames`` frames of future mel:
    the arrangement :meth:`StudentConfig.lookahead_plan` gives, taps re-aligned (module docstring)."""
    config = student.config.replace(lookahead=frames)  # refuses a look-ahead its shape cannot have
    pads, shift = config.lookahead_plan()
    backbone = student.backbone
    backbone.embed = _realigned(backbone.embed, pads[0])
    for block, r in zip(backbone.convnext, pads[1:], strict=True):
        block.dwconv = _realigned(block.dwconv, r)
    istft = student.head.istft
    if isinstance(istft, ShiftedISTFT):  # back to the stock overlap-add before shifting it again
        student.head.istft = ISTFT(istft.n_fft, istft.hop_length, istft.win_length, padding="same")
    shift_istft(student.head, shift)
    student.head.istft.to(istft.window.device)
    return student


class Lookahead(CompressionStage):
    """``compress=lookahead``: before training starts (and before a resumed run's weights load,
    so they load into the same modules), make the parent need at most ``frames`` frames of
    future mel; the experiment's losses and the parent's output (``module.target_weights.parent``)
    then train it."""

    next_stage = "python train/evaluate.py checkpoint={last}"

    def __init__(self, frames: int | None) -> None:
        if frames is None or isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise CompressionError(
                f"compress=lookahead needs student.lookahead=<frames of future mel, 0 or more>; got {frames!r}"
            )
        self.frames = frames

    def check(self, parent: VocosStudent) -> None:
        """The parent must look at least ``frames`` ahead; at exactly ``frames`` nothing is cut and
        the stage is the control: the parent trained on, at the same budget as its children."""
        right = parent.receptive_field.right
        if self.frames > right:
            raise CompressionError(
                f"student.lookahead={self.frames}: the parent looks only {right} frames ahead; "
                f"choose 0..{right} ({right}: the parent's own, a control at the same budget)"
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        generator = pl_module.generator
        before = generator.receptive_field.right
        if before != self.frames:
            with_lookahead(generator, self.frames)
            log.info("look-ahead: %d frames -> %d (%s)", before, self.frames, generator.config.lookahead_plan())
