import json

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from train.student import from_pretrained
from train.student.model import build_student, load_vocos_state_dict, warm_start
from vocos_distill.config import StudentConfig
from vocos_distill.hub import WeightsUnavailableError
from vocos_distill.loader import StudentFileError
from vocos_distill.student import VocosStudent


@pytest.mark.parametrize("frames", [1, 8, 50])
def test_t_frames_give_t_times_480_samples(frames):
    student = build_student(dim=32, intermediate_dim=64, num_layers=1)
    assert isinstance(student, VocosStudent)
    assert student(torch.randn(2, 80, frames)).shape == (2, frames * 480)


def test_full_size_student_has_the_documented_parameter_count():
    assert sum(p.numel() for p in build_student().parameters()) == 13_919_618


def test_wrong_mel_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, 80, T\)"):
        build_student(dim=32, intermediate_dim=64, num_layers=1)(torch.randn(1, 100, 10))


def vocos_mel_24khz_like(dim: int = 32) -> dict:
    """A state dict in the layout of charactr/vocos-mel-24khz: 100 mels in, n_fft 1024 head."""
    donor = build_student(input_channels=100, dim=dim, intermediate_dim=64, num_layers=1, n_fft=1024, hop_length=256)
    state = donor.state_dict()
    state["feature_extractor.mel_spec.spectrogram.window"] = torch.ones(1024)  # present in the real file
    return state


def test_warm_start_copies_what_fits_and_lists_the_rest(tmp_path, caplog):
    state = vocos_mel_24khz_like()
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.yaml").write_text("feature_extractor: {}\n")
    with caplog.at_level("INFO"):
        student = build_student(dim=32, intermediate_dim=64, num_layers=1, init_from=str(tmp_path))
    own = student.state_dict()
    torch.testing.assert_close(own["backbone.convnext.0.dwconv.weight"], state["backbone.convnext.0.dwconv.weight"])
    copied, reinitialised = warm_start(student, state)
    assert "backbone.embed.weight" in reinitialised and "head.out.weight" in reinitialised
    assert "backbone.convnext.0.pwconv1.weight" in copied and "backbone.norm.weight" in copied
    assert "kept as initialised" in caplog.text and "head.out" in caplog.text


def test_missing_local_warm_start_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"student\.init_from=null"):
        load_vocos_state_dict(str(tmp_path))  # a directory without pytorch_model.bin
    with pytest.raises(FileNotFoundError, match=r"student\.init_from=null"):
        load_vocos_state_dict(str(tmp_path / "missing"))


def test_hub_warm_start_offline_names_the_option(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match=r"charactr/vocos-mel-24khz.*student\.init_from=null"):
        load_vocos_state_dict("charactr/vocos-mel-24khz")


def tiny_student():
    torch.manual_seed(0)
    return build_student(dim=32, intermediate_dim=64, num_layers=2)


@pytest.mark.parametrize("layout", ["lightning.ckpt", "generator.safetensors", "generator.pt"])
def test_from_pretrained_rebuilds_the_architecture_from_any_checkpoint_layout(tmp_path, layout):
    student = tiny_student()
    path = tmp_path / layout
    state = {k: v.contiguous() for k, v in student.state_dict().items()}
    if layout == "lightning.ckpt":  # what ModelCheckpoint writes: the module's keys, discriminators beside
        keys = {**{f"generator.{k}": v for k, v in state.items()}, "discriminators.mpd.w": torch.ones(2)}
        torch.save({"state_dict": keys, "global_step": 4}, path)
    elif layout.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = from_pretrained(path)
    assert loaded.config == student.config and loaded.config.num_layers == 2
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    mel = torch.randn(1, 80, 12)
    torch.testing.assert_close(loaded(mel), student.eval()(mel))
    assert StudentConfig.of_state(state).n_fft == 1920


def test_from_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        from_pretrained(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(StudentFileError, match="junk.ckpt: cannot read"):
        from_pretrained(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {"conv_pre.bias": torch.zeros(3)}}, tmp_path / "hift.pt")
    with pytest.raises(StudentFileError, match=r"hift.pt: no Vocos student inside.*conv_pre.bias"):
        from_pretrained(tmp_path / "hift.pt")
    state = tiny_student().state_dict()
    state["head.out.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "bent.pt")
    with pytest.raises(StudentFileError, match=r"(?s)bent.pt: does not load.*head.out.bias"):
        from_pretrained(tmp_path / "bent.pt")


# -- defect: checkpoints did not say how to rebuild the student ---------------------------
def test_a_training_checkpoint_carries_the_student_build_config(tmp_path):
    """Shape inference cannot see the hop; a checkpoint written by the trainer must say it."""
    from lightning.pytorch import Trainer

    from train.training.module import VocoderDistillation

    torch.manual_seed(0)
    student = build_student(dim=32, intermediate_dim=48, num_layers=2, n_fft=960, hop_length=240)
    module = VocoderDistillation(student, optimizer_g=torch.optim.AdamW, target_weights={"audio": 1.0})
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    loaded = from_pretrained(tmp_path / "run.ckpt")
    assert loaded.config == student.config
    mel = torch.randn(1, 80, 10)
    assert loaded(mel).shape == (1, 10 * 240)
    torch.testing.assert_close(loaded(mel), student.eval()(mel))


def test_a_bare_safetensors_file_with_config_metadata_rebuilds_exactly(tmp_path):
    student = build_student(dim=32, intermediate_dim=48, num_layers=1, n_fft=960, hop_length=240)
    save_file(
        {k: v.contiguous() for k, v in student.state_dict().items()},
        str(tmp_path / "g.safetensors"),
        metadata={"config": json.dumps(student.config.to_dict())},
    )
    assert from_pretrained(tmp_path / "g.safetensors").config == student.config


def test_shape_inference_is_only_a_fallback_and_refuses_uneven_blocks(tmp_path):
    state = build_student(dim=32, intermediate_dim=64, num_layers=2).state_dict()
    assert StudentConfig.of_state(state) == build_student(dim=32, intermediate_dim=64, num_layers=2).config
    state["backbone.convnext.1.pwconv1.weight"] = torch.zeros(48, 32)  # block 1 pruned to another width
    state["backbone.convnext.1.pwconv1.bias"] = torch.zeros(48)
    state["backbone.convnext.1.pwconv2.weight"] = torch.zeros(32, 48)
    torch.save(state, tmp_path / "uneven.pt")
    with pytest.raises(StudentFileError, match=r"uneven.pt.*intermediate widths differ.*\[64, 48\]"):
        from_pretrained(tmp_path / "uneven.pt")


# -- defect: a warm start that copied nothing passed silently --------------------------------
def test_a_warm_start_that_copies_less_than_the_backbone_is_an_error(tmp_path):
    torch.save(vocos_mel_24khz_like(dim=48), tmp_path / "pytorch_model.bin")  # another width: nothing fits
    with pytest.raises(ValueError, match=r"(?s)student\.init_from=.*backbone.*did not fit.*backbone\.convnext\.0"):
        build_student(dim=32, intermediate_dim=64, num_layers=1, init_from=str(tmp_path))


def test_a_module_is_copied_whole_or_not_at_all(caplog):
    """80 vs 100 mel bins: the embedding's weight does not fit, so its bias is not copied either."""
    state = vocos_mel_24khz_like()
    student = build_student(dim=32, intermediate_dim=64, num_layers=1)
    before = student.state_dict()["backbone.embed.bias"].clone()
    with caplog.at_level("WARNING"):
        copied, kept = warm_start(student, state)
    assert "backbone.embed.bias" in kept and "backbone.embed.bias" not in copied
    torch.testing.assert_close(student.state_dict()["backbone.embed.bias"], before)
    assert "backbone.embed" in caplog.text and "head.out" in caplog.text  # the warning names what was not copied
