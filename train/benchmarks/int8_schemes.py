"""Every int8 scheme of a checkpoint's graph, for ``python train/bench.py --int8-schemes``: each
graph's SNR against the checkpoint (fake-quantised and fp32) and its speed, timed in turn."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from train.data.audio import corpus_mels
from train.student import from_pretrained
from train.student.graph import INT8_SCHEME, INT8_SCHEMES, export_onnx, probe_windows
from train.student.quantized import strip
from vocos_distill.int8_check import snr_db
from vocos_distill.onnx import OnnxVocoder
from vocos_distill.timing import frames_of, interleaved, threads, timing_mel

FIDELITY = ("scheme", "snr_vs_model_db", "snr_vs_fp32_db", "ms_per_s_interleaved")
ROUNDS = 15  # interleaved timing rounds of the graphs of one checkpoint


def int8_scheme_graphs(
    checkpoints: list[str], folder: Path, corpus: Path, clips: int
) -> tuple[list[str], dict[str, dict[str, object]]]:
    """Each checkpoint, then its fp32 ONNX graph and an int8 graph per scheme, written under
    ``folder``; and each graph's lowest SNR against the checkpoint's fake-quantised model (QAT)
    and its fp32 weights on ``clips`` clips of ``corpus``."""
    mels = [m.unsqueeze(0) for m in corpus_mels(corpus, clips, 6.0)]
    candidates = probe_windows(mels)
    files, fidelity = [], {}
    for index, checkpoint in enumerate(checkpoints):
        files.append(checkpoint)
        if Path(checkpoint).suffix == ".onnx":
            continue
        model = from_pretrained(checkpoint)
        plain = strip(model)
        own = folder / str(index)
        own.mkdir()
        pytorch = own / "fp32.safetensors"  # the checkpoint's weights without fake quantisation
        save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(pytorch),
                  metadata={"config": json.dumps(plain.config.to_dict())})  # fmt: skip
        files.append(str(pytorch))
        graphs = {"fp32": export_onnx(plain, own / "fp32.onnx")}
        for scheme in INT8_SCHEMES:
            graphs[scheme] = export_onnx(model, own / f"int8-{scheme}.onnx", quantize=True, scheme=scheme,
                                         probe=candidates)  # fmt: skip
        loaded = {scheme: OnnxVocoder(path, check=False) for scheme, path in graphs.items()}
        with torch.inference_mode():
            references = [(model(m), plain(m)) for m in mels]
            for scheme, path in graphs.items():
                outputs = [loaded[scheme](m) for m in mels]
                fidelity[str(path)] = {
                    "scheme": scheme + (" (shipped)" if scheme == INT8_SCHEME else ""),
                    "snr_vs_model_db": min(snr_db(r, o) for (r, _), o in zip(references, outputs, strict=True)),
                    "snr_vs_fp32_db": min(snr_db(p, o) for (_, p), o in zip(references, outputs, strict=True)),
                }
                files.append(str(path))
        for scheme, ms in interleaved_ms_per_s(loaded).items():
            fidelity[str(graphs[scheme])]["ms_per_s_interleaved"] = ms
    return files, fidelity


def interleaved_ms_per_s(graphs: dict[str, torch.nn.Module], seconds: float = 10.0) -> dict[str, float]:
    """Milliseconds of compute per second of audio, 1 thread, median of :data:`ROUNDS` rounds that
    run every graph once in turn on the same mel: a burst of load on a shared machine falls on all
    of them, so their order is steadier than in separate timings."""
    mel = timing_mel(frames_of(seconds))
    with threads(1), torch.inference_mode():
        medians = interleaved({name: (lambda graph=graph: graph(mel)) for name, graph in graphs.items()}, ROUNDS)
    return {name: 1e3 * median / seconds for name, median in medians.items()}
