import pytest
import torch
import torchaudio
from helpers import KIT
from safetensors.torch import load_file

from train.s3gen.mel import S3GenMel


@pytest.fixture(scope="module")
def mel() -> S3GenMel:
    return S3GenMel()


def test_matches_reference(mel):
    ref = load_file(str(KIT / "s3gen_mel_reference.safetensors"))
    out = mel(ref["wav"])
    assert out.shape == ref["mel"].shape
    assert (out - ref["mel"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("length", [480 * 7, 480 * 7 + 479, 4000])
def test_frame_count_is_length_over_hop(mel, length):
    assert mel(torch.randn(2, length)).shape == (2, 80, length // 480)


def test_one_dimensional_input_gets_a_batch_axis(mel):
    wav = torch.randn(4800)
    torch.testing.assert_close(mel(wav), mel(wav.unsqueeze(0)))


def test_multichannel_is_mixed_to_mono(mel):
    left, right = torch.randn(1, 9600), torch.randn(1, 9600)
    stereo = torch.stack([left, right], dim=1)  # (B, C, L)
    torch.testing.assert_close(mel(stereo), mel((left + right) / 2))


def test_other_sample_rates_are_resampled_to_24k(mel):
    wav16 = torch.randn(1, 16000) * 0.1
    out = mel(wav16, sample_rate=16000)
    expected = mel(torchaudio.functional.resample(wav16, 16000, 24000))
    assert out.shape == (1, 80, 50)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("wav", "match"),
    [
        (torch.zeros(1, 0), "empty"),
        (torch.tensor([[0.0, float("nan")] * 1000]), "NaN or inf"),
        (torch.tensor([[0.0, float("inf")] * 1000]), "NaN or inf"),
        (torch.zeros(1, 100), "too short"),
        (torch.zeros(1, 1, 1, 100), "shape"),
    ],
)
def test_bad_waveforms_are_rejected(mel, wav, match):
    with pytest.raises(ValueError, match=match):
        mel(wav)
