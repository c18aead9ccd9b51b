"""Streaming decode: equal to offline decoding for any chunking, bounded work, clear errors."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from train.benchmarks.stream_figures import snr_db
from train.compress.pruning import prune_widths
from train.student.model import build_student
from train.student.quantized import int8_kernels
from vocos_distill.streaming import StreamingVocoder
from vocos_distill.vocoder import StreamClosedError

HOP = 480


def _student(layers: int = 4, dim: int = 32, seed: int = 0, **kw):
    torch.manual_seed(seed)
    student = build_student(dim=dim, intermediate_dim=2 * dim, num_layers=layers, **kw).eval()
    for block in student.backbone.convnext:  # layer scale 1: every block changes the output (stock init: 1/L)
        block.gamma.data.fill_(1.0)
    return student


def _mel(batch: int, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 80, frames, generator=generator) - 4.0


def _offline(model, mel):
    with torch.no_grad():
        return model(mel)


def _random_chunks(rng: random.Random, total: int) -> list[int]:
    sizes = []
    while sum(sizes) < total:
        sizes.append(rng.choice([0, 1, 1, 2, 3, rng.randint(1, 40)]))
    return sizes


@pytest.mark.parametrize("layers", [1, 3, 8])
def test_receptive_field_is_what_a_perturbed_frame_reaches(layers):
    """The computed field equals the span of samples one changed mel frame alters."""
    student = _student(layers)
    for layer in student.backbone.modules():  # stock init (std 0.02) makes far taps vanish below rounding
        if isinstance(layer, (torch.nn.Conv1d, torch.nn.Linear)):
            layer.weight.data.normal_(0, layer.weight[0].numel() ** -0.5)
    field = student.receptive_field
    assert field.right == field.left == 3 + 3 * layers + 2
    mel, t = _mel(1, 4 * field.right + 10, 1), 2 * field.right + 5
    changed_mel = mel.clone()
    changed_mel[..., t] += 3.0
    changed = (_offline(student, changed_mel) - _offline(student, mel)).abs()[0] > 0
    samples = changed.nonzero()
    first, last = int(samples.min()) // HOP, int(samples.max()) // HOP
    assert (t - first, last - t) == (field.right, field.left)
    assert field.right_ms == 20.0 * field.right


def test_stock_student_needs_29_frames_of_look_ahead():
    field = build_student().receptive_field
    assert (field.right, field.right_ms) == (29, 580.0)


@pytest.mark.parametrize("kind", ["fp32", "pruned", "qat", "torchao-int8"])
def test_random_chunkings_equal_offline(kind):
    """Any chunking (1-frame chunks, empty chunks, one chunk, random sizes), batch 1 and 2: within
    1e-5 of offline decoding in fp32; for int8, within int8's own tolerance. A float rounding
    difference of 1e-7 (convolutions over other lengths) can move an activation across an int8
    rounding step, so the int8 forms are held to an SNR against their own offline output: 40 dB
    here, against the 30 dB the release demands of its int8 graph (on the trained 256/768 x 6
    QAT student: 47-51 dB, README "Use in Chatterbox")."""
    if kind == "fp32":
        model = _student(3)
    elif kind == "pruned":
        model = prune_widths(_student(3, dim=48), dim=24, intermediate_dim=40).eval()
        assert model.config.dim == 24
    elif kind == "qat":
        model = _student(3, fake_quant="int8")
    else:
        model = int8_kernels(copy.deepcopy(_student(3)))
    rng = random.Random(kind)
    stream = StreamingVocoder(model)
    for trial in range(6):
        batch, frames = 1 + trial % 2, rng.randint(1, 90)
        mel = _mel(batch, frames, trial)
        expected = _offline(model, mel)
        chunkings = [[1] * frames, [frames], _random_chunks(rng, frames)]
        for sizes in chunkings:
            out = stream.decode(mel, sizes)
            assert out.shape == expected.shape == (batch, frames * HOP)
            if kind in ("fp32", "pruned"):
                assert (out - expected).abs().max() < 1e-5, (kind, sizes)
            else:
                assert snr_db(expected, out) > 40, (kind, sizes)


def test_audio_comes_out_as_soon_as_it_is_final_and_work_per_chunk_is_bounded():
    student = _student(2)
    field = student.receptive_field
    stream = StreamingVocoder(student)
    frames_through_head = []
    student.head.out.register_forward_hook(lambda m, args, out: frames_through_head.append(args[0].shape[1]))
    mel = _mel(1, 400, 3)
    pushed = 0
    for start in range(0, 400, 5):
        frames_through_head.clear()
        audio = stream.push(mel[..., start : start + 5])
        pushed += 5
        assert stream.samples_emitted == max(0, pushed - field.right) * HOP
        if pushed - 5 >= field.right:
            # every frame of audio is computed once: 5 frames in, 5 frames out, however long the stream
            assert sum(frames_through_head) == 5 and audio.shape[-1] == 5 * HOP
    tail = stream.flush()
    assert tail.shape[-1] == field.right * HOP and stream.samples_emitted == 400 * HOP


@pytest.mark.parametrize("lookahead", [0, 2, 5])
def test_a_short_look_ahead_emits_sooner_and_converges_to_offline_at_the_full_field(lookahead):
    student = _student(2)
    field = student.receptive_field
    mel = _mel(1, 120, 4)
    expected = _offline(student, mel)
    stream = StreamingVocoder(student, lookahead)
    assert not stream.exact
    first = stream.push(mel[..., :20])
    assert first.shape[-1] == (20 - lookahead) * HOP
    assert (first[..., : (20 - field.right) * HOP] - expected[..., : (20 - field.right) * HOP]).abs().max() < 1e-5
    out = stream.decode(mel, 10)
    assert out.shape == expected.shape
    error = (out - expected).abs().max()
    assert error > 1e-4  # audio near each chunk's end was guessed without its right context
    exact = StreamingVocoder(student, field.right).decode(mel, 10)
    assert (exact - expected).abs().max() < 1e-5


def test_bad_chunks_are_refused_and_leave_the_stream_intact():
    student = _student(2)
    mel = _mel(1, 60, 5)
    expected = _offline(student, mel)
    stream = StreamingVocoder(student)
    pieces = [stream.push(mel[..., :20])]
    with pytest.raises(ValueError, match="80 mel bins; got shape \\(1, 100, 5\\)"):
        stream.push(torch.zeros(1, 100, 5))
    bad = mel[..., 20:30].clone()
    bad[0, 3, 2] = float("nan")
    bad[0, 4, 2] = float("inf")
    with pytest.raises(ValueError, match="2 non-finite values"):
        stream.push(bad)
    with pytest.raises(ValueError, match="batch size 1; got a chunk of 2"):
        stream.push(_mel(2, 5, 0))
    with pytest.raises(ValueError, match="\\(B, 80, frames\\)"):
        stream.push(mel[0, :, 20:30])
    pieces += [stream.push(mel[..., 20:]), stream.flush()]
    assert (torch.cat(pieces, -1) - expected).abs().max() < 1e-5  # the refused chunks changed nothing
    with pytest.raises(StreamClosedError, match="push\\(\\) after flush\\(\\)"):
        stream.push(mel[..., :5])
    with pytest.raises(StreamClosedError, match="call reset"):
        stream.flush()
    stream.reset()
    assert (stream.decode(mel, 7) - expected).abs().max() < 1e-5


def test_what_cannot_stream_says_so():
    with pytest.raises(ValueError, match="lookahead must be a whole number"):
        StreamingVocoder(_student(1), lookahead=-1)
    with pytest.raises(TypeError, match="ONNX graph has no per-layer state"):
        StreamingVocoder(torch.nn.Linear(2, 2))
    stream = StreamingVocoder(_student(1))
    assert stream.flush().numel() == 0  # nothing pushed, nothing out


@pytest.mark.parametrize(
    ("chunk", "said"),
    [
        (torch.zeros(1, 80, 5, dtype=torch.bool), "floating-point .* got torch.bool"),
        (torch.zeros(1, 80, 5, dtype=torch.int64), "floating-point .* got torch.int64"),
        (torch.zeros(1, 80, 5, dtype=torch.complex64), "floating-point .* got torch.complex64"),
        (torch.zeros(1, 80, 5, device="meta"), "on the meta device"),
    ],
)
def test_a_chunk_of_another_dtype_or_device_is_refused_by_name(chunk, said):
    """Issue 37, 8: a complex chunk used to lose its imaginary part silently, an integer or bool
    chunk was decoded as numbers, and a meta chunk failed inside Tensor.item()."""
    student = _student(1)
    mel = _mel(1, 30, 2)
    stream = StreamingVocoder(student)
    first = stream.push(mel[..., :10])
    with pytest.raises((TypeError, ValueError), match=said):
        stream.push(chunk)
    rest = [stream.push(mel[..., 10:]), stream.flush()]
    assert (torch.cat([first, *rest], -1) - _offline(student, mel)).abs().max() < 1e-5  # nothing changed


def test_every_call_returns_batch_by_samples():
    """Issue 37, 9: a flush with nothing pushed gave (0, 0)."""
    student = _student(1)
    stream = StreamingVocoder(student)
    assert stream.flush().shape == (1, 0)  # Chatterbox's batch of one: no frames, no samples
    stream.reset()
    assert stream.push(_mel(2, 0, 0)).shape == (2, 0)
    assert stream.flush().shape == (2, 0)
    stream.reset()
    assert stream.push(_mel(2, 3, 0)).shape[0] == 2 and stream.flush().shape[0] == 2


def test_a_lookahead_past_the_receptive_field_is_refused():
    """Issue 37, 10: lookahead=1000 held every sample back until flush(), silently."""
    student = _student(2)
    right = student.receptive_field.right
    assert StreamingVocoder(student, right).exact
    with pytest.raises(ValueError, match=rf"lookahead 1000 .* 0\.\.{right} frames"):
        StreamingVocoder(student, 1000)
    with pytest.raises(ValueError, match="lookahead must be a whole number"):
        StreamingVocoder(student, 2.5)


def test_a_second_thread_pushing_into_a_busy_stream_is_refused():
    """Issue 37, 11: two threads pushing into one stream got garbage (147,120 samples for 600
    frames). A stream is single-threaded: a push while another is under way raises, and the
    stream goes on as if it had not been offered."""
    import threading

    from vocos_distill.vocoder import StreamBusyError

    student = _student(1)
    mel = _mel(1, 40, 3)
    stream = StreamingVocoder(student)
    inside, release = threading.Event(), threading.Event()
    push = stream._push

    def slow_push(chunk):
        inside.set()
        release.wait(10)
        return push(chunk)

    stream._push = slow_push
    pieces = []
    worker = threading.Thread(target=lambda: pieces.append(stream.push(mel[..., :20])))
    worker.start()
    assert inside.wait(10)
    try:
        with pytest.raises(StreamBusyError, match="another thread"):
            stream.push(mel[..., 20:])
        with pytest.raises(StreamBusyError):
            stream.flush()
    finally:
        release.set()
        worker.join(10)
    stream._push = push
    pieces += [stream.push(mel[..., 20:]), stream.flush()]
    assert (torch.cat(pieces, -1) - _offline(student, mel)).abs().max() < 1e-5


# -- the streaming figures (train/benchmarks/stream_figures.py, python train/bench.py --streaming) ---------


def _per_frame_vocoder(mel):
    """A 'vocoder' whose audio for a frame depends on that frame alone: any chunking is exact."""
    return mel.mean(1).repeat_interleave(HOP, dim=-1)


def test_overlap_and_fade_is_exact_for_a_frame_local_model_and_concatenates_without_overlap():
    from train.benchmarks.stream_figures import overlap_fade

    mel = _mel(1, 53, 6)
    expected = _per_frame_vocoder(mel)
    for overlap in (0, 3, 8):
        out = overlap_fade(_per_frame_vocoder, mel, 10, overlap)
        assert out.shape == expected.shape and (out - expected).abs().max() < 1e-6
    student = _student(2)
    concatenated = torch.cat([_offline(student, mel[..., i : i + 10]) for i in range(0, 53, 10)], -1)
    assert (overlap_fade(student, mel, 10, 0) - concatenated).abs().max() == 0
    assert (overlap_fade(student, mel, 10, 4) - _offline(student, mel)).abs().max() > 1e-4


def test_seam_metric_sees_steps_at_joins_and_not_a_smooth_signal():
    from train.benchmarks.stream_figures import seam_db

    t = torch.arange(48_000) / 24_000
    smooth = torch.sin(2 * torch.pi * 220 * t)
    joins = list(range(6_000, 48_000, 6_000))
    assert abs(seam_db(smooth, joins, 24)) < 1.0
    stepped = smooth + torch.tensor([0.5 * (i // 6_000 % 2) for i in range(48_000)])
    assert seam_db(stepped, joins, 24) > 5
    with pytest.raises(ValueError, match="joins inside the signal"):
        seam_db(smooth, [], 24)


def test_probe_finds_the_computed_field_and_hifts_look_ahead():
    from helpers import tiny_config

    from train.benchmarks.stream_figures import probe_lookahead
    from train.s3gen.hift import HiFTGenerator

    student = _student(2)
    for layer in student.backbone.modules():
        if isinstance(layer, (torch.nn.Conv1d, torch.nn.Linear)):
            layer.weight.data.normal_(0, layer.weight[0].numel() ** -0.5)
    assert probe_lookahead(student) == student.receptive_field.right
    torch.manual_seed(0)
    hift = HiFTGenerator(**tiny_config()).eval()
    assert 5 <= probe_lookahead(hift, seeded_noise=True) <= 30


def test_lookahead_rows_exact_at_the_field_and_worse_below_it():
    from helpers import CORPUS_CLIP

    from train.benchmarks.stream_figures import first_audio_rows, lookahead_rows
    from train.data.audio import corpus_mels

    (mel,) = corpus_mels(CORPUS_CLIP.parent, 1, 2.0)
    student = _student(2)
    rows = lookahead_rows(student, [mel], lookaheads=(0, None, 30), chunk_frames=10, repeats=1)
    assert [r["lookahead_frames"] for r in rows] == [0, 11]  # 30 is past the field (11): the field's row, once
    short, full = rows
    assert full["exact"] and full["lookahead_frames"] == student.receptive_field.right
    assert full["max_abs_diff"] < 1e-5 and full["log_mel_db"] < 1e-3 and full["pesq_wb"] > 4.5
    assert not short["exact"] and short["log_mel_db"] > full["log_mel_db"] and short["max_abs_diff"] > 1e-3
    assert full["latency_ms"] == pytest.approx(full["lookahead_ms"] + full["push_ms"])
    (row,) = first_audio_rows([("s", student, "stream", 11)], chunk_frames=(5, 10), repeats=1)
    assert row["first_audio_ms_5"] == pytest.approx(220 + row["compute_ms_5"])


def test_bench_streaming_prints_the_three_tables(tmp_path, capsys, monkeypatch):
    from helpers import save_ckpt, tiny_config

    from train import bench
    from train.benchmarks import side_by_side as benchmark
    from train.s3gen.hift import HiFTGenerator

    monkeypatch.setattr(benchmark, "stand_in_teacher", lambda: HiFTGenerator(**tiny_config()).eval())
    fp32, qat = tmp_path / "fp32.ckpt", tmp_path / "qat.ckpt"
    save_ckpt(_student(2), fp32)
    save_ckpt(_student(1, fake_quant="int8"), qat)
    bench.main(
        ["--streaming", "--students", str(fp32), str(qat), "--corpus", "data/corpus", "--clips", "1",
         "--clip-seconds", "1", "--repeats", "1", "--chunk-frames", "5", "--json", str(tmp_path / "s.json")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "| teacher (HiFT) | window |" in out
    assert "| fp32.ckpt | stream | 11 (220 ms) |" in out and "| fp32.ckpt | stream | 8 (160 ms) |" in out
    assert "| qat.ckpt (torchao int8) | stream | 8 (160 ms) |" in out
    assert "| 0 (0 ms) | no |" in out and "| 11 (220 ms) | yes | 0.000 |" in out
    assert "| streaming at the full field (this project) | " in out and "| overlap-and-fade (8 frames) |" in out
    assert (tmp_path / "s.json").is_file()
    with pytest.raises(SystemExit, match="--streaming needs --students"):
        bench.main(["--streaming"])


def test_a_windowed_stream_equals_offline_for_any_vocoder_with_a_known_field():
    from vocos_distill.streaming import WindowedStream

    student = _student(3)
    field = student.receptive_field
    rng = random.Random(1)
    for lookahead in (None, 4):
        stream = WindowedStream(student, lookahead)
        for trial in range(4):
            mel = _mel(1 + trial % 2, rng.randint(1, 80), trial)
            expected = _offline(student, mel)
            for sizes in ([1] * mel.shape[-1], [mel.shape[-1]], _random_chunks(rng, mel.shape[-1])):
                out = stream.decode(mel, sizes)
                assert out.shape == expected.shape
                if lookahead is None:
                    assert (out - expected).abs().max() < 1e-5
    # bounded: after the first frames, each push decodes the chunk plus the left field plus the look-ahead
    seen = []
    student.backbone.embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-1]))
    stream = WindowedStream(student)
    for start in range(0, 300, 10):
        stream.push(_mel(1, 300, 2)[..., start : start + 10])
    assert max(seen) <= 10 + field.left + field.right


@pytest.mark.slow
def test_onnx_graphs_stream_through_windows(tmp_path):
    from train.student.graph import export_onnx
    from vocos_distill.onnx import OnnxVocoder
    from vocos_distill.streaming import WindowedStream

    student = _student(2, fake_quant="int8")
    fp32 = OnnxVocoder(export_onnx(student, tmp_path / "m.onnx"))
    int8 = OnnxVocoder(export_onnx(student, tmp_path / "m.int8.onnx", quantize=True))
    mel = _mel(1, 70, 7)
    for graph in (fp32, int8):
        stream = graph.stream()
        assert isinstance(stream, WindowedStream) and stream.field == student.receptive_field
        expected = _offline(graph, mel)
        out = stream.decode(mel, 6)
        if graph is fp32:
            assert (out - expected).abs().max() < 1e-5
        else:  # activation scales per call follow the window: within int8's own tolerance
            assert snr_db(expected, out) > 30
