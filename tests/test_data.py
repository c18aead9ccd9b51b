import logging

import numpy as np
import pytest
import torch
from helpers import small_config, write_clips

import train.data.fill as fill_module
import train.data.sources as sources_module
from train.data.cache import TensorCache
from train.data.datamodule import VocoderDataModule
from train.data.segments import SegmentSampler
from train.s3gen.hift import HiFTGenerator


@pytest.fixture
def teacher() -> HiFTGenerator:
    torch.manual_seed(0)
    model = HiFTGenerator(**small_config()).eval().requires_grad_(False)
    model.weights_id = "test-teacher"
    return model


def make(tmp_path, **kwargs) -> VocoderDataModule:
    defaults = {
        "audio_dirs": [str(tmp_path / "clips")],
        "cache_dir": str(tmp_path / "cache"),
        "segment_frames": 8,
        "batch_size": 2,
    }
    return VocoderDataModule(**{**defaults, **kwargs})


def test_prepare_caches_mel_audio_and_teacher_and_serves_segments(tmp_path, teacher):
    write_clips(tmp_path / "clips")
    dm = make(tmp_path, teacher=teacher)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.val_set) == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["mel"].shape == (2, 80, 8)
    assert batch["audio"].shape == batch["teacher"].shape == (2, 8 * 480)
    val = next(iter(dm.val_dataloader()))
    assert val["teacher"].shape[-1] == val["mel"].shape[-1] * 480


def test_second_prepare_reuses_the_cache_without_the_teacher(tmp_path, teacher, monkeypatch):
    write_clips(tmp_path / "clips")
    calls = []
    real = fill_module.synthesize
    monkeypatch.setattr(fill_module, "synthesize", lambda *a, **k: calls.append(1) or real(*a, **k))
    make(tmp_path, teacher=teacher).prepare_data()
    assert len(calls) == 5
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.pt")}
    make(tmp_path, teacher=teacher).prepare_data()
    assert len(calls) == 5  # nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.pt")} == files
    # another teacher (other weights) gets its own entries
    other = HiFTGenerator(**small_config()).eval().requires_grad_(False)
    other.weights_id = "other-teacher"
    make(tmp_path, teacher=other).prepare_data()
    assert len(calls) == 10


def test_teacher_targets_are_reproducible(tmp_path, teacher):
    write_clips(tmp_path / "clips", count=2)
    a, b = (
        make(tmp_path, teacher=teacher, cache_dir=str(tmp_path / "a")),
        make(tmp_path, teacher=teacher, cache_dir=str(tmp_path / "b")),
    )
    for dm in (a, b):
        dm.prepare_data()
        dm.setup()
    torch.testing.assert_close(a.val_set[0]["teacher"], b.val_set[0]["teacher"], rtol=0, atol=0)


def test_unusable_files_are_skipped_named_and_counted(tmp_path, caplog):
    clips = write_clips(tmp_path / "clips", count=3)
    (clips / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
    (clips / "empty.flac").write_bytes(b"")
    import soundfile as sf

    sf.write(str(clips / "short.wav"), np.zeros(2000, dtype="float32"), 16000)  # 3 frames < 8
    dm = make(tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    skipped = {name for name, _ in dm.skipped}
    assert skipped == {"corrupt.wav", "empty.flac"}
    assert "corrupt.wav" in caplog.text and "empty.flac" in caplog.text
    dm.setup()
    assert "short.wav" not in {u.name for u, _ in dm.train_set.entries}  # shorter than a segment
    assert len(dm.evaluation_set("all")) == 4


def test_nothing_usable_is_a_clear_error(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "bad.wav").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"no usable utterances.*1 skipped"):
        make(tmp_path).prepare_data()


def test_missing_folder_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.audio_dirs.*nowhere"):
        make(tmp_path, audio_dirs=[str(tmp_path / "nowhere")])


def test_precomputed_mels_with_and_without_paired_audio(tmp_path, teacher):
    mels, audio = tmp_path / "mels", tmp_path / "audio"
    mels.mkdir()
    np.save(mels / "a.npy", np.random.randn(80, 12).astype("float32") - 5)
    torch.save(torch.randn(80, 10) - 5, mels / "b.pt")
    np.save(mels / "bad.npy", np.zeros((100, 12), dtype="float32"))
    write_clips(audio, count=1)
    (audio / "clip0.wav").rename(audio / "a.wav")
    # without a teacher, only the mel with paired audio has a target
    dm = make(tmp_path, audio_dirs=[], mel_dir=str(mels), paired_audio_dir=str(audio))
    dm.prepare_data()
    assert {n for n, _ in dm.skipped} == {"b.pt", "bad.npy"}
    # with a teacher both mels are usable; the bad one is still skipped, named
    dm = make(tmp_path, audio_dirs=[], mel_dir=str(mels), paired_audio_dir=str(audio), teacher=teacher)
    dm.prepare_data()
    assert [n for n, _ in dm.skipped] == ["bad.npy"]
    dm.setup()
    items = [dm.train_set.entries[0], *dm.val_set.entries]
    assert {u.name for u, _ in items} == {"a.npy", "b.pt"}


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    cache = TensorCache(tmp_path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        cache.save("mel", "abcd", {"mel": torch.zeros(1)})
    assert ("mel", "abcd") not in cache
    assert list(tmp_path.rglob("*")) == [tmp_path / "mel", tmp_path / "mel" / "ab"]


def test_sampler_is_a_function_of_seed_and_epoch():
    a, b = SegmentSampler(6, seed=3), SegmentSampler(6, seed=3)
    b.set_epoch(1)
    first, second = list(a), list(a)  # a advances by itself
    assert sorted(first) == list(range(6)) and sorted(second) == list(range(6, 12))
    assert list(b) == second


def test_evaluation_set_serves_whole_utterances_of_a_split_by_name(tmp_path, teacher):
    write_clips(tmp_path / "clips", seconds=1.0)
    dm = make(tmp_path, teacher=teacher)
    dm.prepare_data()
    train, val = dm.split()
    every = dm.evaluation_set("all")
    assert [u.name for u, _ in every.entries] == [f"clip{i}.wav" for i in range(5)]
    assert {u.name for u, _ in dm.evaluation_set("val").entries} == {u.name for u, _ in val}
    item = every[0]
    assert item["mel"].shape == (80, 50) and item["audio"].shape == item["teacher"].shape == (50 * 480,)
    assert dm.evaluation_set("all", max_frames=20)[0]["mel"].shape == (80, 20)
    with pytest.raises(ValueError, match="split='test'"):
        dm.evaluation_set("test")


# -- defect: a cache made with one segment length crashed training with a longer one --------
def test_a_longer_segment_over_a_shared_cache_trains_on_the_clips_long_enough(tmp_path):
    write_clips(tmp_path / "clips" / "short", count=5, seconds=0.6)  # 30 frames each
    write_clips(tmp_path / "clips" / "long", count=3, seconds=1.2)  # 60 frames each
    make(tmp_path, segment_frames=8).prepare_data()
    dm = make(tmp_path, segment_frames=40)
    dm.prepare_data()
    dm.setup("fit")
    assert {u.name.split("/")[0] for u, _ in dm.train_set.entries} == {"long"}
    for batch in dm.train_dataloader():
        assert batch["mel"].shape[1:] == (80, 40)
    # short clips still serve validation and evaluation, which cut nothing to the segment
    assert len(dm.evaluation_set("all")) == 8


def test_clips_shorter_than_the_training_segment_are_still_evaluated(tmp_path):
    write_clips(tmp_path / "clips", count=5, seconds=0.6)  # 30 frames each
    dm = make(tmp_path, segment_frames=40)
    dm.prepare_data()
    assert dm.skipped == []
    assert len(dm.evaluation_set("all")) == 5


# -- defect: validation cost grew with the corpus --------------------------------------------
def test_the_held_out_set_is_bounded_and_the_same_in_every_run(tmp_path):
    write_clips(tmp_path / "clips", count=24, seconds=0.3)
    first = make(tmp_path, val_fraction=0.5, val_max_utterances=3)
    first.prepare_data()
    train, val = first.split()
    assert len(val) == 3 and len(train) == 21  # only the held-out three leave training
    again = make(tmp_path, val_fraction=0.5, val_max_utterances=3)
    again.prepare_data()
    assert [u.name for u, _ in again.split()[1]] == [u.name for u, _ in val]


# -- defect: cache identity ---------------------------------------------------------------------
def test_teacher_targets_of_another_dtype_get_their_own_entries(tmp_path, teacher):
    write_clips(tmp_path / "clips", count=2)
    fp32 = make(tmp_path, teacher=teacher)
    bf16_teacher = HiFTGenerator(**small_config()).eval().requires_grad_(False).to(torch.bfloat16)
    bf16_teacher.load_state_dict(teacher.state_dict())
    bf16_teacher.weights_id = teacher.weights_id
    bf16 = make(tmp_path, teacher=bf16_teacher)
    utterance = fp32.utterances()[0]
    assert fp32.teacher_key(utterance) != bf16.teacher_key(utterance)


def test_unchanged_source_files_are_not_read_again(tmp_path, monkeypatch):
    clips = write_clips(tmp_path / "clips", count=3)
    make(tmp_path).prepare_data()
    hashed = []
    real = sources_module.file_digest
    monkeypatch.setattr(sources_module, "file_digest", lambda *p: hashed.append(p) or real(*p))
    make(tmp_path).prepare_data()
    assert hashed == []
    (clips / "clip1.wav").write_bytes((clips / "clip0.wav").read_bytes())  # changed content and mtime
    dm = make(tmp_path)
    dm.prepare_data()
    assert [p[0].name for p in hashed] == ["clip1.wav"]
    assert dm.utterances()[0].key == dm.utterances()[1].key  # same bytes, same entry


# -- defect: kills left orphaned temporary files -----------------------------------------------
def test_stale_temporaries_are_removed_at_start_live_ones_kept(tmp_path):
    import os
    import socket

    write_clips(tmp_path / "clips", count=2)
    folder = tmp_path / "cache" / "mel" / "ab"
    folder.mkdir(parents=True)
    host = socket.gethostname().split(".")[0]
    dead = folder / f".abcd.pt.{host}.999999999.a1.tmp"  # a pid that cannot be running
    live = folder / f".abce.pt.{host}.{os.getpid()}.b2.tmp"
    for path in (dead, live):
        path.write_bytes(b"partial")
    make(tmp_path).prepare_data()
    assert not dead.exists() and live.exists()


# -- defect: two runs preparing the same entries at once both did the work -----------------------
def test_concurrent_preparation_does_each_entry_once(tmp_path, teacher, monkeypatch):
    import threading
    import time

    write_clips(tmp_path / "clips", count=4)
    calls = []
    real = fill_module.synthesize

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(fill_module, "synthesize", slow)
    modules = [make(tmp_path, teacher=teacher) for _ in range(2)]
    threads = [threading.Thread(target=m.prepare_data) for m in modules]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 4
    for m in modules:
        m.setup()
        assert len(m.train_set) + len(m.val_set) == 4


# -- defect: every rank's teacher landed on GPU 0 --------------------------------------------------
def test_auto_device_is_this_processs_own_gpu(monkeypatch):
    from train.utils.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda", 2)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert resolve_device("auto") == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_preparing_into_a_log_writes_a_few_progress_lines_not_a_redraw_per_clip(tmp_path, capsys):
    """A prepare stage of 4,956 clips wrote 500 KB of progress into its log: one redraw per clip."""
    dm = make(tmp_path, audio_dirs=[str(write_clips(tmp_path / "clips", count=40, seconds=0.3))], progress=True)
    dm.prepare()
    err = capsys.readouterr().err  # captured: not a terminal, as a log file or a SLURM log
    lines = [line for line in err.splitlines() if line.startswith("prepare")]
    assert "\r" not in err and 1 <= len(lines) <= 3 and "40/40" in lines[-1]


def tone(hz: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * 24_000)) / 24_000
    return 0.3 * torch.sin(2 * np.pi * hz * t)


def test_speed_perturbation_scales_pitch_and_pairs_the_audio_with_its_own_mel():
    from train.data.augment import speed_perturbed
    from train.s3gen.mel import S3GenMel

    mel, audio = S3GenMel(), tone(200.0)
    unchanged = speed_perturbed(audio, 10 * 480, 24, 1.0, mel)  # the cached segment, frame for frame
    torch.testing.assert_close(unchanged["audio"], audio[10 * 480 : 34 * 480], rtol=0, atol=0)
    torch.testing.assert_close(unchanged["mel"], mel(audio[None])[0, :, 10:34], rtol=0, atol=1e-5)
    for factor in (0.9, 1.1):
        played = speed_perturbed(audio, 10 * 480, 24, factor, mel)
        assert played["audio"].shape == (24 * 480,) and played["mel"].shape == (80, 24)
        spectrum = torch.fft.rfft(played["audio"] * torch.hann_window(24 * 480)).abs()
        peak_hz = spectrum.argmax().item() * 24_000 / (24 * 480)
        assert peak_hz == pytest.approx(200 * factor, abs=2.5)  # one FFT bin
        # the mel is the perturbed audio's own (inner frames: a segment's own edges are reflected)
        torch.testing.assert_close(played["mel"][:, 2:-2], mel(played["audio"][None])[0, :, 2:-2], rtol=0, atol=1e-4)


def test_a_tilted_segment_keeps_its_level_and_pitch_and_moves_energy_across_1_khz():
    from train.data.augment import speed_perturbed, tilted
    from train.s3gen.mel import S3GenMel

    mel, audio = S3GenMel(), tone(200.0) + tone(4000.0)

    def band_ratio_db(x: torch.Tensor) -> float:  # energy at 4 kHz over energy at 200 Hz
        spectrum = torch.fft.rfft(x * torch.hann_window(x.shape[-1])).abs().pow(2)
        hz = torch.fft.rfftfreq(x.shape[-1], 1 / 24_000)
        return 10 * torch.log10(spectrum[(hz - 4000).abs() < 20].sum() / spectrum[(hz - 200).abs() < 20].sum()).item()

    for gain in (-6.0, 12.0):
        shelved = tilted(audio, gain)
        torch.testing.assert_close(shelved.pow(2).mean(), audio.pow(2).mean(), rtol=1e-4, atol=0)
        # a shelf of `gain` dB: 4 kHz is well above its corner, 200 Hz well below
        assert band_ratio_db(shelved) - band_ratio_db(audio) == pytest.approx(gain, abs=1.0)
    played = speed_perturbed(audio, 10 * 480, 24, 1.0, mel, tilt_db=12.0)
    assert band_ratio_db(played["audio"]) - band_ratio_db(audio[10 * 480 : 34 * 480]) == pytest.approx(12.0, abs=1.0)
    torch.testing.assert_close(played["mel"][:, 2:-2], mel(played["audio"][None])[0, :, 2:-2], rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "value", "wrong", "refusal"),
    [
        ("speed_perturb", [0.9, 1.1], [[0.93, 1.0]], r"data.speed_perturb: \[0.93\] are not multiples of 0.05"),
        ("tilt_db", [6.0, 12.0], [[12.0, 6.0], [0.0, 30.0], [3.0]], r"data.tilt_db: .* is not \[low, high\] in dB"),
    ],
)
def test_perturbed_training_segments_are_seeded_and_checked(tmp_path, teacher, option, value, wrong, refusal):
    write_clips(tmp_path / "clips", seconds=1.0)
    plain = make(tmp_path, segment_frames=24)
    plain.prepare_data()
    plain.setup("fit")
    dm = make(tmp_path, segment_frames=24, **{option: value})
    dm.setup("fit")
    items = [dm.train_set[i] for i in range(8)]
    assert all(item["mel"].shape == (80, 24) and item["audio"].shape == (24 * 480,) for item in items)
    assert all(not torch.equal(item["audio"], plain.train_set[i]["audio"]) for i, item in enumerate(items))
    torch.testing.assert_close(dm.train_set[3], items[3])  # the same draw for the same index (resume)
    assert torch.equal(dm.val_set[0]["audio"], plain.val_set[0]["audio"])  # validation is never perturbed

    for bad in wrong:
        with pytest.raises(ValueError, match=refusal):
            make(tmp_path, **{option: bad})
    with pytest.raises(ValueError, match=f"data.{option} needs audio targets alone"):
        make(tmp_path, **{option: value}, teacher=teacher)
