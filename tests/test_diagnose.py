"""``python train/diagnose.py``: a vocoder's log-mel distance split into magnitude and phase."""

import subprocess
import sys

import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import CORPUS_CLIP, REPO, save_ckpt, student

from train.evaluation.diagnose import BAND_CUTS, SWAPS, band_swaps, swap_distances, voicing_swaps
from vocos_distill.config import SAMPLE_RATE


@pytest.fixture(scope="module")
def speech():
    audio, rate = sf.read(str(CORPUS_CLIP), dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE)[: 2 * SAMPLE_RATE]


def test_each_swap_isolates_what_it_names(speech):
    same = swap_distances(speech, speech)
    assert same["vocoder"] == 0 and same["true magnitude + vocoder phase"] < 0.1
    assert same["true magnitude + random phase"] > 3  # random phase alone costs several dB
    # 6 dB quieter: all of it in the magnitude, none in the phase
    quiet = swap_distances(0.5 * speech, speech)
    assert quiet["vocoder"] == pytest.approx(6.02, abs=0.2)
    assert quiet["vocoder magnitude + true phase"] == pytest.approx(6.02, abs=0.2)
    assert quiet["true magnitude + vocoder phase"] < 0.1


def test_a_band_swap_takes_the_floors_phase_only_on_its_side_of_the_cut(speech):
    window = torch.hann_window(1920)
    spectrum = torch.stft(speech, 1920, 480, window=window, return_complex=True)
    shifted = torch.istft(spectrum * 1j, 1920, 480, window=window, length=speech.shape[-1])  # every phase + pi/2
    swaps = band_swaps(speech, shifted)
    assert len(swaps) == 2 * len(BAND_CUTS) and all(v.shape == speech.shape for v in swaps.values())
    hz = torch.fft.rfftfreq(1920, 1 / SAMPLE_RATE).unsqueeze(-1)
    for cut in BAND_CUTS:
        for name, turned in ((f"floor phase below {cut} Hz", hz < cut), (f"vocoder phase below {cut} Hz", hz >= cut)):
            rebuilt = torch.stft(swaps[name], 1920, 480, window=window, return_complex=True)[..., 2:-2]
            # the phase turned by pi/2 exactly where the floor's was taken, the magnitude kept
            ratio = rebuilt / spectrum[..., 2:-2]
            loud = spectrum[..., 2:-2].abs() > 0.1 * spectrum.abs().max()
            expected = torch.where(turned, torch.tensor(1j), torch.tensor(1 + 0j)).expand_as(ratio)
            assert (ratio[loud] - expected[loud]).abs().median() < 0.05, name


def test_a_voicing_swap_takes_the_floors_phase_only_in_the_frames_it_names(speech):
    window = torch.hann_window(1920)
    spectrum = torch.stft(speech, 1920, 480, window=window, return_complex=True)
    shifted = torch.istft(spectrum * 1j, 1920, 480, window=window, length=speech.shape[-1])
    frames = spectrum.shape[-1]
    voiced = torch.arange(frames) < frames // 2  # the first half "voiced"
    swaps = voicing_swaps(speech, shifted, voiced)
    for name, turned in (("floor phase in unvoiced frames", ~voiced), ("floor phase in voiced frames", voiced)):
        rebuilt = torch.stft(swaps[name], 1920, 480, window=window, return_complex=True)
        ratio = rebuilt / spectrum
        loud = spectrum.abs() > 0.1 * spectrum.abs().max()
        # frames away from the switch (an overlap-add mixes 2 frames each side of it)
        inner = (torch.arange(frames) - frames // 2).abs() > 3
        for frame_flags, expected in ((turned & inner, 1j), (~turned & inner, 1)):
            keep = loud & frame_flags
            assert keep.any() and (ratio[keep] - expected).abs().median() < 0.05, name
    with pytest.raises(ValueError, match="one flag per STFT frame"):
        voicing_swaps(speech, shifted, voiced[1:])


@pytest.mark.slow
def test_the_script_prints_the_four_figures(tmp_path, speech):
    sf.write(str(tmp_path / "a.wav"), speech.numpy(), SAMPLE_RATE)
    ckpt = tmp_path / "s.ckpt"
    save_ckpt(student(), ckpt)
    cmd = [sys.executable, "-m", "train.diagnose", str(ckpt), str(tmp_path / "*.wav"), "--step", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all(f"  {key}" in done.stdout for key in SWAPS)
    missing = subprocess.run([*cmd[:4], str(tmp_path / "*.flac")], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "no file matches" in missing.stderr


@pytest.mark.slow
def test_scores_put_the_students_phase_under_the_priors_magnitude_beside_the_floor(tmp_path, speech):
    from train.evaluation.diagnose import VARIANTS, prior_variants
    from train.evaluation.griffin_lim import GriffinLim
    from train.s3gen.mel import S3GenMel
    from train.student.model import build_student

    torch.manual_seed(0)
    prior = build_student(dim=32, intermediate_dim=64, num_layers=1, amplitude_prior=True).eval()
    torch.nn.init.normal_(prior.head.out.weight, std=0.05)  # a correction that is not zero, as if trained
    mel = S3GenMel()(speech[None])
    variants = prior_variants(prior, mel, GriffinLim())
    assert list(variants) == list(VARIANTS) and all(v.shape == speech.shape for v in variants.values())
    # the second is the first with its log-magnitude rows (the correction) set to zero
    prior.head.out.weight.data[:961] = 0
    prior.head.out.bias.data[:961] = 0
    with torch.no_grad():
        torch.testing.assert_close(prior(mel)[0], variants["prior magnitude + vocoder phase"])
    with pytest.raises(ValueError, match="need a student with the amplitude prior"):
        prior_variants(student(), mel, GriffinLim())

    sf.write(str(tmp_path / "a.wav"), speech.numpy(), SAMPLE_RATE)
    save_ckpt(prior, tmp_path / "prior.ckpt")
    save_ckpt(student(), tmp_path / "stock.ckpt")
    cmd = [sys.executable, "-m", "train.diagnose", str(tmp_path / "prior.ckpt"), str(tmp_path / "*.wav"), "--step", "1"]
    done = subprocess.run([*cmd, "--scores"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in VARIANTS:
        assert f"  {name}" in done.stdout and "PESQ-wb" in done.stdout and "DistillMOS" in done.stdout
    stock = [*cmd[:3], str(tmp_path / "stock.ckpt"), *cmd[4:], "--scores"]
    refused = subprocess.run(stock, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "--scores needs a student with the amplitude prior" in refused.stderr
    bands = subprocess.run(
        [*stock[:-1], "--bands", "--voicing", "--count", "1"], cwd=REPO, capture_output=True, text=True
    )
    assert bands.returncode == 0, bands.stderr  # any student: the floor's phase is the Griffin-Lim floor's
    for cut in BAND_CUTS:
        assert f"  floor phase below {cut} Hz" in bands.stdout and f"  vocoder phase below {cut} Hz" in bands.stdout
    assert "  floor phase in unvoiced frames" in bands.stdout and "  floor phase in voiced frames" in bands.stdout
