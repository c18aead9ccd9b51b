"""Which utterances the data options select, and how they split: discovery and the split.

An :class:`Utterance` is one source of a mel: a clip of an audio folder (its S3Gen mel), the
flow's mel teacher-forced from a clip (``flow``), a line of text voiced by T3 and the flow
(``text``), or a pre-computed mel file. :class:`Corpus` finds them in the data folders, each with
a content key (the file's bytes, remembered by size and modification time in a manifest), and
:func:`split` divides prepared entries into training and validation the same way in every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from train.data.audio import AUDIO_SUFFIXES, MEL_SUFFIXES, find_files
from train.data.cache import SourceManifest, TensorCache
from train.data.flow_mels import FlowMels, Line, duration, voice_for
from train.s3gen.hift import HiFTGenerator
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import atomic_write_text

log = logging.getLogger(__name__)

# Bump when the mel definition or the cached layout changes.
MEL_VERSION = "s3gen-mel-v1:sr24000:nfft1920:hop480:mels80:fmax8000"
Entry = tuple["Utterance", str | None]  # an utterance and its teacher cache key


SOURCES = ("audio", "flow", "text")


class DataError(ConfigError, ValueError):
    """The data options select nothing usable, or are inconsistent."""


def parse_sources(mel_source: str | Mapping[str, float]) -> dict[str, float]:
    """``data.mel_source`` as ``{source: share of training draws}``: ``audio``, ``flow``, ``text``,
    or a mix joined by ``+``: ``audio+flow`` (equal shares), ``audio:1+flow:3`` (relative weights;
    zero leaves a source out). ``+``, not ``,``: Hydra reads a comma as a sweep."""
    if isinstance(mel_source, Mapping):
        pairs = [(str(k), v) for k, v in mel_source.items()]
    else:
        pairs = []
        for part in str(mel_source).replace(" ", "").split("+"):
            name, _, weight = part.partition(":")
            pairs.append((name, weight or "1"))
    try:
        weights = {name: float(weight) for name, weight in pairs}
    except ValueError:
        weights = {}
    wrong = [name for name in weights if name not in SOURCES]
    if not weights or wrong or any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise DataError(
            f"data.mel_source={mel_source!r}: use one of {', '.join(SOURCES)}, or a mix of them with "
            "non-negative weights such as audio+flow or audio:1+flow:3"
        )
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items() if weight}


@dataclass(frozen=True)
class Utterance:
    """One source file. ``name`` is what messages show; ``key`` addresses its cached mel."""

    name: str
    path: Path
    key: str
    kind: str  # "audio", "mel" (a file of mels), "flow" (teacher-forced from the clip) or "text"
    paired_audio: Path | None = None
    bytes: int = 0
    held_out: bool = False  # found under ``val_dirs``: validation only, whatever its name
    reference: Path | None = None  # flow and text: the reference clip S3Gen conditions on
    group: str = ""  # what the split hashes: a clip's audio and flow entries fall on the same side
    line: Line | None = None  # text: the sentence
    tokens_key: str | None = None  # text: its cached speech tokens

    @property
    def clip(self) -> str:
        """What identifies the recording (or line) behind it: a clip's audio and flow entries share it."""
        return str(self.path) if self.kind in ("audio", "flow") else self.name

    @property
    def source(self) -> str:
        """The ``data.mel_source`` it belongs to (a folder of mels counts as ``audio``)."""
        return self.kind if self.kind in ("flow", "text") else "audio"

    @property
    def has_audio(self) -> bool:
        return self.kind in ("audio", "flow") or self.paired_audio is not None


def bucket(name: str) -> float:
    """Where a name falls in [0, 1): the split's hash, the same in every run."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 16**8


def file_digest(*paths: Path | None) -> str:
    digest = hashlib.sha256(MEL_VERSION.encode())
    for path in paths:
        if path is None:
            digest.update(b"\0")
            continue
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def check_flow(
    sources: Mapping[str, float],
    flow: FlowMels | None,
    teacher: HiFTGenerator | None,
    mel_dir: str | None,
    perturbed: object,
) -> FlowMels | None:
    """The flow settings when a source needs them, checked against the checkpoint (a file
    without the flow, or a family or step count it contradicts, is refused here, before any work)."""
    needs = [name for name in ("flow", "text") if name in sources]
    if not needs:
        return flow
    chosen = f"data.mel_source={'+'.join(sources)}"
    if flow is None:
        raise DataError(f"{chosen} needs data.flow (the S3Gen checkpoint and how to run its flow)")
    if "text" in sources and teacher is None:
        raise DataError(
            f"{chosen}: a mel made from text has no recording to be its target, so it needs the teacher's "
            "waveform (teacher=hift, teacher.checkpoint=/path/to/s3gen.safetensors)"
        )
    if mel_dir is not None:
        raise DataError(f"{chosen} makes its own mels: data.mel_dir is for mels made elsewhere (set it to null)")
    if perturbed:
        raise DataError(
            f"{chosen}: data.speed_perturb and data.tilt_db change audio the flow's mels were not made from"
        )
    flow.family()
    return flow


class Corpus:
    """The utterances the data options select (:meth:`utterances`), found once, each with its content key."""

    def __init__(
        self,
        cache: TensorCache,
        mel_sources: Mapping[str, float],
        audio_dirs: Sequence[Path],
        val_dirs: Sequence[Path],
        mel_dir: Path | None,
        paired_audio_dir: Path | None,
        flow: FlowMels | None,
        val_fraction: float,
    ) -> None:
        self.cache, self.mel_sources, self.flow = cache, mel_sources, flow
        self.audio_dirs, self.val_dirs = list(audio_dirs), list(val_dirs)
        self.mel_dir, self.paired_audio_dir, self.val_fraction = mel_dir, paired_audio_dir, val_fraction
        self._utterances: list[Utterance] | None = None

    def utterances(self) -> list[Utterance]:
        """Source files with their content keys, found once. A file's bytes are read only when
        the manifest has not seen it at its size and modification time."""
        if self._utterances is None:
            self._utterances = self._discover()
        return self._utterances

    @property
    def sources(self) -> list[str]:
        """The folders read: audio folders, held-out audio folders, then the mel folder."""
        dirs = self.audio_dirs + self.val_dirs
        return [str(d) for d in dirs] + ([str(self.mel_dir)] if self.mel_dir else [])

    def describe(self) -> str:
        return ", ".join(self.sources)

    def _discover(self) -> list[Utterance]:
        found = []
        clips = []
        for root, held_out in [(d, False) for d in self.audio_dirs] + [(d, True) for d in self.val_dirs]:
            clips.append(self._audio_files(root, held_out))
            if "audio" in self.mel_sources:
                found += clips[-1]
        if "flow" in self.mel_sources:
            found += self._flow_utterances(clips)
        if "text" in self.mel_sources:  # voices from the training folders: held-out speakers stay unheard
            found += self._text_utterances([c for folder in clips for c in folder if not c.held_out])
        if self.mel_dir is not None:
            manifest = SourceManifest(self.cache.root, self.mel_dir)
            seen = set()
            for path in find_files(self.mel_dir, MEL_SUFFIXES):
                rel = path.relative_to(self.mel_dir)
                audio = self._paired_audio(rel)
                stamp = manifest.stamp(path, audio)
                key = manifest.key(str(rel), stamp) or self._hash(manifest, str(rel), stamp, path, audio)
                found.append(Utterance(str(rel), path, key, "mel", audio, bytes=stamp[0] + max(0, stamp[2])))
                seen.add(str(rel))
            self._save_manifest(manifest, seen)
        return found

    def _audio_files(self, root: Path, held_out: bool) -> list[Utterance]:
        manifest = SourceManifest(self.cache.root, root)
        found, seen = [], set()
        for path in find_files(root, AUDIO_SUFFIXES):
            rel = str(path.relative_to(root))
            stamp = manifest.stamp(path)
            key = manifest.key(rel, stamp) or self._hash(manifest, rel, stamp, path)
            found.append(Utterance(rel, path, key, "audio", bytes=stamp[0], held_out=held_out, group=rel))
            seen.add(rel)
        self._save_manifest(manifest, seen)
        return found

    def _durations(self, clips: Sequence[Utterance]) -> dict[str, float]:
        """Seconds of each clip (by content key), read from headers once and remembered."""
        path = self.cache.root / "durations.json"
        try:
            known: dict[str, float] = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        missing = [c for c in clips if c.key not in known]
        for clip in missing:
            try:
                known[clip.key] = duration(clip.path)
            except (OSError, RuntimeError, sf.LibsndfileError):
                known[clip.key] = 0.0  # unreadable: never a reference; its own entry says why
        if missing:
            try:
                atomic_write_text(path, json.dumps(known))
            except OSError as err:
                log.warning("could not update %s: %s", path, err)
        return known

    def _flow_utterances(self, folders: Sequence[Sequence[Utterance]]) -> list[Utterance]:
        """A flow entry per clip, its reference another clip of its speaker in the same folder."""
        found = []
        for clips in folders:
            seconds = self._durations(clips)
            by_key = {c.key: c for c in clips}
            chosen = self.flow.references([(c.name, c.key, seconds[c.key]) for c in clips])
            for clip in clips:
                ref = by_key[chosen[clip.key]]
                key = self.flow.corpus_key(self.cache.root, clip.key, ref.key)
                found.append(
                    Utterance(
                        f"flow:{clip.name}",
                        clip.path,
                        key,
                        "flow",
                        bytes=clip.bytes,
                        held_out=clip.held_out,
                        reference=ref.path,
                        group=clip.name,
                    )  # fmt: skip
                )
        return found

    def _text_utterances(self, clips: Sequence[Utterance]) -> list[Utterance]:
        """An entry per line of the text file, in a voice from ``data.flow.voices_dir`` (or the
        audio folders); a line's hash puts it in the validation share (``val_fraction``)."""
        if self.flow.voices_dir is not None:
            if not self.flow.voices_dir.is_dir():
                raise MissingFileError(f"data.flow.voices_dir: folder not found: {self.flow.voices_dir}")
            clips = self._audio_files(self.flow.voices_dir, False)
        seconds = self._durations(clips)
        voices = {c.key: c.path for c in clips if seconds[c.key] >= self.flow.min_reference_seconds}
        if not voices:
            where = self.flow.voices_dir or self.describe()
            raise DataError(
                f"data.mel_source=text: no reference voice of at least data.flow.min_reference_seconds="
                f"{self.flow.min_reference_seconds} s in {where}"
            )
        found = []
        for line in self.flow.lines():
            voice_key, voice = voice_for(f"{line.text}:{self.flow.language}", voices)
            tokens_key = self.flow.tokens_key(self.cache.root, line, voice_key)
            key = self.flow.mel_key(self.cache.root, tokens_key)
            name = f"text:{line.name}"
            held_out = bucket(name) < self.val_fraction
            found.append(
                Utterance(
                    name,
                    line.file,
                    key,
                    "text",
                    bytes=len(line.text),
                    held_out=held_out,
                    reference=voice,
                    group=name,
                    line=line,
                    tokens_key=tokens_key,
                )  # fmt: skip
            )
        return found

    @staticmethod
    def _hash(manifest: SourceManifest, rel: str, stamp: list[int], *paths: Path | None) -> str:
        key = file_digest(*paths)
        manifest.record(rel, stamp, key)
        return key

    @staticmethod
    def _save_manifest(manifest: SourceManifest, seen: set[str]) -> None:
        try:
            manifest.save(seen)
        except OSError as err:  # a read-only cache still works, only slower next time
            log.warning("could not update %s: %s", manifest.path, err)

    def _paired_audio(self, rel: Path) -> Path | None:
        if self.paired_audio_dir is None:
            return None
        for suffix in AUDIO_SUFFIXES:
            candidate = self.paired_audio_dir / rel.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        return None


def split(
    entries: list[Entry],
    mel_sources: Mapping[str, float],
    val_dirs: Sequence[Path],
    val_fraction: float,
    val_max_utterances: int | None,
) -> tuple[list[Entry], list[Entry]]:
    """Prepared ``(utterance, teacher cache key)`` entries as (train, validation), whatever their
    length: each source's held-out share (``val_dirs``, else the names whose hash falls below
    ``val_fraction``), up to ``val_max_utterances``; a clip validated in one source is trained on in none."""
    ranked = sorted(entries, key=lambda e: bucket(e[0].group or e[0].name))
    train, val = [], []
    for source in SOURCES:  # each source's own held-out share, up to val_max_utterances
        mine = [e for e in ranked if e[0].source == source]
        if val_dirs:
            val += [e for e in mine if e[0].held_out][:val_max_utterances]
            train += [e for e in mine if not e[0].held_out]
            continue
        n_val = 0
        if len(entries) > 1 and mine:
            n_val = max(1, sum(bucket(u.group or u.name) < val_fraction for u, _ in mine))
            n_val = min(n_val, val_max_utterances or n_val)
        val, train = val + mine[:n_val], train + mine[n_val:]
    held = {e[0].clip for e in val}
    train = [e for e in train if e[0].clip not in held]  # validated in one source: trained on in none
    if val_dirs and not val:
        raise DataError(f"data.val_dirs {[str(d) for d in val_dirs]}: no prepared audio there")
    counts = ", ".join(f"{sum(e[0].source == s for e in train)}/{sum(e[0].source == s for e in val)} {s}"
                       for s in SOURCES if s in mel_sources)  # fmt: skip
    log.info("data: training/validation utterances: %s%s", counts, " (data.val_dirs)" if val_dirs else "")
    return train, val
