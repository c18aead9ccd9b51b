"""``train/corpus.py``: the speech corpus assembled from registry packages, its licence
manifest and its held-out speakers; and the data module's held-out folders."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO, write_clips

from train.data.datamodule import VocoderDataModule
from train.data.sources import DataError
from train.data.speech import (
    HELDOUT_SPEAKERS,
    LICENCES,
    MANIFEST,
    SOURCES,
    CorpusError,
    Source,
    build,
    read_manifest,
)

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")


def tone(seconds: float, rate: int, freq: float = 180.0, silence: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    voiced = 0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(t.size)
    pad = np.zeros(int(silence * rate))
    return np.concatenate([pad, voiced, pad]).astype(np.float32)


def make_deb(folder: Path, package: str, files: dict[str, tuple[np.ndarray, int, str]]) -> Path:
    """A real Debian package ``<package>_1.0-1_all.deb`` holding ``files`` (path -> audio, rate, format)."""
    root = folder / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: test <t@example.org>\nDescription: test\n"
    )
    for rel, (audio, rate, fmt) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), audio, rate, format=fmt)
    deb = folder / f"{package}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    shutil.rmtree(root)
    return deb


@pytest.fixture
def debs(tmp_path):
    """Two packages in the KDE layouts: five languages (one speaker each), one duplicate
    recording, one clip at 8 kHz and one too short to keep."""
    folder = tmp_path / "debs"
    folder.mkdir()
    letters = {}
    for i, lang in enumerate(["en", "de", "it", "el"]):
        for j, letter in enumerate("abc"):
            audio = tone(0.5 + 0.1 * j, 44_100, 150 + 20 * i + 5 * j)
            letters[f"usr/share/klettres/{lang}/alpha/{letter}.ogg"] = (audio, 44_100, "OGG")
    letters["usr/share/klettres/en/alpha/blip.ogg"] = (tone(0.05, 44_100), 44_100, "OGG")  # too short
    words = {
        "usr/share/ktuberling/sounds/fr/hat.wav": (tone(0.6, 22_050, 200), 22_050, "WAV"),
        "usr/share/ktuberling/sounds/fr/nose.wav": (tone(0.6, 8_000, 210), 8_000, "WAV"),  # too narrow
        "usr/share/ktuberling/sounds/it/hat.wav": (tone(0.7, 48_000, 220), 48_000, "WAV"),
        "usr/share/ktuberling/sounds/sr@latin/hat.wav": (tone(0.7, 48_000, 230), 48_000, "WAV"),
    }
    words["usr/share/ktuberling/sounds/fr/hat-copy.wav"] = words["usr/share/ktuberling/sounds/fr/hat.wav"]
    make_deb(folder, "klettres-data", letters)
    make_deb(folder, "ktuberling-data", words)
    return folder


def catalogue() -> dict[str, Source]:
    return {name: SOURCES[name] for name in ("klettres", "ktuberling")}


def build_test_corpus(tmp_path, debs, out=None):
    return build(out or tmp_path / "speech", ["klettres", "ktuberling"], ["it", "el"], debs=debs, catalogue=catalogue())


def test_the_licence_manifest_lists_every_file_written(tmp_path, debs):
    report = build_test_corpus(tmp_path, debs)
    out = tmp_path / "speech"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    rows = read_manifest(out)
    assert sorted([r["path"] for r in rows] + [LICENCES, MANIFEST]) == written
    assert len(rows) == len(report.clips) == 14  # 12 letters + fr/hat + it/hat
    for row in rows:
        data = (out / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert row["licence"] == "GPL-2.0-or-later" and row["copyright"] and row["version"] == "1.0-1"
        assert row["package"] in ("klettres-data", "ktuberling-data")
        info = sf.info(str(out / row["path"]))
        assert (info.samplerate, info.channels, info.format) == (24_000, 1, "FLAC")
        assert float(row["seconds"]) == pytest.approx(info.duration, abs=1e-3)
        assert PurePosixPath(row["member"]).parts[:3] == ("usr", "share", row["source"])
    # what was left out is counted, with the reason
    assert report.skipped == {
        "klettres: shorter than 0.3 s of sound": 1,
        "ktuberling: duplicate recording": 1,
        "ktuberling: sample rate below 16000 Hz": 1,
        "ktuberling: excluded speaker group": 1,
    }
    licences = (out / LICENCES).read_text()
    assert "| klettres | klettres-data | 1.0-1 | GPL-2.0-or-later |" in licences
    assert "Held out by speaker group: el, it." in licences


def test_the_held_out_split_shares_no_speaker_with_training(tmp_path, debs):
    build_test_corpus(tmp_path, debs)
    rows = read_manifest(tmp_path / "speech")
    train = {(r["speaker"]) for r in rows if r["split"] == "train"}
    held = {(r["speaker"]) for r in rows if r["split"] == "heldout"}
    assert held == {"it", "el"} and train == {"en", "de", "fr"}
    # across sources too: klettres' and ktuberling's Italian are both held out
    assert {r["source"] for r in rows if r["speaker"] == "it"} == {"klettres", "ktuberling"}
    assert all(r["path"].startswith(f"{r['split']}/{r['source']}/{r['speaker']}/") for r in rows)


def test_a_source_held_out_whole_is_never_trained_on(tmp_path, debs):
    voices = "usr/share/games/hedgewars/Data/Sounds/voices"
    make_deb(
        debs,
        "hedgewars-data",
        {
            f"{voices}/Pirate/Hello.ogg": (tone(0.6, 44_100, 170), 44_100, "OGG"),
            f"{voices}/Singer/Hello.ogg": (tone(0.7, 44_100, 260), 44_100, "OGG"),
            f"{voices}/Robot/Hello.ogg": (tone(0.6, 44_100, 300), 44_100, "OGG"),  # processed, left out
        },
    )
    report = build(
        tmp_path / "speech",
        ["klettres", "hedgewars"],
        ["it"],
        debs=debs,
        catalogue={name: SOURCES[name] for name in ("klettres", "hedgewars")},
    )
    rows = read_manifest(tmp_path / "speech")
    whole = [r for r in rows if r["source"] == "hedgewars"]
    assert {(r["split"], r["speaker"]) for r in whole} == {("heldout_source", "Pirate"), ("heldout_source", "Singer")}
    assert all(r["path"].startswith("heldout_source/hedgewars/") and r["licence"] == "GFDL-1.3" for r in whole)
    assert {r["split"] for r in rows if r["source"] == "klettres"} == {"train", "heldout"}
    assert report.skipped["hedgewars: excluded speaker group"] == 1
    assert "Held out whole: hedgewars." in (tmp_path / "speech" / LICENCES).read_text()


def test_edge_silence_is_trimmed(tmp_path, debs):
    build_test_corpus(tmp_path, debs)
    row = next(r for r in read_manifest(tmp_path / "speech") if r["path"].endswith("en/alpha_a.flac"))
    assert float(row["seconds"]) == pytest.approx(0.5 + 0.2, abs=0.05)  # 0.2 s of each 0.2 s pad trimmed to 0.1


def test_a_rebuild_replaces_the_corpus_and_a_failed_one_leaves_it_intact(tmp_path, debs):
    out = tmp_path / "speech"
    build_test_corpus(tmp_path, debs)
    before = (out / MANIFEST).read_bytes()
    (debs / "ktuberling-data_1.0-1_all.deb").write_bytes(b"not a package")
    with pytest.raises(CorpusError, match="ktuberling-data_1.0-1_all.deb: not a readable Debian package"):
        build_test_corpus(tmp_path, debs)
    assert (out / MANIFEST).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    build(out, ["klettres"], ["it"], debs=debs, catalogue=catalogue())
    assert {r["source"] for r in read_manifest(out)} == {"klettres"}


def test_a_folder_it_did_not_write_is_refused(tmp_path, debs):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(CorpusError, match="holds files this script did not write"):
        build_test_corpus(tmp_path, debs, out=other)
    assert (other / "keep.txt").read_text() == "user data"


@pytest.mark.slow
def test_the_script_names_a_bad_option(tmp_path):
    done = subprocess.run(
        [sys.executable, "train/corpus.py", "--out", str(tmp_path / "x"), "--sources", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--sources: unknown source(s) ['nope']" in done.stderr


def test_the_shipped_sources_hold_out_whole_speakers():
    # every held-out speaker group exists in a source, and no source keys speakers by clip
    assert set(HELDOUT_SPEAKERS) <= {"el", "he", "it", "sl"}
    member = PurePosixPath("usr/share/klettres/it/alpha/a.ogg")
    assert SOURCES["klettres"].speaker(member) == "it"
    assert SOURCES["ktuberling"].speaker(PurePosixPath("usr/share/ktuberling/sounds/it/hat.wav")) == "it"
    assert SOURCES["gcin-liu"].speaker(PurePosixPath("usr/share/gcin-voice/ogg/x/3.ogg")) != SOURCES[
        "gcin-chulo"
    ].speaker(PurePosixPath("usr/share/gcin-voice/ogg/x/5.ogg"))


# -- the data module's held-out folders -------------------------------------------------------
def test_held_out_folders_are_the_validation_set_and_never_trained_on(tmp_path):
    write_clips(tmp_path / "train", count=6, seconds=0.4)
    write_clips(tmp_path / "heldout", count=3, seconds=0.5)
    dm = VocoderDataModule(
        audio_dirs=[str(tmp_path / "train")],
        val_dirs=[str(tmp_path / "heldout")],
        cache_dir=str(tmp_path / "cache"),
        segment_frames=8,
    )
    dm.prepare_data()
    train, val = dm.split()
    assert sorted(u.path.parent.name for u, _ in val) == ["heldout"] * 3
    assert {u.path.parent.name for u, _ in train} == {"train"} and len(train) == 6
    with pytest.raises(DataError, match="data.val_dirs overlaps data.audio_dirs"):
        VocoderDataModule(audio_dirs=[str(tmp_path)], val_dirs=[str(tmp_path / "heldout")], cache_dir=str(tmp_path))


def test_the_cpu_recipe_without_the_corpus_says_how_to_build_it(tmp_path):
    from helpers import compose

    from train.training.fit import build
    from vocos_distill.errors import MissingFileError

    cfg = compose(["experiment=cpu", "logger=csv", f"paths.data_dir={tmp_path}"], tmp_path)
    with pytest.raises(MissingFileError, match=r"data.audio_dirs: folder not found: .*speech/train; .*"
                       r"build it with `python train/corpus.py --out .*speech`"):  # fmt: skip
        build(cfg)
