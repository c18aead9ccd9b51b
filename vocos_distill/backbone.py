"""``vocos``' ConvNeXt backbone with a look-ahead budget: its convolutions padded left-heavy.

:class:`LookaheadBackbone` keeps a stock ``VocosBackbone``'s tensors, so a stock student's weights
load into it; a release's ``config.yaml`` names it by class path for a student whose
``StudentConfig.lookahead`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from vocos.models import VocosBackbone

from vocos_distill.config import StudentConfigError


class LookaheadConv1d(nn.Conv1d):
    """A stride-1 ``nn.Conv1d`` zero-padded ``kernel - 1 - lookahead`` frames before its input
    and ``lookahead`` after, so output frame ``t`` sees input frames up to ``t + lookahead``
    (the stock "same" conv when ``lookahead`` is half the kernel). Its tensors are a Conv1d's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, lookahead: int, groups: int = 1) -> None:
        if not 0 <= lookahead < kernel_size:
            raise ValueError(f"a kernel-{kernel_size} conv can look 0..{kernel_size - 1} frames ahead; got {lookahead}")
        super().__init__(in_channels, out_channels, kernel_size, groups=groups)
        self.lookahead = lookahead

    @property
    def pads(self) -> tuple[int, int]:
        return self.kernel_size[0] - 1 - self.lookahead, self.lookahead

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


class LookaheadBackbone(VocosBackbone):
    """``vocos``' ``VocosBackbone`` whose convolutions (the input embedding, then each block's
    depthwise conv) look ``lookahead[i]`` frames ahead instead of 3 (:class:`LookaheadConv1d`):
    the same tensors, so a stock backbone's weights load into it. ``StudentConfig.lookahead_plan``
    gives the list; a release's ``config.yaml`` names this class with it."""

    def __init__(
        self,
        input_channels: int,
        dim: int,
        intermediate_dim: int,
        num_layers: int,
        lookahead: Sequence[int],
        layer_scale_init_value: float | None = None,
    ) -> None:
        super().__init__(input_channels, dim, intermediate_dim, num_layers, layer_scale_init_value)
        lookahead = [int(r) for r in lookahead]
        if len(lookahead) != num_layers + 1:
            raise StudentConfigError(
                f"LookaheadBackbone: lookahead needs one value per conv (the embedding and {num_layers} blocks: "
                f"{num_layers + 1}); got {len(lookahead)}"
            )
        self.embed = _lookahead_conv(self.embed, lookahead[0])
        for block, r in zip(self.convnext, lookahead[1:], strict=True):
            block.dwconv = _lookahead_conv(block.dwconv, r)


def _lookahead_conv(conv: nn.Conv1d, lookahead: int) -> LookaheadConv1d:
    (kernel,) = conv.kernel_size
    new = LookaheadConv1d(conv.in_channels, conv.out_channels, kernel, lookahead, groups=conv.groups)
    new.load_state_dict(conv.state_dict())  # the initialisation vocos gave the conv it replaces
    return new
