"""Streaming decode: mel chunks in, audio out, equal to decoding the whole utterance at once.

A Vocos student is a stack of 1-D convolutions with "same" zero padding (the input embedding
and one depthwise conv per ConvNeXt block), layers that act on each frame alone (LayerNorm,
Linear, GELU, the head's Linear), and an inverse STFT whose frames overlap-add. So output
frame ``t`` of the backbone depends on input frames ``t - c .. t + c`` only, where ``c`` is the
sum of the convolutions' half-widths (27 frames for 8 blocks), and each output sample on the
spectral frames whose windows cover it (2 frames either side for n_fft 1920, hop 480).

:class:`StreamingVocoder` keeps, for each convolution, the last ``kernel - 1`` input frames it
has seen, and for the overlap-add the partial sums of the samples later frames still add to
(and the same for the window envelope). A ``push`` runs only the new frames through each
layer, so its work is bounded by the chunk plus a fixed context whatever came before. The
start of the stream is zero-padded exactly as the convolutions zero-pad, and ``flush`` pads
the end the same way: with the look-ahead at least the receptive field's right side, the
concatenated output equals ``student(mel)`` up to float rounding, for any chunking.

A smaller look-ahead emits audio sooner: what the missing frames would change is filled in
as if the utterance ended at the last frame pushed (the zero padding offline decoding uses at
an utterance's end), and audio once emitted is never revised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vocos_distill.backbone import LookaheadConv1d
from vocos_distill.config import KERNEL
from vocos_distill.heads import normalise, output_start, polar
from vocos_distill.vocoder import MelStream, Vocoder


def _parts(model: Vocoder) -> tuple[nn.Module, nn.Module]:
    """The backbone and iSTFT head of a student in PyTorch (fp32, pruned, QAT or torchao int8),
    checked to be the stock layers whose receptive field its config gives."""
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if not (isinstance(backbone, nn.Module) and isinstance(head, nn.Module)):
        raise TypeError(
            f"streaming needs a Vocos student with a ConvNeXt backbone and an iSTFT head in PyTorch (fp32, pruned, "
            f"QAT or torchao int8); got {type(model).__name__}. An ONNX graph has no per-layer state to carry: "
            "its Vocoder.stream() decodes it through windows."
        )
    if getattr(backbone, "adanorm", False):
        raise TypeError("streaming supports Vocos backbones without AdaLayerNorm conditioning")
    if head.istft.padding != "same":
        raise TypeError(f"streaming needs the iSTFT head's 'same' padding; this one pads {head.istft.padding!r}")
    for conv in _convs(backbone):
        (k,), (d,), (s,) = conv.kernel_size, conv.dilation, conv.stride
        if k != KERNEL or (d, s) != (1, 1) or sum(_pads(conv)) != KERNEL - 1:
            raise TypeError(
                f"streaming needs VocosBackbone's kernel-{KERNEL} convs, padded to keep the length; found {conv}"
            )
    return backbone, head


def _pads(conv: nn.Conv1d) -> tuple[int, int]:
    """A conv's zero padding (before, after): a stock "same" conv's, or a LookaheadConv1d's."""
    return conv.pads if isinstance(conv, LookaheadConv1d) else (conv.padding[0], conv.padding[0])


def _convs(backbone: nn.Module) -> list[nn.Conv1d]:
    return [backbone.embed] + [block.dwconv for block in backbone.convnext]


class StreamingVocoder(MelStream):
    """A Vocos student decoded as a stream, with a state per layer (see the module docstring).

    Work per push is proportional to the chunk's frames plus a constant: each convolution
    keeps ``kernel - 1`` frames of its input, the overlap-add ``n_fft - hop`` samples.
    """

    def __init__(self, model: Vocoder, lookahead: int | None = None) -> None:
        self.model = model
        self.backbone, self.head = _parts(model)
        istft = self.head.istft
        self.n_fft = istft.win_length
        # output sample n is overlap-add sample n + trim: "same" padding, less a shifted head's hops
        self.trim = output_start(self.n_fft, istft.hop_length, getattr(istft, "shift", 0))
        super().__init__(model.n_mels, model.hop_length, model.receptive_field, lookahead)

    def _reset(self) -> None:
        self._state: dict | None = None

    def _device(self) -> torch.device:
        return self.backbone.embed.weight.device

    def _push(self, mel: Tensor) -> Tensor:
        state = self._state or self._initial_state(mel)
        state, ready = self._exact(state, mel, final=False)
        frames = self._frames + mel.shape[-1]
        target = max(self._emitted, (frames - self.lookahead) * self.hop)
        take = max(0, min(target, state["exact_end"]) - self._emitted)
        out, state["ready"] = ready[..., :take], ready[..., take:]
        start = max(self._emitted, state["exact_end"])
        if target > start:  # ahead of the exact audio: decode as if the utterance ended here
            _, guess = self._advance(state, mel[..., :0], final=True)
            offset = start - state["exact_end"]
            out = torch.cat([out, guess[..., offset : offset + target - start]], dim=-1)
        self._state = state
        return out

    def _flush(self) -> Tensor:
        state, self._state = self._state, None
        empty = torch.zeros(self._batch, self.n_mels, 0, device=self._device())
        _, out = self._exact(state, empty, final=True)
        return out[..., : self._frames * self.hop - self._emitted]  # the utterance ends at its frames' end

    def _initial_state(self, mel: Tensor) -> dict:
        batch, device = mel.shape[0], mel.device
        convs = _convs(self.backbone)
        return {
            # each conv's left zero padding, as its own padding would supply
            "context": [torch.zeros(batch, c.in_channels, _pads(c)[0], device=device) for c in convs],
            "ola": torch.zeros(batch, self.n_fft - self.hop, device=device),
            "envelope": torch.zeros(1, self.n_fft - self.hop, device=device),
            "to_drop": self.trim,  # the "same" padding's first samples (< 0: samples before the first window)
            "ready": torch.zeros(batch, 0, device=device),  # exact audio not yet emitted
            "mel": mel.new_zeros(batch, mel.shape[1], 0),  # mel frames whose features are not out yet (the prior's)
            "exact_end": 0,  # samples of exact audio produced so far
        }

    def _exact(self, state: dict, mel: Tensor, final: bool) -> tuple[dict, Tensor]:
        """Advance the exact pipeline; return the new state and the exact audio not yet emitted
        (held audio first), which starts at ``samples_emitted``."""
        state, audio = self._advance(state, mel, final)
        skip = max(0, self._emitted - state["exact_end"])  # already emitted from a guess
        ready = torch.cat([state["ready"], audio[..., skip:]], dim=-1)
        state["exact_end"] += audio.shape[-1]
        return state, ready

    def _advance(self, state: dict, mel: Tensor, final: bool) -> tuple[dict, Tensor]:
        """Run new frames through every layer; return the new state (the old one is not changed)
        and the audio that became final."""
        convs = _convs(self.backbone)
        context = []
        x, _ = self._conv(convs[0], state["context"][0], mel, final, context)
        x = self.backbone.norm(x.transpose(1, 2)).transpose(1, 2)
        for i, block in enumerate(self.backbone.convnext, start=1):
            y, residual = self._conv(block.dwconv, state["context"][i], x, final, context)
            x = residual + self._block_rest(block, y)
        features = self.backbone.final_layer_norm(x.transpose(1, 2))
        # feature frame i comes from mel frame i: the frames of the amplitude prior, in order
        pending = torch.cat([state["mel"], mel], dim=-1)
        count = features.shape[1]
        frames = self._spectral_frames(features, self.model.prior(pending[..., :count]))
        audio, ola, envelope = self._overlap_add(state, frames, final)
        if state["to_drop"] < 0:  # a shifted head: no window covers the first samples
            audio = torch.cat([audio.new_zeros(audio.shape[0], -state["to_drop"]), audio], dim=-1)
        drop = max(0, min(state["to_drop"], audio.shape[-1]))
        audio = audio[..., drop:]  # final: the overlap-add's tail too, which the caller cuts off
        new = {
            **state,
            "context": context,
            "ola": ola,
            "envelope": envelope,
            "to_drop": max(0, state["to_drop"] - drop),
            "mel": pending[..., count:],
        }
        return new, audio

    @staticmethod
    def _conv(conv: nn.Conv1d, held: Tensor, x: Tensor, final: bool, keep: list) -> tuple[Tensor, Tensor]:
        """``conv`` over the held frames and ``x`` (plus the right zero padding when ``final``)
        without padding: the outputs whose whole window is known, and the inputs at their centres."""
        left, right = _pads(conv)
        parts = [held, x]
        if final:
            parts.append(held.new_zeros(held.shape[0], held.shape[1], right))
        data = torch.cat(parts, dim=-1)
        count = data.shape[-1] - left - right
        keep.append(data[..., max(count, 0) :])
        if count <= 0:
            empty = data[..., :0]
            return data.new_zeros(data.shape[0], conv.out_channels, 0), empty
        y = F.conv1d(data, conv.weight, conv.bias, dilation=conv.dilation, groups=conv.groups)
        return y, data[..., left : left + count]

    @staticmethod
    def _block_rest(block: nn.Module, y: Tensor) -> Tensor:
        """``vocos.modules.ConvNeXtBlock.forward`` after its depthwise conv, without the residual."""
        if y.shape[-1] == 0:  # torchao's per-frame fake quantisation cannot take zero frames
            return y
        y = block.norm(y.transpose(1, 2))
        y = block.pwconv2(block.act(block.pwconv1(y)))
        if block.gamma is not None:
            y = block.gamma * y
        return y.transpose(1, 2)

    def _spectral_frames(self, features: Tensor, prior: Tensor | None) -> Tensor:
        """``vocos.heads.ISTFTHead.forward`` up to the overlap-add: windowed frames ``(B, n_fft, T)``."""
        if features.shape[1] == 0:  # the FFT refuses empty batches of frames
            return features.new_zeros(features.shape[0], self.n_fft, 0)
        real, imag = polar(self.head.out(features).transpose(1, 2), prior)
        frames = torch.fft.irfft(torch.complex(real, imag), self.n_fft, dim=1, norm="backward")
        return frames * self.head.istft.window[None, :, None]

    def _overlap_add(self, state: dict, frames: Tensor, final: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Add the new frames to the held partial sums; return the finished samples (divided by
        the window envelope), and the new partial sums of the signal and of the envelope."""
        count, hold = frames.shape[-1], self.n_fft - self.hop
        window_sq = self.head.istft.window.square()[None, :, None].expand(1, -1, count)
        signal = self._fold(frames, count)
        envelope = self._fold(window_sq, count)
        signal[..., :hold] += state["ola"]
        envelope[..., :hold] += state["envelope"]
        done = signal.shape[-1] if final else count * self.hop
        audio = normalise(signal[..., :done], envelope[..., :done])
        return audio, signal[..., done:], envelope[..., done:]

    def _fold(self, frames: Tensor, count: int) -> Tensor:
        hold = self.n_fft - self.hop
        if count == 0:
            return frames.new_zeros(frames.shape[0], hold)
        length = (count - 1) * self.hop + self.n_fft
        return F.fold(frames, output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop))[:, 0, 0]


class WindowedStream(MelStream):
    """Any ``mel -> wav`` vocoder with a known receptive field streamed by decoding a bounded
    window per push: the frames to emit, ``field.left`` frames before them and every frame
    pushed after them. An ONNX graph streams this way (:class:`~vocos_distill.onnx.OnnxVocoder`
    keeps no state between calls). Each emitted frame's window holds its whole receptive field,
    so an fp32 graph equals offline decoding; an int8 graph whose activations are quantised per
    call (ONNX Runtime's dynamic quantisation) comes within its own tolerance, as its scales
    follow the window. Work per push: ``chunk + field.left + lookahead`` frames at most.
    """

    def __init__(self, model: Vocoder, lookahead: int | None = None) -> None:
        self.model = model
        super().__init__(model.n_mels, model.hop_length, model.receptive_field, lookahead)

    def _reset(self) -> None:
        self._held: Tensor | None = None  # mel frames from self._start on
        self._start = 0

    def _emit(self, mel: Tensor, frames: int, target: int) -> Tensor:
        done = self._emitted // self.hop
        held = mel if self._held is None else torch.cat([self._held, mel], dim=-1)
        out = held.new_zeros(held.shape[0], 0)
        if target > done:
            first = max(0, done - self.field.left)
            audio = self.model(held[..., first - self._start : frames - self._start]).float()
            out = audio[..., (done - first) * self.hop : (target - first) * self.hop]
        start = max(0, target - self.field.left)
        self._held, self._start = held[..., start - self._start :], start
        return out

    def _push(self, mel: Tensor) -> Tensor:
        frames = self._frames + mel.shape[-1]
        return self._emit(mel, frames, max(self._emitted // self.hop, frames - self.lookahead))

    def _flush(self) -> Tensor:
        empty = self._held[..., :0]
        return self._emit(empty, self._frames, self._frames)
