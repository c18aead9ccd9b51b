"""The student in PyTorch: ``vocos``' ConvNeXt backbone and iSTFT head, shaped for S3Gen mels."""

from __future__ import annotations

import torch
from torch import Tensor
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone
from vocos.modules import ConvNeXtBlock

from vocos_distill.backbone import LookaheadBackbone, LookaheadConv1d
from vocos_distill.config import KERNEL, StudentConfig, StudentConfigError
from vocos_distill.heads import AmplitudePriorHead, ShiftedISTFTHead, polar
from vocos_distill.streaming import StreamingVocoder
from vocos_distill.vocoder import MelStream, Vocoder


class VocosStudent(Vocoder):
    """``vocos``' ConvNeXt backbone and iSTFT head, shaped for S3Gen mels: with n_fft 1920, hop
    480 and "same" padding, T mel frames give exactly T * 480 samples. A plain ``nn.Module``."""

    def __init__(self, backbone: VocosBackbone, head: ISTFTHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.fake_quant: str | None = None  # set by QAT's prepare (train.student.quantized)

    @classmethod
    def build(cls, config: StudentConfig) -> VocosStudent:
        head = AmplitudePriorHead if config.amplitude_prior else ShiftedISTFTHead
        pads, shift = config.lookahead_plan()
        shape = (config.input_channels, config.dim, config.intermediate_dim, config.num_layers)
        student = cls(
            VocosBackbone(*shape) if config.lookahead is None else LookaheadBackbone(*shape, lookahead=pads),
            head(config.dim, config.n_fft, config.hop_length, padding="same", shift=shift),
        )
        student.fake_quant = config.fake_quant
        return student

    def prior(self, mel: Tensor) -> Tensor | None:
        """The amplitude prior of ``mel`` for :func:`polar`, or None for a stock head."""
        return self.head.prior(mel) if isinstance(self.head, AmplitudePriorHead) else None

    @property
    def config(self) -> StudentConfig:  # read off the layers, so pruning and QAT cannot leave it stale
        blocks = [block for block in self.backbone.convnext if isinstance(block, ConvNeXtBlock)]
        return StudentConfig(
            input_channels=self.backbone.embed.in_channels,
            dim=self.backbone.embed.out_channels,
            intermediate_dim=blocks[0].pwconv1.out_features if blocks else 3 * self.backbone.embed.out_channels,
            num_layers=len(self.backbone.convnext),
            n_fft=self.head.istft.n_fft,
            hop_length=self.head.istft.hop_length,
            fake_quant=self.fake_quant,
            amplitude_prior=isinstance(self.head, AmplitudePriorHead),
            lookahead=self.lookahead(),
        )

    def lookahead(self) -> int | None:
        """Frames of future mel the whole student needs, read off its layers (None: the stock
        symmetric padding); an arrangement :meth:`StudentConfig.lookahead_plan` would not make is refused."""
        blocks = [block for block in self.backbone.convnext if isinstance(block, ConvNeXtBlock)]
        convs = [self.backbone.embed] + [block.dwconv for block in blocks]
        pads = tuple(getattr(conv, "lookahead", KERNEL // 2) for conv in convs)
        shift = getattr(self.head.istft, "shift", 0)
        if not shift and not any(isinstance(conv, LookaheadConv1d) for conv in convs):
            return None
        istft = self.head.istft
        plan = StudentConfig(n_fft=istft.n_fft, hop_length=istft.hop_length, num_layers=len(convs) - 1)
        total = sum(pads) + plan.istft_right - shift
        if len(blocks) < len(self.backbone.convnext):  # a block stood in for while pruning measures its cost
            return total
        if plan.replace(lookahead=total).lookahead_plan() != (pads, shift) and total != plan.stock_field.right:
            raise StudentConfigError(
                f"this student's convs look {list(pads)} frames ahead with an overlap-add shift of {shift}: not "
                f"the arrangement StudentConfig(lookahead={total}) builds, so no config describes it"
            )
        return total

    @property
    def device(self) -> torch.device:
        return self.backbone.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed.weight.dtype

    def forward(self, mel: Tensor) -> Tensor:
        self.check_mel(mel)
        features = self.backbone(mel)
        # The iSTFT runs in float32 even under bf16 autocast: complex bf16 does not exist.
        with torch.autocast(device_type=mel.device.type, enabled=False):
            prior = self.prior(mel)
            if prior is None:
                return self.head(features.float())
            real, imag = polar(self.head.out(features.float()).transpose(1, 2), prior)
            return self.head.istft(torch.complex(real, imag))

    def stream(self, lookahead: int | None = None) -> MelStream:

        return StreamingVocoder(self, lookahead)
