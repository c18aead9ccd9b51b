"""Compression: structured pruning, quantization-aware training, the int8 runtime, the chain through fit.py."""

import json

import pytest
import torch
from helpers import Interrupted, compose, save_ckpt, student, write_clips
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone

from train.compress.compare import snr_db
from train.compress.pruning import Pruning, check_targets, drop_blocks, prune, prune_widths, schedule
from train.compress.stage import CompressionError
from train.student import from_pretrained
from train.student.graph import export_onnx
from train.student.model import build_student
from train.student.quantized import SCHEME, is_prepared, prepare, strip
from train.training.fit import build, fit
from vocos_distill.onnx import OnnxArtifactError, OnnxVocoder

AUDIO_ONLY = ["~teacher", "module.target_weights={teacher:0,audio:1}"]


@pytest.fixture
def mel():
    torch.manual_seed(1)
    return torch.randn(2, 80, 12) - 5


# -- pruning ----------------------------------------------------------------------------------
def test_pruning_to_the_parents_own_shape_changes_nothing(mel):
    parent = student()
    same = prune(parent, {"dim": 32, "intermediate_dim": 64, "num_layers": 2}, "magnitude", mel)
    widths_only = prune_widths(parent, 32, 64, "magnitude", mel)
    with torch.no_grad():
        assert torch.equal(same(mel), parent(mel)) and torch.equal(widths_only(mel), parent(mel))


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_pruning_gives_the_stock_vocos_shapes_and_loads_with_from_pretrained(tmp_path, mel, importance):
    parent = student()
    loss = lambda s: (s(mel) - parent(mel).detach()).pow(2).mean()  # noqa: E731
    pruned = prune(parent, {"dim": 16, "intermediate_dim": 24, "num_layers": 1}, importance, mel, loss)
    stock_backbone, stock_head = VocosBackbone(80, 16, 24, 1), ISTFTHead(16, 1920, 480, padding="same")
    stock = {f"backbone.{k}": v.shape for k, v in stock_backbone.state_dict().items()}
    stock |= {f"head.{k}": v.shape for k, v in stock_head.state_dict().items()}
    assert {k: v.shape for k, v in pruned.state_dict().items()} == stock
    assert pruned.config == parent.config.replace(dim=16, intermediate_dim=24, num_layers=1)
    assert not any("torch_pruning" in type(m).__module__ for m in pruned.modules())
    save_ckpt(pruned, tmp_path / "pruned.ckpt")
    loaded = from_pretrained(tmp_path / "pruned.ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(mel), pruned(mel))
    # what is kept is the parent's own channels: the input embedding's surviving rows are parent rows
    kept = pruned.backbone.embed.weight.detach()
    parent_rows = parent.backbone.embed.weight.detach()
    assert all(any(torch.equal(row, p) for p in parent_rows) for row in kept)


def test_depth_pruning_drops_the_block_whose_removal_costs_least(mel):
    parent = student(num_layers=3)
    parent.backbone.convnext[1].gamma.data.zero_()  # block 1 adds nothing: dropping it is free
    loss = lambda s: (s(mel) - parent(mel).detach()).pow(2).mean()  # noqa: E731
    shallower = drop_blocks(parent, 2, loss)
    assert shallower.config.num_layers == 2
    with torch.no_grad():
        assert torch.allclose(shallower(mel), parent(mel), atol=1e-6)
    assert torch.equal(shallower.backbone.convnext[1].pwconv1.weight, parent.backbone.convnext[2].pwconv1.weight)


def test_progressive_schedule_is_linear_and_ends_at_the_target():
    parent = {"dim": 512, "intermediate_dim": 1536, "num_layers": 8}
    steps = schedule(parent, {"dim": 256, "intermediate_dim": 768, "num_layers": 6}, 2)
    assert steps == [{"dim": 384, "intermediate_dim": 1152, "num_layers": 7},
                     {"dim": 256, "intermediate_dim": 768, "num_layers": 6}]  # fmt: skip


def test_bad_pruning_targets_name_the_option():
    parent = {"dim": 64, "intermediate_dim": 128, "num_layers": 2}
    with pytest.raises(CompressionError, match=r"compress.dim=96: .*parent's dim \(64\)"):
        check_targets(parent, {"dim": 96})
    with pytest.raises(
        CompressionError, match=r"compress.intermediate_dim=100 is not a multiple of compress.round_to=8"
    ):
        check_targets(parent, {"intermediate_dim": 100})
    with pytest.raises(CompressionError, match=r"compress.num_layers=0"):
        check_targets(parent, {"num_layers": 0})
    with pytest.raises(CompressionError, match="compress.importance='fisher'"):
        Pruning(importance="fisher")
    with pytest.raises(CompressionError, match=r"compress.at_steps=\[5, 2\]"):
        Pruning(at_steps=[5, 2])
    with pytest.raises(CompressionError, match="prune before quantization-aware training"):
        Pruning(dim=16).check(prepare(student()))
    assert check_targets(parent, {"dim": 32}) == {"dim": 32, "intermediate_dim": 128, "num_layers": 2}


# -- QAT and the int8 runtime -------------------------------------------------------------------
def test_qat_fake_quantises_every_linear_and_keeps_the_state_dict_keys(mel):
    parent = student()
    fake = prepare(student())
    assert is_prepared(fake) and fake.config.fake_quant == SCHEME
    assert set(fake.state_dict()) == set(parent.state_dict())
    linears = [m for m in strip(fake).modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 2 + 1  # two per block, the head
    with torch.no_grad():
        assert 20 < snr_db(parent(mel), fake(mel)) < 80  # the rounding is there, and small
        assert torch.equal(strip(fake)(mel), parent(mel))  # stripping gives back the fp32 weights


@pytest.mark.slow
def test_int8_runtime_matches_the_fake_quantised_model_and_its_graph_matches_pytorch(tmp_path, mel):
    fake = prepare(student(dim=64, intermediate_dim=128))
    int8 = OnnxVocoder(export_onnx(fake, tmp_path / "s.onnx", quantize=True))
    fp32 = OnnxVocoder(export_onnx(fake, tmp_path / "fp32.onnx"))
    with torch.no_grad():
        assert snr_db(fake(mel), int8(mel)) >= 30
        assert snr_db(strip(fake)(mel), fp32(mel)) >= 90  # the exported graph + iSTFT is the PyTorch model
    # at this width the fp32 embedding conv is a third of the weights; at 256/768 x 6 int8 is 0.3x (README)
    assert int8.file_bytes < 0.55 * fp32.file_bytes and int8.config == strip(fake).config
    from train.evaluation.cost import count_parameters

    weights = count_parameters(strip(fake))  # the ONNX graphs hold the same weights, plus the iSTFT's constants
    assert count_parameters(fp32) > weights and count_parameters(int8) > weights
    assert type(from_pretrained(tmp_path / "s.onnx")) is OnnxVocoder
    import onnx

    quantized = [n for n in onnx.load(str(tmp_path / "s.onnx")).graph.node if n.op_type == "MatMulInteger"]
    assert len(quantized) == 2 * 2 + 1  # the Linear layers only: the iSTFT's matrix products stay fp32


# -- the chain through fit.py -----------------------------------------------------------------
@pytest.fixture
def clips(tmp_path):
    return write_clips(tmp_path / "clips")


def stage(tmp_path, clips, run, *extra):
    return compose(["experiment=tiny", *AUDIO_ONLY, f"data.audio_dirs=[{clips}]", "data.batch_size=1",
                    "validate_first=false", f"paths.output_dir={tmp_path / run}", *extra], tmp_path)  # fmt: skip


def saved(path):
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["global_step"], checkpoint["student_config"]


@pytest.mark.slow
def test_finetune_prune_qat_chain_with_resume_mid_prune_and_mid_qat(tmp_path, clips, caplog):
    parent = fit(stage(tmp_path, clips, "parent", "student.num_layers=2", "trainer.max_steps=2"))["last_checkpoint"]
    _, module, _ = build(stage(tmp_path, clips, "x", "compress=qat", f"student.init_from={parent}"))
    trained = torch.load(parent, weights_only=True)["state_dict"]
    for key, value in module.discriminators.state_dict().items():  # the parent run's discriminators go on
        assert torch.equal(value, trained[f"discriminators.{key}"])
    prune_args = ["compress=prune", f"student.init_from={parent}", "compress.dim=16", "compress.intermediate_dim=32",
                  "compress.num_layers=1", "compress.at_steps=[0,4]", "module.scheduler.total_steps=6"]  # fmt: skip
    stop = "+callbacks.stop={_target_: helpers.StopAt, step: 3}"  # a crash after the step-2 checkpoint
    with pytest.raises(Interrupted):
        fit(stage(tmp_path, clips, "prune", *prune_args, "trainer.max_steps=6", stop))
    last = tmp_path / "prune" / "checkpoints" / "last.ckpt"
    step, shape = saved(last)
    assert step == 2 and (shape["dim"], shape["num_layers"]) == (24, 2)  # mid-prune: the first cut only
    with caplog.at_level("INFO", logger="train.training.fit"):
        second = fit(stage(tmp_path, clips, "prune", *prune_args, "trainer.max_steps=6"))  # same folder: resumes
    assert f"next stage: compress=qat student.init_from={second['last_checkpoint']}" in caplog.text
    assert second["resumed_from"] == str(last)
    step, shape = saved(second["last_checkpoint"])
    assert step == 6 and (shape["dim"], shape["intermediate_dim"], shape["num_layers"]) == (16, 32, 1)

    qat_args = ["compress=qat", f"student.init_from={second['last_checkpoint']}", "module.scheduler.total_steps=4"]
    with pytest.raises(Interrupted):
        fit(stage(tmp_path, clips, "qat", *qat_args, "trainer.max_steps=4", stop))
    assert saved(tmp_path / "qat" / "checkpoints" / "last.ckpt")[0] == 2
    with caplog.at_level("INFO", logger="train.training.fit"):
        qat = fit(stage(tmp_path, clips, "qat", *qat_args, "trainer.max_steps=4"))
    assert f"next stage: python train/quantize.py checkpoint={qat['last_checkpoint']}" in caplog.text
    step, shape = saved(qat["last_checkpoint"])
    assert qat["resumed_from"] and step == 4 and shape == {**second_shape(second), "fake_quant": SCHEME}
    assert is_prepared(from_pretrained(qat["last_checkpoint"]))


def second_shape(result):
    return saved(result["last_checkpoint"])[1]


@pytest.mark.slow
def test_compression_stages_refuse_a_wrong_parent_before_training(tmp_path, clips):
    from vocos_distill.errors import ConfigError

    with pytest.raises(CompressionError, match=r"student.init_from=None is not a file"):
        fit(stage(tmp_path, clips, "a", "compress=prune"))
    (tmp_path / "s.onnx").write_bytes(b"x")
    with pytest.raises(OnnxArtifactError, match=r"student.init_from=.*s.onnx is an ONNX student"):
        fit(stage(tmp_path, clips, "b", "compress=qat", f"student.init_from={tmp_path / 's.onnx'}"))
    with pytest.raises(OnnxArtifactError, match=r"ckpt_path=.*s.onnx is an ONNX student"):
        fit(stage(tmp_path, clips, "c", f"ckpt_path={tmp_path / 's.onnx'}"))
    torch.save({"conv_pre.weight": torch.zeros(1)}, tmp_path / "hift.pt")
    with pytest.raises(Exception, match=r"hift.pt: no Vocos student inside"):
        fit(stage(tmp_path, clips, "d", "compress=prune", f"student.init_from={tmp_path / 'hift.pt'}"))
    vocos_100 = build_student(input_channels=100, dim=32, intermediate_dim=64, num_layers=1, n_fft=1024, hop_length=256)
    torch.save(vocos_100.state_dict(), tmp_path / "vocos.bin")  # a stock Vocos's own framing
    with pytest.raises(ConfigError, match=r"vocos.bin: a student for 100 mels at hop 256; S3Gen's mels are 80"):
        fit(stage(tmp_path, clips, "g", "compress=prune", f"student.init_from={tmp_path / 'vocos.bin'}"))
    torch.save(student().state_dict(), tmp_path / "parent.pt")
    with pytest.raises(CompressionError, match=r"compress.dim=256: must be between 1 and the parent's dim \(32\)"):
        fit(stage(tmp_path, clips, "e", "compress=prune", f"student.init_from={tmp_path / 'parent.pt'}"))
    with pytest.raises(CompressionError, match=r"the last cut must come before trainer.max_steps=4"):
        fit(stage(tmp_path, clips, "f", "compress=prune", f"student.init_from={tmp_path / 'parent.pt'}",
                  "compress.dim=16", "compress.intermediate_dim=32", "compress.num_layers=null"))  # fmt: skip
    assert not list((tmp_path / "checkpoints").rglob("*.ckpt"))  # nothing trained


# -- train/quantize.py ------------------------------------------------------------------------------
@pytest.mark.slow
def test_quantize_writes_the_runtime_only_when_it_reproduces_the_qat_model(tmp_path, clips):
    from train.compress.quantize import QuantizationError, quantize

    fake = prepare(student(dim=64, intermediate_dim=128))
    save_ckpt(fake, tmp_path / "qat.ckpt")
    base = [f"checkpoint={tmp_path / 'qat.ckpt'}", f"data.audio_dirs=[{clips}]", "max_utterances=2"]
    with pytest.raises(QuantizationError, match=r"at only \d+\.\d dB SNR \(min_snr_db=200\); nothing written"):
        quantize(compose([*base, "min_snr_db=200"], tmp_path, "quantize"))
    assert not (tmp_path / "qat.int8.onnx").exists()
    result = quantize(compose(base, tmp_path, "quantize"))
    # the int8-runtime QAT model is the graph's own arithmetic: far above the default gate (30 dB)
    assert result["output"] == str(tmp_path / "qat.int8.onnx") and result["snr_min_db"] >= 60
    assert OnnxVocoder(tmp_path / "qat.int8.onnx").config == strip(fake).config


# -- the benchmark's rows for compressed students --------------------------------------------------
@pytest.mark.slow
def test_bench_json_has_a_row_per_student_beside_the_teacher(tmp_path):
    from train import bench

    # 24 wide: at 16 the int8 file (the iSTFT's fp32 constants, its ~9 KB probe) is no smaller than the fp32 weights
    pruned = prune(student(), {"dim": 24, "intermediate_dim": 48, "num_layers": 2}, "magnitude")
    save_ckpt(pruned, tmp_path / "pruned.ckpt")
    export_onnx(prepare(pruned), tmp_path / "pruned.int8.onnx", quantize=True)
    out = tmp_path / "rows.json"
    students = [str(tmp_path / "pruned.ckpt"), str(tmp_path / "pruned.int8.onnx")]
    bench.main(["--seconds", "0.2", "--repeats", "1", "--chunk-frames", "5", "--train-steps", "0",
                "--students", *students, "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["teacher (HiFT)", "pruned.ckpt", "pruned.int8.onnx"]
    for row in rows:
        assert {"name", "params", "bytes", "rtf_1_thread", "speedup_1_thread", "peak_rss_mb"} <= set(row)
    assert rows[1]["params"] == sum(p.numel() for p in pruned.parameters())
    assert rows[2]["bytes"] == (tmp_path / "pruned.int8.onnx").stat().st_size < rows[1]["bytes"]


def test_init_from_a_student_file_loads_it_whole_in_its_own_shape(tmp_path, mel):
    from safetensors.torch import save_file

    parent = student(dim=48, intermediate_dim=96)
    save_ckpt(parent, tmp_path / "run.ckpt")
    state = {k: v.contiguous() for k, v in parent.state_dict().items()}
    save_file(state, str(tmp_path / "g.safetensors"), metadata={"config": json.dumps(parent.config.to_dict())})
    for path in (tmp_path / "run.ckpt", tmp_path / "g.safetensors"):
        child = build_student(dim=512, intermediate_dim=1536, num_layers=8, init_from=str(path))  # shape: the file's
        assert child.config == parent.config
        with torch.no_grad():
            assert torch.equal(child.eval()(mel), parent(mel))


def test_a_compression_stage_also_learns_to_reproduce_its_parent(tmp_path, clips, mel):
    from vocos_distill.errors import ConfigError

    parent = student()
    save_ckpt(parent, tmp_path / "parent.ckpt")
    cfg = stage(tmp_path, clips, "a", "compress=qat", f"student.init_from={tmp_path / 'parent.ckpt'}")
    assert dict(cfg.module.target_weights) == {"teacher": 0.0, "audio": 1.0, "parent": 1.0}
    _, module, _ = build(cfg)
    with torch.no_grad():
        assert torch.equal(module.targets({"mel": mel, "audio": mel})["parent"], parent(mel))
    assert not any(k.startswith("parent") for k in module.state_dict())  # never saved in checkpoints
    original = student(dim=64, intermediate_dim=128, seed=3)  # e.g. the uncompressed student, for a QAT stage
    save_ckpt(original, tmp_path / "original.ckpt")
    init = f"student.init_from={tmp_path / 'parent.ckpt'}"
    _, module, _ = build(stage(tmp_path, clips, "c", "compress=qat", init, f"parent={tmp_path / 'original.ckpt'}"))
    with torch.no_grad():
        assert torch.equal(module.targets({"mel": mel, "audio": mel})["parent"], original(mel))
    with pytest.raises(ConfigError, match=r"parent='.*gone.ckpt' is not one"):
        build(stage(tmp_path, clips, "d", "compress=qat", init, f"parent={tmp_path / 'gone.ckpt'}"))
    cfg = stage(tmp_path, clips, "b", "+module.target_weights.parent=1.0")
    with pytest.raises(ConfigError, match=r"module.target_weights.parent=1.0 needs the parent student as a file"):
        build(cfg)


def test_progressive_pruning_is_refused_under_ddp_and_after_the_last_step():
    from types import SimpleNamespace

    module = SimpleNamespace(generator=student())
    with pytest.raises(CompressionError, match=r"at_steps=\[0, 10\] with 2 processes: DDP cannot change"):
        Pruning(dim=16, at_steps=[0, 10]).setup(SimpleNamespace(world_size=2, max_steps=100), module, "validate")
    Pruning(dim=16, at_steps=[0]).setup(SimpleNamespace(world_size=2, max_steps=100), module, "validate")  # fine
    with pytest.raises(CompressionError, match=r"last cut must come before trainer.max_steps=10"):
        Pruning(dim=16, at_steps=[0, 10]).setup(SimpleNamespace(world_size=1, max_steps=10), module, "validate")


@pytest.mark.slow
def test_pruning_under_two_process_ddp_cuts_once_before_the_model_is_wrapped(tmp_path, clips):
    import subprocess
    import sys

    from helpers import REPO

    save_ckpt(student(), tmp_path / "parent.ckpt")
    out = tmp_path / "ddp"
    cmd = [sys.executable, str(REPO / "train" / "fit.py"), "experiment=tiny", "trainer=ddp_cpu", *AUDIO_ONLY,
           f"data.audio_dirs=[{clips}]", "data.batch_size=1", "trainer.max_steps=2", "compress=prune",
           f"student.init_from={tmp_path / 'parent.ckpt'}", "compress.dim=16", "compress.intermediate_dim=32",
           "compress.num_layers=1", "compress.at_steps=[0]", f"paths.log_dir={tmp_path / 'checkpoints'}",
           f"hydra.run.dir={out}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    step, shape = saved(out / "checkpoints" / "last.ckpt")
    assert step == 2 and (shape["dim"], shape["intermediate_dim"], shape["num_layers"]) == (16, 32, 1)


@pytest.mark.slow
def test_an_unreadable_onnx_student_is_named(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxArtifactError, match=r"junk.onnx: not a student graph written by this project"):
        from_pretrained(tmp_path / "junk.onnx")
    # a spectrum-only graph (what train/quantize.py wrote before the iSTFT moved into the graph)
    import onnx

    model = onnx.load(str(export_onnx(student(), tmp_path / "old.onnx")))
    model.graph.node.append(onnx.helper.make_node("Identity", ["wav"], ["real"]))  # a valid graph whose
    model.graph.output[0].name = "real"  # output is not the waveform, as those graphs were
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(OnnxArtifactError, match=r"old.onnx: a graph with outputs \['real'\], not the waveform"):
        from_pretrained(tmp_path / "old.onnx")


@pytest.mark.slow
def test_bench_int8_schemes_puts_every_scheme_beside_fp32_with_its_snr(tmp_path, capsys):
    from train import bench
    from train.student.graph import INT8_SCHEMES

    save_ckpt(prepare(student()), tmp_path / "qat.ckpt")
    out = tmp_path / "rows.json"
    bench.main(["--seconds", "0.2", "--repeats", "1", "--chunk-frames", "5", "--train-steps", "0", "--clips", "1",
                "--int8-schemes", "--students", str(tmp_path / "qat.ckpt"), "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    names = [r["name"] for r in rows]
    assert names[:4] == ["teacher (HiFT)", "qat.ckpt", "fp32.safetensors", "fp32.onnx"]
    assert names[4:] == [f"int8-{scheme}.onnx" for scheme in INT8_SCHEMES]
    schemes = {r["name"]: r for r in rows if "scheme" in r}
    assert schemes["fp32.onnx"]["snr_vs_fp32_db"] > 90 and schemes["int8-u8s8-7bit.onnx"]["snr_vs_model_db"] > 25
    assert all(r["ms_per_s_interleaved"] > 0 for r in schemes.values())
    assert all(r["cpu"] == rows[0]["cpu"] and "ONNX Runtime" in r["cpu"] for r in rows)
    printed = capsys.readouterr().out
    assert f"CPU: {rows[0]['cpu']}" in printed and "u8s8-7bit (shipped)" in printed
