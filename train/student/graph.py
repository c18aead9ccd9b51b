"""Writing the student as one ONNX graph, ``mel (B, 80, T) -> wav (B, T * hop)``, fp32 or int8.

ONNX has no inverse-STFT operator and no complex tensors, and Vocos's head needs both. The
exportable student here rewrites the head's last step with real tensors only, in one of two
formulations (``istft=``):

- ``"matmul"`` (the default): the inverse DFT of each frame in two stages (Cooley-Tukey with
  ``n_fft = n1 * n2``, 30 x 64 for 1920), each a few small real matrix products: about a
  quarter of the multiply-adds of one dense inverse-DFT matrix, and 64 KB of constants
  instead of 7-15 MB.
- ``"dft"``: ONNX's ``DFT`` operator (``torch.fft.irfft`` through the exporter).

Both window the frames and overlap-add them with pads and adds (``n_fft`` is a whole number
of hops), then divide by the window envelope, exactly as ``vocos.spectral_ops.ISTFT`` with
``padding="same"`` does. Which one is faster under ONNX Runtime is measured by
``python train/export.py ... compare_istft=true``; README, "Release", has the figures.

:func:`export_onnx` writes the graph (fp32, or with its Linear layers quantised to int8 by
ONNX Runtime's dynamic quantisation: weights symmetric per output channel, activations per
call); :class:`vocos_distill.onnx.OnnxVocoder` runs such a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from train.s3gen.mel import S3GenMel
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.errors import ConfigError
from vocos_distill.files import atomic_write
from vocos_distill.heads import AmplitudePriorHead, amplitude_prior, polar, same_output
from vocos_distill.int8_check import PROBE_KEY, PROBE_STRIDE, PROBE_WINDOWS, encode_probe, snr_db
from vocos_distill.onnx import OnnxArtifactError, OnnxVocoder, session

log = logging.getLogger(__name__)
for _name in ("onnx_ir", "onnxscript"):  # the exporter's optimiser logs every pass at INFO
    logging.getLogger(_name).setLevel(logging.WARNING)
ISTFT_FORMS = ("matmul", "dft")
QUANTIZED_OPS = ("MatMul", "Gemm")  # the Linear layers; the convs stay fp32 (README: "Which int8 runtime")
INT16_MAX = 32_767
U8_MAX = 255
INTEGER_MATMULS = {"MatMulInteger": 1, "ConvInteger": 1, "DynamicQuantizeMatMul": 1, "MatMulIntegerToFloat": 1}

# How the int8 graph's integers are laid out. ONNX Runtime's dynamic quantisation feeds every
# MatMulInteger uint8 activations (0..255, one scale and zero point per call). The weights' type
# and range decide which CPU kernels can add the products up wrongly:
# - x86 without VNNI (SSSE3 / AVX2 / AVX-512 F+BW) multiplies u8 x s8 with ``(v)pmaddubsw``, which
#   adds each pair of products into an int16 and saturates: with s8 weights in [-127, 127] a pair
#   reaches 2 * 255 * 127 = 64,770 > 32,767. This was the 11 dB int8 graph on AVX2-only EPYCs.
# - VNNI (``vpdpbusd``), AMX (``tdpbusd``), SSE4.1 (widening ``pmaddwd``) and ARM64 (widening,
#   ``udot``/``sdot``, ``ummla``) add in int32: no overflow at any range.
# "u8s8-7bit" keeps ONNX Runtime's most used kernel pairing but quantises the weights into
# [-64, 64] (``reduce_range``): a pair is at most 2 * 255 * 64 = 32,640 <= 32,767 on every
# kernel, for one bit of weight precision (measured: README, "Which int8 runtime").
# "u8u8" (uint8 weights with zero points) is exact too on the kernels above, but some ONNX
# Runtime releases (1.23-1.24) sent u8u8 on AMX CPUs into the u8s8 AMX kernel, which was wrong.
INT8_SCHEMES = {
    "u8s8-7bit": {"weight_type": "QInt8", "reduce_range": True},
    "u8u8": {"weight_type": "QUInt8", "reduce_range": False},
    "u8s8": {"weight_type": "QInt8", "reduce_range": False},  # saturates without VNNI: for comparison only
}
INT8_SCHEME = "u8s8-7bit"


def overflow_risks(model: Any) -> list[str]:
    """Integer matrix products of ``model`` (an ``onnx.ModelProto``) whose int8 weights could
    overflow an int16 pair sum of u8 x s8 products (``vpmaddubsw``: x86 without VNNI): one line
    each, empty when none can. Unsigned weights are widened by every kernel and cannot."""
    from onnx import numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    risks = []
    for node in model.graph.node:
        index = INTEGER_MATMULS.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in weights:
            continue
        values = numpy_helper.to_array(weights[node.input[index]])
        if values.dtype != np.int8:
            continue
        largest = int(np.abs(values.astype(np.int32)).max()) if values.size else 0
        if 2 * U8_MAX * largest > INT16_MAX:
            risks.append(
                f"{node.name or node.op_type} ({node.input[index]}): |weight| up to {largest}, "
                f"2 * {U8_MAX} * {largest} = {2 * U8_MAX * largest:,} > {INT16_MAX:,}"
            )
    return risks


def _overlap_add(frames: Tensor, hop: int) -> Tensor:
    """``(B, n_fft, T) -> (B, (T - 1) * hop + n_fft)``: frame ``t`` added in at sample ``t * hop``.

    With ``n_fft = k * hop`` each frame is ``k`` hop-long pieces; piece ``i`` of frame ``t`` lands
    in output block ``t + i``. So the sum is ``k`` shifted copies: pads and adds, which export
    to ONNX with a dynamic frame axis (``Col2Im`` would too, but is not in every runtime).
    """
    batch, n_fft, frames_count = frames.shape
    pieces = n_fft // hop
    parts = frames.reshape(batch, pieces, hop, frames_count)
    out = nn.functional.pad(parts[:, 0], (0, pieces - 1))
    for i in range(1, pieces):
        out = out + nn.functional.pad(parts[:, i], (i, pieces - 1 - i))
    return out.transpose(1, 2).reshape(batch, -1)


class RealISTFT(nn.Module):
    """``vocos``' ISTFT (``padding="same"``) on ``(real, imag)`` spectra ``(B, n_fft/2 + 1, T)``;
    with ``shift``, :class:`~vocos_distill.heads.ShiftedISTFT`."""

    def __init__(self, n_fft: int, hop_length: int, form: str = "matmul", shift: int = 0) -> None:
        super().__init__()
        if form not in ISTFT_FORMS:
            raise ValueError(f"istft={form!r}: expected one of {', '.join(ISTFT_FORMS)}")
        if n_fft % 2 or n_fft % hop_length:
            raise ValueError(f"n_fft={n_fft} must be even and a whole number of hops (hop_length={hop_length})")
        self.n_fft, self.hop_length, self.form, self.shift = n_fft, hop_length, form, shift
        window = torch.hann_window(n_fft)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("window_sq", window.square(), persistent=False)
        # n_fft = n1 * n2 with 2 * n1 + n2 least (the cost of the two stages): 30 x 64 for 1920
        self.factors = min(
            ((a, n_fft // a) for a in range(1, n_fft + 1) if n_fft % a == 0), key=lambda f: 2 * f[0] + f[1]
        )
        n1, n2 = self.factors
        first = 2 * math.pi * torch.outer(torch.arange(n1), torch.arange(n1)).double() / n1
        twiddle = 2 * math.pi * torch.outer(torch.arange(n1), torch.arange(n2)).double() / n_fft
        second = 2 * math.pi * torch.outer(torch.arange(n2), torch.arange(n2)).double() / n2
        for name, value in (
            ("cos1", first.cos()),
            ("sin1", first.sin()),
            ("twiddle_cos", twiddle.cos()[None, :, :, None]),
            ("twiddle_sin", twiddle.sin()[None, :, :, None]),
            ("cos2", second.cos() / n_fft),  # irfft's 1 / n_fft ("backward" norm)
            ("sin2", second.sin() / n_fft),
        ):
            self.register_buffer(name, value.float(), persistent=False)

    def frames(self, real: Tensor, imag: Tensor) -> Tensor:
        """The inverse real DFT of every frame, ``(B, n_fft, T)`` (unwindowed), as ``torch.fft.irfft``."""
        n = self.n_fft
        if self.form == "dft":
            return torch.fft.irfft(torch.complex(real, imag), n, dim=1)
        batch, _, count = real.shape
        n1, n2 = self.factors
        # the full Hermitian spectrum (irfft ignores the imaginary parts of DC and Nyquist)
        imag = torch.cat([imag[:, :1] * 0, imag[:, 1:-1], imag[:, -1:] * 0], dim=1)
        x_re = torch.cat([real, real[:, 1:-1].flip(1)], dim=1).reshape(batch, n1, n2 * count)
        x_im = torch.cat([imag, -imag[:, 1:-1].flip(1)], dim=1).reshape(batch, n1, n2 * count)
        # bin k = n2 * k1 + k2: size-n1 DFTs over k1 ...
        y_re = (torch.matmul(self.cos1, x_re) - torch.matmul(self.sin1, x_im)).reshape(batch, n1, n2, count)
        y_im = (torch.matmul(self.sin1, x_re) + torch.matmul(self.cos1, x_im)).reshape(batch, n1, n2, count)
        # ... twiddled ...
        z_re = (y_re * self.twiddle_cos - y_im * self.twiddle_sin).permute(0, 1, 3, 2)
        z_im = (y_im * self.twiddle_cos + y_re * self.twiddle_sin).permute(0, 1, 3, 2)
        # ... then size-n2 DFTs over k2, real part only: sample t = n1_index + n1 * n2_index
        out = torch.matmul(z_re, self.cos2) - torch.matmul(z_im, self.sin2)  # (B, n1, T, n2)
        return out.permute(0, 3, 1, 2).reshape(batch, n, count)

    def forward(self, real: Tensor, imag: Tensor) -> Tensor:
        frames = self.frames(real, imag) * self.window[None, :, None]
        count = frames.shape[-1]
        signal = _overlap_add(frames, self.hop_length)
        envelope = _overlap_add(self.window_sq[None, :, None].expand(1, self.n_fft, count), self.hop_length)
        return same_output(signal, envelope, count, self.n_fft, self.hop_length, self.shift)


class AmplitudePrior(nn.Module):
    """:func:`~vocos_distill.heads.amplitude_prior` with its pseudo-inverse as a graph constant
    (named ``prior.*``, so that int8 quantisation leaves its product in fp32)."""

    def __init__(self, inverse: Tensor) -> None:
        super().__init__()
        self.register_buffer("inverse", inverse.detach().clone())

    def forward(self, mel: Tensor) -> Tensor:
        return amplitude_prior(mel, self.inverse)


class WaveformGraph(nn.Module):
    """The student with real tensors only: backbone, head projection, magnitude / phase (with
    the amplitude prior, if the student has one), RealISTFT."""

    def __init__(self, student: nn.Module, istft: str = "matmul") -> None:
        super().__init__()
        head = student.head
        if getattr(head.istft, "padding", "same") != "same" or head.istft.win_length != head.istft.n_fft:
            raise ValueError("only the student's iSTFT (padding 'same', win_length = n_fft) is exportable")
        shift = getattr(head.istft, "shift", 0)
        self.backbone = student.backbone
        self.out = head.out
        self.prior = AmplitudePrior(head.inverse_mel) if isinstance(head, AmplitudePriorHead) else None
        self.istft = RealISTFT(head.istft.n_fft, head.istft.hop_length, istft, shift)

    def forward(self, mel: Tensor) -> Tensor:
        prior = None if self.prior is None else self.prior(mel)
        return self.istft(*polar(self.out(self.backbone(mel)).transpose(1, 2), prior))


_TRACED: OrderedDict[str, bytes] = OrderedDict()  # the last few traced fp32 graphs, by weights and iSTFT form
TRACED_KEPT = 4


def traced(plain: nn.Module, istft: str = "matmul") -> onnx.ModelProto:
    """The fp32 graph of a plain student: ``torch.onnx.export`` (dynamo) of :class:`WaveformGraph`.

    Tracing takes seconds (8 s for a small student on a 2-core EPYC), and one student is often
    written in several forms (a release's fp32 and int8 graphs, the int8 schemes compared): the
    last few traces are kept, keyed by the weights' bytes, the config and the iSTFT form, so a
    student is traced once per process. A fresh copy is returned each time (callers edit it)."""
    digest = hashlib.sha256(json.dumps([plain.config.to_dict(), istft, type(plain).__name__]).encode())
    for name, tensor in plain.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    key = digest.hexdigest()
    if key not in _TRACED:
        graph = WaveformGraph(plain, istft).eval()
        # not 1 in size: torch.export fixes sizes 0 and 1; its own generator: tracing leaves the global RNG alone
        mel = torch.randn(2, plain.config.input_channels, 50, generator=torch.Generator().manual_seed(0))
        shapes = {"mel": {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("frames", min=2, max=1 << 20)}}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on torchvision and the like
            program = torch.onnx.export(
                graph,
                (mel,),
                dynamic_shapes=shapes,
                input_names=["mel"],
                output_names=["wav"],
                opset_version=18,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        _TRACED[key] = program.model_proto.SerializeToString()
        while len(_TRACED) > TRACED_KEPT:
            _TRACED.popitem(last=False)
    _TRACED.move_to_end(key)
    return onnx.load_model_from_string(_TRACED[key])


def export_onnx(
    student: nn.Module,
    path: str | Path,
    quantize: bool = False,
    istft: str = "matmul",
    op_types: tuple[str, ...] | None = QUANTIZED_OPS,
    metadata: dict[str, str] | None = None,
    scheme: str = INT8_SCHEME,
    probe: Tensor | None = None,
    min_snr_db: float = 30.0,
) -> Path:
    """Write ``student`` (plain or fake-quantised) as one ONNX graph at ``path``, atomically.

    ``quantize=True`` quantises its Linear layers to int8 with ``scheme`` (:data:`INT8_SCHEMES`;
    ``op_types=None``: every op ONNX Runtime can, the convs too; for comparisons). A graph whose
    integer products could overflow a CPU's int16 pair sums is refused (except the ``u8s8``
    comparison scheme). An int8 graph carries its probe (:mod:`vocos_distill.int8_check`): of
    the candidate mels ``probe`` (``(N, n_mels, frames)``, :func:`probe_windows`; default
    :func:`default_probe_mel`), the few whose quantisation changes the output most here, and what ``student``
    (fake-quantised if QAT) gives on them, which it must reproduce at ``min_snr_db``, or 3 dB
    under what it reaches here if that is lower. The student's build config, the numerics
    and ``metadata`` go into the model's metadata. The time axis (and batch) are dynamic.
    """
    from train.student.quantized import DESCRIPTION, strip  # torchao is slow to import

    if quantize and scheme not in INT8_SCHEMES:
        raise ValueError(f"scheme={scheme!r}: choose one of {', '.join(INT8_SCHEMES)}")

    plain = strip(student).cpu().eval()
    config = plain.config.to_dict()
    model = traced(plain, istft)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        if quantize:
            onnx.save(model, str(fp32))
            from onnxruntime.quantization import QuantType, quantize_dynamic

            final = Path(tmp) / "int8.onnx"
            # the iSTFT's and the amplitude prior's matrix products stay fp32 (their constants: istft.*, prior.*)
            fp32_nodes = [n.name for n in model.graph.node if any(i.startswith(("istft.", "prior.")) for i in n.input)]
            root = logging.getLogger()
            level = root.level
            root.setLevel(max(level, logging.WARNING))  # ONNX Runtime logs each op skipped
            settings = INT8_SCHEMES[scheme]
            try:
                quantize_dynamic(
                    str(fp32),
                    str(final),
                    weight_type=getattr(QuantType, settings["weight_type"]),
                    per_channel=True,
                    reduce_range=settings["reduce_range"],
                    op_types_to_quantize=list(op_types) if op_types else None,
                    nodes_to_exclude=fp32_nodes,
                )
            finally:
                root.setLevel(level)
            model = onnx.load(str(final))
            risks = overflow_risks(model)
            if risks and scheme != "u8s8":
                raise OnnxArtifactError(
                    f"{path}: int8 scheme {scheme!r} left {len(risks)} integer products that can overflow: {risks[0]}"
                )
    numerics = (DESCRIPTION if op_types == QUANTIZED_OPS else f"int8 ops: {op_types or 'all'}") if quantize else "fp32"
    numerics += f" ({scheme})" if quantize else ""
    del model.metadata_props[:]
    for node in model.graph.node:  # the exporter's stack traces: a third of a small model's bytes
        del node.metadata_props[:]
        node.doc_string = ""
    entries = {"config": json.dumps(config), "quantization": numerics, "istft": istft, **(metadata or {})}
    if quantize:
        entries["int8_scheme"] = scheme
        mel = (probe if probe is not None else default_probe_mel(config["input_channels"])).detach().cpu()
        mel = mel.half().float()  # as it is stored
        weight = next(student.parameters(), None)
        with torch.no_grad():
            expected = student(mel.to(weight.device if weight is not None else "cpu")).float().cpu().numpy()
        runtime = session(model.SerializeToString())
        # the windows whose quantisation changes the output most here, each run alone (activations are
        # scaled per call): the large activations that overflow a wrong kernel. Measured against the
        # fp32 weights, not the QAT model, which (compress.scheme=int8-runtime) the graph equals
        with torch.no_grad():
            unquantised = plain(mel).float().numpy()
        alone = [runtime.run(None, {"mel": mel[i : i + 1].numpy()})[0][0] for i in range(len(mel))]
        worst = sorted(range(len(mel)), key=lambda i: snr_db(unquantised[i], alone[i]))[:PROBE_WINDOWS]
        mel, expected = mel[worst], expected[worst]
        (got,) = runtime.run(None, {"mel": mel.numpy()})  # as the check will run and measure them
        here = snr_db(expected[..., ::PROBE_STRIDE], got[..., ::PROBE_STRIDE])
        entries[PROBE_KEY] = encode_probe(mel.numpy(), expected, here, min(min_snr_db, round(here - 3.0, 1)))
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    return atomic_write(path, lambda f: f.write(model.SerializeToString()))


def default_probe_mel(n_mels: int = 80, frames: int = 24) -> Tensor:
    """A deterministic speech-like S3Gen mel ``(1, n_mels, frames)`` for graphs written without
    held-out speech at hand: a voiced source gliding 110 -> 190 Hz through three formants, with
    breath noise and a syllable-rate envelope."""
    import numpy as np

    samples = frames * HOP_LENGTH
    t = np.arange(samples) / SAMPLE_RATE
    f0 = 110 + 80 * t / t[-1]
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wav = np.zeros(samples)
    for k in range(1, int(4000 / 190)):
        freq = k * f0
        gain = sum(1 / (1 + ((freq - f) / bw) ** 2) for f, bw in ((600, 90), (1200, 120), (2600, 200)))
        wav += gain * np.sin(k * phase) / k
    wav += 0.02 * np.random.default_rng(0).standard_normal(samples)
    wav *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    wav = 0.3 * wav / np.abs(wav).max()
    mel = S3GenMel()(torch.from_numpy(wav).float()[None])
    if n_mels != mel.shape[1]:
        mel = nn.functional.interpolate(mel.transpose(1, 2), size=n_mels, mode="linear").transpose(1, 2)
    return mel[..., :frames]


def probe_windows(mels: list[Tensor], frames: int = 24, most: int = 64) -> Tensor:
    """Candidate probe windows ``(N, n_mels, frames)`` from held-out mels ``(1, n_mels, T)`` (half
    overlapping; at most ``most``, evenly spread); mels shorter than ``frames`` give none, and no
    window at all gives :func:`default_probe_mel`. :func:`export_onnx` keeps the few on which the
    int8 graph is least accurate."""
    windows = [
        mel.reshape(-1, *mel.shape[-2:])[:1, :, start : start + frames]
        for mel in mels
        for start in range(0, mel.shape[-1] - frames + 1, max(1, frames // 2))
    ]
    if not windows:
        return default_probe_mel(frames=frames)
    chosen = torch.linspace(0, len(windows) - 1, min(most, len(windows))).round().long().tolist()
    return torch.cat([windows[i] for i in sorted(set(chosen))])


class Int8GraphError(ConfigError, ValueError):
    """An int8 graph that does not reproduce its model at ``min_snr_db`` on the validation mels."""

    def __init__(self, worst_db: float, min_snr_db: float) -> None:
        super().__init__(f"the int8 graph reproduces its model at only {worst_db:.1f} dB SNR (min_snr_db={min_snr_db})")
        self.worst_db, self.min_snr_db = worst_db, min_snr_db


def write_int8_graph(
    student: nn.Module,
    path: str | Path,
    mels: list[Tensor],
    min_snr_db: float,
    istft: str = "matmul",
    metadata: dict[str, str] | None = None,
) -> list[float]:
    """The one writer of an int8 graph (``train/quantize.py`` and ``train/export.py`` both call it):
    ``student`` (fake-quantised QAT, or plain) quantised, the probe chosen from ``mels``' windows
    and embedded (:func:`probe_windows`, :func:`export_onnx`), then the graph run on every mel of
    ``mels`` against ``student``; written to ``path`` only if each reaches ``min_snr_db``, else an
    :class:`Int8GraphError` and nothing written. Returns the SNR of each mel, in dB."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        staged = export_onnx(student, Path(tmp) / path.name, quantize=True, istft=istft, metadata=metadata,
                             probe=probe_windows(mels), min_snr_db=min_snr_db)  # fmt: skip
        runtime = OnnxVocoder(staged, check=False)  # checked here, on every validation mel
        snrs = [snr_db(student(mel), runtime(mel)) for mel in mels]
        if min(snrs) < min_snr_db:
            raise Int8GraphError(min(snrs), min_snr_db)
        data = staged.read_bytes()
    atomic_write(path, lambda f: f.write(data))
    return snrs
