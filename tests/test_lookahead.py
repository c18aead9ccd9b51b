"""A student whose look-ahead is a setting (``student.lookahead``, ``compress=lookahead``): exact
at that look-ahead, the stock student's tensors, through every stage and form."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import compose, save_ckpt, write_clips

from train.benchmarks.stream_figures import probe_lookahead
from train.compress.lookahead import Lookahead, with_lookahead
from train.compress.pruning import prune
from train.compress.stage import CompressionError
from train.release.vocos_layout import load_vocos, write_vocos_layout
from train.student.graph import export_onnx
from train.student.model import build_student
from train.student.quantized import SCHEME, prepare, strip
from train.training.fit import fit
from vocos_distill import from_pretrained
from vocos_distill.backbone import LookaheadConv1d
from vocos_distill.config import StudentConfig, StudentConfigError

HOP = 480
SHAPE = {"dim": 32, "intermediate_dim": 64, "num_layers": 2}  # stock look-ahead: 3 * 3 + 2 = 11 frames


def trained_like(seed: int = 0, **kw):
    """A small student whose far taps and blocks matter (stock init makes them vanish below rounding)."""
    torch.manual_seed(seed)
    student = build_student(**{**SHAPE, **kw}).eval()
    for layer in student.modules():
        if isinstance(layer, (torch.nn.Conv1d, torch.nn.Linear)):
            layer.weight.data.normal_(0, layer.weight[0].numel() ** -0.5)
    for block in student.backbone.convnext:
        block.gamma.data.fill_(0.5)
    student.head.out.weight.data.mul_(0.1)
    return student


@pytest.fixture
def mel():
    return torch.randn(2, 80, 53, generator=torch.Generator().manual_seed(4)) - 4.0


def reach(student, frames: int = 60) -> tuple[int, int]:
    """(frames ahead, frames behind) of a frame that one changed mel frame's samples span."""
    mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(1)) - 4.0
    t = frames // 2
    changed = mel.clone()
    changed[..., t] += 3.0
    with torch.no_grad():
        moved = ((student(changed) - student(mel)).abs()[0] > 0).nonzero()
    return t - int(moved.min()) // HOP, int(moved.max()) // HOP - t


@pytest.mark.parametrize("lookahead", [0, 1, 2, 4, 7, 10])
@pytest.mark.parametrize("prior", [False, True])
def test_the_student_needs_exactly_its_lookahead_and_keeps_the_stock_tensors(lookahead, prior):
    student = trained_like(amplitude_prior=prior, lookahead=lookahead)
    stock = build_student(**SHAPE, amplitude_prior=prior)
    assert {k: v.shape for k, v in student.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    field = student.receptive_field
    assert student.config.lookahead == lookahead and field.right == lookahead
    assert field.left + field.right == 2 * stock.receptive_field.right  # the span moves behind, it does not shrink
    assert reach(student) == (field.right, field.left)


def test_the_config_names_a_lookahead_its_shape_cannot_have():
    assert "lookahead" not in StudentConfig().to_dict()
    assert StudentConfig(lookahead=4).to_dict()["lookahead"] == 4
    assert StudentConfig(num_layers=2, lookahead=11).lookahead is None  # the stock student's own: nothing to change
    with pytest.raises(StudentConfigError, match=r"lookahead 12 is more than .* \(11 frames for 2 blocks\); use 0..11"):
        StudentConfig(num_layers=2, lookahead=12)
    with pytest.raises(StudentConfigError, match=r"lookahead must be a whole number >= 0; got -1"):
        StudentConfig.from_dict({"lookahead": -1})
    # the budget goes to the overlap-add's own 2 frames first, then to the earliest convs
    assert StudentConfig(num_layers=2, lookahead=0).lookahead_plan() == ((0, 0, 0), 2)
    assert StudentConfig(num_layers=2, lookahead=1).lookahead_plan() == ((0, 0, 0), 1)
    assert StudentConfig(num_layers=2, lookahead=7).lookahead_plan() == ((3, 2, 0), 0)


@pytest.mark.parametrize("lookahead", [0, 1, 4])
def test_it_streams_exactly_at_its_lookahead_for_any_chunking(lookahead, mel):
    student = trained_like(amplitude_prior=True, lookahead=lookahead)
    with torch.no_grad():
        offline = student(mel)
    stream = student.stream()
    assert stream.lookahead == lookahead and stream.exact
    rng = random.Random(lookahead)
    for chunks in ([1] * 53, [5, 0, 7, 2, 40], [rng.randint(0, 9) for _ in range(30)]):
        streamed = stream.decode(mel, chunks)
        assert streamed.shape == offline.shape
        assert (streamed - offline).abs().max() < 1e-5 * offline.abs().max().clamp(min=1)
    # bounded work: what a push holds does not grow with the stream
    stream.reset()
    sizes = []
    for i in range(0, 53, 4):
        stream.push(mel[..., i : i + 4])
        sizes.append(sum(t.shape[-1] for t in stream._state["context"]) + stream._state["ola"].shape[-1])
    assert len(set(sizes)) == 1


def test_a_realigned_conv_keeps_each_tap_at_its_offset_and_drops_only_the_future():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 7, padding=3, groups=6)
    x = torch.randn(1, 6, 30)
    for r in (0, 1, 2, 3):
        student = trained_like()
        student.backbone.embed = conv
        new = with_lookahead(copy.deepcopy(student), 2 + r).backbone.embed  # the overlap-add 2, the embedding r
        assert isinstance(new, LookaheadConv1d) and new.pads == (6 - r, r)
        masked = conv.weight.detach().clone()
        masked[..., 3 + r + 1 :] = 0  # the taps that looked further ahead than r
        with torch.no_grad():
            torch.testing.assert_close(new(x), F.conv1d(x, masked, conv.bias, padding=3, groups=6))


def test_converting_a_parent_to_its_own_lookahead_changes_nothing_and_a_chain_of_conversions_composes(mel):
    parent = trained_like()
    with torch.no_grad():
        assert torch.equal(with_lookahead(copy.deepcopy(parent), 11)(mel), parent(mel))
        direct = with_lookahead(copy.deepcopy(parent), 3)
        chained = with_lookahead(with_lookahead(copy.deepcopy(parent), 6), 3)
        # 11 -> 6 -> 3 loses the same future taps as 11 -> 3, and the same overlap-add
        torch.testing.assert_close(chained(mel), direct(mel))
    assert probe_lookahead(direct) == 3


def test_pruning_qat_onnx_and_int8_keep_it(tmp_path, mel):
    student = trained_like(amplitude_prior=True, lookahead=1)
    pruned = prune(student, {"dim": 16, "intermediate_dim": 32, "num_layers": 2}, "magnitude", mel)
    assert pruned.config.lookahead == 1 and pruned.config.dim == 16 and reach(pruned)[0] == 1
    with pytest.raises(CompressionError, match=r"compress.num_layers=1: this student looks 1 frames ahead"):
        prune(student, {"dim": 16, "intermediate_dim": 32, "num_layers": 1}, "magnitude", mel, lambda s: s(mel).sum())
    qat = prepare(copy.deepcopy(pruned))
    assert qat.config.lookahead == 1 and qat.config.fake_quant == SCHEME
    assert strip(qat).config.lookahead == 1
    with torch.no_grad():
        offline = pruned(mel)
    graph = from_pretrained(export_onnx(pruned, tmp_path / "s.onnx"))
    assert graph.config.lookahead == 1 and graph.receptive_field == pruned.receptive_field
    with torch.no_grad():
        assert (graph(mel) - offline).abs().max() < 1e-4
        assert (graph.stream().decode(mel, 5) - offline).abs().max() < 1e-4  # windowed by its receptive field
    int8 = from_pretrained(export_onnx(pruned, tmp_path / "s.int8.onnx", quantize=True))
    assert int8.config.lookahead == 1


def test_a_release_names_the_classes_vocos_builds_it_with(tmp_path, mel):
    for lookahead, head in ((4, "vocos.heads.ISTFTHead"), (1, "vocos_distill.heads.ShiftedISTFTHead")):
        student = trained_like(lookahead=lookahead)
        folder = tmp_path / f"release{lookahead}"
        folder.mkdir()
        write_vocos_layout(student, folder)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["backbone"]["class_path"] == "vocos_distill.backbone.LookaheadBackbone"
        assert config["backbone"]["init_args"]["lookahead"] == list(student.config.lookahead_plan()[0])
        assert config["head"]["class_path"] == head
        vocoder = from_pretrained(folder, runtime="torch")
        vocos = load_vocos(folder)
        with torch.no_grad():
            expected = student(mel)
            assert vocoder.config.lookahead == lookahead
            torch.testing.assert_close(vocoder(mel), expected)
            torch.testing.assert_close(vocos.decode(mel), expected)  # plain vocos decodes it too


@pytest.mark.slow
def test_the_stage_distils_a_parent_into_the_lookahead_student_and_resumes_in_its_shape(tmp_path, mel):
    clips = write_clips(tmp_path / "clips")
    parent = trained_like()
    save_ckpt(parent, tmp_path / "parent.ckpt")

    def stage(run, *extra):
        return compose(["experiment=tiny", "~teacher", "module.target_weights={teacher:0,audio:1}",
                        f"data.audio_dirs=[{clips}]", "data.batch_size=1", "validate_first=false",
                        f"paths.output_dir={tmp_path / run}", f"student.init_from={tmp_path / 'parent.ckpt'}",
                        "compress=lookahead", *extra], tmp_path)  # fmt: skip

    with pytest.raises(CompressionError, match=r"compress=lookahead needs student.lookahead=<frames"):
        fit(stage("a"))
    with pytest.raises(CompressionError, match=r"student.lookahead=12: the parent looks only 11 frames ahead"):
        fit(stage("b", "student.lookahead=12"))
    cfg = stage("c", "student.lookahead=2", "trainer.max_steps=3")
    assert cfg.run_group.endswith("-lookahead2") and cfg.module.target_weights.parent == 1.0
    fit(cfg)
    last = tmp_path / "c" / "checkpoints" / "last.ckpt"
    child = from_pretrained(last)
    assert child.config.lookahead == 2 and reach(child)[0] == 2
    assert torch.load(last, weights_only=True)["student_config"]["lookahead"] == 2
    fit(stage("c", "student.lookahead=2", "trainer.max_steps=5", f"ckpt_path={last}"))  # resumes into the same modules
    assert torch.load(last, weights_only=True)["global_step"] == 5


def test_the_stage_refuses_a_lookahead_before_anything_trains():
    with pytest.raises(CompressionError, match=r"needs student.lookahead=.*got None"):
        Lookahead(None)
    with pytest.raises(
        CompressionError, match=r"lookahead=30: .* only 11 frames ahead; choose 0..11 \(11: the parent's own"
    ):
        Lookahead(30).check(trained_like())
    with pytest.raises(CompressionError, match=r"student.lookahead=5: the parent looks only 4 frames ahead"):
        Lookahead(5).check(trained_like(lookahead=4))
    Lookahead(4).check(trained_like(lookahead=4))  # its own: the control, nothing cut
    Lookahead(3).check(trained_like(lookahead=4))  # a shorter look-ahead still: fine
