"""Data: audio folders and/or pre-computed S3Gen mels -> cached (mel, audio, teacher wav) -> segments.

Preparing computes every utterance's mel (and, given a teacher, its waveform with a fixed
seed) once and caches it (:mod:`train.data.cache`), keyed by content: the source file's
bytes, the mel settings, and the teacher's weights, dtype and seed. The work is sharded:
with ``N`` processes each prepares a disjoint share of the utterances, balanced by bytes, on
its own device, so no process waits on another for longer than its own share. Processes
that prepare the same entries at once (two runs on one cache) do each entry once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
import torchaudio
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from train.data.audio import AUDIO_SUFFIXES, MEL_SUFFIXES, find_files, read_audio, read_mel
from train.data.cache import FrameIndex, SourceManifest, TensorCache
from train.data.flow import FlowMels, Line, duration, voice_for
from train.data.speech import missing_hint
from train.s3gen.hift import HiFTGenerator
from train.s3gen.mel import S3GenMel
from train.s3gen.teacher import synthesize
from train.utils.progress import progress
from vocos_distill.config import HOP_LENGTH, SAMPLE_RATE
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import atomic_write_text, remove_stale_temporaries

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


@dataclass
class PrepareReport:
    """What one process's :meth:`VocoderDataModule.prepare` did."""

    rank: int = 0
    world_size: int = 1
    assigned: int = 0
    computed_mels: int = 0
    computed_teacher: int = 0
    already_cached: int = 0
    audio_seconds: float = 0.0  # of the entries this process computed
    wall_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    prepared_keys: list[str] = field(default_factory=list)  # mel keys of the utterances this process computed


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


def shard(utterances: Sequence[Utterance], rank: int, world_size: int) -> list[Utterance]:
    """This process's share: largest files first, each to the least-loaded process, so every
    share has about the same bytes. The same for every process that sees the same files."""
    loads = [0] * world_size
    mine = []
    for utterance in sorted(utterances, key=lambda u: (-u.bytes, u.name)):
        owner = min(range(world_size), key=lambda r: (loads[r], r))
        loads[owner] += max(1, utterance.bytes)
        if owner == rank:
            mine.append(utterance)
    return sorted(mine, key=lambda u: u.name)


class SegmentSampler(Sampler[int]):
    """Shuffles utterances every epoch and tags each draw with its epoch: index = epoch * n + utterance.

    The dataset seeds its random crop from the index, so an epoch's batches depend only on
    (seed, epoch): a run resumed at an epoch boundary sees the same data as an unbroken one.

    With ``weights`` (one per utterance), an epoch draws ``num_items`` utterances with
    replacement in those proportions (a mix of mel sources), seeded the same way.
    """

    def __init__(self, num_items: int, seed: int = 0, weights: Sequence[float] | None = None) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0
        self.weights = torch.tensor(weights, dtype=torch.float64) if weights is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, self.num_items, replacement=True, generator=generator).tolist()
        base = self.epoch * self.num_items
        self.epoch += 1  # fresh draws next time even if nobody calls set_epoch (e.g. under a wrapper)
        return iter([base + i for i in order])


SPEED_STEPS = 20  # speed factors are multiples of 1/20: resampling by k/20 is one short polyphase filter


def speed_perturbed(
    audio: Tensor, start: int, frames: int, factor: float, mel: S3GenMel, tilt_db: float = 0.0
) -> dict[str, Tensor]:
    """``frames`` frames of ``audio`` played ``factor`` times faster (pitch and tempo both scaled),
    from sample ``start`` (moved earlier if the faster segment would run past the end), and their
    S3Gen mel computed from the perturbed audio itself.

    ``tilt_db`` also tilts its spectrum (:func:`tilted`) before the mel is taken.

    The mel is taken from a longer span (two frames more on each side), so that none of its frames
    sees the reflection padding a segment's own edges would bring; beyond the utterance the span
    is padded with silence (the corpus trims its clips' edge silence).
    """
    steps = round(factor * SPEED_STEPS)
    margin = 2 * HOP_LENGTH
    wanted = frames * HOP_LENGTH + 2 * margin  # at 24 kHz, after resampling
    span = -(-wanted * steps // SPEED_STEPS) + steps  # source samples that give at least `wanted`
    segment = frames * HOP_LENGTH * steps // SPEED_STEPS  # the segment's own source samples
    first = min(start, max(0, audio.shape[-1] - segment)) - margin * steps // SPEED_STEPS
    source = audio[max(first, 0) : first + span]
    before = max(-first, 0)
    source = torch.nn.functional.pad(source, (before, span - before - source.shape[-1]))
    played = torchaudio.functional.resample(source, steps, SPEED_STEPS)[:wanted]
    if tilt_db:
        played = tilted(played, tilt_db)
    log_mel = mel(played.unsqueeze(0))[0, :, 2 : 2 + frames]
    return {"mel": log_mel, "audio": played[margin : margin + frames * HOP_LENGTH]}


TILT_HZ = 1000.0  # the shelf's corner: below it the voice's fundamental and first formant, above it the rest


def tilted(audio: Tensor, gain_db: float) -> Tensor:
    """``audio`` through a high shelf at :data:`TILT_HZ` of ``gain_db`` (a brighter or duller
    microphone), rescaled to its own RMS level, so only the spectrum's tilt changes."""
    # the RBJ cookbook's high shelf (slope 1); torchaudio's own biquads clamp their output to +-1
    a, w0 = 10 ** (gain_db / 40), 2 * math.pi * TILT_HZ / SAMPLE_RATE
    cos, alpha = math.cos(w0), math.sin(w0) / math.sqrt(2)
    root = 2 * math.sqrt(a) * alpha
    b = [a * (a + 1 + (a - 1) * cos + root), -2 * a * (a - 1 + (a + 1) * cos), a * (a + 1 + (a - 1) * cos - root)]
    den = [a + 1 - (a - 1) * cos + root, 2 * (a - 1 - (a + 1) * cos), a + 1 - (a - 1) * cos - root]
    shelved = torchaudio.functional.lfilter(
        audio, audio.new_tensor(den), audio.new_tensor(b), clamp=False, batching=False
    )
    level = audio.pow(2).mean().sqrt() / shelved.pow(2).mean().sqrt().clamp_min(1e-8)
    return shelved * level


class UtteranceDataset(Dataset):
    """Cached utterances as dicts of ``mel (80, T)``, ``audio (T * 480,)`` and/or ``teacher (T * 480,)``.

    With ``segment_frames`` set, returns a random frame-aligned segment seeded by the index
    (see :class:`SegmentSampler`); every entry must then be at least that long. Otherwise the
    first ``max_frames`` frames. With ``speed_factors`` too, each segment is played at one of
    them, drawn with the same seed (:func:`speed_perturbed`; audio targets only); with
    ``tilt_db`` (low, high), its spectrum is tilted by a gain drawn uniformly from that range
    (:func:`tilted`).
    """

    def __init__(
        self,
        cache: TensorCache,
        entries: list[Entry],
        segment_frames: int | None = None,
        max_frames: int | None = None,
        seed: int = 0,
        speed_factors: Sequence[float] | None = None,
        tilt_db: Sequence[float] | None = None,
        drop_audio: bool = False,
    ) -> None:
        self.cache = cache
        self.drop_audio = drop_audio  # a mix with mels from text: no item has audio, so batches agree
        self.entries = entries
        self.segment_frames = segment_frames
        self.max_frames = max_frames
        self.seed = seed
        self.speed_factors = list(speed_factors or [])
        self.tilt_db = tuple(tilt_db) if tilt_db else None
        self.mel = S3GenMel() if self.speed_factors or self.tilt_db else None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        utterance, teacher_key = self.entries[index % len(self.entries)]
        item = {k: v for k, v in self.cache.load("mel", utterance.key).items() if v is not None and k != "tokens"}
        if self.drop_audio:
            item.pop("audio", None)
        if teacher_key is not None:
            item["teacher"] = self.cache.load("teacher", teacher_key)["wav"]
        frames = item["mel"].shape[-1]
        if self.segment_frames is not None:
            draw = random.Random(f"{self.seed}:{index}")
            start = draw.randint(0, frames - self.segment_frames)
            length = self.segment_frames
            factor = draw.choice(self.speed_factors) if self.speed_factors else 1.0
            tilt = draw.uniform(*self.tilt_db) if self.tilt_db else 0.0
            if factor != 1.0 or tilt:
                return speed_perturbed(item["audio"], start * HOP_LENGTH, length, factor, self.mel, tilt)
        else:
            start, length = 0, min(frames, self.max_frames or frames)
        out = {"mel": item["mel"][:, start : start + length]}
        for name in ("audio", "teacher"):
            if name in item:
                out[name] = item[name][start * HOP_LENGTH : (start + length) * HOP_LENGTH]
        return out


def refuse_teacher(option: str, unchanged: str, teacher: HiFTGenerator | None) -> None:
    """A :class:`DataError` when ``option``, which changes the training audio, meets a teacher."""
    if teacher is not None:
        raise DataError(
            f"{option} needs audio targets alone: the teacher's waveforms are cached for the "
            f"{unchanged} mels (drop the teacher, e.g. `~teacher`, or set {option}=null)"
        )


def check_tilt(tilt_db: Sequence[float] | None, teacher: HiFTGenerator | None) -> tuple[float, float] | None:
    """``data.tilt_db`` as ``(low, high)``, or a :class:`DataError` naming what is wrong with it."""
    if not tilt_db:
        return None
    values = [float(v) for v in tilt_db]
    if len(values) != 2 or not -24.0 <= values[0] <= values[1] <= 24.0:
        raise DataError(f"data.tilt_db: {list(tilt_db)} is not [low, high] in dB with -24 <= low <= high <= 24")
    refuse_teacher("data.tilt_db", "untilted", teacher)
    return values[0], values[1]


def check_speed_factors(factors: Sequence[float] | None, teacher: HiFTGenerator | None) -> list[float]:
    """``data.speed_perturb`` as a list, or a :class:`DataError` naming what is wrong with it."""
    factors = [float(f) for f in factors or []]
    wrong = [f for f in factors if not 0.5 <= f <= 2.0 or abs(f * SPEED_STEPS - round(f * SPEED_STEPS)) > 1e-6]
    if wrong:
        raise DataError(f"data.speed_perturb: {wrong} are not multiples of 0.05 between 0.5 and 2")
    if factors:
        refuse_teacher("data.speed_perturb", "unperturbed", teacher)
    return factors


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


class VocoderDataModule(LightningDataModule):
    """Audio folders and/or a folder of S3Gen mels, cached, split, and served as segments.

    Args:
        audio_dirs: folders searched recursively for wav / flac / ogg / mp3.
        mel_source: what the student learns from (:func:`parse_sources`): ``audio`` (S3Gen's mel
            of each clip), ``flow`` (the flow's mel teacher-forced from each clip: what
            Chatterbox's vocoder is fed; the clip stays an aligned target), ``text`` (the flow's
            mel of T3's tokens for each line of ``flow.text_file``: teacher targets only), or a
            mix joined by ``+``: ``audio+flow`` (equal shares of training draws), ``audio:1+flow:3``.
            Validation holds each source's held-out entries.
        flow: how flow mels are made (:class:`train.data.flow.FlowMels`; the configs' ``data.flow``).
        mel_dir: folder of pre-computed S3Gen mels (``.npy`` / ``.pt``, shape (80, T)), e.g.
            the flow model's outputs; ``paired_audio_dir`` may hold audio with the same
            relative names.
        cache_dir: where mels and teacher waveforms are cached (the configs: ``checkpoints/cache/``
            of the checkout, ``paths.cache_dir``).
        teacher: a loaded HiFT; when given, its waveform for every mel is a target.
        segment_frames: training segment length in mel frames (480 samples each); shorter
            utterances are left out of training (not of validation or evaluation).
        speed_perturb: speed factors (multiples of 0.05, e.g. ``[0.9, 1.0, 1.1]``): each training
            segment is played at one of them, pitch and tempo together, and its mel computed
            from the result; for audio targets (a teacher's cached waveforms cannot follow).
        tilt_db: ``[low, high]`` in dB: each training segment passes a high shelf at 1 kHz whose
            gain is drawn uniformly from that range, at its own level, and its mel is computed
            from the result (other microphones, brighter or duller); audio targets only.
        val_dirs: audio folders held out as a whole (e.g. other speakers): when set, they are the
            validation set and nothing else is; ``val_fraction`` is then unused.
        val_fraction, val_max_utterances: without ``val_dirs``, the held-out set is the utterances whose name hash
            falls below ``val_fraction``, at most ``val_max_utterances`` of them (lowest hashes
            first; at least one): the same set in every run over the same files. Only those
            leave the training set.
        val_max_frames: validation utterances are cut to this many frames.
        seed: the training segments' crops and order (the configs: the run's ``seed``, 1234).
        progress: show a progress bar while preparing.
    """

    def __init__(
        self,
        *,
        cache_dir: str,
        audio_dirs: Sequence[str] = (),
        mel_source: str = "audio",
        flow: FlowMels | None = None,
        mel_dir: str | None = None,
        paired_audio_dir: str | None = None,
        teacher: HiFTGenerator | None = None,
        teacher_seed: int = 0,
        segment_frames: int = 32,
        speed_perturb: Sequence[float] | None = None,
        tilt_db: Sequence[float] | None = None,
        batch_size: int = 4,
        val_dirs: Sequence[str] = (),
        val_fraction: float = 0.2,
        val_max_utterances: int | None = 100,
        val_max_frames: int = 250,
        num_workers: int = 0,
        seed: int = 1234,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.mel_sources = parse_sources(mel_source)
        if not audio_dirs and mel_dir is None and "text" not in self.mel_sources:
            raise DataError("data: set `data.audio_dirs` and/or `data.mel_dir`; both are empty")
        self.audio_dirs = [Path(d).expanduser() for d in audio_dirs]
        self.mel_dir = Path(mel_dir).expanduser() if mel_dir else None
        self.paired_audio_dir = Path(paired_audio_dir).expanduser() if paired_audio_dir else None
        self.val_dirs = [Path(d).expanduser() for d in val_dirs]
        overlap = sorted(
            f"{v} and {a}"
            for v in self.val_dirs
            for a in self.audio_dirs
            if v.resolve().is_relative_to(a.resolve()) or a.resolve().is_relative_to(v.resolve())
        )
        if overlap:
            raise DataError(
                f"data.val_dirs overlaps data.audio_dirs ({'; '.join(overlap)}): held-out audio would be trained on"
            )
        for option, folder in (
            [("data.audio_dirs", d) for d in self.audio_dirs]
            + [("data.val_dirs", d) for d in self.val_dirs]
            + [
                ("data.mel_dir", self.mel_dir),
                ("data.paired_audio_dir", self.paired_audio_dir),
            ]
        ):
            if folder is not None and not folder.is_dir():
                raise MissingFileError(f"{option}: folder not found: {folder}{missing_hint(folder)}")
        if val_max_utterances is not None and val_max_utterances < 1:
            raise DataError(f"data.val_max_utterances must be at least 1 or null, got {val_max_utterances}")
        self.cache = TensorCache(cache_dir)
        self.teacher = teacher
        self.teacher_seed = teacher_seed
        self.segment_frames = segment_frames
        self.speed_perturb = check_speed_factors(speed_perturb, teacher)
        self.tilt_db = check_tilt(tilt_db, teacher)
        self.flow = check_flow(self.mel_sources, flow, teacher, mel_dir, self.speed_perturb or self.tilt_db)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.val_max_utterances = val_max_utterances
        self.val_max_frames = val_max_frames
        self.num_workers = num_workers
        self.seed = seed
        self.progress = progress
        self.mel = S3GenMel()
        self.skipped: list[tuple[str, str]] = []
        self._utterances: list[Utterance] | None = None
        self.train_set: UtteranceDataset | None = None
        self.val_set: UtteranceDataset | None = None

    # -- discovery -----------------------------------------------------------------
    def utterances(self) -> list[Utterance]:
        """Source files with their content keys, found once per data module. A file's bytes
        are read only when the manifest has not seen it at its size and modification time."""
        if self._utterances is None:
            self._utterances = self._discover()
        return self._utterances

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
            where = self.flow.voices_dir or self._describe_sources()
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

    def teacher_key(self, utterance: Utterance) -> str | None:
        """Cache key of the teacher's waveform: the mel's key, the teacher's weights and dtype, the seed."""
        if self.teacher is None:
            return None
        weights = getattr(self.teacher, "weights_id", None)
        if weights is None:
            raise ValueError("data.teacher has no `weights_id`; load it with train.s3gen.teacher.load_teacher")
        dtype = str(next(self.teacher.parameters()).dtype).removeprefix("torch.")
        return hashlib.sha256(f"{utterance.key}:{weights}:{dtype}:{self.teacher_seed}".encode()).hexdigest()[:32]

    # -- preparation ----------------------------------------------------------------
    def _read_24k(self, path: Path) -> Tensor:
        wav, sample_rate = read_audio(path)
        if wav.numel() == 0:
            raise ValueError("empty audio")
        return self.mel.to_mono_24k(wav, sample_rate)[0]

    def _compute_mel_entry(self, utterance: Utterance) -> dict[str, Tensor | None]:
        if utterance.kind == "flow":
            clip = self._read_24k(utterance.path)
            try:
                ref = self._read_24k(utterance.reference)
            except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
                raise ValueError(f"its reference {utterance.reference}: {err}") from None
            return self.flow.teacher_forced(clip, ref, utterance.name, str(utterance.reference))
        if utterance.kind == "text":
            if ("tokens", utterance.tokens_key) in self.cache:
                tokens = self.cache.load("tokens", utterance.tokens_key)["tokens"]
            else:
                tokens = self.flow.text_tokens(utterance.line, utterance.reference)
                self.cache.save("tokens", utterance.tokens_key, {"tokens": tokens})
            mel = self.flow.text_mel(tokens, utterance.reference)
            return {"mel": mel.contiguous(), "audio": None, "tokens": tokens}
        if utterance.kind == "audio":
            wav, sample_rate = read_audio(utterance.path)
            if wav.numel() == 0:
                raise ValueError("empty audio")
            wav = self.mel.to_mono_24k(wav, sample_rate)
            frames = wav.shape[-1] // HOP_LENGTH
            if frames < 1:
                raise ValueError(f"shorter than one mel frame ({HOP_LENGTH} samples at {SAMPLE_RATE} Hz)")
            audio = wav[0, : frames * HOP_LENGTH]
            mel = self.mel(audio.unsqueeze(0))[0]
        else:
            mel = read_mel(utterance.path)
            frames, audio = mel.shape[-1], None
            if utterance.paired_audio is not None:
                wav, sample_rate = read_audio(utterance.paired_audio)
                wav = self.mel.to_mono_24k(wav, sample_rate)[0]
                audio = torch.nn.functional.pad(wav, (0, max(0, frames * HOP_LENGTH - wav.shape[-1])))
                audio = audio[: frames * HOP_LENGTH]
        return {"mel": mel.contiguous(), "audio": None if audio is None else audio.contiguous()}

    def prepare(self, rank: int = 0, world_size: int = 1, device: torch.device | str | None = None) -> PrepareReport:
        """Compute and cache what is missing of this process's share; warn about and record unusable files.

        Entries another process is writing at the same moment are left to it and checked
        again at the end of the share.
        """
        if self.teacher is not None and device is not None:
            self.teacher.to(device)
        started = time.perf_counter()
        mine = shard(self.utterances(), rank, world_size)
        report = PrepareReport(rank=rank, world_size=world_size, assigned=len(mine))
        bar = progress(
            total=len(mine),
            desc=f"prepare {rank + 1}/{world_size}" if world_size > 1 else "prepare",
            unit="utt",
            disable=not self.progress,
            position=rank,
        )
        pending = list(mine)
        counted: set[str] = set()  # mel keys already in report.prepared_keys
        for wait in (False, True):  # first pass: skip what others hold; second: wait for it
            deferred = []
            for utterance in pending:
                try:
                    if self._prepare_one(utterance, wait, report, counted):
                        bar.update(1)
                        rate = report.audio_seconds / (time.perf_counter() - started)
                        bar.set_postfix(audio_s_per_s=f"{rate:.1f}", refresh=False)
                    else:
                        deferred.append(utterance)
                except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
                    report.skipped.append((utterance.name, str(err)))
                    log.warning("skipping %s: %s", utterance.path, err)
                    bar.update(1)
            pending = deferred
        bar.close()
        report.wall_seconds = time.perf_counter() - started
        log.info(
            "data: share %d/%d: %d utterances computed (%.1f s of audio in %.1f s), %d cached already, %d skipped",
            rank + 1,
            world_size,
            len(report.prepared_keys),
            report.audio_seconds,
            report.wall_seconds,
            report.already_cached,
            len(report.skipped),
        )
        self.skipped = report.skipped
        return report

    def _prepare_one(self, utterance: Utterance, wait: bool, report: PrepareReport, counted: set[str]) -> bool:
        """Make sure one utterance's entries exist; ``False`` if another process holds one of them."""
        teacher_key = self.teacher_key(utterance)
        if self.teacher is None and not utterance.has_audio:
            raise ValueError("a mel without paired audio needs a teacher to give it a target")
        cached = ("mel", utterance.key) in self.cache and (
            teacher_key is None or ("teacher", teacher_key) in self.cache
        )
        if cached:
            report.already_cached += 1
            return True
        if ("mel", utterance.key) not in self.cache:
            with self.cache.claim("mel", utterance.key, wait) as mine:
                if not mine:
                    return False
                if ("mel", utterance.key) not in self.cache:
                    entry = self._compute_mel_entry(utterance)
                    self.cache.save("mel", utterance.key, entry)
                    report.computed_mels += 1
                    self._count(utterance, entry["mel"], report, counted)
        if teacher_key is not None and ("teacher", teacher_key) not in self.cache:
            with self.cache.claim("teacher", teacher_key, wait) as mine:
                if not mine:
                    return False
                if ("teacher", teacher_key) not in self.cache:
                    mel = self.cache.load("mel", utterance.key)["mel"]
                    wav = synthesize(self.teacher, mel.unsqueeze(0), seed=self.teacher_seed)[0]
                    self.cache.save("teacher", teacher_key, {"wav": wav.cpu()})
                    report.computed_teacher += 1
                    self._count(utterance, mel, report, counted)
        return True

    @staticmethod
    def _count(utterance: Utterance, mel: Tensor, report: PrepareReport, counted: set[str]) -> None:
        """Record an utterance this process computed something for, once."""
        if utterance.key not in counted:
            counted.add(utterance.key)
            report.prepared_keys.append(utterance.key)
            report.audio_seconds += mel.shape[-1] * HOP_LENGTH / SAMPLE_RATE

    def _distributed(self) -> tuple[int, int, torch.device | None]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1:
            return 0, 1, None
        return trainer.global_rank, trainer.world_size, trainer.strategy.root_device

    def prepare_data(self) -> None:
        """Lightning's hook (one process per node): remove what killed runs left, find and
        hash the sources once; with one process, prepare everything here, else each process
        prepares its own share in :meth:`setup`."""
        if self.cache.root.is_dir():
            remove_stale_temporaries(self.cache.root)
        self.utterances()
        if self._distributed()[1] == 1:
            report = self.prepare()
            if len(report.skipped) == report.assigned:
                raise DataError(self._nothing_usable())

    @property
    def sources(self) -> list[str]:
        """The folders read: audio folders, held-out audio folders, then the mel folder."""
        dirs = self.audio_dirs + self.val_dirs
        return [str(d) for d in dirs] + ([str(self.mel_dir)] if self.mel_dir else [])

    def _describe_sources(self) -> str:
        return ", ".join(self.sources)

    def _nothing_usable(self) -> str:
        found = len(self.utterances())
        if not found:
            suffixes = ", ".join(AUDIO_SUFFIXES + MEL_SUFFIXES)
            return f"data: no usable utterances in {self._describe_sources()}: no {suffixes} files found"
        return (
            f"data: no usable utterances in {self._describe_sources()} "
            f"({len(self.skipped)} skipped of {found}, see the warnings above)"
        )

    # -- split and loaders ------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        rank, world_size, device = self._distributed()
        if world_size > 1:
            self.prepare(rank, world_size, device)
            self.trainer.strategy.barrier("prepared")
        train, val = self.split()
        train = self._long_enough(train)
        self.train_set = UtteranceDataset(
            self.cache,
            train,
            segment_frames=self.segment_frames,
            seed=self.seed,
            speed_factors=self.speed_perturb,
            tilt_db=self.tilt_db,
            drop_audio="text" in self.mel_sources,
        )
        self.val_set = UtteranceDataset(
            self.cache, val or train[:1], max_frames=self.val_max_frames, drop_audio="text" in self.mel_sources
        )

    def draw_weights(self) -> list[float] | None:
        """One weight per training utterance so that each mel source gets its share of draws
        (``data.mel_source``); ``None`` for a single source (a plain shuffle)."""
        present = {u.source for u, _ in self.train_set.entries}
        if len(self.mel_sources) == 1:
            return None
        missing = sorted(set(self.mel_sources) - present)
        if missing:
            raise DataError(f"data.mel_source mixes {', '.join(self.mel_sources)}, but no {', '.join(missing)} "
                            "utterance is long enough to train on")  # fmt: skip
        counts = {s: sum(u.source == s for u, _ in self.train_set.entries) for s in present}
        return [self.mel_sources[u.source] / counts[u.source] for u, _ in self.train_set.entries]

    def _long_enough(self, entries: list[Entry]) -> list[Entry]:
        """The entries that hold at least one training segment."""
        frames = FrameIndex(self.cache)
        kept = [e for e in entries if frames[e[0].key] >= self.segment_frames]
        try:
            frames.save()
        except OSError as err:
            log.warning("could not update %s: %s", frames.path, err)
        if len(kept) < len(entries):
            short = sorted(e[0].name for e in entries if e not in kept)
            log.info(
                "data: %d utterances shorter than data.segment_frames=%d left out of training: %s%s",
                len(short),
                self.segment_frames,
                ", ".join(short[:5]),
                " ..." if len(short) > 5 else "",
            )
        if not kept:
            longest = max((frames[e[0].key] for e in entries), default=0)
            raise DataError(
                f"data: no training utterance is at least data.segment_frames={self.segment_frames} frames long "
                f"(the longest has {longest}) in {self._describe_sources()}"
            )
        return kept

    def split(self) -> tuple[list[Entry], list[Entry]]:
        """Prepared ``(utterance, teacher cache key)`` entries as (train, validation), whatever their length."""
        entries = []
        for utterance in self.utterances():
            teacher_key = self.teacher_key(utterance)
            ready = ("mel", utterance.key) in self.cache and (
                teacher_key is None or ("teacher", teacher_key) in self.cache
            )
            if ready and (teacher_key is not None or utterance.has_audio):
                entries.append((utterance, teacher_key))
        if not entries:
            raise DataError(self._nothing_usable())
        ranked = sorted(entries, key=lambda e: bucket(e[0].group or e[0].name))
        train, val = [], []
        for source in SOURCES:  # each source's own held-out share, up to val_max_utterances
            mine = [e for e in ranked if e[0].source == source]
            if self.val_dirs:
                val += [e for e in mine if e[0].held_out][: self.val_max_utterances]
                train += [e for e in mine if not e[0].held_out]
                continue
            n_val = 0
            if len(entries) > 1 and mine:
                n_val = max(1, sum(bucket(u.group or u.name) < self.val_fraction for u, _ in mine))
                n_val = min(n_val, self.val_max_utterances or n_val)
            val, train = val + mine[:n_val], train + mine[n_val:]
        held = {e[0].clip for e in val}
        train = [e for e in train if e[0].clip not in held]  # validated in one source: trained on in none
        if self.val_dirs and not val:
            raise DataError(f"data.val_dirs {[str(d) for d in self.val_dirs]}: no prepared audio there")
        counts = ", ".join(f"{sum(e[0].source == s for e in train)}/{sum(e[0].source == s for e in val)} {s}"
                           for s in SOURCES if s in self.mel_sources)  # fmt: skip
        log.info("data: training/validation utterances: %s%s", counts, " (data.val_dirs)" if self.val_dirs else "")
        return train, val

    def evaluation_set(self, split: str = "val", max_frames: int | None = None) -> UtteranceDataset:
        """Whole utterances (up to ``max_frames``) of the ``val``, ``train`` or ``all`` split, by name."""
        train, val = self.split()
        chosen = {"val": val, "train": train, "all": train + val}.get(split)
        if chosen is None:
            raise DataError(f"split={split!r}: choose 'val', 'train' or 'all'")
        if not chosen:
            raise DataError(f"split={split!r} is empty for {self._describe_sources()}")
        return UtteranceDataset(self.cache, sorted(chosen, key=lambda e: e[0].name), max_frames=max_frames)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=SegmentSampler(len(self.train_set), self.seed, self.draw_weights()),
            num_workers=self.num_workers,
            drop_last=len(self.train_set) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1, num_workers=self.num_workers)
