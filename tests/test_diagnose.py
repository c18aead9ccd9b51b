"""``python -m train.diagnose``: a vocoder's log-mel distance split into magnitude and phase."""

import subprocess
import sys

import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import CORPUS_CLIP, REPO, save_ckpt, student

from train.evaluation.diagnose import SWAPS, swap_distances
from train.runtime.config import SAMPLE_RATE


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
