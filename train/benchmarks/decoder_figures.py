"""The conditional decoder with HiFT and with the student, for ``python train/bench.py --conditional-decoder``.

For each family's flow (Chatterbox's own modules at full size, random weights: cost does not
depend on the values; the multilingual model's flow is the ``chatterbox`` one), the decoders are
timed side by side in one run on one thread, on ``speech_s`` seconds of new speech after a
reference of each of ``reference_s`` seconds:

- ``HiFT``: the flow graph under ONNX Runtime, then Chatterbox's HiFT in PyTorch (HiFT does not
  export here: ``torch.onnx.export`` stops in its NSF source, "SymIntArrayRef expected to contain
  only concrete integers"; onnx-community's export patches HiFT to get it through), then the fade;
- ``student fp32`` / ``student int8``: ``conditional_decoder.onnx`` / ``_int8.onnx`` as
  :mod:`train.release.conditional_decoder` writes them, one ONNX Runtime call each.

Session creation and file sizes are given beside the times. The student is ``students[0]``
(a QAT checkpoint, so that it has an int8 form) or, by default, a random-weight student of the
released shape (256 x 768 x 6), fake-quantised.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from train.evaluation.cost import stand_in_teacher
from train.release.conditional_decoder import export_flow, inputs, write_decoders
from train.s3gen.flow import FAMILIES
from train.s3gen.flow_graph import FlowGraph, small_flow
from train.student.graph import export_onnx
from train.student.quantized import is_prepared, strip
from train.utils.tables import table
from vocos_distill.decoder_graph import ConditionalDecoder, chatterbox_fade
from vocos_distill.int8_check import describe_cpu
from vocos_distill.onnx import session
from vocos_distill.timing import threads

DEFAULT_SHAPE = {"dim": 256, "intermediate_dim": 768, "num_layers": 6}
COLUMNS = ["family", "steps", "decoder", "file MB", "session s"]


def full_flow(meanflow: bool) -> torch.nn.Module:
    """S3Gen's flow as Chatterbox builds it (``S3Token2Mel.__init__``), random weights."""
    from chatterbox.models.s3gen.s3gen import S3Token2Mel  # here: chatterbox-tts is slow to import

    torch.manual_seed(0)
    return S3Token2Mel(meanflow=meanflow).flow.eval().requires_grad_(False)


def _student(students: Sequence[str]) -> torch.nn.Module:
    from train.student.model import build_student, student_from_file  # here: lightning and torchao load slowly
    from train.student.quantized import prepare  # here: torchao loads slowly

    if students:
        return student_from_file(Path(students[0]), option="--students").eval()
    torch.manual_seed(0)
    return prepare(build_student(**DEFAULT_SHAPE)).eval()


def _median(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoder_rows(
    families: Sequence[str] = ("chatterbox", "turbo"),
    reference_s: Sequence[float] = (3.0, 10.0),
    speech_s: float = 5.0,
    repeats: int = 1,
    students: Sequence[str] = (),
    flow_width: int | None = None,
) -> list[dict[str, Any]]:
    """One row per family and decoder (run under ``vocos_distill.timing.threads(1)`` for the one-thread
    figures); ``flow_width``: small flows (tests) instead of full size."""
    model = _student(students)
    hift = stand_in_teacher()
    fade = chatterbox_fade()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        graphs = {"fp32": export_onnx(strip(model), folder / "model.onnx")}
        if is_prepared(model):
            graphs["int8"] = export_onnx(model, folder / "model.int8.onnx", quantize=True)
        for name in families:
            family = FAMILIES[name]
            flow_module = full_flow(family.meanflow) if flow_width is None else small_flow(family.meanflow, flow_width)
            flow = FlowGraph(flow_module, family.steps, family.meanflow).eval()
            sizes = [(int(r * 50), int((r + speech_s) * 25)) for r in reference_s]
            warm = {k: v.numpy() for k, v in inputs(30, 20, flow.vocab_size).items() if k != "noise"}
            # HiFT: the flow alone under ONNX Runtime, then HiFT in PyTorch
            flow_graph = export_flow(flow, opset=18)
            start = time.perf_counter()
            flow_session = session(flow_graph.SerializeToString(), threads=1)
            opened = time.perf_counter() - start
            row = {"family": name, "steps": family.steps, "decoder": "HiFT (flow ONNX + HiFT PyTorch)",
                   "file_mb": (flow_graph.ByteSize() + sum(p.numel() * 4 for p in hift.parameters())) / 2**20,
                   "session_s": opened}  # fmt: skip
            for (frames, tokens), ref in zip(sizes, reference_s, strict=True):
                x = {k: v.numpy() for k, v in inputs(tokens, frames, flow.vocab_size).items() if k != "noise"}

                def hift_decoder(x=x, flow_session=flow_session):
                    (mel,) = flow_session.run(None, x)
                    with torch.inference_mode():
                        wav = hift(torch.from_numpy(mel))
                        wav[:, : fade.numel()] *= fade

                if not row.get("warm"):
                    (mel,) = flow_session.run(None, warm)  # warm-up, on a short input
                    hift(torch.from_numpy(mel))
                    row["warm"] = True
                row[f"ref_{ref:g}s"] = _median(hift_decoder, repeats)
            rows.append(row)
            written = write_decoders(flow, folder, name, graphs)
            for kind, paths in written.items():
                start = time.perf_counter()
                decoder = ConditionalDecoder(paths[0], runtime=kind, threads=1)
                row = {"family": name, "steps": family.steps, "decoder": f"student {kind}",
                       "file_mb": sum(p.stat().st_size for p in paths) / 2**20,
                       "session_s": time.perf_counter() - start}  # fmt: skip
                decoder(*list(inputs(30, 20, flow.vocab_size).values())[:3])  # warm-up, on a short input
                for (frames, tokens), ref in zip(sizes, reference_s, strict=True):
                    x = list(inputs(tokens, frames, flow.vocab_size).values())[:3]
                    row[f"ref_{ref:g}s"] = _median(lambda x=x, decoder=decoder: decoder(*x), repeats)
                rows.append(row)
                for path in paths:
                    path.unlink()
    for row in rows:
        row.pop("warm", None)
        base = next(r for r in rows if r["family"] == row["family"] and r["decoder"].startswith("HiFT"))
        for ref in reference_s:
            row[f"faster_{ref:g}s"] = 1 - row[f"ref_{ref:g}s"] / base[f"ref_{ref:g}s"]
    return rows


def decoder_figures(
    families: Sequence[str], reference_s: Sequence[float], speech_s: float, repeats: int, students: Sequence[str]
) -> dict[str, Any]:
    """Print the table of :func:`decoder_rows`; returns the rows with the machine."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"conditional decoder, {speech_s:g} s of speech after each reference; ONNX Runtime / PyTorch, 1 thread; "
          f"median of {repeats} after a warm-up")  # fmt: skip
    print(f"CPU: {describe_cpu()}; {os.cpu_count()} cores; load average {load:.1f}")
    with threads(1):
        rows = decoder_rows(families, reference_s, speech_s, repeats, students)
    refs = [f"{r:g} s ref" for r in reference_s]
    cells = [
        [r["family"], str(r["steps"]), r["decoder"], f"{r['file_mb']:.0f}", f"{r['session_s']:.2f}",
         *[f"{r[f'ref_{x:g}s']:.2f} s" for x in reference_s],
         *[f"{100 * r[f'faster_{x:g}s']:+.1f} %" for x in reference_s]]
        for r in rows
    ]  # fmt: skip
    print(table([*COLUMNS, *refs, *[f"faster, {x}" for x in refs]], cells))
    return {"rows": rows, "cpu": describe_cpu(), "load": load, "speech_s": speech_s, "repeats": repeats}
