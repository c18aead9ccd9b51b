"""int8 graphs that are right on every CPU, and that check themselves where they run.

ONNX Runtime's int8 kernels differ between CPUs: without VNNI, x86 adds each pair of u8 x s8
products in a saturating int16. These tests show the written graph cannot overflow any kernel
(the bound, whatever CPU runs the test), run it on emulated CPUs of other kernel families
(qemu-user), and plant graphs that are wrong on purpose to see the self-check catch them.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch
from helpers import EMULATED, emulated, need_qemu, student
from onnx import numpy_helper

from train.student.graph import INT8_SCHEME, export_onnx, overflow_risks
from train.student.quantized import prepare, strip
from vocos_distill import int8_check
from vocos_distill.int8_check import (
    PROBE_KEY,
    Int8MismatchError,
    cpu_info,
    describe_cpu,
    read_probe,
    run_in_child,
    snr_db,
)
from vocos_distill.onnx import OnnxVocoder


@pytest.fixture(scope="module")
def fake():
    torch.manual_seed(1)
    return prepare(student(dim=64, intermediate_dim=128)).eval()


@pytest.fixture(scope="module")
def mel():
    torch.manual_seed(1)
    return torch.randn(2, 80, 12) - 5


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, fake):
    """The shipped scheme's graph and the saturating one (u8s8, the scheme before this one)."""
    folder = tmp_path_factory.mktemp("int8")
    return {
        scheme: export_onnx(fake, folder / f"{scheme}.onnx", quantize=True, scheme=scheme)
        for scheme in (INT8_SCHEME, "u8s8")
    }


@pytest.mark.slow
def test_the_int8_graph_cannot_overflow_any_kernel(graphs):
    assert overflow_risks(onnx.load(str(graphs[INT8_SCHEME]))) == []
    old = overflow_risks(onnx.load(str(graphs["u8s8"])))  # full-range s8 weights: 2 * 255 * 127 > 32,767
    assert len(old) == 2 * 2 + 1 and all("> 32,767" in line for line in old)
    weights = [
        numpy_helper.to_array(i)
        for i in onnx.load(str(graphs[INT8_SCHEME])).graph.initializer
        if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) <= 64


@pytest.mark.slow
def test_the_writer_refuses_a_graph_that_could_overflow(fake, tmp_path, monkeypatch):
    from train.student import graph

    monkeypatch.setitem(graph.INT8_SCHEMES, "broken", {"weight_type": "QInt8", "reduce_range": False})
    with pytest.raises(graph.OnnxArtifactError, match=r"'broken' left 5 integer products that can overflow"):
        export_onnx(fake, tmp_path / "x.onnx", quantize=True, scheme="broken")
    assert not (tmp_path / "x.onnx").exists()


def run_graphs(files, mel, cpu=None):
    """Each graph's output on ``mel`` in a fresh process: natively, or under qemu-user as ``cpu``."""
    prefix = emulated(cpu) if cpu else None
    return {f.name: run_in_child(f, mel.numpy(), prefix) for f in files}


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates x86-64 CPUs from an x86-64 host")
def test_every_x86_kernel_gives_the_same_int8_output(graphs, fake, mel):
    """The graph on this CPU and on emulated CPUs of the other kernel families agrees with itself
    and with the QAT model; the saturating scheme shows the emulated AVX2 kernel is really reached."""
    need_qemu()
    files = [graphs[INT8_SCHEME], graphs["u8s8"]]
    outputs = {"native": run_graphs(files, mel)}
    outputs |= {family: run_graphs(files, mel, cpu) for family, cpu in EMULATED.items()}
    with torch.no_grad():
        reference = fake(mel).numpy()
    shipped, old = (f.name for f in files)
    for family, wavs in outputs.items():
        assert snr_db(reference, wavs[shipped]) >= 30, family  # the QAT model, on every kernel
        assert snr_db(outputs["sse4.1"][shipped], wavs[shipped]) >= 60, family  # and the same graph everywhere
    # the graph before this fix: right where pairs are widened, wrong on the emulated AVX2 kernel
    assert snr_db(reference, outputs["sse4.1"][old]) >= 30
    assert snr_db(reference, outputs["avx2"][old]) < 26


@pytest.mark.slow
def test_each_int8_graph_carries_its_probe_and_passes_it_here(graphs, fake):
    probe = read_probe(OnnxVocoder(graphs[INT8_SCHEME], check=False).metadata)  # written without held-out mels
    assert probe.mel.shape == (1, 80, 24) and probe.expected.shape == (1, 24 * 480 // probe.stride)
    with torch.no_grad():
        assert probe.snr(fake(torch.from_numpy(probe.mel)).numpy()) > 60  # the QAT model's output
    assert len(OnnxVocoder(graphs[INT8_SCHEME], check=False).metadata[PROBE_KEY]) < 10_000
    assert probe.min_snr_db == 30.0 and probe.snr_db >= 30
    vocoder = OnnxVocoder(graphs[INT8_SCHEME])
    check = vocoder.int8_check
    # the check measures what the writer measured: the same figure, or both at float rounding (the
    # int8-runtime QAT model is the graph's own arithmetic, so tens of dB apart there mean nothing)
    agree = abs(check.snr_db - probe.snr_db) < 0.5 or min(check.snr_db, probe.snr_db) > 60
    assert check.ok and agree and check.cpu == describe_cpu()
    assert OnnxVocoder(export_onnx(fake, graphs[INT8_SCHEME].with_name("fp32.onnx"))).int8_check is None


@pytest.mark.slow
def test_the_probe_keeps_the_windows_the_graph_reproduces_worst(fake, tmp_path):
    from train.student.graph import probe_windows

    torch.manual_seed(2)
    mels = [torch.randn(1, 80, 60) - 5, 3 * torch.randn(1, 80, 30) - 3, torch.randn(1, 80, 10)]  # the last: too short
    candidates = probe_windows(mels)
    assert candidates.shape == (4 + 1, 80, 24)  # windows at 0, 12, 24, 36 of the first, 0 of the second
    path = export_onnx(fake, tmp_path / "p.onnx", quantize=True, probe=candidates)
    probe = read_probe(OnnxVocoder(path, check=False).metadata)
    assert probe.mel.shape == (3, 80, 24)
    graph = OnnxVocoder(path, check=False)
    stored = candidates.half().float()  # as the writer stores and compares them
    plain = strip(fake).eval()  # the fp32 weights: what quantisation changes (the QAT model is the graph's arithmetic)
    with torch.no_grad():
        each = [snr_db(plain(w[None]).numpy(), graph(w[None]).numpy()) for w in stored]
    kept = [next(i for i, w in enumerate(stored) if torch.equal(w, torch.from_numpy(m))) for m in probe.mel]
    assert sorted(each[i] for i in kept) == sorted(each)[:3]  # the three quantisation changes most


def plant_wrong_weights(path, out):
    """``path`` with the head's integer weights negated: a graph whose arithmetic is wrong, as a
    saturating kernel's would be, while its probe still says what it should give."""
    model = onnx.load(str(path))
    target = [n for n in model.graph.node if n.op_type == "MatMulInteger"][-1].input[1]  # the head's
    for init in model.graph.initializer:
        if init.name == target:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(out))
    return out


def test_a_graph_wrong_on_this_machine_is_refused_naming_its_snr_and_the_cpu(graphs, tmp_path):
    wrong = plant_wrong_weights(graphs[INT8_SCHEME], tmp_path / "wrong.onnx")
    with pytest.raises(Int8MismatchError) as err:
        OnnxVocoder(wrong)
    message = str(err.value)
    assert "wrong.onnx: the int8 graph is wrong on this machine" in message
    assert cpu_info()["model"] in message and "must reach 30 dB" in message
    assert f"ONNX Runtime {cpu_info()['onnxruntime']}" in message
    snr = float(message.split(" dB SNR")[0].rsplit(" ", 1)[-1])
    assert snr < 30
    assert OnnxVocoder(wrong, check=False).int8_check is None  # the writer's own checks opt out


def test_the_answer_is_remembered_per_file_and_machine(graphs, tmp_path, monkeypatch):
    monkeypatch.setenv(int8_check.CACHE_ENV, str(tmp_path / "cache"))
    runs = []
    real = int8_check.snr_db
    monkeypatch.setattr(int8_check, "snr_db", lambda *a: runs.append(1) or real(*a))
    first = OnnxVocoder(graphs[INT8_SCHEME]).int8_check
    assert OnnxVocoder(graphs[INT8_SCHEME]).int8_check == first and len(runs) == 1
    entries = json.loads((tmp_path / "cache" / "int8_checks.json").read_text())
    assert [v["snr_db"] for v in entries.values()] == [first.snr_db]
    other = {**cpu_info(), "model": "Another CPU", "int8_features": ["avx2"]}
    monkeypatch.setattr(int8_check, "cpu_info", lambda: other)
    assert "Another CPU" in OnnxVocoder(graphs[INT8_SCHEME]).int8_check.cpu and len(runs) == 2


def test_a_graph_without_a_probe_is_judged_by_its_bound_and_the_cpu(graphs, tmp_path, monkeypatch):
    model = onnx.load(str(graphs["u8s8"]))
    kept = [p for p in model.metadata_props if p.key != PROBE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    legacy = tmp_path / "legacy.onnx"
    onnx.save(model, str(legacy))
    monkeypatch.setenv(int8_check.CACHE_ENV, str(tmp_path / "cache"))
    avx2 = {"model": "AMD EPYC", "arch": "x86_64", "int8_features": ["avx2"], "onnxruntime": "1.32.0"}
    monkeypatch.setattr(int8_check, "cpu_info", lambda: avx2)
    with pytest.raises(
        Int8MismatchError,
        match="full-range int8 weights can overflow an int16 pair sum on this CPU, which has no VNNI or AMX",
    ):
        OnnxVocoder(legacy)
    vnni = {**avx2, "model": "Intel Xeon", "int8_features": ["avx2", "avx512f", "avx512_vnni"]}
    monkeypatch.setattr(int8_check, "cpu_info", lambda: vnni)
    assert OnnxVocoder(legacy).int8_check.ok


def test_cpu_description_names_the_int8_features():
    info = {"model": "AMD EPYC", "arch": "x86_64", "int8_features": ["avx2", "sse4_1"], "onnxruntime": "1.32.0"}
    assert describe_cpu(info) == "AMD EPYC (x86_64: avx2, sse4_1; no AVX-512, no VNNI, no AMX), ONNX Runtime 1.32.0"
    arm = {"model": "Neoverse-N1", "arch": "aarch64", "int8_features": ["asimd", "asimddp"], "onnxruntime": "1.32.0"}
    assert describe_cpu(arm) == "Neoverse-N1 (aarch64: asimd, asimddp), ONNX Runtime 1.32.0"
    here = cpu_info()
    assert here["onnxruntime"] and here["arch"] == platform.machine()


# -- choosing the runtime of a release -------------------------------------------------------------
@pytest.fixture(scope="module")
def release(tmp_path_factory, fake):
    """A release folder as train/export.py lays it out: vocos' layout, the fp32 and int8 graphs."""
    from train.release.vocos_layout import write_vocos_layout
    from train.student.quantized import strip

    folder = tmp_path_factory.mktemp("release")
    write_vocos_layout(strip(fake), folder)
    export_onnx(strip(fake), folder / "model.onnx")
    export_onnx(fake, folder / "model.int8.onnx", quantize=True)
    return folder


def with_speed(monkeypatch, int8_s, fp32_s):
    import vocos_distill.release as module  # where from_pretrained looks speed_check up

    monkeypatch.setattr(module, "speed_check", lambda *a, **k: {"int8_s": int8_s, "fp32_s": fp32_s})


@pytest.mark.slow
def test_auto_takes_the_int8_graph_when_it_passes_and_is_faster(release, monkeypatch):
    from vocos_distill import from_pretrained

    with_speed(monkeypatch, 0.001, 0.002)
    vocoder = from_pretrained(release)
    assert vocoder.runtime == "int8" and vocoder.int8_check.ok


def test_auto_takes_fp32_where_int8_is_not_faster_here(release, monkeypatch):
    from vocos_distill import from_pretrained

    with_speed(monkeypatch, 0.002, 0.002)
    vocoder = from_pretrained(release)
    assert vocoder.runtime == "onnx" and not vocoder.is_int8
    assert from_pretrained(release, runtime="int8").runtime == "int8"  # asked for by name: no speed test


def test_a_wrong_int8_graph_makes_auto_fall_back_and_int8_refuse(release, tmp_path, monkeypatch):
    from vocos_distill import from_pretrained
    from vocos_distill.release import Int8FallbackWarning

    planted = tmp_path / "release"
    shutil.copytree(release, planted)
    plant_wrong_weights(release / "model.int8.onnx", planted / "model.int8.onnx")
    with_speed(monkeypatch, 0.001, 0.002)
    with pytest.warns(
        Int8FallbackWarning, match=r"not using the int8 graph: .*wrong on this machine, .* dB SNR"
    ) as seen:
        vocoder = from_pretrained(planted)
    assert describe_cpu() in str(seen[0].message)
    assert vocoder.runtime == "onnx" and not vocoder.is_int8
    with pytest.raises(Int8MismatchError, match=r"model.int8.onnx: the int8 graph is wrong on this machine, .* dB SNR"):
        from_pretrained(planted, runtime="int8")
    (planted / "model.onnx").unlink()  # no fp32 graph: auto goes on to the vocos weights
    with pytest.warns(Int8FallbackWarning):
        assert from_pretrained(planted).runtime == "torch"


def test_a_probe_whose_process_dies_fails_the_check_instead_of_the_caller(graphs, tmp_path, monkeypatch):
    """ONNX Runtime's aarch64 int8 kernels die of an illegal instruction on ARMv8.0 cores (Cortex-A53/A72,
    Raspberry Pi 4; seen here under qemu-aarch64): the probe runs in a process of its own, so such a CPU
    fails the check and auto falls back, where running it in-process would kill the caller."""
    monkeypatch.setenv(int8_check.CACHE_ENV, str(tmp_path / "cache"))
    dies = tmp_path / "kill.py"  # stands in for the emulator prefix: the child dies of SIGILL
    dies.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    real = int8_check.run_in_child
    monkeypatch.setattr(int8_check, "run_in_child", lambda path, mel: real(path, mel, [sys.executable, str(dies)]))
    with pytest.raises(Int8MismatchError, match=r"could not run its probe on this machine: .* \(signal SIGILL\)"):
        OnnxVocoder(graphs[INT8_SCHEME])


# -- QAT that trains on the runtime's own arithmetic (train.student.quantized, "int8-runtime") ------
def _graph_weights(path) -> list[np.ndarray]:
    """Every quantised MatMul weight of an int8 graph, dequantised and laid out as a Linear's (out, in)."""
    model = onnx.load(str(path))
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") and node.input[1] in values:
            weight = values[node.input[1]].astype(np.float64)  # (in, out)
            scale = values[node.input[1].removesuffix("_quantized") + "_scale"].astype(np.float64)  # (out,)
            found.append((weight * scale).T)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8-runtime", "int8"])
def test_runtime_qat_trains_on_the_int8_graphs_own_weights(tmp_path, scheme):
    """The int8-runtime form's fake-quantised weights are the int8 graph's weights, value for value;
    torchao's 8-bit form's are not (another grid), which shows the comparison can fail."""
    from train.student.quantized import FakeQuantizedLinear

    model = prepare(student(), scheme).eval()
    graph = export_onnx(model, tmp_path / "g.int8.onnx", quantize=True)
    theirs = _graph_weights(graph)
    ours = [m.weight_fake_quantizer(m.weight).detach().double().numpy()
            for m in model.modules() if isinstance(m, FakeQuantizedLinear)]  # fmt: skip
    assert len(ours) == len(theirs) > 0
    matched = [any(a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-9) for b in theirs) for a in ours]
    assert all(matched) if scheme == "int8-runtime" else not any(matched)


def test_runtime_activations_are_onnx_runtimes_dynamic_quantisation():
    """PerCallActivations equals ONNX Runtime's DynamicQuantizeLinear -> DequantizeLinear on each utterance."""
    from onnx import TensorProto, helper

    from train.student.quantized import PerCallActivations
    from vocos_distill.onnx import session

    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )  # fmt: skip
    runtime = session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    torch.manual_seed(0)
    x = (
        torch.randn(3, 40, 24) * torch.tensor([0.1, 1.0, 30.0])[:, None, None]
        + torch.tensor([0.0, 2.0, -5.0])[:, None, None]
    )
    ours = PerCallActivations()(x)
    for item in range(x.shape[0]):
        (theirs,) = runtime.run(None, {"x": x[item].numpy()})
        np.testing.assert_allclose(ours[item].numpy(), theirs, rtol=0, atol=1e-6 * float(x[item].abs().max()))
    x.requires_grad_(True)
    PerCallActivations()(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through
