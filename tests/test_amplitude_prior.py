"""The amplitude prior (``student.amplitude_prior=true``): the head refines the mel's least-squares
magnitude. The same tensors as the stock student, through every stage and form."""

import pytest
import torch
import yaml
from helpers import save_ckpt

from train.compress.pruning import prune
from train.evaluation.griffin_lim import GriffinLim
from train.release.vocos_layout import load_vocos, write_vocos_layout
from train.student.graph import export_onnx
from train.student.model import build_student
from train.student.quantized import SCHEME, prepare, strip
from vocos_distill import from_pretrained
from vocos_distill.config import StudentConfig, StudentConfigError
from vocos_distill.heads import AmplitudePriorHead, polar
from vocos_distill.release import load_release


def prior_student(seed: int = 0, **shape):
    """A small student with the prior, its head's log-magnitude rows no longer zero (as if trained)."""
    torch.manual_seed(seed)
    student = build_student(**{"dim": 32, "intermediate_dim": 64, "num_layers": 2, **shape}, amplitude_prior=True)
    torch.nn.init.normal_(student.head.out.weight, std=0.02)
    for block in student.backbone.convnext:
        block.gamma.data.uniform_(0.2, 0.6)
    return student.eval()


@pytest.fixture
def mel():
    torch.manual_seed(3)
    return torch.randn(2, 80, 41) - 5


def test_untrained_it_already_has_the_floors_magnitude_and_the_stock_students_tensors(mel):
    student = build_student(dim=32, intermediate_dim=64, num_layers=2, amplitude_prior=True)
    stock = build_student(dim=32, intermediate_dim=64, num_layers=2)
    assert {k: v.shape for k, v in student.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    assert student.config.amplitude_prior and not stock.config.amplitude_prior
    # the log-magnitude rows start at zero: the magnitude is exactly Griffin-Lim's own
    with torch.no_grad():
        real, imag = polar(student.head.out(student.backbone(mel)).transpose(1, 2), student.prior(mel))
    floor = GriffinLim().magnitude(mel).clamp(min=1e-5)
    # (the prior pseudo-inverts in float64, the floor in float32: a few bins near cancellation differ by <2 %)
    torch.testing.assert_close(torch.hypot(real, imag), floor, rtol=2e-2, atol=1e-8)
    # a frame's prior depends on that mel frame alone: the receptive field is the stock student's
    assert student.config.receptive_field == stock.config.receptive_field


def test_files_record_it_only_when_set_and_a_bad_value_is_refused(tmp_path, mel):
    assert "amplitude_prior" not in StudentConfig().to_dict()
    assert StudentConfig(amplitude_prior=True).to_dict()["amplitude_prior"] is True
    with pytest.raises(StudentConfigError, match="amplitude_prior must be true or false; got 'yes'"):
        StudentConfig.from_dict({"amplitude_prior": "yes"})
    student = prior_student()
    save_ckpt(student, tmp_path / "prior.ckpt")
    loaded = from_pretrained(tmp_path / "prior.ckpt")
    assert isinstance(loaded.head, AmplitudePriorHead)
    with torch.no_grad():
        assert torch.equal(loaded(mel), student(mel))


def test_it_streams_exactly_and_exports_to_onnx(tmp_path, mel):
    student = prior_student()
    with torch.no_grad():
        offline = student(mel)
        stream = student.stream()
        chunks = [stream.push(mel[..., i : i + 6]) for i in range(0, mel.shape[-1], 6)]
        streamed = torch.cat([*chunks, stream.flush()], dim=-1)
    assert (streamed - offline).abs().max() < 1e-5
    fp32 = from_pretrained(export_onnx(student, tmp_path / "prior.onnx"))
    assert fp32.config.amplitude_prior
    with torch.no_grad():
        assert (fp32(mel) - offline).abs().max() < 1e-4
    # int8: the prior's product stays fp32, as the iSTFT's does
    import onnx

    int8_path = export_onnx(student, tmp_path / "prior.int8.onnx", quantize=True)
    graph = onnx.load(str(int8_path)).graph
    prior_nodes = [n for n in graph.node if any(i.startswith("prior.") for i in n.input)]
    assert prior_nodes and all(n.op_type == "MatMul" for n in prior_nodes)


def test_pruning_and_qat_keep_it(mel):
    parent = prior_student(dim=32, intermediate_dim=64, num_layers=2)
    pruned = prune(parent, {"dim": 16, "intermediate_dim": 32, "num_layers": 2}, "magnitude", mel)
    assert pruned.config.amplitude_prior and pruned.config.dim == 16
    qat = prepare(pruned)
    assert qat.config.amplitude_prior and qat.config.fake_quant == SCHEME
    plain = strip(qat)
    assert plain.config.amplitude_prior
    with torch.no_grad():
        assert plain(mel).shape == (2, 41 * 480)


def test_a_release_loads_through_the_runtime_and_plain_vocos_refuses_to_decode_it(tmp_path, mel):
    student = prior_student()
    folder = tmp_path / "release"
    folder.mkdir()
    write_vocos_layout(student, folder)
    head = yaml.safe_load((folder / "config.yaml").read_text())["head"]
    assert head["class_path"] == "vocos_distill.heads.AmplitudePriorHead"
    vocoder = from_pretrained(folder, runtime="torch")
    with torch.no_grad():
        assert vocoder.runtime == "torch" and torch.allclose(vocoder(mel), student(mel), atol=1e-6)
    vocos = load_vocos(folder)  # vocos builds it (strict load) ...
    with pytest.raises(TypeError, match="needs the mel.*from_pretrained"):  # ... but cannot decode without the mel
        vocos.decode(mel)


def test_a_release_written_by_version_0_1_still_loads(tmp_path, mel):
    """vocos-distill 0.1's runtime was the ``train.runtime`` package: its releases name that path."""
    student = prior_student()
    folder = tmp_path / "release"
    folder.mkdir()
    write_vocos_layout(student, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["head"]["class_path"] = "train.runtime.vocoder.AmplitudePriorHead"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(DeprecationWarning, match="load_release is deprecated"):  # what a 0.1/0.2 card calls
        _, vocoder = load_release(folder, runtime="torch")
    with torch.no_grad():
        assert torch.allclose(vocoder(mel), student(mel), atol=1e-6)
