"""The score cache: a signal scored once is never scored again, and nothing else changes."""

import math

import numpy as np
import pytest
import torch

from train.evaluation.metrics import QualityMetrics
from train.evaluation.score_cache import ScoreCacheWarning, signal_key
from vocos_distill.config import SAMPLE_RATE


def voice(seed: int, seconds: float = 1.0) -> torch.Tensor:
    """A gliding harmonic tone with a little noise: CREPE finds it voiced, PESQ and STOI score it."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 40 * t
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SAMPLE_RATE
    wav = sum(0.3 / k * torch.sin(k * phase) for k in range(1, 8))
    return wav * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t)) + 0.003 * torch.randn(len(t), generator=generator)


def counting(metrics: QualityMetrics) -> dict[str, int]:
    """Count the pitch tracker's calls on ``metrics``."""
    calls = {"pitch": 0}
    track = metrics.track_pitch

    def counted(wav16):
        calls["pitch"] += 1
        return track(wav16)

    metrics.track_pitch = counted
    return calls


def metrics_with_cache(folder, **settings) -> QualityMetrics:
    return QualityMetrics(naturalness=None, speaker=None, cache_dir=folder, **settings)


@pytest.mark.slow
def test_a_reference_is_analysed_once_across_runs_and_every_score_is_unchanged(tmp_path):
    # unchanged to the last digits: ESTOI itself differs in the 15th between two calls on the same input
    reference, estimate, other = voice(0), voice(1), voice(2)
    plain = QualityMetrics(naturalness=None, speaker=None)
    expected = plain.paired(plain.analyse(estimate), plain.analyse(reference))

    first = metrics_with_cache(tmp_path)
    calls = counting(first)
    assert first.paired(first.analyse(estimate), first.analyse(reference)) == pytest.approx(expected, rel=1e-12)
    assert calls["pitch"] == 2 and first.cache.hits == 0

    again = metrics_with_cache(tmp_path)  # another run: the same pair is read back whole
    calls = counting(again)
    assert again.paired(again.analyse(estimate), again.analyse(reference)) == pytest.approx(expected, rel=1e-12)
    assert calls["pitch"] == 0 and again.cache.hits == 1

    # a new estimate against the same reference: only the new signal is tracked
    scores = again.paired(again.analyse(other), again.analyse(reference))
    assert calls["pitch"] == 1
    assert scores == pytest.approx(plain.paired(plain.analyse(other), plain.analyse(reference)), rel=1e-12)


def test_other_settings_or_other_samples_are_other_entries(tmp_path):
    reference = voice(0)
    assert metrics_with_cache(tmp_path).analyse(reference).pitch.voiced.any()
    stricter = metrics_with_cache(tmp_path, voicing_threshold=0.5)
    calls = counting(stricter)
    assert stricter.analyse(reference).pitch.voiced.any()
    assert calls["pitch"] == 1, "a changed setting must not reuse entries made under another"
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # one folder per fingerprint

    shifted = reference.clone()
    shifted[100] += 1e-3
    assert signal_key(shifted) != signal_key(reference)
    assert signal_key(reference[:-1]) != signal_key(reference)


def test_an_unreadable_entry_is_computed_again_and_replaced(tmp_path):
    reference = voice(0)
    metrics = metrics_with_cache(tmp_path)
    track = metrics.analyse(reference).pitch
    (entry,) = tmp_path.rglob("*.pitch.npz")
    entry.write_bytes(b"not an npz file")

    again = metrics_with_cache(tmp_path)
    calls = counting(again)
    with pytest.warns(ScoreCacheWarning, match=r"score cache entry .*\.pitch\.npz unreadable"):
        retracked = again.analyse(reference).pitch
    assert calls["pitch"] == 1
    np.testing.assert_array_equal(retracked.f0, track.f0)
    np.testing.assert_array_equal(retracked.voiced, track.voiced)
    fresh = metrics_with_cache(tmp_path)  # the entry was replaced by a readable one
    calls = counting(fresh)
    np.testing.assert_array_equal(fresh.analyse(reference).pitch.f0, track.f0)
    assert calls["pitch"] == 0


def test_a_failed_score_is_not_kept_so_its_warning_comes_again(tmp_path):
    silent = torch.zeros(SAMPLE_RATE)
    metrics = metrics_with_cache(tmp_path)
    with pytest.warns(UserWarning, match="reference is silent"):
        scores = metrics.paired(metrics.analyse(voice(0)), metrics.analyse(silent))
    assert math.isnan(scores["pesq_wb"])
    assert not list(tmp_path.rglob("*.paired.json"))
    with pytest.warns(UserWarning, match="reference is silent"):
        metrics_with_cache(tmp_path).paired(metrics.analyse(voice(0)), metrics.analyse(silent))
