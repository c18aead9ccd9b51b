import json
import math
import pickle

import pytest
import torch
from helpers import KIT, SMALL_WEIGHTS, small_config
from safetensors.torch import load_file

from train.s3gen.hift import HiFTGenerator, SourceModule
from train.s3gen.teacher import hift_state_dict, load_hift_weights


@pytest.fixture(scope="module")
def small() -> HiFTGenerator:
    model = HiFTGenerator(**small_config()).eval()
    load_hift_weights(model, hift_state_dict(load_file(str(SMALL_WEIGHTS))))
    return model


@pytest.fixture(scope="module")
def io() -> dict:
    return load_file(str(KIT / "hift_small_io.safetensors"))


def test_f0_predictor_matches_reference(small, io):
    with torch.no_grad():
        f0 = small.f0_predictor(io["mel"])
    assert f0.shape == io["f0"].shape
    assert (f0 - io["f0"]).abs().max().item() <= 1e-4


def test_decode_matches_reference(small, io):
    with torch.no_grad():
        wav = small.decode(io["mel"], io["source"])
    assert wav.shape == io["wav"].shape
    assert (wav - io["wav"]).abs().max().item() <= 1e-4


def test_folding_weight_norm_keeps_the_output(io):
    model = HiFTGenerator(**small_config()).eval()
    load_hift_weights(model, hift_state_dict(load_file(str(SMALL_WEIGHTS))))
    model.fold_weight_norm()
    assert not any("parametrizations" in k for k in model.state_dict())
    with torch.no_grad():
        wav = model.decode(io["mel"], io["source"])
    assert (wav - io["wav"]).abs().max().item() <= 1e-4
    copy = pickle.loads(pickle.dumps(model))  # no weight-norm hooks left behind (cost.py pickles it)
    torch.testing.assert_close(copy.decode(io["mel"], io["source"]), wav)


def test_full_size_layout_matches_manifest():
    manifest = json.loads((KIT / "hift_state_dict_manifest.json").read_text())
    model = HiFTGenerator()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == manifest["keys"]
    assert sum(p.numel() for p in model.parameters()) == manifest["n_params"] == 20_821_295


def test_inference_gives_480_samples_per_frame_and_uses_cache_source(small, io):
    mel = io["mel"]
    wav, source = small.inference(mel)
    assert wav.shape == (1, mel.shape[-1] * 480) and source.shape == (1, 1, mel.shape[-1] * 480)
    cache = torch.full((1, 1, 960), 0.25)
    _, source2 = small.inference(speech_feat=mel, cache_source=cache)
    assert torch.equal(source2[..., :960], cache)


def test_inference_is_reproducible_with_a_generator(small, io):
    a, _ = small.inference(io["mel"], generator=torch.Generator().manual_seed(1))
    b, _ = small.inference(io["mel"], generator=torch.Generator().manual_seed(1))
    c, _ = small.inference(io["mel"], generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(
    ("mel", "match"),
    [
        (torch.zeros(1, 100, 10), r"\(B, 80, T\)"),
        (torch.zeros(80, 10), r"\(B, 80, T\)"),
        (torch.full((1, 80, 10), float("nan")), "NaN"),
        (torch.zeros(1, 80, 0), "0 frames"),
    ],
)
def test_bad_mels_are_rejected(small, mel, match):
    with pytest.raises(ValueError, match=match):
        small.inference(mel)


# -- the NSF source ------------------------------------------------------------------
SR = 24_000


def test_voiced_unvoiced_switch_at_10_hz():
    src = SourceModule(SR, nb_harmonics=8, sine_amp=0.1, noise_std=0.003, voiced_threshold=10)
    f0 = torch.cat([torch.full((1, 1, 48_000), 10.0), torch.full((1, 1, 48_000), 10.5)], dim=-1)
    waves, voiced = src.sine_waves(f0, torch.Generator().manual_seed(0))
    assert voiced[..., :48_000].sum() == 0 and voiced[..., 48_000:].all()
    unvoiced_part, voiced_part = waves[..., :48_000], waves[..., 48_000:]
    # unvoiced: noise only, std sine_amp / 3 on every harmonic channel
    assert unvoiced_part.std().item() == pytest.approx(0.1 / 3, rel=0.05)
    # voiced: sines of amplitude 0.1 plus small noise (std 0.003)
    residual = voiced_part - voiced_part.mean(dim=-1, keepdim=True)
    assert residual.abs().max().item() < 0.1 + 6 * 0.003
    assert voiced_part.std().item() == pytest.approx(0.1 / math.sqrt(2), rel=0.05)


def test_fundamental_starts_at_phase_zero_and_harmonics_do_not():
    src = SourceModule(SR, nb_harmonics=8, sine_amp=0.1, noise_std=0.0)
    f0 = torch.full((2, 1, 2400), 200.0)
    waves, _ = src.sine_waves(f0, torch.Generator().manual_seed(0))
    k = torch.arange(1, 10, dtype=torch.float32).view(1, -1, 1)
    zero_phase = 0.1 * torch.sin(2 * math.pi * (torch.cumsum(f0 * k / SR, dim=-1) % 1))
    torch.testing.assert_close(waves[:, 0], zero_phase[:, 0], atol=1e-5, rtol=0)
    assert (waves[:, 1:] - zero_phase[:, 1:]).abs().amax(dim=-1).min() > 1e-3


def test_source_is_reproducible_under_a_seed():
    src = SourceModule(SR, nb_harmonics=8)
    f0 = torch.full((1, 1, 4800), 150.0)
    torch.manual_seed(123)
    a = src(f0)
    torch.manual_seed(123)
    b = src(f0)
    torch.manual_seed(124)
    c = src(f0)
    assert a.shape == (1, 1, 4800)
    assert torch.equal(a, b) and not torch.equal(a, c)
