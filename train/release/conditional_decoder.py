"""``conditional_decoder.onnx``: the checkpoint's own flow and the student in one graph, for
the ONNX Chatterbox pipelines (onnx-community's exports, transformers.js, onnxvoice,
chatterbox-onnx), which run four graphs and fuse the vocoder into the last.

The contract those callers hold the graph to (onnx-community's export script; onnxvoice's
``_validate_graph``): inputs ``speech_tokens`` int64 ``[batch, num_speech_tokens]`` (the
reference's tokens, then the ones to speak), ``speaker_embeddings`` float32 ``[batch, 192]``,
``speaker_features`` float32 ``[batch, frames, 80]`` (the reference's mel); output ``waveform``
float32 ``[batch, num_samples]``; the CFM noise drawn inside. This module builds it from three
parts, each written by its owner:

1. the flow, :class:`train.s3gen.flow_graph.FlowGraph` exported by the TorchScript exporter (the
   dynamo exporter's optimiser does not finish on the 10-step graph), at the student's opset;
2. the student's own graph: the release's ``model.onnx`` (fp32) or ``model.int8.onnx`` (int8,
   with its self-check probe, :func:`train.student.graph.write_int8_graph`), both ``mel -> wav``;
3. Chatterbox's fade (``S3Token2Wav.trim_fade``: 20 ms of silence, then a 20 ms raised-cosine
   fade-in over the first :data:`FADE_SAMPLES` samples), as five ONNX nodes.

``onnx.compose.merge_models`` joins 1 and 2 at the tensor ``mel``, so the student's part can be
cut out again by name (:data:`STUDENT_INPUT`, :data:`STUDENT_OUTPUT`): the runtime's int8
self-check runs the probe on exactly the weights and kernels of the fused file
(:mod:`vocos_distill.decoder_graph`). A graph over 2 GB keeps its weights in ``<name>_data``.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from train.s3gen.flow import check_family, check_parts, load_s3gen
from train.s3gen.flow_graph import TOKEN_LOOKUP, FlowGraph
from train.s3gen.teacher import LOCAL_HINT
from train.student.graph import snr_db
from vocos_distill.config import MEL_SPEC, StudentConfig
from vocos_distill.decoder_graph import (
    DECODER_FILES,
    DECODER_KEY,
    FADE_SAMPLES,
    INPUTS,
    OUTPUT,
    STUDENT_INPUT,
    STUDENT_OUTPUT,
    ConditionalDecoder,
    chatterbox_fade,
)
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import atomic_write, temporary_path
from vocos_distill.hub import fetch_file
from vocos_distill.release import check_shape

log = logging.getLogger(__name__)
EXTERNAL_DATA_BYTES = (2 << 30) - (64 << 20)  # protobuf's 2 GB limit, with room for the graph itself
# A small example to trace at: lengths above 1 so that none is taken for a constant (its batch of 1
# stays dynamic too: the tests decode a batch of 2)
EXAMPLE = {"tokens": 24, "prompt_frames": 16}
AXES = {
    "speech_tokens": {0: "batch_size", 1: "num_speech_tokens"},
    "speaker_embeddings": {0: "batch_size"},
    "speaker_features": {0: "batch_size", 1: "feature_dim"},
    "noise": {0: "batch_size", 2: "num_mel_frames"},
    STUDENT_INPUT: {0: "batch_size", 2: "num_frames"},
}


class DecoderExportError(ConfigError, RuntimeError):
    """A conditional decoder that cannot be written from these files."""


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_flow(graph: FlowGraph, opset: int, noise_input: bool = False) -> onnx.ModelProto:
    """The flow alone: the contract's three inputs (and ``noise`` ``(B, 80, 2 * tokens)`` when
    ``noise_input``) -> :data:`STUDENT_INPUT` ``(B, 80, frames)``, the token look-up node named
    :data:`~train.s3gen.flow_graph.TOKEN_LOOKUP`."""
    generator = torch.Generator().manual_seed(0)  # the trace's own: the global RNG is left alone
    tokens, frames = EXAMPLE["tokens"], EXAMPLE["prompt_frames"]
    example = (
        torch.randint(0, graph.vocab_size, (1, tokens), generator=generator),
        torch.randn(1, 192, generator=generator),
        torch.randn(1, frames, 80, generator=generator),
    )
    names = list(INPUTS)
    if noise_input:
        example += (torch.randn(1, 80, 2 * tokens, generator=generator),)
        names.append("noise")
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's tracer warnings on Python-side shape arithmetic
        torch.onnx.export(
            graph.eval(), example, buffer, input_names=names, output_names=[STUDENT_INPUT],
            dynamic_axes={name: AXES[name] for name in [*names, STUDENT_INPUT]},
            opset_version=opset, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    model = onnx.load_model_from_string(buffer.getvalue())
    table = graph.flow.input_embedding.weight
    lookups = [
        node
        for node in model.graph.node
        if node.op_type == "Gather" and any(_is_table(model, name, table) for name in node.input[:1])
    ]
    if len(lookups) != 1:
        raise DecoderExportError(f"expected one token look-up in the traced flow, found {len(lookups)}")
    lookups[0].name = TOKEN_LOOKUP
    return model


def _is_table(model: onnx.ModelProto, name: str, table: torch.Tensor) -> bool:
    for init in model.graph.initializer:
        if init.name == name:
            return tuple(init.dims) == tuple(table.shape)
    return False


def _fade_nodes(source: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``waveform = source`` with Chatterbox's fade on its first :data:`FADE_SAMPLES` samples
    (fewer when the waveform is shorter)."""
    p = "fade/"
    constants = [
        numpy_helper.from_array(chatterbox_fade().numpy(), p + "window"),
        numpy_helper.from_array(torch.tensor([0]).numpy(), p + "zero"),
        numpy_helper.from_array(torch.tensor([1]).numpy(), p + "one"),
        numpy_helper.from_array(torch.tensor([FADE_SAMPLES]).numpy(), p + "length"),
        numpy_helper.from_array(torch.tensor([torch.iinfo(torch.int64).max]).numpy(), p + "end"),
    ]
    nodes = [
        helper.make_node("Slice", [source, p + "zero", p + "length", p + "one"], [p + "head"], name=p + "head"),
        helper.make_node("Shape", [p + "head"], [p + "n"], name=p + "n", start=1, end=2),
        helper.make_node("Slice", [p + "window", p + "zero", p + "n", p + "zero"], [p + "gain"], name=p + "gain"),
        helper.make_node("Mul", [p + "head", p + "gain"], [p + "faded"], name=p + "faded"),
        helper.make_node("Slice", [source, p + "length", p + "end", p + "one"], [p + "tail"], name=p + "tail"),
        helper.make_node("Concat", [p + "faded", p + "tail"], [OUTPUT], name=p + "waveform", axis=1),
    ]
    return nodes, constants


def fuse(flow: onnx.ModelProto, student: onnx.ModelProto, record: dict[str, Any]) -> onnx.ModelProto:
    """flow -> student -> fade, one graph: the contract's inputs, ``waveform`` out; the student's
    metadata (config, numerics, int8 probe) kept, ``record`` added under :data:`DECODER_KEY`."""
    if opset_of(flow) != opset_of(student):
        raise DecoderExportError(f"the flow is at opset {opset_of(flow)}, the student at {opset_of(student)}")
    (student_in,) = [i.name for i in student.graph.input]
    (student_out,) = [o.name for o in student.graph.output]
    flow.ir_version = student.ir_version
    merged = onnx.compose.merge_models(flow, student, io_map=[(STUDENT_INPUT, student_in)], prefix2="student/")
    wav = "student/" + student_out
    assert wav == STUDENT_OUTPUT, wav
    nodes, constants = _fade_nodes(wav)
    merged.graph.node.extend(nodes)
    merged.graph.initializer.extend(constants)
    merged.graph.value_info.extend(merged.graph.output)  # the student's waveform: cut out by name for its int8 check
    del merged.graph.output[:]
    merged.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch_size", "num_samples"]))
    # one import per domain (each part brought its own), and the oldest IR version those opsets allow:
    # the exporters write IR 10, which ONNX Runtime before 1.18 refuses; IR 8 runs from 1.15 on
    opsets = {o.domain: o.version for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())
    merged.ir_version = helper.find_min_ir_version_for(list(merged.opset_import))
    del merged.metadata_props[:]
    for entry in student.metadata_props:
        merged.metadata_props.add(key=entry.key, value=entry.value)
    merged.metadata_props.add(key=DECODER_KEY, value=json.dumps(record))
    merged.producer_name, merged.doc_string = "vocos-distill", "Chatterbox conditional decoder: S3Gen flow + Vocos"
    if merged.ByteSize() < EXTERNAL_DATA_BYTES:  # the checker takes a graph whole, up to protobuf's limit
        onnx.checker.check_model(merged)
    return merged


def save(model: onnx.ModelProto, path: Path, external_above: int = EXTERNAL_DATA_BYTES) -> list[Path]:
    """Write ``model`` at ``path``, its weights in ``<name>_data`` beside it when it is over
    ``external_above`` bytes; each file appears whole (data first) or not at all. Returns the files."""
    path = Path(path)
    data = path.with_name(path.name + "_data")
    if model.ByteSize() <= external_above:
        atomic_write(path, lambda f: f.write(model.SerializeToString()))
        data.unlink(missing_ok=True)  # a graph written before may have left one
        return [path]
    from onnx.external_data_helper import convert_model_to_external_data

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".decoder-") as tmp:
        staged = Path(tmp) / path.name
        model = _copy(model)  # the caller's stays whole
        # constants too: the traced flow keeps large tables (the positional encoding) in Constant nodes
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data.name,
                                       size_threshold=1024, convert_attribute=True)  # fmt: skip
        onnx.save(model, str(staged))
        for part in (data, path):
            moved = temporary_path(part)
            shutil.move(str(Path(tmp) / part.name), moved)
            moved.replace(part)
    return [path, data]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy that never serialises (a message over 2 GB cannot be)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def student_graph_checks(config: StudentConfig, where: str) -> None:
    """The student must be made for S3Gen's mel: the flow feeds it nothing else."""
    try:
        check_shape(config, MEL_SPEC, where)
    except ConfigError as err:
        raise DecoderExportError(f"{err}; the conditional decoder feeds it S3Gen's flow mel") from err


def write_decoders(
    flow: FlowGraph,
    folder: Path,
    family: str,
    graphs: dict[str, Path],
    external_above: int = EXTERNAL_DATA_BYTES,
    noise_input: bool = False,
) -> dict[str, list[Path]]:
    """Write a conditional decoder into ``folder`` for each student graph of ``graphs``
    (``{"fp32": model.onnx, "int8": model.int8.onnx}``), named as :data:`DECODER_FILES` says.
    ``noise_input``: the test variant, with a fourth input ``noise`` (files named ``*-noise.onnx``)."""
    written: dict[str, list[Path]] = {}
    flows: dict[int, onnx.ModelProto] = {}
    for kind, student_path in graphs.items():
        student = onnx.load(str(student_path))
        opset = opset_of(student)
        if opset not in flows:
            flows[opset] = export_flow(flow, opset, noise_input)
        record = {
            "family": family,
            "steps": flow.steps,
            "meanflow": flow.meanflow,
            "vocab_size": flow.vocab_size,
            "fade_samples": FADE_SAMPLES,
            "opset": opset,
            "student": student_path.name,
            "student_input": STUDENT_INPUT,
            "student_output": STUDENT_OUTPUT,
            "noise": "input" if noise_input else "drawn inside (RandomNormalLike)",
        }
        model = fuse(_copy(flows[opset]), student, record)
        name = DECODER_FILES[kind]
        if noise_input:
            name = name.replace(".onnx", "-noise.onnx")
        written[kind] = save(model, folder / name, external_above)
        log.info("wrote %s (%s flow, %d steps, %s student)", name, family, flow.steps, kind)
    return written


def reference_waveform(flow: FlowGraph, student: nn.Module, tokens, embeddings, features, noise) -> torch.Tensor:
    """What the fused graph must give: Chatterbox's path in PyTorch (flow mel -> student -> fade)."""
    with torch.inference_mode():
        wav = student(flow(tokens, embeddings, features, noise))
    fade = chatterbox_fade()[: wav.shape[-1]]
    return torch.cat([wav[:, : fade.numel()] * fade, wav[:, fade.numel() :]], dim=1)


# -- in a release (train/export.py conditional_decoder=true) ---------------------------------------
CHECK_SIZES = ((40, 24), (75, 50))  # (speech tokens, reference frames) the written graphs are checked at
TIMED = {"reference_s": 3.0, "speech_s": 5.0}  # what the card's speed figure decodes, on one thread


def s3gen_path(teacher: Any) -> Path:
    """The S3Gen checkpoint the student was distilled for: ``teacher.checkpoint``, or the Hub file
    ``teacher.repo_id`` / ``teacher.filename`` (fetched, or taken from the cache)."""
    if teacher is None:
        raise DecoderExportError("conditional_decoder=true needs teacher.checkpoint (the S3Gen file with the flow)")
    if teacher.get("checkpoint"):
        path = Path(teacher.checkpoint).expanduser()
        if not path.is_file():
            raise MissingFileError(f"teacher.checkpoint={path}: not found (the S3Gen file the flow is read from)")
        return path
    return fetch_file(teacher.repo_id, teacher.filename, revision=teacher.get("revision"),
                      cache_dir=teacher.get("cache_dir"), local_files_only=bool(teacher.get("local_files_only")),
                      hint=LOCAL_HINT)  # fmt: skip


def inputs(tokens: int, frames: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random contract inputs (``frames`` of reference mel, ``tokens`` tokens in all) and the noise."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "speech_tokens": torch.randint(0, vocab_size, (1, tokens), generator=generator),
        "speaker_embeddings": torch.randn(1, 192, generator=generator),
        "speaker_features": torch.randn(1, frames, 80, generator=generator) - 6.0,
        "noise": torch.randn(1, 80, 2 * tokens, generator=generator),
    }


def preflight(cfg: Any, config: StudentConfig) -> None:
    """What ``conditional_decoder=true`` needs, checked before anything is built: a student made
    for S3Gen's mel, and an S3Gen file whose keys hold the flow and the speaker encoder, of the
    family ``decoder_family`` says (read from the file's keys alone)."""
    from train.data.flow_mels import checkpoint_keys  # here: the data pipeline is slow to import

    student_graph_checks(config, f"checkpoint={cfg.checkpoint}")
    path = s3gen_path(cfg.get("teacher"))
    keys = checkpoint_keys(path)
    check_parts(keys, path)
    check_family(keys, path, cfg.decoder_family, None, option="decoder_family")


def build_in_release(cfg: Any, folder: Path, student: nn.Module, plain: nn.Module, int8: bool) -> dict[str, Any]:
    """Write ``conditional_decoder.onnx`` (and ``conditional_decoder_int8.onnx`` for a QAT
    student) into the release folder ``folder``, which already holds the student's graphs;
    check each against PyTorch through its noise-as-input twin (built by the same code, then
    removed), and time each. Returns the release's record of them."""
    import time

    student_graph_checks(plain.config, "the student")
    path = s3gen_path(cfg.get("teacher"))
    s3gen = load_s3gen(path, family=cfg.decoder_family, device="cpu", option="decoder_family")
    family = s3gen.family
    flow = FlowGraph(s3gen.flow, family.steps, family.meanflow).eval()
    del s3gen
    graphs = {"fp32": folder / "model.onnx", **({"int8": folder / "model.int8.onnx"} if int8 else {})}
    with tempfile.TemporaryDirectory() as tmp:
        twins = write_decoders(flow, Path(tmp), family.name, graphs, noise_input=True)
        checks: dict[str, dict[str, Any]] = {}
        for kind, (twin, *_) in twins.items():
            decoder = ConditionalDecoder(twin, runtime=kind)
            model = plain if kind == "fp32" else student
            worst_diff, worst_snr = 0.0, float("inf")
            for tokens, frames in CHECK_SIZES:
                x = inputs(tokens, frames, flow.vocab_size)
                want = reference_waveform(flow, model, *x.values())
                got = torch.from_numpy(decoder(*x.values()))
                worst_diff = max(worst_diff, float((got - want).abs().max()))
                worst_snr = min(worst_snr, snr_db(want, got))
            checks[kind] = {"max_abs_diff": worst_diff, "snr_db": worst_snr, "sizes": [list(s) for s in CHECK_SIZES]}
            if kind == "fp32" and worst_diff > cfg.max_abs_diff:
                raise DecoderExportError(
                    f"conditional_decoder.onnx differs from the PyTorch flow and student by up to {worst_diff:.3g} "
                    f"(max_abs_diff={cfg.max_abs_diff}); nothing written"
                )
            if kind == "int8" and worst_snr < cfg.min_snr_db:
                raise DecoderExportError(
                    f"conditional_decoder_int8.onnx reproduces the QAT flow and student at only {worst_snr:.1f} dB SNR "
                    f"(min_snr_db={cfg.min_snr_db}); nothing written"
                )
    written = write_decoders(flow, folder, family.name, graphs)
    frames, tokens = int(TIMED["reference_s"] * 50), int((TIMED["reference_s"] + TIMED["speech_s"]) * 25)
    x = inputs(tokens, frames, flow.vocab_size)
    files = {}
    for kind, paths in written.items():
        start = time.perf_counter()
        decoder = ConditionalDecoder(paths[0], runtime=kind, threads=1)
        opened = time.perf_counter() - start
        decoder(*list(x.values())[:3])  # warm-up
        start = time.perf_counter()
        decoder(*list(x.values())[:3])
        files[paths[0].name] = {
            "kind": kind,
            "bytes": sum(p.stat().st_size for p in paths),
            "files": [p.name for p in paths],
            "session_s": opened,
            "seconds": time.perf_counter() - start,
            "check": checks[kind],
        }
    log.info("conditional decoders (%s flow, %d steps): %s", family.name, family.steps, ", ".join(files))
    return {
        "family": family.name,
        "steps": family.steps,
        "s3gen": path.name,
        "opset": opset_of(onnx.load(str(graphs["fp32"]), load_external_data=False)),
        "timed": {**TIMED, "threads": 1},
        "files": files,
    }
