import math
import platform
import subprocess
import sys

import pytest
import torch
import torchaudio
from helpers import KIT, REPO, emulated, need_qemu
from safetensors.torch import load_file

from train.s3gen.mel import S3GenMel

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def mel() -> S3GenMel:
    return S3GenMel()


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(KIT / "s3gen_mel_reference.safetensors"))


def float32_bound(mel: S3GenMel, wav: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
    """How far two float32 computations of the S3Gen mel of ``wav`` may lie apart in the linear
    (pre-log) domain, bin by bin ``(B, 80, T)``, whatever FFT kernels computed them.

    A float32 FFT of size N errs by at most about ``5 log2(N) eps`` of its frame's spectrum norm
    ``||X_t||`` in any bin (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
    section 24.1); a mel bin sums the magnitudes under its filter, so it errs by at most the filter's
    sum times that, plus a few roundings of its own value (the root, the filterbank product). Two
    computations (a stored reference and this machine's) may each err so: twice the bound. The log
    that follows magnifies these errors without limit near its floor (1e-5), where CPUs disagree by
    up to 5e-3 in log units; the clamp shrinks them, so the bound holds on the clamped values."""
    wav = wav.double()
    padded = torch.nn.functional.pad(wav.unsqueeze(1), (mel.pad, mel.pad), mode="reflect").squeeze(1)
    spec = torch.stft(padded, mel.n_fft, mel.hop_length, mel.n_fft, mel.window.double(), center=False,
                      return_complex=True)  # fmt: skip
    spectrum_norm = spec.abs().pow(2).sum(1).sqrt()[:, None, :]  # (B, 1, T)
    fft = 5 * math.log2(mel.n_fft) * EPS32 * mel.fbank.double().sum(1)[None, :, None] * spectrum_norm
    return 2 * (fft + 8 * EPS32 * log_mel.double().exp())


def within_float32_rounding(mel: S3GenMel, wav: torch.Tensor, ours: torch.Tensor, stored: torch.Tensor) -> float:
    """The largest linear-domain difference as a share of :func:`float32_bound` (<= 1: rounding)."""
    difference = (ours.double().exp() - stored.double().exp()).abs()
    return (difference / float32_bound(mel, wav, stored)).max().item()


def test_matches_chatterbox_on_this_machine(mel, reference):
    """The same arithmetic as Chatterbox's own ``mel_spectrogram``, run on the same CPU: equal to
    1e-4 in log units everywhere, the near-silent bins included (2.1e-5 here, 2.7e-5 on an Intel Xeon)."""
    chatterbox_mel = pytest.importorskip("chatterbox.models.s3gen.utils.mel")  # the dev install has it
    torch.manual_seed(0)
    speech_like = torch.randn(2, 24_000) * torch.linspace(0, 0.5, 24_000)  # a fade from silence
    for wav in (reference["wav"], speech_like):
        theirs = chatterbox_mel.mel_spectrogram(wav)
        ours = mel(wav)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() <= 1e-4


def test_matches_the_stored_reference_to_float32_rounding(mel, reference):
    """The stored reference was computed on one CPU: its near-silent bins differ from another CPU's
    float32 by up to 5e-3 in log units (an Intel Xeon; 3.3e-3 under qemu's Haswell, AVX2), while
    the loud bins agree to 1e-4. So the comparison is made in the linear domain, bin by bin, within
    what float32 rounding allows (worst: 0.017 of the bound, here and under qemu's Haswell and Nehalem)."""
    out = mel(reference["wav"])
    assert out.shape == reference["mel"].shape
    assert within_float32_rounding(mel, reference["wav"], out, reference["mel"]) <= 1.0
    loud = reference["mel"] > math.log(1e-2)  # 60 dB above the floor: the log magnifies nothing here
    assert (out - reference["mel"])[loud].abs().max().item() <= 1e-4


def test_the_two_checks_still_catch_a_wrong_mel(mel, reference):
    """The tolerances are not vacuous. Another Hann window or a 0.01 dB gain error exceeds the
    float32 bound more than 10 times over (21 and 27 times here). A magnitude without S3Gen's 1e-9
    epsilon changes only bins near the log floor, invisible in the linear domain: the comparison
    with Chatterbox's own function on the same machine (1e-4 in log units) is what catches it."""
    wav = reference["wav"]
    symmetric = S3GenMel()
    symmetric.window = torch.hann_window(symmetric.n_fft, periodic=False)
    for wrong in (symmetric(wav), mel(wav * (1 + 1e-3))):
        assert within_float32_rounding(mel, wav, wrong, reference["mel"]) > 10
    padded = torch.nn.functional.pad(wav.unsqueeze(1), (mel.pad, mel.pad), mode="reflect").squeeze(1)
    spec = torch.stft(padded, mel.n_fft, mel.hop_length, mel.n_fft, mel.window, center=False, return_complex=True)
    no_epsilon = torch.log(torch.clamp(mel.fbank @ spec.abs(), min=1e-5))
    assert (no_epsilon - mel(wav)).abs().max().item() > 1e-2


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


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86-64 CPU from an x86-64 host")
def test_an_avx2_cpu_computes_the_same_mel_within_float32_rounding(mel, reference, tmp_path):
    """The mel on qemu-user's emulated Haswell (AVX2, no AVX-512: torch's FFT takes other kernels
    than on AVX-512 hosts) meets the same checks: whatever CPU CI lands on, it sees this."""
    need_qemu()
    script = f"""
import torch
from safetensors.torch import load_file
from train.s3gen.mel import S3GenMel
wav = load_file({str(KIT / "s3gen_mel_reference.safetensors")!r})["wav"]
torch.save((torch.backends.cpu.get_cpu_capability(), S3GenMel()(wav)), {str(tmp_path / "mel.pt")!r})
"""
    done = subprocess.run([*emulated("Haswell"), sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    capability, out = torch.load(tmp_path / "mel.pt")
    assert capability == "AVX2"
    assert within_float32_rounding(mel, reference["wav"], out, reference["mel"]) <= 1.0
    assert (out - mel(reference["wav"]))[reference["mel"] > math.log(1e-2)].abs().max().item() <= 1e-4
