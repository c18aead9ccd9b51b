"""Flow mels: made by Chatterbox's own S3Gen (random weights, full size) from a corpus or from
text, aligned, keyed by what they are made from, and refused or skipped with a reason."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf
import torch
from flow_helpers import chatterbox_folder, keys_only_file, shrink_t3
from helpers import CORPUS_CLIP, REPO, compose, write_clips

from train.data.datamodule import VocoderDataModule
from train.data.flow_mels import FlowMels
from train.data.sources import DataError
from train.s3gen.flow import PARTS, FlowError, save_stand_in
from train.s3gen.teacher import load_teacher

RATE = 24000


@pytest.fixture(scope="module")
def s3gen(tmp_path_factory):
    """Chatterbox's S3Gen with random weights, as ``s3gen.safetensors``."""
    return save_stand_in(tmp_path_factory.mktemp("chatterbox") / "s3gen.safetensors")


def speech(seconds: float, offset: float = 0.0):
    audio, rate = sf.read(str(CORPUS_CLIP), dtype="float32")
    start = int(offset * rate)
    return audio[start : start + int(seconds * rate)], rate


def write(path, audio, rate):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate)
    return path


def data(tmp_path, folders, checkpoint, mel_source="flow", teacher=None, **flow):
    return VocoderDataModule(
        cache_dir=str(tmp_path / "cache"),
        audio_dirs=[str(f) for f in folders],
        mel_source=mel_source,
        flow=FlowMels(checkpoint=str(checkpoint), device="cpu", **flow),
        teacher=teacher,
        segment_frames=8,
    )


def test_a_flow_mel_is_two_frames_per_token_and_aligned_with_its_clip(tmp_path, s3gen):
    """0.7 s at 24 kHz: 17 whole tokens (0.68 s), 34 frames, the clip cut to 34 * 480 samples;
    the same clip gives the same bits in a second data module (a second run)."""
    clips = write_clips(tmp_path / "clips" / "speaker", count=2, seconds=0.7).parent
    dm = data(tmp_path, [clips], s3gen)
    report = dm.prepare()
    assert report.computed_mels == 2 and not report.skipped
    flows = [u for u in dm.utterances() if u.kind == "flow"]
    assert {u.reference.name for u in flows} == {"clip0.wav", "clip1.wav"}  # each the other's reference
    assert all(u.reference != u.path for u in flows)
    entry = dm.cache.load("mel", flows[0].key)
    tokens, frames = entry["tokens"].numel(), entry["mel"].shape[-1]
    assert (tokens, frames, entry["audio"].numel()) == (17, 34, 34 * 480)
    assert abs(frames - 0.7 * RATE / 480) <= 1  # within one frame of the clip's own length
    clip = dm.filler.read_24k(flows[0].path)  # the clip at 24 kHz, as S3Gen's mel takes it
    assert clip.numel() == int(0.7 * RATE) and torch.equal(entry["audio"], clip[: 34 * 480])  # cut to whole tokens
    again = data(tmp_path / "second", [clips], s3gen)
    again.prepare()
    assert torch.equal(again.cache.load("mel", flows[0].key)["mel"], entry["mel"])


def test_the_cache_key_follows_the_weights_family_and_seed_and_nothing_else(tmp_path):
    parts = tuple(PARTS) + ("mel2wav.",)
    clips = write_clips(tmp_path / "clips" / "a", count=2, seconds=0.3).parent

    def keys(checkpoint, **settings):
        dm = VocoderDataModule(
            cache_dir=str(tmp_path / "cache"),
            audio_dirs=[str(clips)],
            mel_source="flow",
            flow=FlowMels(checkpoint=str(checkpoint), device="cpu", **settings.pop("flow", {})),
            **settings,
        )
        return sorted(u.key for u in dm.utterances())

    one = keys_only_file(tmp_path / "one" / "s3gen.safetensors", parts)
    base = keys(one)
    assert keys(one, segment_frames=4, batch_size=9, flow={"min_seconds": 0.1, "max_tokens": 5}) == base
    assert keys(keys_only_file(tmp_path / "two" / "s3gen.safetensors", parts, extra=("x",))) != base  # weights
    assert keys(one, flow={"seed": 1}) != base
    mixer = "flow.decoder.estimator.time_embed_mixer.w"  # only a meanflow flow has it
    meanflow = keys_only_file(tmp_path / "turbo" / "s3gen.safetensors", parts, extra=(mixer,))
    assert keys(meanflow) != base  # another family: its own flow and step count (2)
    with pytest.raises(FlowError, match="runs the chatterbox flow at 10 steps"):
        keys(one, flow={"steps": 2})
    with pytest.raises(FlowError, match="holds a meanflow flow, but data.flow.family=chatterbox"):
        keys(meanflow, flow={"family": "chatterbox"})
    with pytest.raises(FlowError, match="holds a CFM .* data.flow.family=turbo"):
        keys(one, flow={"family": "turbo"})


def test_a_hift_only_checkpoint_names_what_the_flow_needs(tmp_path):
    hift_only = keys_only_file(tmp_path / "hift.safetensors", ("mel2wav.conv_pre.",))
    clips = write_clips(tmp_path / "clips", count=1)
    with pytest.raises(FlowError) as err:
        data(tmp_path, [clips], hift_only)
    message = str(err.value)
    for what in PARTS.values():
        assert what in message
    assert "holds HiFT alone" in message and str(hift_only) in message


def test_bad_clips_are_skipped_and_named_and_references_follow_the_stated_rules(tmp_path, s3gen, caplog):
    """A 0.2 s clip and a silent one are skipped with their reason; a speaker with one clip is
    its own reference (said in the log); a 30 s reference is cut to its first 10 s (said)."""
    root = tmp_path / "corpus"
    write(root / "alice" / "short.wav", *speech(0.2))
    write(root / "alice" / "silent.wav", torch.zeros(RATE).numpy(), RATE)
    write(root / "alice" / "fine.wav", *speech(0.6))
    long, rate = speech(3.0)
    write(root / "alice" / "long.wav", torch.from_numpy(long).repeat(10).numpy(), rate)  # 30 s
    write(root / "bob" / "only.wav", *speech(0.6, offset=1.0))
    dm = data(tmp_path, [root], s3gen)
    with caplog.at_level(logging.INFO):
        flows = {u.name: u for u in dm.utterances()}
        assert flows["flow:bob/only.wav"].reference.name == "only.wav"
        assert "have no other clip of their speaker" in caplog.text and "bob/only.wav" in caplog.text
        assert flows["flow:alice/fine.wav"].reference.name == "long.wav"  # the only other usable one
        report = dm.prepare()
    skipped = dict(report.skipped)
    assert "shorter than data.flow.min_seconds=0.5" in skipped["flow:alice/short.wav"]
    assert "silent" in skipped["flow:alice/silent.wav"]
    assert len(skipped) == 2 and report.computed_mels == 3
    assert "reference" in caplog.text and "30.0 s: its first 10 s are used" in caplog.text


@pytest.mark.slow
def test_a_killed_prepare_loses_nothing_and_two_processes_make_the_same_bits(tmp_path, s3gen):
    """kill -9 while ``train/prepare.py`` makes flow mels; what it wrote stays, and the resumed
    run, in two processes, completes it with mels bit-identical to one process's."""
    clips = write_clips(tmp_path / "clips" / "speaker", count=4, seconds=0.6).parent
    cache = tmp_path / "ck" / "cache"
    command = [sys.executable, str(REPO / "train" / "prepare.py"), "experiment=tiny", f"data.audio_dirs=[{clips}]",
               f"teacher.checkpoint={s3gen}", "data.mel_source=flow", "teacher.device=cpu",
               f"paths.log_dir={tmp_path / 'ck'}"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list((cache / "mel").rglob("*.pt")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = {p: p.read_bytes() for p in (cache / "mel").rglob("*.pt")}
    assert 1 <= len(written) < 4, "the kill came before the first entry or after the last"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *command[1:]]
    result = subprocess.run(torchrun, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert all(p.read_bytes() == b for p, b in written.items())  # untouched
    assert len(list((cache / "mel").rglob("*.pt"))) == 4 and not list(cache.rglob("*.tmp*"))
    one = data(tmp_path / "one", [clips], s3gen)
    torch.set_num_threads(1)
    one.prepare()
    for utterance in one.utterances():
        two = torch.load(cache / "mel" / utterance.key[:2] / f"{utterance.key}.pt", weights_only=True)
        assert torch.equal(two["mel"], one.cache.load("mel", utterance.key)["mel"])


def test_text_source_caches_t3s_tokens_and_refuses_audio_targets(tmp_path, s3gen, monkeypatch):
    shrink_t3(monkeypatch)
    folder = chatterbox_folder(tmp_path / "chatterbox", s3gen)
    text = tmp_path / "lines.txt"
    text.write_text("# a comment\nHello there.\n\nA second line!\n")
    voices = write_clips(tmp_path / "voices", count=2, seconds=0.8)
    checkpoint = folder / "s3gen.safetensors"
    with pytest.raises(DataError, match="a mel made from text has no recording"):
        data(tmp_path, [], checkpoint, mel_source="text", text_file=str(text), voices_dir=str(voices))
    teacher = load_teacher(checkpoint, device="cpu")  # HiFT from the same real-layout S3Gen file
    settings = {"text_file": str(text), "voices_dir": str(voices), "max_tokens": 12}
    dm = data(tmp_path, [], checkpoint, mel_source="text", teacher=teacher, **settings)
    report = dm.prepare()
    assert report.computed_mels == 2 and report.computed_teacher == 2 and not report.skipped
    lines = sorted(dm.utterances(), key=lambda u: u.name)
    assert [u.name for u in lines] == ["text:lines.txt:2", "text:lines.txt:4"]
    tokens = dm.cache.load("tokens", lines[0].tokens_key)["tokens"]
    assert 1 <= tokens.numel() <= 12
    mel = dm.cache.load("mel", lines[0].key)
    assert mel["audio"] is None and torch.equal(mel["tokens"], tokens)
    # the tokens are cached: a lost mel is remade from them, without T3
    dm.cache.path("mel", lines[0].key).unlink()
    again = data(tmp_path, [], checkpoint, mel_source="text", teacher=teacher, **settings)
    monkeypatch.setattr(FlowMels, "text_tokens", lambda *a: pytest.fail("T3 ran again"))
    again.prepare()
    assert torch.equal(again.cache.load("mel", lines[0].key)["mel"], mel["mel"])


def test_fit_refuses_audio_targets_for_text_and_the_phase_loss_on_flow_audio(tmp_path, s3gen):
    from train.training.fit import check_targets

    class Data:
        mel_sources = {"text": 1.0}

    cfg = compose(["experiment=tiny", "module.target_weights.audio=1"], tmp_path)
    with pytest.raises(Exception, match="module.target_weights.audio=1 with data.mel_source=text"):
        check_targets(cfg, Data())
    Data.mel_sources = {"audio": 0.5, "flow": 0.5}
    check_targets(cfg, Data())
    cfg = compose(["experiment=tiny", "module.target_weights.audio=1", "module.phase_loss_weight=1"], tmp_path)
    with pytest.raises(Exception, match="aligned frame by frame but not sample by sample"):
        check_targets(cfg, Data())


def test_a_multilingual_pt_file_is_its_family(tmp_path):
    from train.data.flow_mels import checkpoint_keys
    from train.s3gen.flow import check_family

    path = tmp_path / "s3gen.pt"
    torch.save({f"{p}x": torch.zeros(1) for p in PARTS}, path)
    assert check_family(checkpoint_keys(path), path, "auto", None).name == "multilingual"
