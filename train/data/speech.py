"""A larger offline speech corpus, assembled from packages the package registries ship.

Each :class:`Source` is one Debian package whose files include recorded speech. The
assembler downloads the package (``apt-get download``, at a pinned version), unpacks it
(``dpkg-deb -x``), and for every recording: mono, resampled to 24 kHz, edge silence
trimmed, written as 16-bit FLAC under ``<out>/<split>/<source>/<speaker>/``. A
``MANIFEST.tsv`` row per written file records its source package and version, its path in
the package, the speaker, the licence and the copyright holders; ``LICENSES.md`` sums them
up. Two held-out splits: ``heldout`` by speaker (never by clip), so no speaker is on both
sides, and ``heldout_source``: every recording of a source held out whole (recorded
elsewhere, by other people, with other microphones), to tell generalising from fitting the
recording conditions of the training set.

The audio is GPL / LGPL / CC-BY licensed: it is built on each machine from the registry and
never committed to this MIT repository (``data/speech/`` is ignored by git).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import soundfile as sf
import torch
import torchaudio

from vocos_distill.config import SAMPLE_RATE
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import atomic_write

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.tsv"
LICENCES = "LICENSES.md"
COLUMNS = (
    "path",
    "split",
    "source",
    "speaker",
    "seconds",
    "sha256",
    "package",
    "version",
    "member",
    "licence",
    "copyright",
)
SPLITS = ("train", "heldout", "heldout_source")


class CorpusError(ConfigError, RuntimeError):
    """A source cannot be fetched or read, or an option names something that does not exist."""


def _language(member: PurePosixPath, depth: int) -> str:
    return member.parts[depth]


@dataclass(frozen=True)
class Source:
    """A registry package holding speech recordings.

    ``pattern`` globs the recordings inside the unpacked package; ``speaker(member)`` names
    the speaker group of a recording from its path in the package (for the KDE packages,
    one volunteer recorded each language, so the language folder is the speaker).
    """

    name: str
    package: str
    version: str
    licence: str
    copyright: str
    pattern: str
    speaker: Callable[[PurePosixPath], str]
    homepage: str = ""
    exclude: tuple[str, ...] = ()  # speaker groups left out (e.g. copies of another folder)
    held_out: bool = False  # the whole source is held out (split heldout_source), never trained on


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="klettres",
            package="klettres-data",
            version="4:22.12.3-1",
            licence="GPL-2.0-or-later",
            copyright="2001-2011 Anne-Marie Mahfouf and the KLettres contributors (KDE)",
            pattern="usr/share/klettres/*/*/*.ogg",
            speaker=lambda m: _language(m, 3),
            homepage="https://apps.kde.org/klettres/",
        ),
        Source(
            name="ktuberling",
            package="ktuberling-data",
            version="4:22.12.3-1",
            licence="GPL-2.0-or-later",
            copyright="2001-2017 the KTuberling contributors (KDE)",
            pattern="usr/share/ktuberling/sounds/*/*",
            speaker=lambda m: _language(m, 4),
            homepage="https://apps.kde.org/ktuberling/",
            # the Serbian variants are the same recordings in other scripts
            exclude=("sr@ijekavian", "sr@ijekavianlatin", "sr@latin"),
        ),
        # two voices, two licences: */3.ogg and */5.ogg (debian/copyright)
        *(
            Source(
                name=f"gcin-{voice}",
                package="gcin-voice",
                version="0~20170223-3",
                licence=licence,
                copyright=holder,
                pattern=f"usr/share/gcin-voice/ogg/*/{take}.ogg",
                speaker=lambda m, take=take: f"zh-{take}",
                homepage="http://hyperrate.com/thread.php?tid=30325",
            )
            for voice, take, licence, holder in (
                ("liu", 3, "GPL-3.0-only OR LGPL-3.0-only", "2014 Edward Der-Hua Liu"),
                ("chulo", 5, "CC-BY-3.0", "ChionMeilin recording team, voice of Chu Lo"),
            )
        ),
        # Game voice packs, each acted by another volunteer with their own microphone, 44.1 kHz:
        # held out whole. Robot is left out (its voice is processed, not recorded speech).
        Source(
            name="hedgewars",
            package="hedgewars-data",
            version="1.0.2-6",
            licence="GFDL-1.3",
            copyright="2004-2006 Andrey Korotaev and the Hedgewars contributors",
            pattern="usr/share/games/hedgewars/Data/Sounds/voices/*/*.ogg",
            speaker=lambda m: m.parts[-2],
            homepage="https://hedgewars.org",
            exclude=("Robot",),
            held_out=True,
        ),
    )
}
# Held out by speaker: every recording of these (source-independent) speaker groups.
HELDOUT_SPEAKERS = ("el", "he", "it", "sl")
AUDIO_EXT = (".ogg", ".wav", ".opus", ".flac")


@dataclass
class Clip:
    path: str
    split: str
    source: str
    speaker: str
    seconds: float
    sha256: str
    package: str
    version: str
    member: str
    licence: str
    copyright: str


@dataclass
class BuildReport:
    clips: list[Clip] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def minutes(self, split: str | None = None) -> float:
        return sum(c.seconds for c in self.clips if split in (None, c.split)) / 60


def download(source: Source, into: Path) -> Path:
    """The source's ``.deb`` at its pinned version, fetched once into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    for deb in into.glob(f"{source.package}_*.deb"):
        if _deb_version(deb) == source.version:
            return deb
    try:
        run = subprocess.run(
            ["apt-get", "download", f"{source.package}={source.version}"],
            cwd=into,
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as err:
        raise CorpusError(
            f"source {source.name!r}: apt-get is not available here; fetch {source.package}_{source.version} "
            f"(a Debian package) by hand and pass its folder with --debs"
        ) from err
    if run.returncode != 0:
        raise CorpusError(
            f"source {source.name!r}: `apt-get download {source.package}={source.version}` failed "
            f"(try `apt-get update`, or pass the .deb's folder with --debs): {run.stderr.strip()[-400:]}"
        )
    for deb in into.glob(f"{source.package}_*.deb"):
        if _deb_version(deb) == source.version:
            return deb
    raise CorpusError(f"source {source.name!r}: apt-get reported success but wrote no {source.package} .deb in {into}")


def _deb_version(deb: Path) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def unpack(deb: Path, into: Path) -> Path:
    run = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise CorpusError(f"{deb}: not a readable Debian package: {run.stderr.strip()[-400:]}")
    return into


def trim_silence(audio: torch.Tensor, rate: int, floor_db: float = -50.0, margin_s: float = 0.1) -> torch.Tensor:
    """``audio`` (L,) without its leading and trailing stretches quieter than ``floor_db``
    below its loudest 20 ms, keeping ``margin_s`` either side."""
    frame = max(1, rate // 50)
    n = audio.numel() // frame
    if n == 0:
        return audio
    rms = audio[: n * frame].view(n, frame).pow(2).mean(dim=1).sqrt()
    loud = (20 * torch.log10(rms.clamp(min=1e-10) / rms.max().clamp(min=1e-10)) > floor_db).nonzero()
    if loud.numel() == 0:
        return audio[:0]
    margin = int(margin_s * rate)
    start = max(0, int(loud[0]) * frame - margin)
    stop = min(audio.numel(), (int(loud[-1]) + 1) * frame + margin)
    return audio[start:stop]


def convert(data: bytes, min_rate: int = 16_000, min_seconds: float = 0.3) -> tuple[torch.Tensor | None, str]:
    """Recording bytes -> (24 kHz mono float audio, "") or (None, why it was skipped)."""
    try:
        wav, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001  (libsndfile's errors have no common type)
        return None, f"unreadable ({type(err).__name__})"
    if rate < min_rate:
        return None, f"sample rate below {min_rate} Hz"
    audio = torch.from_numpy(wav).mean(dim=1)
    if rate != SAMPLE_RATE:
        audio = torchaudio.functional.resample(audio, rate, SAMPLE_RATE)
    audio = trim_silence(audio, SAMPLE_RATE)
    if audio.numel() < min_seconds * SAMPLE_RATE:
        return None, f"shorter than {min_seconds} s of sound"
    peak = audio.abs().max()
    if peak > 0.999:
        audio = audio * (0.999 / peak)
    return audio, ""


def _flac_bytes(audio: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.numpy(), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _slug(name: str) -> str:
    """An ASCII file name for ``name``; a short hash keeps names that lost characters apart."""
    slug = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name)
    return slug if slug == name else f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def build(
    out: str | Path,
    sources: Sequence[str] = tuple(SOURCES),
    heldout: Iterable[str] = HELDOUT_SPEAKERS,
    debs: str | Path | None = None,
    download_dir: str | Path | None = None,
    catalogue: dict[str, Source] | None = None,
) -> BuildReport:
    """Assemble the corpus into ``out``, replacing a corpus this function built there before.

    The new corpus is written beside ``out`` and swapped in only when complete, so an
    interrupted build leaves the previous one intact. A folder at ``out`` that is not such a
    corpus (no ``MANIFEST.tsv``) is refused rather than replaced.
    """
    catalogue = SOURCES if catalogue is None else catalogue
    unknown = [s for s in sources if s not in catalogue]
    if unknown:
        raise CorpusError(f"--sources: unknown source(s) {unknown}; choose from {sorted(catalogue)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise CorpusError(
            f"{out} exists and holds files this script did not write (no {MANIFEST}); choose another --out"
        )
    heldout = set(heldout)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    report = BuildReport()
    try:
        with tempfile.TemporaryDirectory(prefix="speech-unpack-") as scratch:
            for name in sources:
                source = catalogue[name]
                if debs is not None:
                    found = sorted(Path(debs).glob(f"{source.package}_*.deb"))
                    if not found:
                        raise MissingFileError(f"--debs {debs}: no {source.package}_*.deb there")
                    deb = found[-1]
                else:
                    deb = download(source, Path(download_dir or Path(scratch) / "debs"))
                version = _deb_version(deb) or source.version
                root = unpack(deb, Path(scratch) / source.name)
                _add_source(source, version, root, staging, heldout, report)
        if not report.clips:
            raise CorpusError(f"no recording was usable from sources {list(sources)}: {dict(report.skipped)}")
        _write_manifest(staging, report)
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _add_source(
    source: Source, version: str, root: Path, staging: Path, heldout: set[str], report: BuildReport
) -> None:
    seen: set[str] = set()
    members = sorted(p for p in root.glob(source.pattern) if p.suffix.lower() in AUDIO_EXT and p.is_file())
    if not members:
        raise CorpusError(f"source {source.name!r}: {source.package} {version} has no file matching {source.pattern!r}")
    for path in members:
        member = PurePosixPath(path.relative_to(root).as_posix())
        speaker = source.speaker(member)
        if speaker in source.exclude:
            report.skipped[f"{source.name}: excluded speaker group"] += 1
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            report.skipped[f"{source.name}: duplicate recording"] += 1
            continue
        seen.add(digest)
        audio, why = convert(data)
        if audio is None:
            report.skipped[f"{source.name}: {why}"] += 1
            continue
        split = "heldout_source" if source.held_out else "heldout" if speaker in heldout else "train"
        stem = _slug("_".join(member.parts[-2:]).rsplit(".", 1)[0])
        rel = PurePosixPath(split, source.name, _slug(speaker), f"{stem}.flac")
        blob = _flac_bytes(audio)
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(blob)
        report.clips.append(
            Clip(
                path=str(rel),
                split=split,
                source=source.name,
                speaker=speaker,
                seconds=round(audio.numel() / SAMPLE_RATE, 3),
                sha256=hashlib.sha256(blob).hexdigest(),
                package=source.package,
                version=version,
                member=str(member),
                licence=source.licence,
                copyright=source.copyright,
            )
        )


def _write_manifest(staging: Path, report: BuildReport) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for clip in sorted(report.clips, key=lambda c: c.path):
        writer.writerow([getattr(clip, c) for c in COLUMNS])
    atomic_write(staging / MANIFEST, lambda f: f.write(buf.getvalue().encode()))
    atomic_write(staging / LICENCES, lambda f: f.write(licence_summary(report).encode()))


def licence_summary(report: BuildReport) -> str:
    lines = [
        "# Speech corpus: sources and licences",
        "",
        "Built by `python train/corpus.py` from Debian packages; every file is listed in "
        f"`{MANIFEST}` with its package, version, path in the package, licence and copyright.",
        "Not for committing to this repository (MIT): the recordings keep their own licences.",
        "",
        "| source | package | version | licence | copyright | clips (train / held out) | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    by_source: dict[str, list[Clip]] = {}
    for clip in report.clips:
        by_source.setdefault(clip.source, []).append(clip)
    for name, clips in by_source.items():
        c = clips[0]
        n_train = sum(x.split == "train" for x in clips)  # held out: by speaker, or the whole source
        lines.append(
            f"| {name} | {c.package} | {c.version} | {c.licence} | {c.copyright} | "
            f"{n_train} / {len(clips) - n_train} | {sum(x.seconds for x in clips) / 60:.1f} |"
        )
    held = sorted({c.speaker for c in report.clips if c.split == "heldout"})
    whole = sorted({c.source for c in report.clips if c.split == "heldout_source"})
    lines += [
        "",
        f"Held out by speaker group: {', '.join(held) or 'none'}. Held out whole: {', '.join(whole) or 'none'}.",
        "",
    ]
    return "\n".join(lines)


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished ``staging`` at ``out``; a previous corpus there is removed only after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def missing_hint(folder: Path) -> str:
    """What to run when a split folder of this corpus is missing (empty for other folders)."""
    if folder.name in SPLITS and not (folder.parent / MANIFEST).is_file():
        return f"; if it is this project's speech corpus, build it with `python train/corpus.py --out {folder.parent}`"
    return ""


def read_manifest(root: str | Path) -> list[dict[str, str]]:
    """The rows of ``root``'s ``MANIFEST.tsv``, with a clear error when it is missing or malformed."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise MissingFileError(f"{path}: not found; build the corpus with `python train/corpus.py --out {root}`")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if missing:
        raise CorpusError(f"{path}: columns {missing} are missing")
    return rows
