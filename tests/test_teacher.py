import huggingface_hub.constants
import pytest
import torch
from helpers import KIT, UNRELATED, small_config, to_legacy_keys, write_s3gen_checkpoint
from safetensors.torch import load_file, save_file

from train.s3gen.hift import HiFTGenerator
from train.s3gen.teacher import CheckpointError, load_teacher, synthesize
from vocos_distill.hub import WeightsUnavailableError

FORMATS = ["s3gen.safetensors", "s3gen_meanflow.safetensors", "s3gen.pt"]


@pytest.fixture(scope="module")
def reference() -> HiFTGenerator:
    torch.manual_seed(0)
    return HiFTGenerator(**small_config()).eval()


def decode_io(model: HiFTGenerator) -> torch.Tensor:
    io = load_file(str(KIT / "hift_small_io.safetensors"))
    with torch.no_grad():
        return model.decode(io["mel"], io["source"])


@pytest.mark.parametrize("legacy_keys", [False, True], ids=["parametrizations", "weight_g_v"])
@pytest.mark.parametrize("name", FORMATS)
def test_loads_every_format_and_key_style(tmp_path, reference, name, legacy_keys):
    path = write_s3gen_checkpoint(tmp_path / name, reference, legacy_keys=legacy_keys)
    teacher = load_teacher(checkpoint=path, config=small_config())
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(decode_io(teacher), decode_io(reference), atol=1e-5, rtol=0)


def test_config_comes_from_safetensors_metadata(tmp_path, reference):
    path = write_s3gen_checkpoint(tmp_path / "s3gen.safetensors", reference)
    teacher = load_teacher(checkpoint=path)  # no config given: read from the file
    assert teacher.config["base_channels"] == small_config()["base_channels"]


def test_kit_weights_load_unfolded_and_give_the_reference(tmp_path):
    teacher = load_teacher(checkpoint=KIT / "hift_small_weights.safetensors", fold_weight_norm=False)
    assert any("parametrizations" in k for k in teacher.state_dict())
    io = load_file(str(KIT / "hift_small_io.safetensors"))
    assert (decode_io(teacher) - io["wav"]).abs().max().item() <= 1e-4


def test_missing_key_is_named(tmp_path, reference):
    state = {f"mel2wav.{k}": v for k, v in reference.state_dict().items() if k != "conv_post.bias"}
    save_file({**UNRELATED, **state}, str(tmp_path / "s3gen.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): conv_post\.bias"):
        load_teacher(checkpoint=tmp_path / "s3gen.safetensors", config=small_config())


def test_misshapen_and_unexpected_keys_are_named(tmp_path, reference):
    state = {f"mel2wav.{k}": v.clone() for k, v in to_legacy_keys(reference.state_dict()).items()}
    state["mel2wav.conv_pre.bias"] = torch.zeros(3)
    state["mel2wav.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "s3gen.pt")
    with pytest.raises(CheckpointError) as err:
        load_teacher(checkpoint=tmp_path / "s3gen.pt", config=small_config())
    assert "conv_pre.bias: checkpoint (3,)" in str(err.value)
    assert "unexpected (1): extra.weight" in str(err.value)
    assert "s3gen.pt" in str(err.value)


def test_file_without_vocoder_keys_is_rejected(tmp_path):
    save_file(dict(UNRELATED), str(tmp_path / "s3gen.safetensors"))
    with pytest.raises(CheckpointError, match="no 'mel2wav.' keys"):
        load_teacher(checkpoint=tmp_path / "s3gen.safetensors")


def test_missing_path_names_the_path_and_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors.*teacher\.checkpoint="):
        load_teacher(checkpoint=tmp_path / "nope.safetensors")


def test_offline_without_cache_says_so_and_names_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match=r"ResembleAI/chatterbox.*teacher\.checkpoint="):
        load_teacher(cache_dir=tmp_path / "hf")


def test_hub_download_is_served_from_the_hf_cache_offline(tmp_path, monkeypatch, reference):
    """A file already in the Hugging Face cache loads with HF_HUB_OFFLINE set."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--ResembleAI--chatterbox"
    write_s3gen_checkpoint(repo / "snapshots" / commit / "s3gen.safetensors", reference)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    teacher = load_teacher(repo_id="ResembleAI/chatterbox", cache_dir=tmp_path / "hf")
    torch.testing.assert_close(decode_io(teacher), decode_io(reference), atol=1e-5, rtol=0)


def test_bfloat16_teacher_runs_and_stays_close(tmp_path, reference):
    path = write_s3gen_checkpoint(tmp_path / "s3gen.safetensors", reference)
    fp32 = load_teacher(checkpoint=path)
    bf16 = load_teacher(checkpoint=path, dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    mel = torch.randn(1, 80, 20)
    a, b = synthesize(fp32, mel, seed=0), synthesize(bf16, mel, seed=0)
    assert a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max().item() < 0.05


def test_weights_fingerprint_follows_content_not_format(tmp_path, reference):
    a = load_teacher(checkpoint=write_s3gen_checkpoint(tmp_path / "s3gen.safetensors", reference))
    b = load_teacher(
        checkpoint=write_s3gen_checkpoint(tmp_path / "s3gen.pt", reference, legacy_keys=True), config=small_config()
    )
    other = HiFTGenerator(**small_config())
    c = load_teacher(checkpoint=write_s3gen_checkpoint(tmp_path / "other.safetensors", other))
    assert a.weights_id == b.weights_id != c.weights_id


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_teacher_runs_on_cuda(tmp_path, reference):
    path = write_s3gen_checkpoint(tmp_path / "s3gen.safetensors", reference)
    teacher = load_teacher(checkpoint=path, device="cuda")
    wav = synthesize(teacher, torch.randn(1, 80, 10), seed=0)
    assert wav.device.type == "cuda" and wav.shape == (1, 4800)
