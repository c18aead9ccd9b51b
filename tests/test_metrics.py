"""Every quality metric on signals whose answer is known."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import CORPUS_CLIP

from train.evaluation.metrics import NO_REFERENCE, PAIRED, MetricWarning, QualityMetrics, speaker_similarity


@pytest.fixture(scope="module")
def metrics():
    return QualityMetrics()


@pytest.fixture(scope="module")
def speech():
    """3 s of real speech at its native 16 kHz."""
    audio, rate = sf.read(str(CORPUS_CLIP), dtype="float32")
    assert rate == 16_000
    return torch.from_numpy(audio[: 3 * rate])


@pytest.fixture(scope="module")
def clean(metrics, speech):
    return metrics.analyse(speech, 16_000)


def degrade(wav: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Low-passed at 3 kHz plus white noise at ``snr_db``."""
    generator = torch.Generator().manual_seed(0)
    muffled = torchaudio.functional.lowpass_biquad(wav, 16_000, 3000.0)
    noise = torch.randn(wav.shape, generator=generator)
    noise *= muffled.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt() / 10 ** (snr_db / 20)
    return muffled + noise


@pytest.mark.slow
def test_identical_signals_score_perfectly(metrics, speech, clean):
    scores = metrics.paired(metrics.analyse(speech.clone(), 16_000), clean, "copy")
    assert set(scores) == set(PAIRED)
    assert scores["pesq_wb"] == pytest.approx(4.644, abs=0.01)  # the top of the wide-band scale
    assert scores["stoi"] == pytest.approx(1.0) and scores["estoi"] == pytest.approx(1.0)
    for distance in ("mel_distance_db", "mrstft_distance_db", "mcd_db", "f0_rmse_cents", "periodicity_rmse"):
        assert scores[distance] == pytest.approx(0.0, abs=1e-6), distance
    assert scores["vuv_f1"] == 1.0
    assert scores["dnsmos_ovrl_drop"] == 0.0
    assert scores["speaker_similarity"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_degraded_copies_score_worse_and_worse(metrics, speech, clean):
    mild = metrics.paired(metrics.analyse(degrade(speech, 20), 16_000), clean, "mild")
    harsh = metrics.paired(metrics.analyse(degrade(speech, 0), 16_000), clean, "harsh")
    perfect = metrics.paired(clean, clean, "copy")
    for name, info in PAIRED.items():
        if name in ("vuv_f1", "f0_rmse_cents", "periodicity_rmse"):
            continue  # pitch survives a mild degradation; checked on the harsh one below
        better = (lambda a, b: a > b) if info.higher_is_better else (lambda a, b: a < b)
        assert better(perfect[name], mild[name]) and better(mild[name], harsh[name]), (name, mild, harsh)
    assert harsh["vuv_f1"] < 1 and harsh["f0_rmse_cents"] > 0 and harsh["periodicity_rmse"] > 0.01
    clean_scores = metrics.no_reference(clean)
    harsh_scores = metrics.no_reference(metrics.analyse(degrade(speech, 0), 16_000))
    assert clean_scores["dnsmos_ovrl"] > harsh_scores["dnsmos_ovrl"]
    assert clean_scores["distillmos"] > harsh_scores["distillmos"] + 0.5


@pytest.mark.slow
def test_speaker_similarity_tells_one_reader_from_others(metrics):
    def embedded(path):
        audio, rate = sf.read(str(path), dtype="float32")
        return metrics.analyse(torch.from_numpy(audio), rate)

    # clips of different lengths: the similarity itself (paired() needs one utterance twice)
    reader = embedded(CORPUS_CLIP)
    same = speaker_similarity(embedded(CORPUS_CLIP.with_name("sense_and_sensibility_01_austen_64kb-0930.flac")), reader)
    corpus = CORPUS_CLIP.parents[1]
    others = [
        speaker_similarity(embedded(path), reader)
        for path in (corpus / "cmu_cards" / "001.flac", corpus / "puredata" / "voice.flac")
    ]
    assert same > max(others) + 0.05, (same, others)


def test_a_gain_of_two_is_six_db_of_spectral_distance_and_no_cepstral_distortion(metrics, speech, clean):
    scores = metrics.paired(metrics.analyse(2 * speech, 16_000), clean, "louder")
    six_db = 20 * math.log10(2)
    # bins at the log floor (1e-5) move less, so the distance is at most 6.02 dB
    assert scores["mel_distance_db"] == pytest.approx(six_db, abs=0.3)
    assert scores["mrstft_distance_db"] == pytest.approx(six_db, abs=0.6)
    assert scores["mcd_db"] < 0.05  # gain lives in c0, which MCD leaves out
    assert scores["pesq_wb"] > 4.5  # PESQ aligns levels first


@pytest.mark.slow
def test_a_pitch_shift_of_100_cents_is_measured_in_cents(metrics):
    t = torch.arange(32_000) / 16_000

    def tone(f0: float) -> torch.Tensor:
        return sum(0.2 / k * torch.sin(2 * math.pi * k * f0 * t) for k in range(1, 6))

    scores = metrics.paired(
        metrics.analyse(tone(200 * 2 ** (100 / 1200)), 16_000), metrics.analyse(tone(200.0), 16_000)
    )
    assert scores["f0_rmse_cents"] == pytest.approx(100, abs=15)
    assert scores["vuv_f1"] == 1.0


def test_sample_rates_are_brought_to_each_metrics_own(metrics, speech, clean):
    at_24k = torchaudio.functional.resample(speech, 16_000, 24_000)
    scores = metrics.paired(metrics.analyse(at_24k, 24_000), clean, "24k vs 16k")
    assert scores["pesq_wb"] > 4.5 and scores["stoi"] > 0.99 and scores["mel_distance_db"] < 0.5
    with pytest.raises(ValueError, match="8000 Hz is too low.*16000 Hz"):
        metrics.analyse(speech[::2], 8_000)


@pytest.mark.slow
def test_lengths_within_tolerance_are_cut_longer_ones_rejected(metrics, speech, clean):
    short = metrics.analyse(speech[:-160], 16_000)  # 10 ms shorter
    scores = metrics.paired(short, clean, "short")
    assert scores["mel_distance_db"] < 0.5 and scores["pesq_wb"] > 4.5
    with pytest.raises(ValueError, match=r"differ by 0\.500 s.*max_length_mismatch_s=0\.02"):
        metrics.paired(metrics.analyse(speech[:-8000], 16_000), clean)


def test_bad_input_is_rejected(metrics, speech):
    with pytest.raises(ValueError, match=r"mono waveform.*\(2, "):
        metrics.analyse(torch.stack([speech, speech]), 16_000)
    with pytest.raises(ValueError, match="finite"):
        metrics.analyse(torch.tensor([0.0, float("nan")] * 8000), 16_000)
    with pytest.raises(ValueError, match="pitch_model"):
        QualityMetrics(pitch_model="huge")
    with pytest.raises(ValueError, match=r"metrics.naturalness: unknown predictors \['nisqa'\]"):
        QualityMetrics(naturalness=["dnsmos", "nisqa"])
    with pytest.raises(ValueError, match="metrics.speaker must be one of resemblyzer"):
        QualityMetrics(speaker="ecapa")


@pytest.mark.slow
def test_undefined_metrics_are_nan_with_a_warning_naming_the_utterance(metrics):
    silence = metrics.analyse(torch.zeros(32_000), 16_000)
    with pytest.warns(MetricWarning, match="quiet.wav: pesq_wb failed.*silent"):
        scores = metrics.paired(silence, silence, "quiet.wav")
    for name in ("pesq_wb", "stoi", "estoi", "mcd_db", "f0_rmse_cents", "vuv_f1"):
        assert math.isnan(scores[name]), name
    assert scores["mel_distance_db"] == 0.0  # still defined: the two are equal

    blip = metrics.analyse(torch.from_numpy(np.full(1000, 0.1, dtype=np.float32)), 16_000)
    with pytest.warns(MetricWarning, match="blip.wav: DNSMOS failed.*shorter than 0.25 s"):
        assert all(math.isnan(v) for v in metrics.no_reference(blip, "blip.wav").values())
    assert set(metrics.no_reference(metrics.analyse(torch.zeros(8000), 16_000))) == set(NO_REFERENCE)

    click = metrics.analyse(torch.full((320,), 0.1), 16_000)  # 20 ms: too short for almost everything
    with pytest.warns(MetricWarning, match="click.wav: stoi failed"):
        scores = metrics.paired(click, click, "click.wav")
    assert math.isnan(scores["pesq_wb"]) and math.isnan(scores["stoi"]) and math.isnan(scores["mel_distance_db"])
