"""The student inside Chatterbox's real code (chatterbox-tts 0.1.7, random weights, offline).

Chatterbox's ``S3Gen.inference`` runs unmodified: flow (2 CFM steps) -> ``mel2wav.inference``
-> its own 960-sample fade. Its mels are captured by wrapping ``flow_inference`` on the
instance, so each check compares against the student run on the very mels S3Gen made.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from helpers import write_release

from train.release.vocos_layout import write_vocos_layout
from train.student.model import build_student
from vocos_distill import from_pretrained
from vocos_distill.chatterbox import (
    ChatterboxStream,
    ChatterboxVocoder,
    VocoderFallbackWarning,
    restore_hift,
    s3gen_mel_spec,
    use_student,
)
from vocos_distill.config import MEL_SPEC
from vocos_distill.onnx import OnnxVocoder
from vocos_distill.release import VocoderUnavailableError

if os.environ.get("CI"):  # CI installs it (README, "Install"): a missing Chatterbox is a failure there
    import chatterbox  # noqa: F401
else:
    pytest.importorskip("chatterbox", reason="pip install --no-deps chatterbox-tts==0.1.7 (README, Install)")
from chatterbox import ChatterboxMultilingualTTS, ChatterboxTTS, ChatterboxVC  # noqa: E402
from chatterbox.models.s3gen import S3Gen  # noqa: E402
from chatterbox.tts_turbo import ChatterboxTurboTTS  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def int8_is_faster_here():
    """``auto`` takes int8 where it is faster than fp32 here: on these tiny graphs the two are within
    noise of each other (4.5 ms each), so the tests that follow a CPU user's int8 path say it is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("vocos_distill.release.speed_check", lambda int8, fp32: {"int8_s": 0.001, "fp32_s": 0.002})
        yield


@pytest.fixture(scope="module")
def s3gen(one_thread):
    """Chatterbox's S3Gen (264 M parameters, HiFT among them) with random weights."""
    torch.manual_seed(0)
    return S3Gen().eval()


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(1)
    model = build_student(dim=32, intermediate_dim=64, num_layers=2, fake_quant="int8").eval()
    for block in model.backbone.convnext:
        block.gamma.data.fill_(1.0)
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def release(tmp_path_factory, student) -> Path:
    """A release folder as train/export.py lays it out: vocos' config + weights, the fp32 and int8 graphs."""
    return write_release(tmp_path_factory.mktemp("release"), student)


def synthesise(s3gen, seconds: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``s3gen.inference`` from speech tokens and a reference clip; returns (wav, the flow's mel)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 6561, (1, int(25 * seconds)), generator=generator)
    reference = 0.1 * torch.randn(1, 24_000, generator=generator)
    captured = {}
    flow = s3gen.flow_inference

    def capture(*args, **kwargs):
        captured["mel"] = flow(*args, **kwargs).clone()
        return captured["mel"]

    s3gen.flow_inference = capture
    try:
        wav, source = s3gen.inference(tokens, ref_wav=reference, ref_sr=24_000, n_cfm_timesteps=2)
    finally:
        del s3gen.flow_inference
    assert source.dim() == 3
    return wav, captured["mel"]


def speak(s3gen, mel: torch.Tensor) -> torch.Tensor:
    """``s3gen.inference`` with its flow replaced by a chosen mel: the vocoder call site and the
    fade run as Chatterbox wrote them."""
    s3gen.flow_inference = lambda *args, **kwargs: mel
    try:
        wav, _ = s3gen.inference(torch.zeros(1, mel.shape[-1] // 2, dtype=torch.long), ref_wav=torch.zeros(1, 24_000))
    finally:
        del s3gen.flow_inference
    return wav


@pytest.fixture
def swapped(s3gen, release):
    previous = use_student(s3gen, release, runtime="torch", fallback=False)
    yield s3gen
    s3gen.mel2wav = previous


def test_s3gen_speaks_through_the_student(swapped, student, release):
    hift = type(swapped.mel2wav)
    assert hift is ChatterboxVocoder and swapped.mel2wav.runtime == "torch"
    wav, mel = synthesise(swapped)
    assert wav.dtype == torch.float32 and wav.shape == (1, mel.shape[-1] * 480) and wav.is_inference()
    from train.student.quantized import strip

    with torch.no_grad():
        expected = strip(student)(mel.float())
    expected[:, :960] *= swapped.trim_fade  # S3Gen's own fade: applied once, by S3Gen, not by the drop-in
    assert (wav - expected).abs().max() < 1e-5
    assert wav[:, :480].abs().max() == 0 and wav[:, 960:].abs().max() > 0


def test_the_swap_returns_what_it_replaced_and_finds_every_chatterbox_model(s3gen, release):
    original = s3gen.mel2wav
    assert type(original).__name__ == "HiFTGenerator"
    for cls in (ChatterboxTTS, ChatterboxTurboTTS, ChatterboxMultilingualTTS, ChatterboxVC):
        model = object.__new__(cls)  # the model classes as Chatterbox defines them, without their other parts
        model.s3gen = s3gen
        previous = use_student(model, release, runtime="torch", fallback=False)
        assert previous is original and isinstance(s3gen.mel2wav, ChatterboxVocoder)
        s3gen.mel2wav = previous
    with pytest.raises(TypeError, match="has no S3Gen vocoder"):
        use_student(object(), release)


def test_use_student_again_replaces_the_student_and_restore_hift_goes_back(s3gen, release, student):
    """Issue 37, 2: a second call (a notebook cell run twice) returned the first student, so going
    "back to HiFT" with what it returned kept a student. Through S3Gen's own inference."""
    hift = s3gen.mel2wav
    assert type(hift).__name__ == "HiFTGenerator"
    first = use_student(s3gen, release, runtime="torch")
    second = use_student(s3gen, release, runtime="int8")
    assert first is hift and second is hift and s3gen.mel2wav.runtime == "int8"
    wav, mel = synthesise(s3gen, seed=5)
    with torch.no_grad():
        expected = student(mel.float())
    expected[:, :960] *= s3gen.trim_fade
    assert 10 * torch.log10(expected.pow(2).sum() / (wav - expected).pow(2).sum()) > 20  # the second student speaks
    taken = restore_hift(s3gen)
    assert isinstance(taken, ChatterboxVocoder) and taken.runtime == "int8" and s3gen.mel2wav is hift
    assert restore_hift(s3gen) is None and s3gen.mel2wav is hift
    torch.manual_seed(0)
    again, mel = synthesise(s3gen, seed=5)  # HiFT speaks again: not the student's audio
    assert again.shape == wav.shape and (again - wav).abs().max() > 1e-3
    use_student(s3gen, release, runtime="torch")
    with pytest.warns(VocoderFallbackWarning, match="keeping Chatterbox's own vocoder \\(HiFTGenerator\\)"):
        assert use_student(s3gen, release / "nowhere") is hift
    assert s3gen.mel2wav is hift  # a failed swap leaves Chatterbox's own vocoder, whatever was in place


def test_auto_picks_the_int8_graph_on_cpu(s3gen, release, student):
    previous = use_student(s3gen, release)
    try:
        assert s3gen.mel2wav.runtime == "int8" and isinstance(s3gen.mel2wav.vocoder, OnnxVocoder)
        wav, mel = synthesise(s3gen, seed=1)
        with torch.no_grad():
            reference = student(mel.float())  # the fake-quantised model the int8 graph was checked against
        reference[:, :960] *= s3gen.trim_fade
        noise = (wav - reference).pow(2).sum() / reference.pow(2).sum()
        assert float(10 * torch.log10(1 / noise)) > 20
    finally:
        s3gen.mel2wav = previous


def test_streamed_speech_equals_s3gen_speech(swapped):
    wav, mel = synthesise(swapped, seconds=2.0, seed=2)
    rng = random.Random(0)
    for sizes in ([1] * mel.shape[-1], [mel.shape[-1]], [rng.randint(1, 30) for _ in range(mel.shape[-1])]):
        stream = ChatterboxStream(swapped)
        pieces, start = [], 0
        for size in sizes:
            if start >= mel.shape[-1]:
                break
            pieces.append(stream.push(mel[..., start : start + size]))
            start += size
        pieces.append(stream.flush())
        assert (torch.cat(pieces, -1) - wav).abs().max() < 1e-5
    with pytest.raises(TypeError, match="Vocos student"):
        ChatterboxStream(torch.nn.Linear(2, 2))
    from helpers import tiny_config

    from train.s3gen.hift import HiFTGenerator

    with_hift = torch.nn.Module()
    with_hift.mel2wav = HiFTGenerator(**tiny_config())
    with pytest.raises(TypeError, match="Vocos student"):  # HiFT in place: nothing to stream
        ChatterboxStream(with_hift)


def test_a_missing_release_keeps_hift_and_says_why(s3gen, tmp_path):
    original = s3gen.mel2wav
    for source, reason in [
        (tmp_path / "nowhere", "no such folder or file"),
        (tmp_path, "has no config.yaml"),
        ("someone/not-cached", "someone/not-cached"),  # a Hub id, offline: not in the cache
    ]:
        with pytest.warns(VocoderFallbackWarning, match=reason):
            previous = use_student(s3gen, source, local_files_only=True)
        assert previous is original and s3gen.mel2wav is original
    with pytest.raises(VocoderUnavailableError, match="no such folder"):
        use_student(s3gen, tmp_path / "nowhere", fallback=False)
    wav, _ = synthesise(s3gen)  # HiFT still speaks
    assert torch.isfinite(wav).all()


def test_what_the_caller_wrote_wrong_raises_even_with_fallback(s3gen, release):
    """``fallback`` covers what the environment gets wrong, never the call itself: a misspelt
    runtime, arguments of the wrong type or a model without an S3Gen raise at once, naming the
    valid choices, and HiFT stays in place."""
    original = s3gen.mel2wav
    with pytest.raises(ValueError, match=r"runtime='onnx-int8': choose one of auto, torch, onnx, int8"):
        use_student(s3gen, release, runtime="onnx-int8")
    with pytest.raises(TypeError, match=r"source must be a release folder or Hub id \(str or Path\), .* got int"):
        use_student(s3gen, 42)
    with pytest.raises(TypeError, match=r"Linear is not a Vocos student"):
        use_student(s3gen, torch.nn.Linear(2, 2))
    for flag in ("fallback", "local_files_only"):
        with pytest.raises(TypeError, match=rf"{flag} must be True or False; got 'yes'"):
            use_student(s3gen, release, **{flag: "yes"})
    with pytest.raises(TypeError, match="has no S3Gen vocoder"):
        use_student(object(), release)
    assert s3gen.mel2wav is original


def test_a_stream_after_a_fallback_says_why_the_student_is_not_there(s3gen, tmp_path):
    with pytest.warns(VocoderFallbackWarning) as seen:
        use_student(s3gen, tmp_path / "nowhere")
    reason = str(seen[0].message)
    with pytest.raises(TypeError) as refused:
        ChatterboxStream(s3gen)
    assert "use_student() kept HiFTGenerator in place" in str(refused.value)
    assert reason in str(refused.value) and "no such folder or file" in reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"hop_length": 256}, "hop_length 256 \\(the S3Gen's: 480\\)"), ({"n_mels": 100, "f_max": 12000.0}, "n_mels 100")],
)
def test_a_release_for_another_mel_keeps_hift(s3gen, release, tmp_path, change, reason):
    other = tmp_path / "other"
    other.mkdir()
    for file in release.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["mel"] = {**config["mel"], **change}
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    original = s3gen.mel2wav
    with pytest.warns(VocoderFallbackWarning, match=reason):
        assert use_student(s3gen, other) is original
    assert s3gen.mel2wav is original
    del config["mel"]  # a plain vocos config (vocos-mel-24khz's shape): judged by its feature extractor
    config["feature_extractor"]["init_args"]["hop_length"] = 256
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(VocoderFallbackWarning, match="hop_length 256"):
        use_student(s3gen, other)


def test_the_s3gen_mel_is_read_from_chatterbox(s3gen):
    spec = s3gen_mel_spec(s3gen)
    assert {k: float(spec[k]) for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max")} == {
        k: float(MEL_SPEC[k]) for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max")
    }


def test_the_drop_in_takes_half_precision_and_refuses_bad_mels(release):
    vocoder = ChatterboxVocoder(from_pretrained(release, runtime="torch"))
    mel = torch.randn(1, 80, 20) - 5
    wav, source = vocoder.inference(speech_feat=mel.half(), cache_source=torch.zeros(1, 1, 0))
    assert wav.dtype == torch.float32 and wav.shape == (1, 20 * 480) and source.shape == (1, 1, 0)
    with pytest.raises(ValueError, match="\\(B, 80, frames\\); got \\(1, 100, 20\\)"):
        vocoder.inference(speech_feat=torch.zeros(1, 100, 20))
    with pytest.raises(ValueError, match="1 frame\\(s\\): S3Gen fades the first 960 samples"):
        vocoder.inference(speech_feat=torch.zeros(1, 80, 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        vocoder.inference(speech_feat=torch.full((1, 80, 4), float("nan")))
    with pytest.raises(ValueError, match="runtime='tensorrt'"):
        from_pretrained(release, runtime="tensorrt")
    from train.student.quantized import int8_kernels  # torchao: the training install's int8 PyTorch form

    torchao = ChatterboxVocoder(int8_kernels(from_pretrained(release, runtime="torch")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised, _ = torchao.inference(speech_feat=mel)
    snr = 10 * torch.log10(wav.pow(2).sum() / (wav - quantised).pow(2).sum())
    assert torchao.runtime == "torch" and snr > 20


def test_an_onnx_runtime_streams_through_windows(s3gen, release):
    """The int8 graph in place streams too (WindowedStream): its activation scales follow each
    window, so it is held to an SNR against its own offline output."""
    previous = use_student(s3gen, release, runtime="int8")
    try:
        mel = torch.randn(1, 80, 90, generator=torch.Generator().manual_seed(4)) - 5
        wav = speak(s3gen, mel)
        stream = ChatterboxStream(s3gen)
        played = [stream.push(mel[..., i : i + 9]) for i in range(0, 90, 9)] + [stream.flush()]
        streamed = torch.cat(played, -1)
        assert streamed.shape == wav.shape and streamed[:, :480].abs().max() == 0  # S3Gen's fade, once
        assert 10 * torch.log10(wav.pow(2).sum() / (streamed - wav).pow(2).sum()) > 30
    finally:
        s3gen.mel2wav = previous


def readme_blocks(heading: str) -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_readme_use_in_chatterbox_runs_as_written(s3gen, release, student, monkeypatch):
    """README's code, unchanged but for three things this machine cannot have: Chatterbox's
    weights (from_pretrained gives a ChatterboxTTS around the random-weight S3Gen), its T3
    (generate() runs S3Gen's real inference on random speech tokens) and the trained release
    (the tiny one written here); ``flow_chunks`` are chunks of the mel S3Gen made."""
    blocks = readme_blocks("Use in Chatterbox")
    assert len(blocks) == 2
    released = "checkpoints/release/vocos-s3gen-long-256x768x6-qat-int8"
    assert all(released in block for block in blocks)
    # the line beside them says how to make that folder (.ci/chatterbox-pins runs it): export's default folder
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("\n## Use in Chatterbox\n")[1]
    (line,) = re.findall(r"`(python train/export\.py [^`]+)`", text.split("\n## ")[0])
    assert f"name={Path(released).name}" in line.split() and "checkpoint=" in line
    paths = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "paths" / "default.yaml").read_text())
    assert paths["release_dir"] == "${paths.log_dir}/release" and paths["log_dir"].endswith("/checkpoints")

    model = object.__new__(ChatterboxTTS)
    model.s3gen = s3gen
    monkeypatch.setattr(ChatterboxTTS, "from_pretrained", classmethod(lambda cls, device: model))
    made = {}

    def generate(self, text, **kwargs):
        made["wav"], made["mel"] = synthesise(self.s3gen, seed=3)
        return made["wav"]

    monkeypatch.setattr(ChatterboxTTS, "generate", generate)
    hift = s3gen.mel2wav
    namespace: dict = {}
    exec(blocks[0].replace(released, str(release)), namespace)
    assert namespace["hift"] is hift and s3gen.mel2wav is hift  # swapped, spoke, swapped back
    assert namespace["wav"].shape == (1, made["mel"].shape[-1] * 480)
    with torch.no_grad():
        expected = student(made["mel"].float())  # the int8 graph (runtime auto on CPU) against its QAT model
    expected[:, :960] *= s3gen.trim_fade
    assert 10 * torch.log10(expected.pow(2).sum() / (namespace["wav"] - expected).pow(2).sum()) > 20

    played = []
    mel = made["mel"]
    namespace.update(flow_chunks=[mel[..., i : i + 13] for i in range(0, mel.shape[-1], 13)], play=played.append)
    try:
        exec(blocks[1].replace(released, str(release)), namespace)
        wav = speak(s3gen, mel)  # the non-streamed speech of the same mel, through the student now in place
        assert (torch.cat(played, -1) - wav).abs().max() < 1e-5
    finally:
        s3gen.mel2wav = hift


def test_chatterboxs_watermark_survives_on_the_students_speech(s3gen, tmp_path):
    """As ChatterboxTTS.generate does: S3Gen speaks (through the drop-in), perth marks the
    waveform, and the mark reads back; the unmarked speech reads as unmarked."""
    import soundfile as sf
    from helpers import CORPUS_CLIP

    from train.evaluation.watermark import implicit_watermarker, watermark_survives
    from train.s3gen.mel import S3GenMel

    torch.manual_seed(2)  # a student with the amplitude prior: speech-shaped output before any training
    prior = build_student(dim=32, intermediate_dim=64, num_layers=2, amplitude_prior=True).eval()
    write_vocos_layout(prior, tmp_path)
    audio, rate = sf.read(str(CORPUS_CLIP), dtype="float32")
    mel = S3GenMel()(torch.from_numpy(audio[: 3 * rate]), rate)
    previous = use_student(s3gen, tmp_path, runtime="torch", fallback=False)
    try:
        wav = speak(s3gen, mel)
    finally:
        s3gen.mel2wav = previous
    from chatterbox.models.s3gen import S3GEN_SR  # ChatterboxTTS.sr

    marked, unmarked = watermark_survives(implicit_watermarker(), wav.squeeze(0).numpy(), S3GEN_SR)
    assert marked > 0.9 and unmarked < 0.5, (marked, unmarked)


def test_bench_chatterbox_prints_what_the_swap_buys_end_to_end(tmp_path, capsys, release):
    """``python train/bench.py --chatterbox`` on a tiny setting: Chatterbox's own S3Gen, both CFM
    step counts, HiFT and a student release side by side, T3 for one token."""
    import json

    from train import bench

    out_json = tmp_path / "chatterbox.json"
    bench.main(["--chatterbox", "--students", str(release), "--seconds", "0.4", "--cfm-steps", "2", "1",
                "--repeats", "1", "--t3-seconds", "0.04", "--json", str(out_json)])  # fmt: skip
    out = capsys.readouterr().out
    assert "| CFM steps | vocoder | flow s/s | vocoder s/s | S3Gen s/s | vs HiFT |" in out
    assert "| 2 | HiFT (Chatterbox's own) |" in out and f"| 1 | {release.name} |" in out
    assert "T3 (532 M parameters" in out and "tokens/s)" in out
    figures = json.loads(out_json.read_text())
    work = figures["preparation_work"]  # FLOPs and operators counted on the real call path, and the labelled estimate
    assert work["gflop_per_audio_s"] > 1 and work["operators_per_clip"] > 1000
    assert "a GPU, ESTIMATED at 20 TFLOP/s sustained" in out
    rows = figures["cpu, float32"]
    assert [(r["cfm_steps"], r["vocoder"]) for r in rows] == [
        (2, "HiFT (Chatterbox's own)"), (2, release.name), (1, "HiFT (Chatterbox's own)"), (1, release.name)
    ]  # fmt: skip
    for hift, student in (rows[:2], rows[2:]):
        assert hift["flow_s_per_s"] == student["flow_s_per_s"]  # one flow, both vocoders on its mel
        for row in (hift, student):
            assert row["s3gen_s_per_s"] == pytest.approx(row["flow_s_per_s"] + row["vocoder_s_per_s"])
        assert hift["s3gen_change"] == 0.0
        assert student["s3gen_change"] == pytest.approx(student["s3gen_s_per_s"] / hift["s3gen_s_per_s"] - 1)
        assert student["vocoder_mb"] < 1 < 79 < hift["vocoder_mb"]  # HiFT's 83 MB of fp32 weights
    # memory at the first step count only, each vocoder alone in a fresh process
    assert rows[0]["peak_mb"] > rows[1]["peak_mb"] > 0 and rows[2]["peak_mb"] is None
    assert figures["t3"]["tokens"] == 1 and figures["t3"]["t3_s_per_s"] > 0
