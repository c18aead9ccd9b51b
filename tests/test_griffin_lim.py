"""The Griffin-Lim floor: aligned with the audio its mel came from, and sound on known signals."""

import math

import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import CORPUS_CLIP

from train.evaluation.griffin_lim import GriffinLim
from train.evaluation.metrics import QualityMetrics, mel_distance_db, pesq_wb
from train.s3gen.mel import S3GenMel
from vocos_distill.config import SAMPLE_RATE


@pytest.fixture(scope="module")
def floor():
    return GriffinLim(n_iter=32)


def energy_peak(wav: torch.Tensor) -> int:
    """Where the short-time energy of ``wav`` (L,) peaks, to the sample."""
    return int(torch.nn.functional.avg_pool1d(wav.pow(2)[None, None], 97, 1, 48)[0, 0].argmax())


@pytest.mark.parametrize("position", [12_000, 12_123, 12_345, 12_720])
def test_a_click_comes_back_where_it_was(floor, position):
    # A click's energy is at one sample: wherever it falls between frame centres, Griffin-Lim
    # from its mel must put it back there. Uncorrected, the centred STFT puts it 240 samples early.
    click = torch.zeros(SAMPLE_RATE)
    click[position] = 1.0
    wav = floor(S3GenMel()(click))[0]
    assert floor.offset == 240
    assert wav.shape == (SAMPLE_RATE,)
    assert abs(energy_peak(wav) - position) <= 40


def test_speech_is_aligned_with_its_source(floor):
    audio, rate = sf.read(str(CORPUS_CLIP), dtype="float32")
    audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE)[: 3 * SAMPLE_RATE]
    wav = floor(S3GenMel()(audio))[0]

    def envelope(x):
        return torch.nn.functional.avg_pool1d(x.abs()[None, None], 240, 24)[0, 0]

    lags = range(-480, 481, 24)
    similarity = [
        torch.nn.functional.cosine_similarity(envelope(audio.roll(lag)), envelope(wav), dim=0).item() for lag in lags
    ]
    best = list(lags)[max(range(len(lags)), key=similarity.__getitem__)]
    assert abs(best) <= 72  # within 3 ms, where the uncorrected output is 10 ms off


def test_a_harmonic_tone_comes_back_with_its_harmonics_and_level(floor):
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = sum(0.3 / k * torch.sin(2 * math.pi * 150 * k * t) for k in range(1, 20))
    wav = floor(S3GenMel()(tone))[0]
    middle = slice(4800, -4800)  # away from the edges, where the mel's reflect padding differs
    spectrum = torch.fft.rfft(wav[middle]).abs()
    bin_of_150_hz = 150 * wav[middle].numel() // SAMPLE_RATE
    assert int(spectrum.argmax()) == bin_of_150_hz
    harmonics = spectrum[bin_of_150_hz::bin_of_150_hz][:8]
    between = spectrum[bin_of_150_hz // 2 :: bin_of_150_hz][:8]
    assert (harmonics > 10 * between).all()  # the harmonics stand out of the gaps between them (measured: 15-170x)
    level_db = 20 * math.log10(wav[middle].pow(2).mean().sqrt() / tone[middle].pow(2).mean().sqrt())
    assert abs(level_db) < 1.0


@pytest.mark.parametrize(
    ("clip", "min_pesq"),
    # Measured with 32 iterations: PESQ-wb 2.44 and 1.88, 0.95 and 1.00 dB; the bounds leave a margin.
    [(CORPUS_CLIP.parents[1] / "cmu_cards" / "001.flac", 2.2), (CORPUS_CLIP, 1.7)],
)
def test_real_speech_scores_above_the_stated_bounds(floor, clip, min_pesq):
    audio, rate = sf.read(str(clip), dtype="float32")
    audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE)[: 4 * SAMPLE_RATE]
    metrics = QualityMetrics(naturalness=None, speaker=None)
    wav = floor(S3GenMel()(audio))[0]
    estimate, reference = metrics.analyse(wav), metrics.analyse(audio[: wav.shape[-1]])
    assert pesq_wb(estimate, reference) > min_pesq
    assert mel_distance_db(estimate, reference) < 1.3
    # and its output is as loud as the speech (within 2 dB), not a quiet smear
    assert abs(20 * math.log10(wav.pow(2).mean().sqrt() / audio.pow(2).mean().sqrt())) < 2.0


def test_the_floor_is_deterministic_and_checks_its_input(floor):
    mel = S3GenMel()(torch.randn(SAMPLE_RATE) * 0.1)
    assert torch.equal(floor(mel), floor(mel))
    with pytest.raises(ValueError, match=r"\(B, 80, T\); got \(1, 100, 5\)"):
        floor(torch.zeros(1, 100, 5))
